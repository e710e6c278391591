"""Receipts to final statuses, end to end on the real broker: every stage as a process, an SMSC
simulator sending delivery receipts over SMPP, the history read by an independent consumer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.base import normalise_message_id
from connectors.simulators.http_channel import HttpChannelConfig, HttpChannelSimulator, HttpFaults
from connectors.simulators.smsc_model import Faults, SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.codec import AvroCodec
from pipeline.procutil import free_ports
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.telex import Worker, read_all
from tests.fixtures.waiting import wait_for
from tests.pipeline.stages.pipeline_helpers import (
    ALL_STAGES,
    applied,
    carriers_file,
    independent_history,
    regressions,
    smpp,
    start_pipeline,
    wait_final,
)

CODEC = AvroCodec()


def sms(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(account_id="acct-1", channel="sms", sender="55501",
                            recipient=f"+1415301{i:04d}", body=f"{tag} {i}",
                            idempotency_key=f"{tag}-{i}") for i in range(n)]


def test_receipts_become_final_statuses_in_sequence(
        topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path) -> None:
    """300 SMS (90 % DELIVRD, 10 % EXPIRED) end delivered or undelivered (some, under 25 %, with
    receipt code 30036); histories start accepted, sent, never regress; each has a latest record."""
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


CHAOS = Faults(early_receipt_rate=0.10, duplicate_receipt_rate=0.05, unknown_receipt_rate=0.02,
               lost_receipt_rate=0.01, out_of_order_rate=0.05)
EXPECTED = {"DELIVRD": ("delivered", None), "EXPIRED": ("undelivered", 30036)}


@pytest.mark.parametrize("kill", [False, True], ids=["steady", "sigkill-reconcile-and-status"])
def test_receipt_chaos_ends_every_message_in_its_right_final_state(
        topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
        kill: bool) -> None:
    """10 % early, 5 % duplicated, 2 % unknown ids, 1 % never arrive, 5 % out-of-order pairs:
    every message ends in the state its receipts say (lost → undelivered 30008 at the end of
    the receipt window), unknown ids land in receipts-unmatched (with, under load, early
    receipts that outwaited the match TTL and matched later), no history regresses — also
    when the reconciler and the status stage are SIGKILLed mid-stream and restarted."""
    n = 1000
    with ThreadedSmsc(SmscConfig(seed=11, outcomes={"DELIVRD": 0.95, "EXPIRED": 0.05}),
                      CHAOS) as smsc:
        settings = topics.model_copy(update={
            "carriers_file": carriers_file(tmp_path, [smpp("smsc-a", smsc.port, window=50)],
                                           [{"channel": "sms", "prefix": "",
                                             "connectors": ["smsc-a"]}]),
            "receipt_window_s": 15, "receipt_match_ttl_s": 3})
        workers = start_pipeline(settings, worker)
        batch = sms(n, f"chaos{int(kill)}")
        by_recipient: dict[str, str] = {}
        with TelexProducer(settings) as producer:
            for m in batch:
                by_recipient[m.recipient.lstrip("+")] = producer.send(m)
        if kill:
            for stage, share in (("reconcile", 0.3), ("status", 0.6)):
                wait_for(lambda share=share: len(smsc.receipts_sent) >= share * n, timeout=120,
                         what=f"{share:.0%} of the receipts sent before killing {stage}")
                workers[stage].kill()
                workers[stage] = worker(stage, settings)
        history = wait_final(settings, set(by_recipient.values()), workers)
        plans = {r.destination_addr: r.receipts for r in smsc.submits if r.receipts}
        submitted = {normalise_message_id(r.message_id) for r in smsc.submits if r.message_id}

    assert set(plans) == set(by_recipient), "every message submitted once, with a receipt plan"
    wrong, regressed = [], []
    for recipient, message_id in by_recipient.items():
        plan = plans[recipient]
        want = ("undelivered", 30008) if plan.lost else EXPECTED[plan.stat]
        events = applied(history[message_id])
        regressed += [(message_id, p) for p in regressions(events)]
        got = (events[-1]["effective_status"], events[-1]["error_code"])
        if got != want:
            wrong.append((message_id, plan, got))
    assert regressed == []
    assert wrong == []
    kinds = Counter(k for p in plans.values() for k in ("early", "duplicate", "lost",
                                                         "out_of_order") if getattr(p, k))
    assert all(kinds[k] > 0 for k in ("early", "duplicate", "lost", "out_of_order")), kinds
    unknown = {p.unknown_id for p in plans.values() if p.unknown_id}
    assert unknown, "the simulator sent receipts for unknown ids"
    unmatched = wait_for(lambda: {CODEC.decode(m.value())["carrier_message_id"]
                                  for m in read_all(settings, "receipts-unmatched")} or None,
                         until=lambda found: found is not None and len(found) >= len(unknown),
                         timeout=120, what=f"{len(unknown)} unknown receipt ids unmatched")
    unknown_ids = {normalise_message_id(u) for u in unknown}
    assert unknown_ids <= unmatched
    # Any other receipt there waited past the match TTL (3 s here) for its submission — an
    # early receipt while dispatch or a restarted reconciler lagged — and was matched when the
    # submission came: it names a real submission, whose message ended right (asserted above).
    assert unmatched - unknown_ids <= submitted
    assert read_all(settings, "dlq-reconcile") == read_all(settings, "dlq-status") == []


WA_SENDER = "whatsapp:+14155550199"  # demo registry WhatsApp sender
WA_SECRET = "e2e-app-secret"
WA_TOKEN = "e2e-token"


def whatsapp_settings(topics: Settings, tmp_path: Path, sim: HttpChannelSimulator,
                      port: int, **extra: Any) -> Settings:
    connector = {"name": "wa", "type": "whatsapp", "base_url": sim.base_url,
                 "phone_number_id": "1099", "access_token": WA_TOKEN, "app_secret": WA_SECRET,
                 "window": 16, "timeout_s": 5, "trust_env": False}
    return topics.model_copy(update={
        "carriers_file": carriers_file(tmp_path, [connector], [
            {"channel": "whatsapp", "prefix": "", "connectors": ["wa"]}]),
        "webhook_port": port, "receipt_match_ttl_s": 3, **extra})


def whatsapp(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(account_id="acct-1", channel="whatsapp", sender=WA_SENDER,
                            recipient=f"whatsapp:+1415304{i:04d}", body=f"{tag} {i}",
                            idempotency_key=f"{tag}-{i}") for i in range(n)]


def test_whatsapp_status_webhooks_become_final_statuses(
        topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path) -> None:
    """Signed status webhooks (some early, duplicated, out of order) through the receiver and
    the reconciler: each message ends as its last webhook says (read or failed), in order."""
    [port] = free_ports(1)
    config = HttpChannelConfig(access_token=WA_TOKEN, app_secret=WA_SECRET, seed=4,
                               callback_url=f"http://127.0.0.1:{port}/webhooks/wa",
                               outcomes={"read": 0.8, "failed": 0.2})
    faults = HttpFaults(early_receipt_rate=0.1, duplicate_receipt_rate=0.05,
                        out_of_order_rate=0.05)
    with HttpChannelSimulator(config, faults) as sim:
        settings = whatsapp_settings(topics, tmp_path, sim, port)
        workers = start_pipeline(settings, worker, (*ALL_STAGES, "webhooks"))
        with TelexProducer(settings) as producer:
            ids = set(producer.send_batch(whatsapp(120, "wa")))
        wait_final(settings, ids, workers)
        plans = {r.opaque: r.receipts for r in sim.sends if r.receipts}
        assert set(plans) == ids

        def as_planned(history: dict[str, list[dict[str, Any]]]) -> bool:
            # "delivered" is final too: wait for a planned "read" to land as well.
            return all(applied(history[i])[-1]["effective_status"] == plans[i].status
                       for i in ids)

        history = wait_for(lambda: independent_history(settings), until=as_planned, timeout=60,
                           what="every message's last webhook status",
                           describe=lambda history: Counter(
                               applied(history[i])[-1]["effective_status"] for i in ids))

    for i in ids:
        events = applied(history[i])
        assert regressions(events) == [], i
        assert events[-1]["effective_status"] == plans[i].status, (i, plans[i], events)
    assert Counter(p.status for p in plans.values()).keys() == {"read", "failed"}


def test_whatsapp_in_doubt_after_a_dispatch_crash_is_settled_by_receipt_not_resent(
        topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path) -> None:
    """Dispatch is SIGKILLed while sends are in flight (held unanswered by the channel until
    the kill). WhatsApp is never resent blindly: a message the channel received ends as its
    webhooks say, matched by the message id the channel echoes; one it never received fails
    with 30008 at the in-doubt deadline. No message is sent twice."""
    [port] = free_ports(1)
    config = HttpChannelConfig(access_token=WA_TOKEN, app_secret=WA_SECRET, seed=8,
                               callback_url=f"http://127.0.0.1:{port}/webhooks/wa",
                               latency_s=0.2, status_delay_s=0.2, outcomes={"read": 1.0})
    with HttpChannelSimulator(config) as sim:
        settings = whatsapp_settings(topics, tmp_path, sim, port, in_doubt_window_s=8,
                                     dispatch_batch=64)
        workers = start_pipeline(settings, worker, (*ALL_STAGES, "webhooks"))
        with TelexProducer(settings) as producer:
            ids = set(producer.send_batch(whatsapp(300, "wd")))
        # Past the first burst: sends trickle at 80/s.
        wait_for(lambda: len(sim.sends) >= 100, timeout=120, what="100 sends at the channel")
        # In flight for sure: a request reaches the channel only after its ATTEMPTING entry
        # is on the broker, and the held ones are answered (received) only after the kill.
        sim.hold()
        wait_for(lambda: sim.held, until=lambda held: held >= 1, timeout=120,
                 what="a send held at the channel")
        workers["dispatch"].kill()
        sim.release()
        workers["dispatch"] = worker("dispatch", settings)
        wait_final(settings, ids, workers)
        received = Counter(r.opaque for r in sim.sends if r.http_status == 200)

        def settled(history: dict[str, list[dict[str, Any]]]) -> bool:
            # "delivered" is final too: wait for the "read" that follows it.
            return all(applied(history[i])[-1]["effective_status"] == "read"
                       for i in received)

        history = wait_for(lambda: independent_history(settings), until=settled, timeout=60,
                           what="every received message read",
                           describe=lambda history: Counter(
                               applied(history[i])[-1]["effective_status"] for i in received))

    assert max(received.values()) == 1, "a WhatsApp message was sent twice"
    journal = [CODEC.decode(m.value()) for m in read_all(settings, "dispatch-journal")]
    in_doubt = {e["message_id"] for e in journal if e["state"] == "IN_DOUBT_RESOLVED"}
    assert in_doubt, "the kill left attempts in doubt"
    for i in ids:
        events = applied(history[i])
        assert regressions(events) == [], i
        last = events[-1]
        if i in received:
            assert last["effective_status"] == "read", (i, events)
        else:
            assert (last["effective_status"], last["error_code"], last["source"]) == (
                "failed", 30008, "timeout"), (i, events)
            assert i in in_doubt
