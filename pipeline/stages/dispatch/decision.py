"""Dispatch decisions: retry backoff, submit outcomes, journal dedup, in-doubt resolution.

Pure functions over plain records (MessageAccepted and DispatchJournalEntry as dicts, field
names from ``schemas/``); no Kafka, no asyncio, and time always arrives as ``now_ms``. The
dispatch stage feeds them and writes what they return:

1. :func:`should_submit` against the journal's latest entry for the message id;
2. write :func:`attempting_entry`, then call the connector;
3. :func:`on_result` says what to journal, which status to emit and whether to retry;
4. at start-up, every entry left in ATTEMPTING goes through :func:`resolve_in_doubt`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from connectors.base import ConnectorError, SubmitResult
from pipeline.errors import Code

# One delay per retry topic (dispatch-retry-{delay}s): the schedule *is* the topic catalogue.
RETRY_SCHEDULE_S: tuple[int, ...] = (5, 30, 120, 600, 1800)  # TELEX_RETRY_SCHEDULE_S

VALIDITY_REASON = "validity would end before the retry"

ATTEMPTING = "ATTEMPTING"
SUBMITTED = "SUBMITTED"
FAILED = "FAILED"
IN_DOUBT_RESOLVED = "IN_DOUBT_RESOLVED"


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Send the message back for ``attempt`` at ``due_at_ms``; ``delay_s`` names the topic."""

    due_at_ms: int
    attempt: int
    delay_s: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """No further attempt: the message fails with ``code``."""

    code: int
    reason: str


