"""`telex trace`: one message's story, told from the real pipeline's records (end to end) and
line by line from single records (pure)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from connectors.simulators.smsc_model import Faults, SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from connectors.smpp.pdu import Status
from pipeline.headers import H_DUE, H_ERROR_CLASS, H_ERROR_MESSAGE, H_STAGE, H_TARGET, H_TIMER_DUE
from pipeline.ops.display import ms_to_text
from pipeline.ops.trace import describe
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.telex import Worker
from tests.fixtures.waiting import until_sync, wait_for
from tests.pipeline.test_dlq_cli import telex

SENDER = "+14155550100"  # 1 segment/s, burst 1: a second message waits about a second
STAGES = ("ingest", "ratelimit", "scheduler", "dispatch", "reconcile", "status")


def configured(settings: Settings, tmp_path: Path, smsc: ThreadedSmsc) -> Settings:
    (tmp_path / "limits.json").write_text(json.dumps(
        {"senders": {f"sms:{SENDER}": {"rate": 1, "burst": 1}}}))
    (tmp_path / "carriers.json").write_text(json.dumps({
        "connectors": [{"name": "smsc-a", "type": "smpp", "host": "127.0.0.1",
                        "port": smsc.port, "system_id": "telex", "password": "secret",
                        "window": 10, "response_timeout_s": 5,
                        # Throttling on purpose here: it must not open the circuit.
                        "breaker": {"failure_threshold": 1000}}],
        "routes": [{"channel": "sms", "prefix": "", "connectors": ["smsc-a"]}]}))
    return settings.model_copy(update={
        "limits_file": str(tmp_path / "limits.json"),
        "carriers_file": str(tmp_path / "carriers.json"),
        "retry_schedule_s": (1, 1, 1, 1, 1, 1, 1, 1)})


def trace_events(settings: Settings, message_id: str) -> list[dict]:
    """The events of `telex trace <message_id> --json` (which must exit 0)."""
    run = telex(settings, "trace", message_id, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["events"]


def topics_and_whats(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["topic"], e["what"]) for e in events]


def test_trace_tells_a_deferred_retried_then_delivered_message_in_order(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
):
    """The second message of a 1/s sender is deferred by its sender bucket, throttled by the
    SMSC on its first attempt, retried through a delay tier, submitted, and delivered (the
    SMSC's receipt): trace shows these steps in this order, ending with 'delivered'."""
    with ThreadedSmsc(SmscConfig(seed=5), Faults(throttle_rate=1.0)) as smsc:
        settings = configured(topics, tmp_path, smsc)
        for stage in STAGES:
            worker(stage, settings)
        with TelexProducer(settings) as producer:
            _, traced = producer.send_batch([OutboundMessage(
                account_id="acct-1", channel="sms", sender=SENDER,
                recipient=f"+1415201000{i}", body=f"code {i}", idempotency_key=f"trace-{i}",
            ) for i in range(2)])
        until_sync(lambda: any(s.destination_addr == "14152010001"
                               and s.status == Status.ESME_RTHROTTLED for s in smsc.submits),
                   120, "the traced message to reach the SMSC (throttled)", interval_s=0.05)
        smsc.call(lambda sim: setattr(sim.faults, "throttle_rate", 0.0))

        def delivered(events: list[dict]) -> bool:
            statuses = [e["what"] for e in events if e["topic"] == "delivery-status"]
            return bool(statuses) and statuses[-1].startswith("status delivered")

        events = wait_for(lambda: trace_events(settings, traced), until=delivered, timeout=120,
                          what="the traced message delivered", interval_s=0.5,
                          describe=topics_and_whats)

    def first(topic: str, starts: str, contains: str = "") -> int:
        for i, e in enumerate(events):
            if e["topic"] == topic and e["what"].startswith(starts) and contains in e["what"]:
                return i
        raise AssertionError(f"no {topic} event {starts!r}: "
                             f"{[(e['topic'], e['what']) for e in events]}")

    story = [
        first("message-requested", "requested: sms for account acct-1"),
        first("message-accepted", "accepted: 1 segment(s)"),
        first("ratelimit-deferrals", "deferred by sender bucket until"),
        first("dispatch-ready", "released to dispatch, attempt 0"),
        first("dispatch-journal", "ATTEMPTING via smsc-a attempt 0"),
        first("dispatch-journal", "FAILED via smsc-a attempt 0", "30022"),
        next(i for i, e in enumerate(events)
             if e["topic"].startswith("delay-t") and "(retry, attempt 1)" in e["what"]),
        first("dispatch-ready", "released to dispatch, attempt 1"),
        first("dispatch-journal", "SUBMITTED via smsc-a attempt 1"),
        first("carrier-receipts", "status sent from dispatch via smsc-a"),
        first("delivery-status", "status delivered seq"),
    ]
    assert story == sorted(story), [(events[i]["topic"], events[i]["what"]) for i in story]
    times = [e["at_ms"] for e in events]
    assert times == sorted(times)
    assert "(will retry)" in events[story[5]]["what"]
    assert any(e["what"].startswith("receipt delivered (DELIVRD)") for e in events)
    # The deferral's explanation and its delay-tier record are written together, in either
    # order: both come after acceptance and before the release.
    assert any(e["topic"].startswith("delay-t") and "for dispatch-ready" in e["what"]
               for e in events[story[1]:story[3]]), "the deferral waits in a delay tier"

    human = telex(settings, "trace", traced)
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0] == f"message {traced}: {len(events)} records"
    assert "deferred by sender bucket until" in human.stdout
    assert "4155550100" not in human.stdout and "code 1" not in human.stdout


