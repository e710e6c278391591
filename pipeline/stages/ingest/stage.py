"""Ingest stage: validate a message request, de-duplicate it by idempotency key, accept it.

Decision (pure, :func:`decide`): what a request becomes given what the dedup store remembers.
Wiring (:class:`IngestStage`, on the batch runtime): decode, run the decision, store, emit.

Outputs, keyed by message id but for ``message-accepted``:
- ``message-accepted``  MessageAccepted, for a new valid request, keyed by **account**
                        (:func:`pipeline.records.accepted_key`): the rate limit's account
                        bucket reads it straight, with no re-keying hop;
- ``status-updates``    StatusUpdate ``accepted``/``scheduled``, or ``failed`` with its code
                        for a request that fails validation (the status stage sequences them);
- ``request-rejections`` RequestRejected for a key reused with different content (21656);
- ``dlq-ingest``        the raw record, with provenance headers, when it cannot be decoded.
Identical repeats emit nothing.

Delivery guarantee: at-least-once with an idempotent downstream. Outputs and the dedup store's
changelog are produced, then flushed, then input offsets are committed (the runtime's
checkpoint, :mod:`pipeline.runtime.runner`). A crash between flush and commit replays the
uncommitted records; the store is recovered only up to the committed offsets, so they are judged
NEW again and re-emitted with the same message id: at most one checkpoint (1 s or 50,000
records) of repeats, which dispatch absorbs through its journal keyed by message id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from pipeline.codec import AvroCodec
from pipeline.errors import Code, error_title
from pipeline.metrics import PROCESSING_SECONDS, RECORDS, REJECTED
from pipeline.records import accepted_key, update_record
from pipeline.runtime.stage import Input, KeyedStage, Out, Record, StoreSpec
from pipeline.runtime.store import KeyState
from pipeline.senders import SenderRegistry, load_registry
from pipeline.settings import Settings
from pipeline.stages.ingest.dedup import Seen, Verdict
from pipeline.stages.ingest.dedup import decide as dedup
from pipeline.stages.ingest.validate import Rejection, Valid, request_hash, validate

STAGE = "ingest"
IN_TOPIC = "message-requested"
ACCEPTED = "message-accepted"
OUT_TOPICS = (ACCEPTED, "status-updates", "request-rejections", "dlq-ingest")
STORE = "dedup"
_STATE_KEY = "seen"

log = structlog.get_logger("telex.ingest")


@dataclass(frozen=True, slots=True)
class Emit:
    topic: str
    schema: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    outcome: str  # accepted | scheduled | rejected | duplicate | conflict
    emits: list[Emit] = field(default_factory=list)
    store: Seen | None = None  # what to remember, when it changes
    code: int | None = None


def _status(req: Mapping[str, Any], status: str, now_ms: int, **extra: Any) -> Emit:
    # The callback URL rides on the first update (the status stage keeps it), unless the URL
    # itself is why the request failed.
    url = None if extra.get("error_code") == Code.INVALID_CALLBACK_URL else (
        req.get("status_callback_url") or None)
    return Emit("status-updates", "status_update", update_record(
        req["message_id"], STAGE, now_ms, status=status, account_id=req["account_id"],
        channel=req["channel"], trace_id=req.get("trace_id"), status_callback_url=url,
        **extra))


def decide(
    req: Mapping[str, Any],
    seen: Seen | None,
    *,
    senders: SenderRegistry,
    window_ms: int,
    event_ms: int,
    now_ms: int,
) -> Decision:
    """What a decoded MessageRequested becomes, given the dedup store's entry for its id."""
    checked = validate(req, senders)
    content = checked.content_hash if isinstance(checked, Valid) else request_hash(req)
    verdict = dedup(seen, content, event_ms, window_ms)

    if verdict is Verdict.DUPLICATE:
        return Decision(verdict, "duplicate")
    if verdict is Verdict.CONFLICT:
        assert seen is not None
        return Decision(verdict, "conflict", [Emit("request-rejections", "request_rejected", {
            "message_id": req["message_id"], "account_id": req["account_id"],
            "idempotency_key": req["idempotency_key"], "content_hash": content,
            "original_content_hash": seen.content_hash, "error_code": Code.IDEMPOTENCY_CONFLICT,
            "error_reason": error_title(Code.IDEMPOTENCY_CONFLICT),
            "requested_at_ms": req["requested_at_ms"],
            "rejected_at_ms": now_ms, "trace_id": req.get("trace_id"),
        })], code=Code.IDEMPOTENCY_CONFLICT)

    if isinstance(checked, Rejection):
        return Decision(
            verdict, "rejected",
            [_status(req, "failed", now_ms, error_code=checked.code, error_reason=checked.reason)],
            Seen(content, event_ms, "rejected"), checked.code,
        )

    accepted = {
        **{k: req.get(k) for k in (
            "message_id", "account_id", "idempotency_key", "channel", "body",
            "status_callback_url", "send_at_ms", "requested_at_ms", "trace_id", "client")},
        "media_urls": list(req.get("media_urls") or []),
        "metadata": dict(req.get("metadata") or {}),
        "sender": checked.sender, "recipient": checked.recipient,
        "validity_period_s": checked.validity_period_s, "accepted_at_ms": now_ms,
        "expires_at_ms": checked.expires_at_ms, "encoding": str(checked.encoding),
        "segments": checked.segments, "content_hash": content, "attempt": 0,
    }
    status = "scheduled" if req.get("send_at_ms") else "accepted"
    return Decision(
        verdict, status,
        [Emit(ACCEPTED, "message_accepted", accepted),
         _status(req, status, now_ms, segments=checked.segments)],
        Seen(content, event_ms, "accepted"),
    )


