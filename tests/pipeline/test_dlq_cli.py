"""`telex dlq` driven as an SRE would (subprocesses), on dead letters the real stage workers
made on the real broker."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec

from connectors.simulators.smsc_model import SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.codec import AvroCodec
from pipeline.headers import H_REPLAY_BY, H_REPLAY_COUNT, H_REPLAY_FROM_OFFSET, H_REPLAY_FROM_TOPIC
from pipeline.runtime.deadletter import Provenance, dead_letter_headers, header_dict
from pipeline.settings import Settings
from pipeline.topics import admin_client, catalogue
from tests.fixtures.telex import REPO, Worker, produce, read_all
from tests.fixtures.waiting import wait_for

CODEC = AvroCodec()
POISON = b"not avro"


def telex(settings: Settings, *args: str, bootstrap: str | None = None,
          stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env(), "USER": "sre-on-call"}
    if bootstrap:
        env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, stdin=stdin)


def answering(settings: Settings, answer: bytes, *args: str
              ) -> subprocess.CompletedProcess[str]:
    """Run telex with a terminal as stdin, typing ``answer`` into it."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)  # buffered by the terminal until telex reads it
        return telex(settings, *args, stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)


def telex_json(settings: Settings, *args: str, expect: int = 0) -> dict:
    run = telex(settings, *args, "--json")
    assert run.returncode == expect, (run.returncode, run.stdout, run.stderr)
    return json.loads(run.stdout)


@pytest.fixture
def smsc() -> Iterator[ThreadedSmsc]:
    with ThreadedSmsc(SmscConfig(seed=3)) as server:
        yield server


def with_carriers(settings: Settings, tmp_path: Path, smsc: ThreadedSmsc, *, us_route: bool
                  ) -> Settings:
    """Carriers with a UK-only route (US recipients have none), or with the US route too."""
    routes = [{"channel": "sms", "prefix": "+44", "connectors": ["smsc-a"]}]
    if us_route:
        routes.append({"channel": "sms", "prefix": "+1", "connectors": ["smsc-a"]})
    path = tmp_path / f"carriers-{'us' if us_route else 'uk'}.json"
    path.write_text(json.dumps({
        "connectors": [{"name": "smsc-a", "type": "smpp", "host": "127.0.0.1",
                        "port": smsc.port, "system_id": "telex", "password": "secret",
                        "window": 10, "response_timeout_s": 5}],
        "routes": routes}))
    return settings.model_copy(update={"carriers_file": str(path)})


def accepted(recipient: str, account: str = "acct-1", body: str = "Your code is 123456"
             ) -> tuple[str, bytes]:
    """A MessageAccepted as ingest emits it, ready for dispatch."""
    mid = "TX" + uuid.uuid4().hex
    now = int(time.time() * 1000)
    return mid, CODEC.encode("message_accepted", {
        "message_id": mid, "account_id": account, "idempotency_key": mid, "channel": "sms",
        "sender": "55501", "recipient": recipient, "body": body, "media_urls": [],
        "status_callback_url": None, "validity_period_s": None, "send_at_ms": None,
        "requested_at_ms": now, "trace_id": None, "client": None, "metadata": {},
        "accepted_at_ms": now, "expires_at_ms": now + 3_600_000, "encoding": "GSM7",
        "segments": 1, "content_hash": mid, "attempt": 0})


def dead_letters(settings: Settings, topic: str, n: int) -> list:
    return read_all(settings, topic, until=lambda r: len(r) >= n, timeout=120)


def submitted_ids(settings: Settings) -> dict[str, str]:
    """Latest journal state per message id."""
    return {CODEC.decode(m.value())["message_id"]: CODEC.decode(m.value())["state"]
            for m in read_all(settings, "dispatch-journal")}


def end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    admin = admin_client(settings)
    tps = [TopicPartition(s.name, p) for s in catalogue(settings) for p in range(s.partitions)]
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps})
    return {(tp.topic, tp.partition): f.result(30).offset for tp, f in futures.items()}


def committed(settings: Settings, group: str, topic: str) -> list[int]:
    admin = admin_client(settings)
    tps = [TopicPartition(settings.topic(topic), p) for p in range(settings.partitions)]
    result = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(settings.topic(group), tps)])
    return [tp.offset for f in result.values() for tp in f.result(30).topic_partitions]


