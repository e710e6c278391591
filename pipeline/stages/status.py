"""Status stage: the one owner of each message's status, sequence numbers and deadlines.

Input ``status-updates`` (StatusUpdate, keyed by message id) from every stage that learns
something: ingest (accepted/scheduled/failed), rate limit (failed), dispatch (sent/failed, and
in-doubt deadlines), reconcile (receipts), and deadlines coming back from the delay tiers.
Decisions are in :mod:`pipeline.stages.status_decision`; per-message state is a memory store
of the batch runtime with its compacted changelog topic.

Outputs, keyed by message id:
- ``delivery-status``         DeliveryStatus history, every event, sequence 1, 2, … per message;
- ``delivery-status-latest``  compacted: the event that last moved the message's status;
- a delay tier                receipt-window deadlines (released back to ``status-updates``);
- ``dispatch-ready``          a resend after a failed receipt (MessageAccepted, next attempt,
                              header :data:`H_RESEND_AVOID` naming the connector to avoid);
- ``dlq-status``              records it cannot process, with provenance.

Delivery guarantee: at-least-once with idempotent sequence numbers. Outputs and the state
changelog are flushed before offsets are committed; after a crash the updates since the last
checkpoint are applied again to that checkpoint's state, so they produce the same events with the
same sequence numbers: a consumer that drops a sequence it already applied sees each event once.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from pipeline.codec import AvroCodec
from pipeline.metrics import PROCESSING_SECONDS, RECORDS, RETRIES
from pipeline.runtime.delay import delay_headers, tier_for, tier_topic
from pipeline.runtime.stage import Input, KeyedStage, Out, Record, StoreSpec
from pipeline.runtime.store import KeyState
from pipeline.settings import Settings
from pipeline.stages import status_decision as decision
from pipeline.stages.status_decision import H_RESEND_AVOID

STAGE = "status"
IN_TOPIC = "status-updates"
OUT_TOPICS = ("delivery-status", "delivery-status-latest", "dispatch-ready", "dlq-status",
              *(tier_topic(i) for i in range(10)))

STORE = "status"
_STATE_KEY = "status"

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
            "applied", "history", "duplicate", "resend", "timeout", "stale_timer")}
        self._latency = PROCESSING_SECONDS.labels(STAGE)

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        assert state is not None
        started = time.perf_counter()
        update = self._codec.decode(record.value or b"", expected="status_update")
        if record.key != update["message_id"]:
            raise ValueError(f"record key {record.key!r} is not its message id")
        current = decision.MessageStatus.from_state(state.get(_STATE_KEY))
        result = decision.apply(current, update, now_ms, self._policy)
        outs = self._outputs(update, result, now_ms)
        if result.outcome != "duplicate":
            state.set(_STATE_KEY, result.state.to_state())
        self._outcomes[result.outcome].inc()
        self._latency.observe(time.perf_counter() - started)
        return outs

    def _outputs(self, update: dict[str, Any], result: decision.Result,
                 now_ms: int) -> list[Out]:
        message_id = update["message_id"]
        outs = [Out("delivery-status", message_id, self._codec.encode("delivery_status", e))
                for e in result.events]
        if result.latest is not None:
            outs.append(Out("delivery-status-latest", message_id,
                            self._codec.encode("delivery_status", result.latest)))
        for timer in result.timers:
            deadline = {**update, "status": None, "timer": timer.kind, "attempt": timer.attempt,
                        "source": "timeout", "resend_message": None}
            outs.append(Out(tier_topic(tier_for(timer.due_ms - now_ms)), message_id,
                            self._codec.encode("status_update", deadline),
                            delay_headers(timer.due_ms, IN_TOPIC)))
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
