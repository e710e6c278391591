"""The status model (pure): one trustworthy status history per message.

Stages and carriers report what they learn as StatusUpdate records, late, twice or out of order.
:func:`apply` folds one update into the message's :class:`MessageStatus` and says what to emit:

* **Monotonic**: statuses have ranks (:data:`RANK`); an update moves the status only to a higher
  rank. A lower or equal one (a late ``sent`` after ``delivered``) is still written to the
  history, with ``effective_status`` saying the status it left unchanged.
* **Duplicates absorbed**: the same status for the same attempt twice (a duplicated receipt, a
  stage re-emitting after a crash) writes nothing.
* **Sequence**: every event written gets the next per-message sequence number (1, 2, …).
* **Deadlines**: when an attempt is ``sent`` a receipt-window timer is booked; if it comes due
  with the attempt still only ``sent``, the message ends ``undelivered`` with 30008 and a reason
  that says no receipt came. An in-doubt attempt (dispatch could not tell whether the carrier got
  it) waits for a receipt until its deadline, then fails with 30008. A deadline comes due as a
  StatusUpdate with ``timer`` set (:func:`deadline_update`); :func:`live` says whether it can
  still act, and once it cannot it never can again (ranks and attempts only grow), so the stage
  drops it from its books instead of firing it for nothing.
* **Resend**: a receipt failing with a code of :data:`RESEND_CODES` on a channel that keeps
  its message for it, for the latest attempt, while resends are left, sends the message again
  (same message id, next attempt, avoiding the connector that failed) instead of ending it.

Ranks: failed/undelivered/canceled end a message, but a carrier's later ``delivered`` (or
``read``) still wins, because it is evidence that outranks both a timeout and a lost race
between a resend and a late receipt; nothing ever moves back to ``sent`` or earlier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.errors import Code
from pipeline.records import (
    FINAL_RANK,
    IN_DOUBT,
    RANK,
    RECEIPT_WINDOW,
    RESENDABLE_CHANNELS,
)

# Receipt error codes worth one more try through another route (REFERENCE-CODES.md: 30003
# unreachable handset "maybe (one resend)", 30008 unknown error "maybe", 30017 congestion "yes,
# later"). Content, number and account problems (30004-30007, 30036 expired) are not: another
# route would refuse or waste them the same way.
RESEND_CODES: frozenset[int] = frozenset({Code.UNREACHABLE, Code.UNKNOWN, Code.CONGESTION})



class UnknownMessage(ValueError):
    """An update for a message with no status yet and no account/channel to start one."""


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """What the status stage remembers per message (stored as :meth:`to_state`)."""

    account_id: str
    channel: str
    status: str | None = None
    sequence: int = 0
    seen: tuple[str, ...] = ()  # "status@attempt" already written
    attempt: int = 0  # latest attempt dispatch reported
    connector: str | None = None
    carrier_message_id: str | None = None
    segments: int | None = None
    trace_id: str | None = None
    resends: int = 0
    resend_message: bytes | None = None  # MessageAccepted as dispatched, while resendable
    callback_url: str | None = None  # the customer's status callback URL, from ingest

    def to_state(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in self.__slots__}
        state["seen"] = list(self.seen)
        state["resend_message"] = (self.resend_message.hex() if self.resend_message is not None
                                   else None)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> MessageStatus | None:
        if state is None:
            return None
        raw = state.get("resend_message")
        return cls(**{**state, "seen": tuple(state.get("seen") or ()),
                      "resend_message": bytes.fromhex(raw) if raw else None})


@dataclass(frozen=True, slots=True)
class Timer:
    """A deadline to book: the update comes back on status-updates at ``due_ms``."""

    due_ms: int
    kind: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Resend:
    """Send the kept MessageAccepted again as ``attempt``, avoiding ``avoid_connector``."""

    message: bytes
    attempt: int
    avoid_connector: str | None


@dataclass(frozen=True, slots=True)
class Result:
    """What one update leads to: history events (``latest`` is set when the status moved)."""

    outcome: str  # applied | history | duplicate | resend | timeout | stale_timer
    state: MessageStatus
    events: list[dict[str, Any]] = field(default_factory=list)
    latest: dict[str, Any] | None = None
    timers: list[Timer] = field(default_factory=list)
    resend: Resend | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    receipt_window_ms: int
    max_resends: int = 1


def apply(state: MessageStatus | None, update: Mapping[str, Any], now_ms: int,
          policy: Policy) -> Result:
    """Fold one StatusUpdate record into the message's status."""
    if state is None:
        if not update.get("account_id") or not update.get("channel"):
            raise UnknownMessage(f"no status yet for {update['message_id']} and the update "
                                 f"({update.get('source')}) does not say whose it is")
        state = MessageStatus(account_id=update["account_id"], channel=update["channel"],
                              trace_id=update.get("trace_id"))
    if update.get("status_callback_url") and state.callback_url is None:
        state = replace(state, callback_url=update["status_callback_url"])
    if update.get("timer"):
        return _deadline(state, update, now_ms)
    status = update.get("status")
    if status not in RANK:
        raise ValueError(f"unknown status {status!r}")
    attempt = update.get("attempt")
    attempt = state.attempt if attempt is None else int(attempt)
    mark = f"{status}@{attempt}"
    if mark in state.seen:
        return Result("duplicate", state)

    if update["source"] == "dispatch" and status == "sent":
        state = replace(state, attempt=max(state.attempt, attempt),
                        connector=update.get("connector"),
                        carrier_message_id=update.get("carrier_message_id"),
                        resend_message=update.get("resend_message") or state.resend_message)
    if update.get("segments") is not None:
        state = replace(state, segments=update["segments"])

    resend = _resend(state, update, status, attempt, policy)
    if resend is not None:
        reason = (f"{update.get('error_reason') or 'receipt failure'}; resending as attempt "
                  f"{resend.attempt} avoiding {resend.avoid_connector}")
        state, event = _event(state, update, status, mark, now_ms, moved=False,
                              error_reason=reason)
        state = replace(state, resends=state.resends + 1, attempt=resend.attempt)
        return Result("resend", state, [event], resend=resend)

    moved = RANK[status] > (RANK[state.status] if state.status else -1)
    state, event = _event(state, update, status, mark, now_ms, moved=moved)
    timers = []
    if status == "sent" and update["source"] == "dispatch":
        timers.append(Timer(int(update["event_time_ms"]) + policy.receipt_window_ms,
                            RECEIPT_WINDOW, attempt))
    if moved and RANK[status] >= FINAL_RANK:
        state = replace(state, resend_message=None)  # nothing left to resend
    return Result("applied" if moved else "history", state, [event],
                  event if moved else None, timers)


