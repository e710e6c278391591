"""Dispatch end to end: ingest → rate limit → scheduler → dispatch → an SMSC simulator speaking
SMPP 3.4 over TCP on loopback."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Message

from connectors.simulators.smsc_model import Faults, SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.codec import AvroCodec
from pipeline.headers import H_ORIGINAL_TOPIC, H_STAGE
from pipeline.runtime.deadletter import header_dict
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.samples import sample
from tests.fixtures.telex import Worker, produce, read_all
from tests.fixtures.waiting import until_sync

CODEC = AvroCodec()
REJECTED = "+14155550666"


@pytest.fixture
def smsc() -> Iterator[ThreadedSmsc]:
    with ThreadedSmsc(SmscConfig(seed=7), Faults(reject_destinations={REJECTED.lstrip("+")})
                      ) as server:
        yield server


def carriers(settings: Settings, tmp_path: Path, smsc: ThreadedSmsc) -> Settings:
    path = tmp_path / "carriers.json"
    path.write_text(json.dumps({
        "connectors": [{"name": "smsc-a", "type": "smpp", "host": "127.0.0.1",
                        "port": smsc.port, "system_id": "telex", "password": "secret",
                        "window": 20, "response_timeout_s": 5}],
        "routes": [{"channel": "sms", "prefix": "", "connectors": ["smsc-a"]}],
    }))
    return settings.model_copy(update={"carriers_file": str(path), "retry_schedule_s": (1, 1, 2)})


def messages(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(account_id="acct-1", channel="sms", sender="55501",
                            recipient=f"+1415201{i:04d}", body=f"{tag} {i}",
                            idempotency_key=f"{tag}-{i}") for i in range(n)]


def start(settings: Settings, worker: Callable[[str, Settings], Worker]) -> dict[str, Worker]:
    return {s: worker(s, settings) for s in ("ingest", "ratelimit", "scheduler", "dispatch")}


def dispatch_updates(settings: Settings) -> list[Message]:
    """Dispatch's status updates: ``failed`` on status-updates, ``sent`` announced on
    carrier-receipts (for the reconciler), in the order each topic holds them."""
    failed = [m for m in read_all(settings, "status-updates")
              if CODEC.decode(m.value())["source"] == "dispatch"]
    sent = [m for m in read_all(settings, "carrier-receipts")
            if CODEC.decode_with_name(m.value())[0] == "status_update"]
    return sorted(failed + sent, key=lambda m: m.timestamp()[1])


def statuses(settings: Settings, expected: int, timeout: float = 120) -> dict[str, dict]:
    """Latest dispatch status (sent/failed) per message id, once ``expected`` have one."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for m in dispatch_updates(settings):
            s = CODEC.decode(m.value(), expected="status_update")
            if s["status"] in ("sent", "failed"):
                found[s["message_id"]] = s
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)  # pacing between reads; the condition above decides