def next_retry(
    attempt: int,
    now_ms: int,
    expires_at_ms: int,
    rng: random.Random,
    schedule: Sequence[int] = RETRY_SCHEDULE_S,
    jitter: float = 0.2,
    *,
    code: int = Code.UNKNOWN,
    reason: str = "retries exhausted",
    retry_after_s: float | None = None,
) -> RetryAt | GiveUp:
    """When attempt ``attempt`` (0-based, the one that just failed) may be retried.

    The wait is ``schedule[attempt]`` ± ``jitter`` (uniform), so a carrier outage does not turn
    into synchronised retry waves; a carrier's ``retry_after_s`` hint lengthens it, never
    shortens it. After the last step the message gives up with the error's own ``code``; a retry
    that would be due at or after ``expires_at_ms`` gives up with 30036 now rather than being
    sent at a time the client no longer wants it.
    """
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if attempt >= len(schedule):
        return GiveUp(code, f"{reason} after {attempt + 1} attempts")
    delay_s = schedule[attempt]
    wait_ms = delay_s * 1000 * (1 + rng.uniform(-jitter, jitter))
    if retry_after_s is not None:
        wait_ms = max(wait_ms, retry_after_s * 1000)
    due_at_ms = now_ms + round(wait_ms)
    if due_at_ms >= expires_at_ms:
        return GiveUp(Code.EXPIRED, VALIDITY_REASON)
    return RetryAt(due_at_ms, attempt + 1, delay_s)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A DeliveryStatus to emit (sequence and account are the runtime's to fill in)."""

    status: str  # "sent" or "failed"
    event_time_ms: int
    error_code: int | None = None
    error_reason: str | None = None
    carrier_message_id: str | None = None
    connector: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one submit leads to: a journal entry, maybe a status, maybe a retry."""

    journal: Mapping[str, Any]
    status: StatusUpdate | None
    retry: RetryAt | None


def _entry(
    message: Mapping[str, Any], state: str, connector: str, now_ms: int, **fields: Any
) -> dict[str, Any]:
    """A DispatchJournalEntry record; ``fields`` override the defaults."""
    entry = {
        "message_id": message["message_id"], "state": state,
        "attempt": message.get("attempt", 0), "connector": connector, "route": None,
        "carrier_message_id": None, "error_code": None, "error_reason": None,
        "retryable": False, "segments": message.get("segments", 1), "at_ms": now_ms,
        "trace_id": message.get("trace_id"),
    }
    entry.update(fields)
    return entry


def attempting_entry(
    message: Mapping[str, Any], connector: str, now_ms: int, route: str | None = None
) -> dict[str, Any]:
    """The ATTEMPTING entry to journal (and flush) before calling the connector."""
    return _entry(message, ATTEMPTING, connector, now_ms, route=route)


def on_result(
    message: Mapping[str, Any],
    result_or_error: SubmitResult | ConnectorError,
    now_ms: int,
    rng: random.Random,
    *,
    connector: str,
    route: str | None = None,
    schedule: Sequence[int] = RETRY_SCHEDULE_S,
    jitter: float = 0.2,
) -> Outcome:
    """Outcome of one submit of ``message`` through ``connector``.

    Accepted → SUBMITTED and "sent". Permanent error → FAILED and "failed" with the error's
    code. Retryable error → FAILED (retryable) and a retry, with no status (the message is still
    on its way); if :func:`next_retry` gives up, FAILED (final) and "failed" with its code.
    """
    if isinstance(result_or_error, SubmitResult):
        carrier_id = result_or_error.carrier_message_id
        entry = _entry(message, SUBMITTED, connector, now_ms, route=route,
                       carrier_message_id=carrier_id, segments=result_or_error.segments)
        status = StatusUpdate("sent", result_or_error.submitted_at_ms,
                              carrier_message_id=carrier_id, connector=connector)
        return Outcome(entry, status, None)
    if not isinstance(result_or_error, ConnectorError):
        raise TypeError(f"expected SubmitResult or ConnectorError, got {result_or_error!r}")
    error = result_or_error
    code, reason = error.code, error.carrier_error
    if error.retryable:
        step = next_retry(int(message.get("attempt", 0)), now_ms, int(message["expires_at_ms"]),
                          rng, schedule, jitter, code=code, retry_after_s=error.retry_after_s)
        if isinstance(step, RetryAt):
            entry = _entry(message, FAILED, connector, now_ms, route=route, error_code=code,
                           error_reason=reason, retryable=True)
            return Outcome(entry, None, step)
        code, reason = step.code, f"{step.reason} (last error: {reason})"
    entry = _entry(message, FAILED, connector, now_ms, route=route, error_code=code,
                   error_reason=reason, retryable=False)
    status = StatusUpdate("failed", now_ms, error_code=code, error_reason=reason,
                          connector=connector)
    return Outcome(entry, status, None)


def should_submit(
    journal_latest: Mapping[str, Any] | None, message: Mapping[str, Any], *,
    resend: bool = False,
) -> tuple[bool, str]:
    """Whether this release of ``message`` should reach a carrier, and why.

    Kafka redelivers after a crash or rebalance, so the same attempt can arrive twice; the
    journal's latest entry for the message id is the truth. Only a release with a higher
    attempt than a retryable failure, or one an in-doubt resend cleared, goes out again; and a
    ``resend`` the status stage ordered after a failed receipt, with a higher attempt than the
    one submitted.
    """
    if journal_latest is None:
        return True, "first attempt"
    if journal_latest["message_id"] != message["message_id"]:
        raise ValueError("journal entry belongs to another message")
    state, done = journal_latest["state"], journal_latest["attempt"]
    attempt = message.get("attempt", 0)
    if state == SUBMITTED:
        if resend and attempt > done:
            return True, f"resend after a failed receipt for attempt {done}"
        return False, f"already submitted in attempt {done}"
    if state == ATTEMPTING:
        return False, f"attempt {done} is in doubt; resolve it first"
    if state == FAILED and not journal_latest.get("retryable", False):
        return False, f"already failed for good in attempt {done}"
    if state == FAILED:
        if attempt > done:
            return True, f"retry after failed attempt {done}"
        return False, f"duplicate release of failed attempt {done}"
    if state == IN_DOUBT_RESOLVED:
        if journal_latest.get("retryable", False) and attempt >= done:
            return True, f"resend after in-doubt attempt {done}"
        return False, f"in-doubt attempt {done} resolved without resend"
    raise ValueError(f"unknown journal state {state!r}")


class InDoubtPolicy(StrEnum):
    """What to do with an attempt whose carrier call may or may not have happened."""

    RESEND = "resend"
    FAIL_UNKNOWN = "fail_unknown"
    RECONCILE_BY_RECEIPT = "reconcile_by_receipt"


# Why each default:
# * sms: SMSCs do not deduplicate submit_sm, and receipts name only the carrier's id, which the
#   crash lost, so there is nothing to reconcile with. Between a duplicate and a lost message we
#   take the duplicate: most A2P SMS are one-time codes and alerts, where a repeat is harmless
#   (same code) and a loss locks a user out. The risk is one duplicate per crash, inside the
#   milliseconds between ATTEMPTING and SUBMITTED; like any release, the resend is checked
#   against expires_at_ms before it goes out.
# * whatsapp: the Cloud API does not deduplicate sends, so a blind resend would show twice in
#   the chat; but it echoes biz_opaque_callback_data (our message id) in status webhooks, so a
#   receipt proves whether the send landed. Wait for one until the deadline.
# * messenger: no deduplication and our receipts do not name the message: same trade as SMS.
# Any other channel: fail with 30008, claiming neither delivery nor sending twice.
DEFAULT_IN_DOUBT_POLICY: Mapping[str, InDoubtPolicy] = {
    "sms": InDoubtPolicy.RESEND,
    "whatsapp": InDoubtPolicy.RECONCILE_BY_RECEIPT,
    "messenger": InDoubtPolicy.RESEND,
}

# A WhatsApp "sent" webhook normally follows within seconds; 15 minutes covers webhook retries.
RECONCILE_WINDOW_MS = 15 * 60_000


@dataclass(frozen=True, slots=True)
class Decision:
    """Resolution of one in-doubt attempt.

    ``journal`` is the IN_DOUBT_RESOLVED entry to write: ``retryable`` True lets the next
    release through :func:`should_submit` (RESEND). ``status`` is set for FAIL_UNKNOWN.
    ``await_receipt_until_ms`` is set for RECONCILE_BY_RECEIPT: the reconcile stage closes the
    message from a receipt naming it, or fails it with 30008 when none came by then.
    """

    policy: InDoubtPolicy
    journal: Mapping[str, Any]
    status: StatusUpdate | None = None
    await_receipt_until_ms: int | None = None


def resolve_in_doubt(
    journal_entry: Mapping[str, Any],
    channel: str,
    now_ms: int,
    policies: Mapping[str, InDoubtPolicy] = DEFAULT_IN_DOUBT_POLICY,
    reconcile_window_ms: int = RECONCILE_WINDOW_MS,
) -> Decision:
    """Decide an ATTEMPTING entry found at start-up (the process died mid-submit)."""
    if journal_entry["state"] != ATTEMPTING:
        raise ValueError(f"only ATTEMPTING entries are in doubt, got {journal_entry['state']}")
    policy = policies.get(channel, InDoubtPolicy.FAIL_UNKNOWN)
    connector = journal_entry["connector"]
    base = dict(journal_entry, state=IN_DOUBT_RESOLVED, at_ms=now_ms,
                carrier_message_id=None, error_code=None, retryable=False)
    if policy is InDoubtPolicy.RESEND:
        base.update(retryable=True, error_reason="in doubt after restart: resend")
        return Decision(policy, base)
    if policy is InDoubtPolicy.RECONCILE_BY_RECEIPT:
        until = now_ms + reconcile_window_ms
        base.update(error_reason=f"in doubt after restart: awaiting a receipt until {until}")
        return Decision(policy, base, await_receipt_until_ms=until)
    reason = "in doubt after restart: delivery state unknown"
    base.update(error_code=Code.UNKNOWN, error_reason=reason)
    status = StatusUpdate("failed", now_ms, error_code=Code.UNKNOWN, error_reason=reason,
                          connector=connector)
    return Decision(policy, base, status)


SUBMIT = "submit"
SKIP = "skip"
EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class Plan:
    """What dispatch does with one released record, decided before any I/O; the worker
    carries it out (journal, statuses, deadline, submit)."""

    action: str  # SUBMIT | SKIP | EXPIRE
    # A dead worker's attempt at this message, resolved first: journal it, report its status,
    # book its receipt deadline (see :func:`resolve_in_doubt`).
    in_doubt: Decision | None = None
    reason: str = ""  # SKIP: why nothing is sent
    # SKIP: the journal's entry for an attempt already finished, to say its outcome again (a
    # crash can land the entry without the status written beside it).
    reannounce: Mapping[str, Any] | None = None


def plan(latest: Mapping[str, Any] | None, message: Mapping[str, Any], now_ms: int, *,
         resend: bool, reconcile_window_ms: int,
         policies: Mapping[str, InDoubtPolicy] = DEFAULT_IN_DOUBT_POLICY) -> Plan:
    """The plan for ``message`` given the journal's ``latest`` entry for it. ``resend``: a
    resend ordered after a failed receipt (through another connector when there is one)."""
    in_doubt = None
    if latest is not None and latest["state"] == ATTEMPTING:
        in_doubt = resolve_in_doubt(latest, message["channel"], now_ms, policies,
                                    reconcile_window_ms)
        latest = in_doubt.journal
    submit, reason = should_submit(latest, message, resend=resend)
    if submit and now_ms >= int(message["expires_at_ms"]):
        # Never hand a carrier a message whose validity has ended (retries, in-doubt resends
        # and late releases included).
        return Plan(EXPIRE, in_doubt)
    if not submit:
        return Plan(SKIP, in_doubt, reason, latest)
    return Plan(SUBMIT, in_doubt)