def deadline_update(update: Mapping[str, Any], timer: Timer) -> dict[str, Any]:
    """The StatusUpdate by which ``timer``, booked by ``update``, comes due."""
    return {**update, "status": None, "timer": timer.kind, "attempt": timer.attempt,
            "source": "timeout", "resend_message": None}


def live(state: MessageStatus | None, kind: str, attempt: int) -> bool:
    """Whether a deadline of ``kind`` for ``attempt`` would still act on ``state``. Once False it
    stays False: statuses only move up and attempts only grow."""
    if state is None:
        return True
    if kind == RECEIPT_WINDOW:
        return state.status == "sent" and state.attempt == attempt
    if kind == IN_DOUBT:
        rank = RANK[state.status] if state.status else -1
        return rank < RANK["sent"] and state.attempt <= attempt
    return True  # unknown kinds are for apply() to refuse


def _resend(state: MessageStatus, update: Mapping[str, Any], status: str, attempt: int,
            policy: Policy) -> Resend | None:
    if (update["source"] != "receipt" or status not in ("undelivered", "failed")
            or update.get("error_code") not in RESEND_CODES
            or state.channel not in RESENDABLE_CHANNELS or state.resend_message is None
            or state.resends >= policy.max_resends or attempt != state.attempt
            or state.status != "sent"):
        return None
    return Resend(state.resend_message, attempt + 1, update.get("connector") or state.connector)


def _deadline(state: MessageStatus, update: Mapping[str, Any], now_ms: int) -> Result:
    kind, attempt = update["timer"], int(update.get("attempt") or 0)
    if kind == RECEIPT_WINDOW and live(state, kind, attempt):
        reason = "no delivery receipt within the receipt window: delivery unknown"
        status = "undelivered"
    elif kind == IN_DOUBT and live(state, kind, attempt):
        reason = "in doubt after a dispatch restart and no receipt proved the send: unknown"
        status = "failed"
    elif kind in (RECEIPT_WINDOW, IN_DOUBT):
        return Result("stale_timer", state)
    else:
        raise ValueError(f"unknown timer {kind!r}")
    timed = {**update, "status": status, "error_code": Code.UNKNOWN, "error_reason": reason,
             "source": "timeout", "connector": update.get("connector") or state.connector}
    state, event = _event(state, timed, status, f"{status}@{attempt}", now_ms, moved=True)
    state = replace(state, resend_message=None)
    return Result("timeout", state, [event], event)


def _event(state: MessageStatus, update: Mapping[str, Any], status: str, mark: str,
           now_ms: int, *, moved: bool, error_reason: str | None = None
           ) -> tuple[MessageStatus, dict[str, Any]]:
    sequence = state.sequence + 1
    effective = status if moved else (state.status or status)
    event = {
        "message_id": update["message_id"], "account_id": state.account_id,
        "channel": state.channel, "status": status, "sequence": sequence,
        "event_time_ms": int(update["event_time_ms"]), "recorded_at_ms": now_ms,
        "error_code": update.get("error_code"),
        "error_reason": error_reason or update.get("error_reason"),
        "carrier_message_id": update.get("carrier_message_id") or state.carrier_message_id,
        "connector": update.get("connector") or state.connector,
        "segments": state.segments, "trace_id": state.trace_id,
        "effective_status": effective, "attempt": update.get("attempt"),
        "source": update["source"],
    }
    return replace(state, status=effective, sequence=sequence,
                   seen=(*state.seen, mark)), event
