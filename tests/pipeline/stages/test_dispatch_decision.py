"""Dispatch decisions: backoff, submit outcomes, journal dedup, in-doubt resolution."""

import random

import pytest

from connectors.base import ConnectorError, ErrorKind, SubmitResult
from pipeline.errors import ERROR_CODES
from pipeline.stages.dispatch.decision import (
    EXPIRE,
    IN_DOUBT_RESOLVED,
    RETRY_SCHEDULE_S,
    SKIP,
    SUBMIT,
    VALIDITY_REASON,
    GiveUp,
    InDoubtPolicy,
    RetryAt,
    attempting_entry,
    next_retry,
    on_result,
    plan,
    resolve_in_doubt,
    should_submit,
)

NOW = 1_700_000_000_000
HOUR = 3_600_000
JOURNAL_FIELDS = {"message_id", "state", "attempt", "connector", "route", "carrier_message_id",
                  "error_code", "error_reason", "retryable", "segments", "at_ms", "trace_id"}


def _message(attempt: int = 0, expires_at_ms: int = NOW + 10 * HOUR, channel: str = "sms"):
    return {"message_id": "m-1", "account_id": "acct-1", "channel": channel,
            "sender": "+15550000000", "recipient": "+447700900123", "body": "code 1234",
            "segments": 2, "expires_at_ms": expires_at_ms, "attempt": attempt,
            "trace_id": "t-1"}


def _journal(state: str, attempt: int = 0, retryable: bool = False):
    entry = attempting_entry(_message(attempt), "smsc-a", NOW)
    entry.update(state=state, retryable=retryable)
    return entry


def test_default_schedule_matches_retry_topics():
    """The default schedule is 5 s, 30 s, 2 min, 10 min, 30 min."""
    assert RETRY_SCHEDULE_S == (5, 30, 120, 600, 1800)


def test_backoff_grows_and_stays_within_jitter():
    """Each attempt waits its schedule step ±20 %, and the steps grow."""
    rng = random.Random(7)
    for attempt, delay_s in enumerate(RETRY_SCHEDULE_S):
        for _ in range(200):
            step = next_retry(attempt, NOW, NOW + 10 * HOUR, rng)
            assert isinstance(step, RetryAt)
            assert step.attempt == attempt + 1 and step.delay_s == delay_s
            assert delay_s * 800 <= step.due_at_ms - NOW <= delay_s * 1200
    assert list(RETRY_SCHEDULE_S) == sorted(RETRY_SCHEDULE_S)


def test_jitter_spreads_retries():
    """Jitter gives different due times for messages failing together."""
    rng = random.Random(1)
    dues = {next_retry(0, NOW, NOW + HOUR, rng).due_at_ms for _ in range(50)}
    assert len(dues) > 40


def test_custom_schedule_without_jitter_is_exact():
    """A configured schedule with jitter 0 gives exact delays."""
    step = next_retry(1, NOW, NOW + HOUR, random.Random(0), schedule=(1, 2), jitter=0)
    assert step == RetryAt(NOW + 2_000, 2, 2)


def test_retry_after_hint_lengthens_wait():
    """A carrier's Retry-After beyond the schedule step is honoured."""
    step = next_retry(0, NOW, NOW + HOUR, random.Random(0), jitter=0, retry_after_s=60)
    assert isinstance(step, RetryAt) and step.due_at_ms == NOW + 60_000


def test_no_retry_at_or_past_validity_end():
    """A retry due at or after expires_at_ms gives up now with 30036."""
    step = next_retry(0, NOW, NOW + 5_000, random.Random(0), jitter=0)
    assert step == GiveUp(30036, VALIDITY_REASON)
    assert isinstance(next_retry(0, NOW, NOW + 5_001, random.Random(0), jitter=0), RetryAt)


def test_gives_up_after_schedule_with_errors_code():
    """After the last step the message gives up with the error's own code."""
    step = next_retry(len(RETRY_SCHEDULE_S), NOW, NOW + 10 * HOUR, random.Random(0), code=30022)
    assert isinstance(step, GiveUp) and step.code == 30022


