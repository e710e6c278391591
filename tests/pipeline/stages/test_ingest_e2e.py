"""The ingest stage end to end on the real broker, as a real worker process."""

from __future__ import annotations

import random
import shutil
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pipeline.codec import AvroCodec
from pipeline.procutil import free_ports
from pipeline.sdk import OutboundMessage, TelexProducer, message_id_for
from pipeline.settings import Settings
from tests.fixtures.telex import Worker, read_all
from tests.fixtures.waiting import wait_for

CODEC = AvroCodec()
RECIPIENT = "+14155550123"


def msg(key: str, body: str = "hello", account: str = "acct-1") -> OutboundMessage:
    return OutboundMessage(account_id=account, channel="sms", sender="+14155550100",
                           recipient=RECIPIENT, body=body, idempotency_key=key)


def workload(unique: int, repeats: int, conflicts: int, seed: int = 7):
    """Originals, then identical repeats and conflicting repeats of some of them."""
    rng = random.Random(seed)
    originals = [msg(f"key-{i}", body=f"code {i}") for i in range(unique)]
    picked = rng.sample(range(unique), repeats)
    conflict_keys = set(picked[:conflicts])
    repeated = [msg(f"key-{i}", body=f"code {i}" + (" CHANGED" if i in conflict_keys else ""))
                for i in picked]
    rng.shuffle(originals)
    rng.shuffle(repeated)
    expected_ids = {message_id_for("acct-1", f"key-{i}") for i in range(unique)}
    conflict_ids = {message_id_for("acct-1", f"key-{i}") for i in conflict_keys}
    return originals + repeated, expected_ids, conflict_ids


def accepted_ids(records) -> list[str]:  # type: ignore[no-untyped-def]
    return [CODEC.decode(m.value(), expected="message_accepted")["message_id"] for m in records]


def test_unique_keys_accepted_duplicates_absorbed_conflicts_rejected(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """10,000 requests, 20 % repeated keys (some with other bodies): exactly the unique ones
    are accepted once, conflicts are refused with 21656, nothing else is emitted."""
    requests, expected, conflicts = workload(unique=8000, repeats=2000, conflicts=400)
    with TelexProducer(topics) as producer:
        producer.send_batch(requests)
    port = free_ports(1)[0]
    w = worker("ingest", topics.model_copy(update={"metrics_port": port}))

    accepted = read_all(topics, "message-accepted", until=lambda r: len(r) >= len(expected),
                        timeout=180)
    rejections = read_all(topics, "request-rejections", until=lambda r: len(r) >= len(conflicts),
                          timeout=60)
    w.assert_alive()
    ids = accepted_ids(accepted)
    assert len(ids) == len(expected) and set(ids) == expected
    rejected = [CODEC.decode(m.value(), expected="request_rejected") for m in rejections]
    assert {r["message_id"] for r in rejected} == conflicts
    assert {r["error_code"] for r in rejected} == {21656}
    statuses = [CODEC.decode(m.value(), expected="status_update")
                for m in read_all(topics, "status-updates")]
    assert Counter(s["status"] for s in statuses) == {"accepted": len(expected)}
    assert read_all(topics, "dlq-ingest") == []
    want = {("telex_stage_records_total", "accepted"): len(expected),
            ("telex_stage_records_total", "duplicate"): 2000 - len(conflicts),
            ("telex_stage_records_total", "conflict"): len(conflicts)}
    # The last repeats may still be in flight: poll.
    wait_for(lambda: {k: scrape(port).get(k) for k in want}, until=lambda got: got == want,
             timeout=30, what=f"ingest's record counters at {want}")


def scrape(port: int) -> dict[tuple[str, str], float]:
    """The ingest stage's record counters from its Prometheus endpoint, by outcome."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("stage") == "ingest" and "outcome" in sample.labels:
                out[(sample.name, sample.labels["outcome"])] = sample.value
    return out


def test_sigkill_mid_stream_accepts_each_unique_key(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """A worker killed with SIGKILL mid-stream and restarted: every unique key accepted, none
    lost; repeats are bounded by the uncommitted checkpoint and carry the same message id."""
    requests, expected, conflicts = workload(unique=16_000, repeats=4000, conflicts=800)
    with TelexProducer(topics) as producer:
        producer.send_batch(requests)
    first = worker("ingest", topics)
    read_all(topics, "message-accepted", until=lambda r: len(r) >= 3000, timeout=180,
             isolation="read_uncommitted")
    first.kill()
    worker("ingest", topics)

    def all_seen(records) -> bool:  # type: ignore[no-untyped-def]
        return len(records) >= len(expected) and set(accepted_ids(records)) >= expected

    ids = accepted_ids(read_all(topics, "message-accepted", until=all_seen, timeout=240))
    assert set(ids) == expected
    extra = len(ids) - len(expected)
    rejected = {CODEC.decode(m.value(), expected="request_rejected")["message_id"]
                for m in read_all(topics, "request-rejections",
                                  until=lambda r: len({m.key() for m in r}) >= len(conflicts))}
    assert rejected == conflicts
    print(f"\nre-emitted after SIGKILL: {extra} accepted records of {len(expected)} "
          "(same message ids; absorbed by dispatch's journal)")
    # The bound: only records processed after the last checkpoint are replayed. At a 0.2 s
    # commit interval that is far below one replay of everything processed before the kill.
    assert extra < 3000


def test_state_rebuilt_from_changelog_gives_same_decisions(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path
):
    """Local state wiped: the new worker restores it from the changelog and still absorbs
    repeats and refuses conflicts of requests processed before the wipe."""
    first_batch = [msg(f"k{i}") for i in range(500)]
    with TelexProducer(topics) as producer:
        producer.send_batch(first_batch)
    w = worker("ingest", topics)
    read_all(topics, "message-accepted", until=lambda r: len(r) >= 500, timeout=120)
    w.stop()
    shutil.rmtree(topics.state_dir)

    repeats = [msg(f"k{i}") for i in range(250)] + [msg(f"k{i}", "other") for i in range(250, 300)]
    fresh = [msg(f"new{i}") for i in range(100)]
    with TelexProducer(topics) as producer:
        producer.send_batch(repeats + fresh)
    worker("ingest", topics)
    accepted = read_all(topics, "message-accepted", until=lambda r: len(r) >= 600, timeout=120)
    rejected = read_all(topics, "request-rejections", until=lambda r: len(r) >= 50, timeout=60)
    ids = accepted_ids(accepted)
    assert len(ids) == 600 and len(set(ids)) == 600
    assert {CODEC.decode(m.value())["message_id"] for m in rejected} == {
        message_id_for("acct-1", f"k{i}") for i in range(250, 300)}
    # Nothing beyond: read to the end and count again.
    assert len(read_all(topics, "message-accepted")) == 600
    assert len(read_all(topics, "request-rejections")) == 50
