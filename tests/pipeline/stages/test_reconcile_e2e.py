"""Receipts to final statuses, end to end on the real broker: every stage as a process, an SMSC
simulator sending delivery receipts over SMPP, the history read by an independent consumer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from connectors.simulators.smsc_model import SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.telex import Worker, read_all
from tests.pipeline.stages.pipeline_helpers import (
    applied,
    carriers_file,
    regressions,
    smpp,
    start_pipeline,
    wait_final,
)


def sms(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(account_id="acct-1", channel="sms", sender="55501",
                            recipient=f"+1415301{i:04d}", body=f"{tag} {i}",
                            idempotency_key=f"{tag}-{i}") for i in range(n)]


def test_receipts_become_final_statuses_in_sequence(
        topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path) -> None:
    with ThreadedSmsc(SmscConfig(seed=3, outcomes={"DELIVRD": 0.9, "EXPIRED": 0.1})) as smsc:
        settings = topics.model_copy(update={"carriers_file": carriers_file(
            tmp_path, [smpp("smsc-a", smsc.port)],
            [{"channel": "sms", "prefix": "", "connectors": ["smsc-a"]}])})
        workers = start_pipeline(settings, worker)
        batch = sms(300, "rc")
        with TelexProducer(settings) as producer:
            ids = {producer.send(m) for m in batch}
        history = wait_final(settings, ids, workers)

    finals = Counter(applied(history[i])[-1]["effective_status"] for i in ids)
    assert finals["delivered"] + finals["undelivered"] == len(ids)
    assert 0 < finals["undelivered"] < 0.25 * len(ids)
    for i in ids:
        events = applied(history[i])
        assert regressions(events) == [], i
        assert [e["status"] for e in events][:2] == ["accepted", "sent"]
        last = events[-1]
        if last["status"] == "undelivered":
            assert last["error_code"] == 30036 and last["source"] == "receipt"
    latest = {m.key().decode() for m in read_all(settings, "delivery-status-latest")}
    assert ids <= latest


def test_resendable_receipt_failure_is_resent_once_through_another_route(
        topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path) -> None:
    """smsc-a (primary) reports every message UNDELIV (30003, resendable); smsc-b delivers.
    Each message is resent exactly once, through smsc-b, with the same message id."""
    with ThreadedSmsc(SmscConfig(seed=5, outcomes={"UNDELIV": 1.0})) as a, \
            ThreadedSmsc(SmscConfig(seed=6, outcomes={"DELIVRD": 1.0})) as b:
        settings = topics.model_copy(update={"carriers_file": carriers_file(
            tmp_path, [smpp("smsc-a", a.port), smpp("smsc-b", b.port)],
            [{"channel": "sms", "prefix": "", "connectors": ["smsc-a", "smsc-b"]}])})
        workers = start_pipeline(settings, worker)
        batch = sms(40, "rs")
        with TelexProducer(settings) as producer:
            ids = {producer.send(m) for m in batch}
        history = wait_final(settings, ids, workers)
        per_a = Counter(r.destination_addr for r in a.submits)
        per_b = Counter(r.destination_addr for r in b.submits)

    recipients = {m.recipient.lstrip("+") for m in batch}
    assert set(per_a) == set(per_b) == recipients
    assert set(per_a.values()) == set(per_b.values()) == {1}
    for i in ids:
        events = applied(history[i])
        assert regressions(events) == [], i
        steps = [(e["status"], e["effective_status"], e["attempt"], e["connector"])
                 for e in events]
        assert steps == [("accepted", "accepted", None, None),
                         ("sent", "sent", 0, "smsc-a"),
                         ("undelivered", "sent", 0, "smsc-a"),
                         ("sent", "sent", 1, "smsc-b"),
                         ("delivered", "delivered", 1, "smsc-b")], steps
        assert events[2]["error_code"] == 30003 and "resending" in events[2]["error_reason"]