def test_success_journals_submitted_and_emits_sent():
    """An accepted submit writes SUBMITTED with the carrier id and emits 'sent'."""
    result = SubmitResult("a1", NOW - 5, segments=2)
    out = on_result(_message(), result, NOW, random.Random(0), connector="smsc-a")
    assert set(out.journal) == JOURNAL_FIELDS
    assert out.journal["state"] == "SUBMITTED" and out.journal["carrier_message_id"] == "a1"
    assert out.journal["connector"] == "smsc-a" and out.journal["at_ms"] == NOW
    assert out.status.status == "sent" and out.status.carrier_message_id == "a1"
    assert out.status.event_time_ms == NOW - 5
    assert out.retry is None


def test_permanent_error_fails_without_retry():
    """A permanent error writes final FAILED with its code and emits 'failed'."""
    error = ConnectorError(ErrorKind.INVALID_DESTINATION, "ESME_RINVDSTADR")
    out = on_result(_message(), error, NOW, random.Random(0), connector="smsc-a")
    assert out.journal["state"] == "FAILED" and out.journal["retryable"] is False
    assert out.journal["error_code"] == 21211 and out.journal["error_reason"] == "ESME_RINVDSTADR"
    assert out.status.status == "failed" and out.status.error_code == 21211
    assert out.retry is None
    assert out.status.error_code in ERROR_CODES


def test_retryable_error_schedules_next_attempt():
    """A retryable error writes FAILED (retryable), emits nothing and schedules attempt+1."""
    error = ConnectorError(ErrorKind.THROTTLED, "ESME_RTHROTTLED")
    out = on_result(_message(attempt=1), error, NOW, random.Random(0), connector="smsc-a")
    assert out.journal["state"] == "FAILED" and out.journal["retryable"] is True
    assert out.journal["error_code"] == 30022 and out.journal["attempt"] == 1
    assert out.status is None
    assert out.retry.attempt == 2 and out.retry.delay_s == 30


def test_retryable_error_past_validity_fails_with_30036():
    """A retryable error whose retry would land after expiry fails with 30036."""
    error = ConnectorError(ErrorKind.TIMEOUT, "no submit_sm_resp")
    out = on_result(_message(expires_at_ms=NOW + 1_000), error, NOW, random.Random(0),
                    connector="smsc-a")
    assert out.retry is None and out.journal["retryable"] is False
    assert out.journal["error_code"] == 30036 and out.status.error_code == 30036
    assert VALIDITY_REASON in out.status.error_reason


def test_retryable_error_on_last_attempt_fails_with_its_code():
    """A retryable error after the last schedule step fails with the error's code."""
    error = ConnectorError(ErrorKind.SERVER_ERROR, "HTTP 500", channel="whatsapp")
    message = _message(attempt=len(RETRY_SCHEDULE_S), channel="whatsapp")
    out = on_result(message, error, NOW, random.Random(0), connector="whatsapp")
    assert out.retry is None and out.status.status == "failed"
    assert out.journal["error_code"] == 30500 and out.journal["retryable"] is False


def test_unexpected_result_type_is_refused():
    """Anything but a SubmitResult or ConnectorError is a programming error."""
    with pytest.raises(TypeError):
        on_result(_message(), RuntimeError("boom"), NOW, random.Random(0), connector="smsc-a")


def test_no_journal_entry_submits():
    """A message the journal has never seen is submitted."""
    assert should_submit(None, _message())[0] is True


def test_duplicate_release_after_submitted_is_skipped():
    """A message already SUBMITTED is not sent again, whatever its attempt."""
    submitted = _journal("SUBMITTED")
    assert should_submit(submitted, _message())[0] is False
    assert should_submit(submitted, _message(attempt=3))[0] is False


def test_final_failure_is_skipped():
    """A message that failed for good is not sent again."""
    assert should_submit(_journal("FAILED", retryable=False), _message(attempt=1))[0] is False


def test_retry_after_retryable_failure_submits():
    """A later attempt after a retryable failure is submitted."""
    ok, reason = should_submit(_journal("FAILED", retryable=True), _message(attempt=1))
    assert ok is True and "retry" in reason


def test_duplicate_release_of_failed_attempt_is_skipped():
    """The same attempt released twice after a retryable failure goes out once."""
    assert should_submit(_journal("FAILED", 1, retryable=True), _message(attempt=1))[0] is False


def test_open_attempt_is_not_submitted_before_resolution():
    """An ATTEMPTING entry blocks submits until resolve_in_doubt decides it."""
    ok, reason = should_submit(_journal("ATTEMPTING"), _message())
    assert ok is False and "in doubt" in reason