def test_dead_letters_from_ingest_and_dispatch_are_listed_and_shown(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """A poison request (ingest) and two messages without a route (dispatch): list counts them
    by topic, stage and error class; show finds them by each filter, redacted."""
    settings = with_carriers(topics, tmp_path, smsc, us_route=False)
    produce(settings, "message-requested", [("TXpoison", POISON)])
    first, second = accepted("+14155550123"), accepted("+14155550124", account="acct-2")
    produce(settings, "dispatch-ready", [first, second])
    worker("ingest", settings)
    worker("dispatch", settings)
    dead_letters(settings, "dlq-ingest", 1)
    dead_letters(settings, "dlq-dispatch", 2)

    listing = telex_json(settings, "dlq", "list", expect=1)
    by_topic = {t["topic"]: t for t in listing["topics"]}
    assert listing["pending"] == 3
    assert by_topic["dlq-ingest"]["by_stage"] == {"ingest": 1}
    assert by_topic["dlq-ingest"]["by_error_class"] == {"UnknownSchemaError": 1}
    assert by_topic["dlq-dispatch"]["by_stage"] == {"dispatch": 2}
    assert by_topic["dlq-dispatch"]["by_error_class"] == {"NoRouteError": 2}
    assert by_topic["dlq-dispatch"]["oldest_ms"] <= by_topic["dlq-dispatch"]["newest_ms"]
    assert {t for t, s in by_topic.items() if s["pending"]} == {"dlq-ingest", "dlq-dispatch"}
    assert "dlq-parked" in by_topic
    human = telex(settings, "dlq", "list")
    assert human.returncode == 1
    assert any(line.split()[:4] == ["dlq-dispatch", "dispatch", "NoRouteError", "2"]
               for line in human.stdout.splitlines()), human.stdout

    def shown(*filters: str) -> list[dict]:
        return telex_json(settings, "dlq", "show", *filters)["records"]

    assert {r["message_id"] for r in shown("--stage", "dispatch")} == {first[0], second[0]}
    assert [r["message_id"] for r in shown("--account", "acct-2")] == [second[0]]
    assert [r["message_id"] for r in shown("--message-id", first[0])] == [first[0]]
    assert len(shown("--error", "noroute")) == 2
    assert [r["stage"] for r in shown("--error", "single-object marker")] == ["ingest"]
    assert len(shown("--since", "1h")) == 3 and shown("--until", "1h") == []
    [poison] = shown("--topic", "dlq-ingest")
    assert poison["key"] == "TXpoison" and poison["value"] is None
    assert poison["value_bytes"] == f"{len(POISON)} bytes: {POISON.hex()}"
    assert "UnknownSchemaError" in poison["decode_error"]
    [one] = shown("--message-id", first[0])
    assert one["original"].startswith(settings.topic("dispatch-ready") + ":")
    assert one["headers"]["telex.dlq.stage"] == "dispatch"
    assert one["value"]["account_id"] == "acct-1" and one["schema"] == "message_accepted"

    text = telex(settings, "dlq", "show", "--stage", "dispatch")
    assert text.returncode == 0 and "2 shown of 2 matching" in text.stdout
    assert "<phone …23>" in text.stdout and "<redacted 19 chars>" in text.stdout
    assert "4155550123" not in text.stdout and "123456" not in text.stdout
    assert "1 shown of 3 matching" in telex(settings, "dlq", "show", "--limit", "1").stdout


def test_replay_after_the_fix_submits_once_and_a_second_replay_submits_nothing(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """No route → dead letters; dispatch restarted with the route; the replay reaches the
    SMSC once per message (journal SUBMITTED); replaying the same records again is skipped as
    already submitted and produces nothing."""
    broken = with_carriers(topics, tmp_path, smsc, us_route=False)
    messages = [accepted("+14155550123"), accepted("+14155550124")]
    produce(broken, "dispatch-ready", messages)
    dispatch = worker("dispatch", broken)
    dead_letters(broken, "dlq-dispatch", 2)
    dispatch.stop()
    fixed = with_carriers(topics, tmp_path, smsc, us_route=True)
    worker("dispatch", fixed)

    first = telex_json(fixed, "dlq", "replay", "--topic", "dlq-dispatch")
    assert first["counts"] == {"replayed": 2}
    assert sorted(r["message_id"] for r in first["records"]) == sorted(m for m, _ in messages)
    wait_for(lambda: submitted_ids(fixed),
             until=lambda got: all(got.get(m) == "SUBMITTED" for m, _ in messages),
             timeout=120, what="both replayed messages SUBMITTED in the journal")
    accepted_submits = [s for s in smsc.submits if s.status == 0]
    assert sorted(s.destination_addr for s in accepted_submits) == ["14155550123",
                                                                    "14155550124"]
    replayed = [m for m in read_all(fixed, "dispatch-ready")
                if H_REPLAY_COUNT in header_dict(m.headers())]
    assert len(replayed) == 2
    headers = header_dict(replayed[0].headers())
    assert headers[H_REPLAY_COUNT] == "1" and headers[H_REPLAY_BY] == "sre-on-call"
    assert headers[H_REPLAY_FROM_TOPIC] == fixed.topic("dlq-dispatch")

    before = end_offsets(fixed)
    again = telex(fixed, "dlq", "replay", "--topic", "dlq-dispatch", "--all")
    assert again.returncode == 0, again.stderr
    assert re.search(r"skipped, already submitted +2\n", again.stdout), again.stdout
    assert re.search(r"replayed +0\n", again.stdout), again.stdout
    assert end_offsets(fixed) == before, "a replay of submitted messages produced records"
    assert [s for s in smsc.submits if s.status == 0] == accepted_submits
    resumed = telex_json(fixed, "dlq", "replay", "--topic", "dlq-dispatch")
    assert resumed["records"] == [], "the replay cursor is past the replayed records"


def test_dry_run_produces_nothing_and_moves_no_cursor(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """--dry-run reports what would be replayed, while every topic's end offset and the
    replay cursor stay as they were."""
    settings = with_carriers(topics, tmp_path, smsc, us_route=False)
    mid, value = accepted("+14155550123")
    produce(settings, "dispatch-ready", [(mid, value)])
    dispatch = worker("dispatch", settings)
    dead_letters(settings, "dlq-dispatch", 1)
    dispatch.stop()
    before = end_offsets(settings)

    dry = telex(settings, "dlq", "replay", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing produced and no cursor moved" in dry.stdout
    assert re.search(r"replayed +1\n", dry.stdout) and mid in dry.stdout
    report = telex_json(settings, "dlq", "replay", "--dry-run")
    assert report["dry_run"] and report["counts"] == {"replayed": 1} and report["cursor"] == {}
    assert end_offsets(settings) == before
    assert set(committed(settings, "dlq-replay", "dlq-dispatch")) == {-1001}


def test_a_replayed_record_that_fails_again_is_parked_not_replayed(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """A poison request replayed into ingest comes back with telex.replay.count; the next
    replay moves it to dlq-parked; after that nothing is left to replay."""
    produce(topics, "message-requested", [("TXpoison", POISON)])
    worker("ingest", topics)
    dead_letters(topics, "dlq-ingest", 1)

    assert telex_json(topics, "dlq", "replay", "--topic", "dlq-ingest")["counts"] == {
        "replayed": 1}
    back = dead_letters(topics, "dlq-ingest", 2)[1]
    assert header_dict(back.headers())[H_REPLAY_COUNT] == "1"
    assert header_dict(back.headers())["telex.dlq.failure_count"] == "2"

    second = telex_json(topics, "dlq", "replay")
    assert second["counts"] == {"parked": 1}
    [parked] = dead_letters(topics, "dlq-parked", 1)
    parked_headers = header_dict(parked.headers())
    assert parked.key() == b"TXpoison" and parked.value() == POISON
    assert parked_headers["telex.parked.from_topic"] == topics.topic("dlq-ingest")
    assert parked_headers["telex.dlq.stage"] == "ingest"
    requested = len(read_all(topics, "message-requested"))
    assert telex_json(topics, "dlq", "replay")["records"] == []
    assert len(read_all(topics, "message-requested")) == requested == 2
    listing = telex_json(topics, "dlq", "list", "--topic", "dlq-parked", expect=1)
    assert listing["topics"][0]["by_stage"] == {"ingest": 1}


def _ctrl_c_as_at_a_terminal() -> None:
    """The child's SIGINT as a terminal gives it (Python then raises KeyboardInterrupt).
    A test run started in the background (``cmd &`` without job control, as CI scripts do)
    ignores SIGINT, children inherit that, and the interrupt this test sends did nothing: the
    replay finished all 20 records (CI, twice)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_replay_resumes_where_it_stopped_without_replaying_twice(
    topics: Settings,
):
    """Ctrl-C in the middle of a rate-capped replay: what was produced is acknowledged and
    behind the cursor; the next run replays the rest; each dead letter is replayed once."""
    records = [accepted(f"+1415201{i:04d}") for i in range(20)]
    for mid, value in records:
        headers = dead_letter_headers(None, Provenance(topics.topic("dispatch-ready"), 0, 0, 1),
                                      "dispatch", LookupError("no route"), 1, mid)
        produce(topics, "dlq-dispatch", [(mid, value)], headers=headers)
    env = {**os.environ, **topics.to_env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "dlq", "replay", "--rate", "4"], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, preexec_fn=_ctrl_c_as_at_a_terminal)
    try:
        read_all(topics, "dispatch-ready", until=lambda r: len(r) >= 3, timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 1, (out, err)
    assert "interrupted; run again to resume" in out
    first = len(read_all(topics, "dispatch-ready"))
    assert 3 <= first < 20
    assert sum(o for o in committed(topics, "dlq-replay", "dlq-dispatch") if o > 0) == first

    rest = telex_json(topics, "dlq", "replay")
    assert rest["counts"] == {"replayed": 20 - first}
    replayed = read_all(topics, "dispatch-ready")
    origins = sorted((header_dict(m.headers())["telex.replay.from_partition"],
                      int(header_dict(m.headers())[H_REPLAY_FROM_OFFSET])) for m in replayed)
    assert len(origins) == 20 and len(set(origins)) == 20
    assert sorted(m.key().decode() for m in replayed) == sorted(mid for mid, _ in records)


def test_purge_needs_confirmation_and_then_marks_dead_letters_handled(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """Without --yes and without a terminal, purge refuses (exit 2) and changes nothing; with
    --yes the handled cursor moves and list shows nothing pending (exit 0)."""
    produce(topics, "message-requested", [("TXpoison", POISON)])
    worker("ingest", topics)
    dead_letters(topics, "dlq-ingest", 1)

    refused = telex(topics, "dlq", "purge")
    assert refused.returncode == 2
    assert "refusing to mark 1 dead letters handled without confirmation" in refused.stderr
    assert "pass --yes" in refused.stderr
    assert telex_json(topics, "dlq", "list", expect=1)["pending"] == 1
    declined = answering(topics, b"n\n", "dlq", "purge")
    assert declined.returncode == 1 and "mark them handled? [y/N]" in declined.stdout
    assert "aborted, nothing marked" in declined.stdout
    assert telex_json(topics, "dlq", "list", expect=1)["pending"] == 1

    purged = telex(topics, "dlq", "purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "marked 1 dead letters handled (dlq-ingest 1)" in purged.stdout
    assert max(committed(topics, "dlq-handled", "dlq-ingest")) == 1
    after = telex_json(topics, "dlq", "list")
    assert after["pending"] == 0
    ingest = next(t for t in after["topics"] if t["topic"] == "dlq-ingest")
    assert ingest["handled"] == 1
    assert telex_json(topics, "dlq", "list", "--all", expect=1)["pending"] == 1
    assert telex_json(topics, "dlq", "show")["matching"] == 0
    assert "nothing to mark handled" in telex(topics, "dlq", "purge").stdout


def test_wrong_broker_address_exits_3_naming_it(settings: Settings):
    """Nobody listens at the address: exit 3 and a message naming it, for dlq and trace."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    for args in (("dlq", "list"), ("dlq", "replay", "--dry-run"), ("trace", "TX1")):
        run = telex(settings, *args, "--timeout", "3", bootstrap=dead)
        assert run.returncode == 3, (args, run.stderr)
        assert f"cannot reach Kafka at {dead}" in run.stderr


def test_unknown_topics_exit_3_and_bad_arguments_exit_2(topics: Settings, settings: Settings):
    """A name that is no dead-letter topic, or a --to outside the catalogue: exit 3 with the
    reason; an unreadable time: exit 2 (usage)."""
    run = telex(topics, "dlq", "list", "--topic", "dlq-nowhere")
    assert run.returncode == 3 and "unknown dead-letter topic 'dlq-nowhere'" in run.stderr
    run = telex(topics, "dlq", "replay", "--to", "nowhere", "--dry-run")
    assert run.returncode == 3 and "unknown topic 'nowhere'" in run.stderr
    missing = settings.model_copy(update={"topic_prefix": f"absent{uuid.uuid4().hex[:6]}."})
    run = telex(missing, "dlq", "show", "--topic", "dlq-ingest")
    assert run.returncode == 3
    assert f"topic {missing.topic('dlq-ingest')} does not exist on the broker" in run.stderr
    run = telex(missing, "dlq", "list")
    assert run.returncode == 3
    assert f"no dead-letter topics ({missing.topic('dlq-*')}) on the broker" in run.stderr
    run = telex(topics, "dlq", "show", "--since", "yesterday")
    assert run.returncode == 2 and "cannot read time 'yesterday'" in run.stderr
