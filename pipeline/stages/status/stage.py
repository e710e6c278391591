"""Status stage: the one owner of each message's status, sequence numbers and deadlines.

Input ``status-updates`` (StatusUpdate, keyed by message id) from every stage that learns
something: ingest (accepted/scheduled/failed), rate limit (failed), dispatch (sent/failed, and
in-doubt deadlines headed :data:`H_TIMER_DUE`), reconcile (receipts). Decisions are in
:mod:`pipeline.stages.status.decision`; per-message state is a disk store of the batch runtime
with its compacted changelog topic.

**Deadlines are timers of the runtime** (punctuation): the message's entry keeps its pending
deadlines (field ``timers``: due time and the deadline StatusUpdate) and the store's timer at
the earliest. When it comes due the deadline goes through :func:`status_decision.apply`
exactly as a deadline record on ``status-updates`` would, with the same outputs. Deadlines that
can no longer act (:func:`status_decision.live`: a receipt came) are dropped from the entry in
the same write, so a delivered message leaves no timer behind. A deadline record on
``status-updates`` headed with a future due time is booked the same way; one without it (a
record released by the delay tiers, which the stage no longer writes to) or already due is
applied at once.

Outputs, keyed by message id:
- ``delivery-status``         DeliveryStatus history, every event, sequence 1, 2, … per message,
                              headed :data:`H_CALLBACK_URL` when the message has a status
                              callback URL (ingest's first update names it; the entry keeps it);
- ``delivery-status-latest``  compacted: the event that last moved the message's status,
                              written once per checkpoint per message that moved (a runtime
                              view: up to ``TELEX_COMMIT_INTERVAL_S`` behind the history);
- ``dispatch-ready``          a resend after a failed receipt (MessageAccepted, next attempt,
                              header :data:`H_RESEND_AVOID` naming the connector to avoid);
- ``dlq-status``              records it cannot process, with provenance.

Delivery guarantee: at-least-once with idempotent sequence numbers. Outputs and the state
changelog are flushed before offsets are committed; after a crash the updates since the last
checkpoint are applied again to that checkpoint's state, so they produce the same events with the
same sequence numbers: a consumer that drops a sequence it already applied sees each event once.
A deadline fires at least once, at or after its due time; fired again after a crash (the
checkpoint that cleared it never committed) it meets the same state and gives the same events.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from pipeline.codec import AvroCodec
from pipeline.headers import H_CALLBACK_URL, H_RESEND_AVOID, H_TIMER_DUE
from pipeline.metrics import PROCESSING_SECONDS, RECORDS, RETRIES
from pipeline.records import UPDATE_FIELDS
from pipeline.runtime.stage import Input, KeyedStage, Out, Record, StoreSpec
from pipeline.runtime.store import KeyState
from pipeline.settings import Settings
from pipeline.stages.status import decision

STAGE = "status"
IN_TOPIC = "status-updates"
OUT_TOPICS = ("delivery-status", "delivery-status-latest", "dispatch-ready", "dlq-status")

STORE = "status"
_STATE_KEY = "status"
TIMERS_KEY = "timers"  # [[due_ms, deadline StatusUpdate without its null fields], ...]

log = structlog.get_logger("telex.status")


class StatusStage(KeyedStage):
    """Feeds the status model record by record with the message's state; never raises."""

    name = STAGE

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self._codec = codec
        self._policy = decision.Policy(int(settings.receipt_window_s * 1000),
                                       settings.receipt_resends)
        # Kept past the receipt window so late receipts still find the history they extend.
        keep_s = 2 * settings.receipt_window_s + 86_400
        self.inputs = (Input(IN_TOPIC, StoreSpec(STORE, keep_s, disk=True)),)
        self._outcomes = {o: RECORDS.labels(STAGE, o) for o in (
            "applied", "history", "duplicate", "resend", "timeout", "stale_timer", "booked")}
        self._latency = PROCESSING_SECONDS.labels(STAGE)

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        assert state is not None
        started = time.perf_counter()
        update = self._codec.decode(record.value or b"", expected="status_update")
        if record.key != update["message_id"]:
            raise ValueError(f"record key {record.key!r} is not its message id")
        due = record.header(H_TIMER_DUE)
        if update.get("timer") and due is not None and int(due) > now_ms:
            current = decision.MessageStatus.from_state(state.get(_STATE_KEY))
            self._book(state, [(int(due), update)], current)
            self._outcomes["booked"].inc()
            outs: list[Out] = []
        else:
            outs = self._fold(update, state, now_ms)
        self._latency.observe(time.perf_counter() - started)
        return outs

    def on_timer(self, key: str, state: KeyState, now_ms: int) -> list[Out]:
        """The message's deadlines due by now, each taken off the books and applied (in due
        order) exactly as its deadline record on ``status-updates`` would be."""
        outs: list[Out] = []
        while True:
            due = [t for t in state.get(TIMERS_KEY) or [] if t[0] <= now_ms]
            if not due:
                break
            first = min(due, key=lambda t: t[0])
            self._book(state, [], None, drop=first)
            outs += self._fold({**dict.fromkeys(UPDATE_FIELDS), **first[1]}, state, now_ms)
        return outs

    def _fold(self, update: dict[str, Any], state: KeyState, now_ms: int) -> list[Out]:
        """Apply one StatusUpdate to the message's state; book the deadlines it sets."""
        current = decision.MessageStatus.from_state(state.get(_STATE_KEY))
        result = decision.apply(current, update, now_ms, self._policy)
        outs = self._outputs(update, result)
        if result.outcome != "duplicate":
            state.set(_STATE_KEY, result.state.to_state())
            self._book(state, [(t.due_ms, decision.deadline_update(update, t))
                               for t in result.timers], result.state)
        self._outcomes[result.outcome].inc()
        return outs

    def _book(self, state: KeyState, new: list[tuple[int, dict[str, Any]]],
              status: decision.MessageStatus | None, drop: list[Any] | None = None) -> None:
        """Keep the entry's deadlines: add ``new`` (a repeat of a booked kind and attempt is
        ignored), remove ``drop``, drop those ``status`` makes dead, and set the store's timer
        to the earliest left."""
        old = state.get(TIMERS_KEY) or []
        kept = [t for t in old if t != drop]
        known = {(t[1]["timer"], t[1].get("attempt")) for t in kept}
        for due, update in new:
            if (update["timer"], update.get("attempt")) not in known:
                kept.append([due, {k: v for k, v in update.items() if v is not None}])
        if status is not None:
            kept = [t for t in kept if decision.live(status, t[1]["timer"],
                                                     int(t[1].get("attempt") or 0))]
        if kept != old:
            if kept:
                state.set(TIMERS_KEY, kept)
            else:
                state.delete(TIMERS_KEY)
        state.set_timer(min(t[0] for t in kept) if kept else None)

    def _outputs(self, update: dict[str, Any], result: decision.Result) -> list[Out]:
        message_id = update["message_id"]
        encode = self._codec.encode
        values = [encode("delivery_status", e) for e in result.events]
        url = result.state.callback_url
        headers = [(H_CALLBACK_URL, url.encode())] if url else []
        outs = [Out("delivery-status", message_id, v, headers) for v in values]
        if result.latest is not None:
            # The latest view is the moving event itself: its bytes are the history record's
            # (an encoding is ~10 µs, and nearly every update moves the status).
            value = next((v for e, v in zip(result.events, values, strict=True)
                          if e is result.latest), None)
            outs.append(Out("delivery-status-latest", message_id,
                            value or encode("delivery_status", result.latest), view=True))
        if result.resend is not None:
            message = self._codec.decode(result.resend.message, expected="message_accepted")
            message["attempt"] = result.resend.attempt
            avoid = (result.resend.avoid_connector or "").encode()
            outs.append(Out("dispatch-ready", message_id,
                            self._codec.encode("message_accepted", message),
                            [(H_RESEND_AVOID, avoid)]))
            RETRIES.labels(STAGE, str(result.resend.attempt)).inc()
            log.info("receipt_resend", message_id=message_id, attempt=result.resend.attempt,
                     avoid=result.resend.avoid_connector, code=update.get("error_code"))
        if result.outcome == "timeout":
            log.info("status_timeout", message_id=message_id, timer=update.get("timer"),
                     attempt=update.get("attempt"))
        return outs


def build(settings: Settings) -> StatusStage:
    """The status stage for the batch runtime (group ``<prefix>status``)."""
    return StatusStage(settings, AvroCodec.from_settings(settings))