def test_entry_of_another_message_is_refused():
    """Comparing against another message's journal is a wiring error."""
    with pytest.raises(ValueError):
        should_submit(_journal("SUBMITTED"), {**_message(), "message_id": "m-2"})


def test_in_doubt_sms_is_resent():
    """An SMS left in ATTEMPTING is resent: the resolution lets the next release through."""
    decision = resolve_in_doubt(_journal("ATTEMPTING", 2), "sms", NOW + 10)
    assert decision.policy is InDoubtPolicy.RESEND and decision.status is None
    assert decision.journal["state"] == "IN_DOUBT_RESOLVED"
    assert decision.journal["attempt"] == 2 and decision.journal["at_ms"] == NOW + 10
    assert set(decision.journal) == JOURNAL_FIELDS
    assert should_submit(decision.journal, _message(attempt=2))[0] is True


def test_in_doubt_whatsapp_awaits_receipt():
    """A WhatsApp send left in ATTEMPTING waits for a receipt naming it, and is not resent."""
    decision = resolve_in_doubt(_journal("ATTEMPTING"), "whatsapp", NOW,
                                reconcile_window_ms=60_000)
    assert decision.policy is InDoubtPolicy.RECONCILE_BY_RECEIPT
    assert decision.await_receipt_until_ms == NOW + 60_000 and decision.status is None
    assert should_submit(decision.journal, _message(channel="whatsapp"))[0] is False


def test_in_doubt_messenger_is_resent():
    """Messenger cannot be reconciled from receipts, so it is resent like SMS."""
    assert resolve_in_doubt(_journal("ATTEMPTING"), "messenger", NOW).policy is (
        InDoubtPolicy.RESEND)


def test_in_doubt_fail_unknown_emits_failed_30008():
    """FAIL_UNKNOWN (by override, or for an unlisted channel) fails the message with 30008."""
    policies = {"sms": InDoubtPolicy.FAIL_UNKNOWN}
    decision = resolve_in_doubt(_journal("ATTEMPTING"), "sms", NOW, policies=policies)
    assert decision.status.status == "failed" and decision.status.error_code == 30008
    assert decision.journal["error_code"] == 30008
    assert should_submit(decision.journal, _message(attempt=1))[0] is False
    assert resolve_in_doubt(_journal("ATTEMPTING"), "rcs", NOW).policy is (
        InDoubtPolicy.FAIL_UNKNOWN)


def test_only_attempting_entries_are_in_doubt():
    """Resolving a SUBMITTED entry is a wiring error."""
    with pytest.raises(ValueError):
        resolve_in_doubt(_journal("SUBMITTED"), "sms", NOW)


def _plan(latest, message=None, resend=False):  # type: ignore[no-untyped-def]
    return plan(latest, message or _message(), NOW, resend=resend, reconcile_window_ms=HOUR)


def test_plan_submits_a_first_attempt_and_expires_a_late_one():
    """No journal entry: submit; the same message past its validity: expire, never submit."""
    assert _plan(None).action == SUBMIT and _plan(None).in_doubt is None
    assert _plan(None, _message(expires_at_ms=NOW)).action == EXPIRE


def test_plan_skips_a_finished_attempt_and_says_its_outcome_again():
    """A release of an attempt already submitted is skipped, with that entry to re-announce."""
    entry = _journal("SUBMITTED")
    planned = _plan(entry)
    assert (planned.action, planned.reannounce) == (SKIP, entry)
    assert "already submitted" in planned.reason


def test_plan_resolves_an_in_doubt_attempt_before_deciding():
    """An ATTEMPTING entry (a dead worker's) is resolved first: SMS is resent (submit after
    the resolution); WhatsApp waits for a receipt (skip, re-announcing the resolution)."""
    sms = _plan(_journal("ATTEMPTING"))
    assert sms.action == SUBMIT and sms.in_doubt is not None
    assert sms.in_doubt.policy is InDoubtPolicy.RESEND
    whatsapp = _plan(_journal("ATTEMPTING"), _message(channel="whatsapp"))
    assert whatsapp.action == SKIP and whatsapp.in_doubt is not None
    assert whatsapp.in_doubt.await_receipt_until_ms == NOW + HOUR
    assert whatsapp.reannounce is not None
    assert whatsapp.reannounce["state"] == IN_DOUBT_RESOLVED