class IngestStage(KeyedStage):
    """Feeds the decision record by record with the key's dedup entry; never raises."""

    name = STAGE

    def __init__(self, settings: Settings, senders: SenderRegistry, codec: AvroCodec) -> None:
        self._codec = codec
        self._senders = senders
        self._window_ms = settings.dedup_window_s * 1000
        # A key is remembered for the dedup window and no longer (its promise); on disk, since
        # at 10,000 msg/s a 24 h window holds hundreds of millions of keys.
        self.inputs = (Input(IN_TOPIC, StoreSpec(STORE, settings.dedup_window_s, disk=True)),)
        # Metric children resolved once: labels() per record is a lock and a dict build.
        self._outcomes = {o: RECORDS.labels(STAGE, o) for o in (
            "accepted", "scheduled", "rejected", "duplicate", "conflict")}
        self._latency = PROCESSING_SECONDS.labels(STAGE)

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        assert state is not None
        started = time.perf_counter()
        key = record.key
        req = self._codec.decode(record.value or b"", expected="message_requested")
        if key != req["message_id"]:
            # Dedup state is scoped by record key: any other key would dedup this message
            # against nothing (and on the wrong partition), so refuse it.
            raise ValueError(f"record key {key!r} is not its message id")
        seen = Seen.from_state(state.get(_STATE_KEY))
        decision = decide(req, seen, senders=self._senders, window_ms=self._window_ms,
                          event_ms=record.timestamp, now_ms=now_ms)
        outs = [Out(e.topic, accepted_key(e.record) if e.topic == ACCEPTED
                    else req["message_id"], self._codec.encode(e.schema, e.record))
                for e in decision.emits]
        if decision.store is not None:
            state.set(_STATE_KEY, decision.store.to_state())
        self._outcomes[decision.outcome].inc()
        if decision.code is not None:
            REJECTED.labels(STAGE, str(decision.code)).inc()
        self._latency.observe(time.perf_counter() - started)
        if decision.outcome in ("rejected", "conflict"):
            log.info("request_" + decision.outcome, message_id=req["message_id"],
                     code=decision.code, trace_id=req.get("trace_id"))
        elif decision.outcome == "duplicate":
            log.debug("request_duplicate", message_id=req["message_id"])
        return outs


def build(settings: Settings, *, senders: SenderRegistry | None = None) -> IngestStage:
    """The ingest stage for the batch runtime (group ``<prefix>ingest``)."""
    return IngestStage(settings, senders or load_registry(settings.senders_file),
                       AvroCodec.from_settings(settings))