def test_trace_shows_the_pending_receipt_window_of_a_sent_message(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
):
    """A message sent but never receipted (the SMSC loses every receipt) waits for its
    receipt window: trace shows that deadline, held as a timer by the status stage, with the
    due time the window gives (sent time + window)."""
    with ThreadedSmsc(SmscConfig(seed=6), Faults(lost_receipt_rate=1.0)) as smsc:
        settings = configured(topics, tmp_path, smsc).model_copy(
            update={"receipt_window_s": 3600})
        for stage in STAGES:
            worker(stage, settings)
        with TelexProducer(settings) as producer:
            [traced] = producer.send_batch([OutboundMessage(
                account_id="acct-1", channel="sms", sender=SENDER, recipient="+14152019999",
                body="code", idempotency_key="trace-window")])

        def pending_and_sent(events: list[dict]) -> tuple[list[dict], list[dict]]:
            pending = [e for e in events if e["what"].startswith("pending deadline")]
            sent = [e for e in events
                    if e["topic"] == "delivery-status" and e["what"].startswith("status sent")]
            return pending, sent

        events = wait_for(
            lambda: json.loads(telex(settings, "trace", traced, "--json").stdout)["events"],
            until=lambda events: all(pending_and_sent(events)), timeout=120,
            what="a pending receipt window and the sent status", interval_s=0.5,
            describe=topics_and_whats)
        pending, sent = pending_and_sent(events)

    [window] = pending
    assert window["topic"] == "status-status-changelog"
    assert window["what"].startswith("pending deadline receipt_window due ")
    assert window["what"].endswith("(attempt 0), held by the status stage")
    due = window["what"].removeprefix("pending deadline receipt_window due ").split(" ")[0]
    sent_at = sent[0]["record"]["event_time_ms"]
    assert due == ms_to_text(sent_at + 3_600_000)


def test_trace_of_an_unknown_message_exits_1(topics: Settings):
    """Nothing about the id on any topic: exit 1 and a message saying so."""
    run = telex(topics, "trace", "TXdoesnotexist")
    assert run.returncode == 1 and "nothing found for TXdoesnotexist" in run.stderr
    assert json.loads(telex(topics, "trace", "TXdoesnotexist", "--json").stdout)["events"] == []


