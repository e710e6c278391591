"""Status stage: the one owner of each message's status, sequence numbers and deadlines.

Input ``status-updates`` (StatusUpdate, keyed by message id) from every stage that learns
something: ingest (accepted/scheduled/failed), rate limit (failed), dispatch (sent/failed, and
in-doubt deadlines), reconcile (receipts), and deadlines coming back from the delay tiers.
Decisions are in :mod:`pipeline.stages.status_decision`; per-message state is Quix Streams
RocksDB with its compacted changelog topic.

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
from datetime import timedelta
from typing import Any

import structlog
from quixstreams import Application
from quixstreams.state import State

from pipeline.codec import AvroCodec
from pipeline.metrics import PROCESSING_SECONDS, RECORDS, RETRIES
from pipeline.runtime.app import (
    Guarantee,
    Out,
    dead_letter_out,
    keyed_stage,
    make_app,
)
from pipeline.runtime.delay import delay_headers, tier_for, tier_topic
from pipeline.settings import Settings
from pipeline.stages import status_decision as decision
from pipeline.stages.status_decision import H_RESEND_AVOID

STAGE = "status"
IN_TOPIC = "status-updates"
OUT_TOPICS = ("delivery-status", "delivery-status-latest", "dispatch-ready", "dlq-status",
              *(tier_topic(i) for i in range(10)))

_STATE_KEY = "status"

log = structlog.get_logger("telex.status")


class StatusStage:
    """Feeds the status model from a Quix Streams dataframe; never raises on a bad record."""

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self._codec = codec
        self._policy = decision.Policy(int(settings.receipt_window_s * 1000),
                                       settings.receipt_resends)
        # Kept past the receipt window so late receipts still find the history they extend.
        self._keep = timedelta(seconds=2 * settings.receipt_window_s + 86_400)
        self._outcomes = {o: RECORDS.labels(STAGE, o) for o in (
            "applied", "history", "duplicate", "resend", "timeout", "stale_timer")}
        self._latency = PROCESSING_SECONDS.labels(STAGE)

    def process(self, value: bytes, key: str | None, timestamp: int, headers: Any,
                state: State) -> list[Out]:
        started = time.perf_counter()
        now_ms = int(time.time() * 1000)
        try:
            update = self._codec.decode(value, expected="status_update")
            if key != update["message_id"]:
                raise ValueError(f"record key {key!r} is not its message id")
            current = decision.MessageStatus.from_state(state.get(_STATE_KEY))
            result = decision.apply(current, update, now_ms, self._policy)
            outs = self._outputs(update, result, now_ms)
        except Exception as exc:  # every failure is routed, counted and logged, never raised
            return [dead_letter_out(STAGE, value, key, timestamp, headers, exc, now_ms,
                                    message_id=key)]
        if result.outcome != "duplicate":
            state.set(_STATE_KEY, result.state.to_state(), ttl=self._keep)
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


def build_app(settings: Settings, *, guarantee: Guarantee = "at-least-once",
              consumer_group: str | None = None) -> Application:
    """The status worker's Quix Streams application (group ``<prefix>status``)."""
    app = make_app(settings, consumer_group or settings.topic(STAGE), guarantee=guarantee)
    stage = StatusStage(settings, AvroCodec.from_settings(settings))
    keyed_stage(app, settings, IN_TOPIC, stage.process, OUT_TOPICS)
    return app