def test_each_message_reaches_the_carrier_once_with_its_carrier_id(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """300 messages: one accepted submit_sm each at the SMSC, a 'sent' status carrying the
    SMSC's id, and a SUBMITTED journal entry with the same id."""
    settings = carriers(topics, tmp_path, smsc)
    start(settings, worker)
    with TelexProducer(settings) as producer:
        ids = producer.send_batch(messages(300, "once"))
    sent = statuses(settings, 300)
    assert set(sent) == set(ids) and {s["status"] for s in sent.values()} == {"sent"}
    accepted = Counter(r.text for r in smsc.submits if r.status == 0)
    assert len(accepted) == 300 and set(accepted.values()) == {1}
    smsc_ids = {r.message_id for r in smsc.submits if r.status == 0}
    assert {s["carrier_message_id"] for s in sent.values()} == {
        i.lower().lstrip("0") for i in smsc_ids}
    journal = {CODEC.decode(m.value())["message_id"]: CODEC.decode(m.value())["state"]
               for m in read_all(settings, "dispatch-journal")}
    assert set(journal.values()) == {"SUBMITTED"}


def test_permanent_reject_fails_with_its_code_and_throttling_is_retried(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """An invalid destination fails at once with 21211; throttled submits are retried through
    the delay tiers; no message is accepted twice, and every message ends sent or failed."""
    settings = carriers(topics, tmp_path, smsc).model_copy(
        update={"retry_schedule_s": (1, 2, 4, 8)})
    smsc.faults.throttle_rate = 0.15
    start(settings, worker)
    batch = [*messages(100, "thr"), OutboundMessage(
        account_id="acct-1", channel="sms", sender="55501", recipient=REJECTED, body="nope",
        idempotency_key="rejected")]
    with TelexProducer(settings) as producer:
        ids = producer.send_batch(batch)
    final = statuses(settings, 101)
    assert set(final) == set(ids), "every message ends sent or failed"
    assert final[ids[-1]]["status"] == "failed" and final[ids[-1]]["error_code"] == 21211
    journal: dict[str, list[dict]] = {}
    for m in read_all(settings, "dispatch-journal"):
        entry = CODEC.decode(m.value())
        journal.setdefault(entry["message_id"], []).append(entry)
    retried_then_sent = [i for i in ids[:-1] if final[i]["status"] == "sent"
                         and journal[i][-1]["attempt"] > 0]
    assert retried_then_sent, "throttled messages must be retried and then sent"
    for i in ids[:-1]:
        if final[i]["status"] == "failed":  # only once its retries ran out
            assert final[i]["error_code"] in (30022, 30008)
            assert journal[i][-1]["state"] == "FAILED" and not journal[i][-1]["retryable"]
    accepted = Counter(r.text for r in smsc.submits if r.status == 0)
    assert set(accepted.values()) == {1}
    assert len(accepted) == sum(s["status"] == "sent" for s in final.values())


def test_sigkill_of_dispatch_resends_only_in_doubt_attempts(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """The dispatch worker killed mid-stream: every message reaches the carrier; any message
    submitted twice has an in-doubt journal entry, and there are at most one batch of them."""
    settings = carriers(topics, tmp_path, smsc)
    workers = start(settings, worker)
    with TelexProducer(settings) as producer:
        ids = producer.send_batch(messages(1000, "kill"))
    until_sync(lambda: sum(r.status == 0 for r in smsc.submits) >= 200, 120,
               "200 accepted submits (dispatch never got going)", interval_s=0.05)
    workers["dispatch"].kill()
    worker("dispatch", settings)
    sent = statuses(settings, 1000, timeout=180)
    assert set(ids) <= set(sent)
    accepted = Counter(r.text for r in smsc.submits if r.status == 0)
    assert len(accepted) == 1000
    twice = {text for text, n in accepted.items() if n > 1}
    in_doubt = {CODEC.decode(m.value())["message_id"] for m in read_all(settings,
                "dispatch-journal") if CODEC.decode(m.value())["state"] == "IN_DOUBT_RESOLVED"}
    print(f"\nduplicates after SIGKILL: {len(twice)}; in-doubt entries resolved: {len(in_doubt)}")
    assert len(twice) <= len(in_doubt) <= settings.dispatch_batch


def test_undecodable_record_is_dead_lettered_and_dispatch_moves_on(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """Garbage on dispatch-ready lands in dlq-dispatch with its provenance; the message behind
    it is still submitted."""
    settings = carriers(topics, tmp_path, smsc)
    produce(settings, "dispatch-ready", [("TXgarbage", b"\x00not avro")])
    start(settings, worker)
    with TelexProducer(settings) as producer:
        [mid] = producer.send_batch(messages(1, "after-garbage"))
    assert statuses(settings, 1)[mid]["status"] == "sent"
    [dead] = read_all(settings, "dlq-dispatch", until=lambda r: len(r) >= 1, timeout=30)
    headers = header_dict(dead.headers())
    assert dead.value() == b"\x00not avro" and dead.key() == b"TXgarbage"
    assert headers[H_STAGE] == "dispatch"
    assert headers[H_ORIGINAL_TOPIC] == settings.topic("dispatch-ready")


def test_copies_of_a_message_in_one_batch_are_submitted_once(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """Upstream stages are at-least-once, so one batch can hold several copies of a message.
    The second copy must see the first one's ATTEMPTING entry as this batch's own, not as a
    dead worker's in-doubt attempt to resend (found by the fault-injection suite)."""
    settings = carriers(topics, tmp_path, smsc)
    now = int(time.time() * 1000)
    record = sample("message_accepted", message_id="TX" + "5" * 32, sender="55501",
                    accepted_at_ms=now, expires_at_ms=now + 600_000)
    value = CODEC.encode("message_accepted", record)
    produce(settings, "dispatch-ready", [(record["message_id"], value)] * 4)
    worker("dispatch", settings)
    found = statuses(settings, 1)
    assert found[record["message_id"]]["status"] == "sent"
    journal = [CODEC.decode(m.value()) for m in read_all(settings, "dispatch-journal")]
    assert [e["state"] for e in journal] == ["ATTEMPTING", "SUBMITTED"]
    assert [r.status for r in smsc.submits] == [0]


def test_a_stale_copy_does_not_hide_the_retry_behind_it_in_the_same_batch(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """The journal says attempt 0 failed retryably; one batch holds a late copy of attempt 0
    and then the retry (attempt 1). The copy is skipped, the retry still goes out — once
    (a lost message the fault-injection suite found in the first fix of the test above)."""
    settings = carriers(topics, tmp_path, smsc)
    now = int(time.time() * 1000)
    record = sample("message_accepted", message_id="TX" + "6" * 32, sender="55501",
                    accepted_at_ms=now, expires_at_ms=now + 600_000, attempt=0)
    failed = sample("dispatch_journal_entry", message_id=record["message_id"], state="FAILED",
                    attempt=0, connector="smsc-a", retryable=True, error_code=30022,
                    carrier_message_id=None, at_ms=now)
    produce(settings, "dispatch-journal",
            [(record["message_id"], CODEC.encode("dispatch_journal_entry", failed))])
    produce(settings, "dispatch-ready", [
        (record["message_id"], CODEC.encode("message_accepted", record)),
        (record["message_id"], CODEC.encode("message_accepted", {**record, "attempt": 1}))])
    worker("dispatch", settings)
    assert statuses(settings, 1)[record["message_id"]]["status"] == "sent"
    journal = [CODEC.decode(m.value()) for m in read_all(settings, "dispatch-journal")]
    assert [(e["state"], e["attempt"]) for e in journal] == [
        ("FAILED", 0), ("ATTEMPTING", 1), ("SUBMITTED", 1)]
    assert [r.status for r in smsc.submits] == [0]