def test_describe_names_what_each_record_says():
    """One line per record kind, with the bucket, attempt, connector, codes and due times."""
    assert describe("ratelimit-deferrals", "ratelimit_deferral", {
        "bucket": "sender:sms:+14155550100", "expected_release_ms": 0,
        "reason": "sender bucket sms:+14155550100: 1 segments booked ahead"},
        {}) == ("deferred by sender bucket until 1970-01-01T00:00:00.000Z (sender bucket "
                "sms:<phone …00>: 1 segments booked ahead)")
    assert describe("dispatch-journal", "dispatch_journal_entry", {
        "state": "FAILED", "connector": "smsc-a", "attempt": 0, "error_code": 30022,
        "error_reason": "ESME_RTHROTTLED", "retryable": True}, {}) == (
        "FAILED via smsc-a attempt 0: 30022 ESME_RTHROTTLED (will retry)")
    assert describe("dispatch-journal", "dispatch_journal_entry", {
        "state": "SUBMITTED", "connector": "smsc-a", "attempt": 1,
        "carrier_message_id": "a1"}, {}) == "SUBMITTED via smsc-a attempt 1, carrier id a1"
    assert describe("delay-t4", "message_accepted", {"attempt": 2},
                    {H_DUE: "1000", H_TARGET: "dispatch-ready"}) == (
        "waiting in delay-t4 until 1970-01-01T00:00:01.000Z for dispatch-ready "
        "(retry, attempt 2)")
    assert describe("delay-t9", "status_update", {"timer": "receipt_window", "attempt": 1},
                    {H_DUE: "1000", H_TARGET: "status-updates"}) == (
        "waiting in delay-t9 until 1970-01-01T00:00:01.000Z for status-updates "
        "(receipt_window deadline, attempt 1)")
    assert describe("delivery-status", "delivery_status", {
        "status": "delivered", "sequence": 4, "connector": "smsc-a"}, {}) == (
        "status delivered seq 4 via smsc-a")
    assert describe("status-updates", "status_update", {
        "status": None, "timer": "receipt_window", "attempt": 1}, {}) == (
        "deadline receipt_window due (attempt 1)")
    assert describe("status-updates", "status_update", {
        "status": None, "timer": "in_doubt", "attempt": 1}, {H_TIMER_DUE: "1000"}) == (
        "deadline in_doubt booked for 1970-01-01T00:00:01.000Z (attempt 1)")
    assert describe("dlq-dispatch", None, None, {
        H_STAGE: "dispatch", H_ERROR_CLASS: "NoRouteError",
        H_ERROR_MESSAGE: "no route for sms recipient '+14155550123'",
        "telex.replay.count": "1"}) == (
        "dead-lettered by dispatch: NoRouteError: no route for sms recipient '<phone …23>' "
        "(after 1 replay(s))")
    assert describe("dispatch-ready", None, None, {}, "CodecError: truncated") == (
        "undecodable record: CodecError: truncated")


def test_callback_attempts_read_as_one_line_each():
    """A retry names the next attempt; a give-up its reason; a delivery just the answer."""
    base = {"sequence": 2, "status": "sent", "host": "hooks.client.example", "attempt": 1}
    assert describe("callback-attempts", "callback_attempt", {
        **base, "answer": "5xx", "verdict": "retry", "reason": "HTTP 503",
        "next_attempt_at_ms": 0}, {}) == (
        "callback 2 (sent) to hooks.client.example, attempt 1: 5xx -> retry, next attempt "
        "1970-01-01T00:00:00.000Z")
    assert describe("callback-attempts", "callback_attempt", {
        **base, "answer": "4xx", "verdict": "give_up",
        "reason": "HTTP 404: the endpoint refused the request", "next_attempt_at_ms": None},
        {}) == ("callback 2 (sent) to hooks.client.example, attempt 1: 4xx -> give_up "
                "(HTTP 404: the endpoint refused the request)")
    assert describe("callback-attempts", "callback_attempt", {
        **base, "answer": "2xx", "verdict": "delivered", "reason": "HTTP 200",
        "next_attempt_at_ms": None}, {}) == (
        "callback 2 (sent) to hooks.client.example, attempt 1: 2xx -> delivered")
