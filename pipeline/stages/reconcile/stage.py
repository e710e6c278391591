"""Reconcile stage: carrier receipts → status updates of the messages they are about.

Input ``carrier-receipts``, keyed ``connector:carrier id`` (:func:`receipt_key`), carries two
kinds of record: CarrierReceipt from the connectors (SMPP deliver_sm via dispatch, HTTP status
webhooks via the webhook receiver) and StatusUpdate ``sent`` from dispatch announcing a
submission — the dispatch journal re-keyed by carrier id. One key's records are in order on one
partition, so the join needs no second input. Decisions are in
:mod:`pipeline.stages.reconcile.decision`; state (submission and waiting receipts per key) is
a memory store of the batch runtime with its compacted changelog topic.

Outputs: ``status-updates`` (keyed by message id, for the status stage), ``receipts-unmatched``,
``dlq-reconcile``.

A waiting receipt's TTL deadline is the key's timer in its match entry (punctuation of the
runtime): booked when a receipt starts waiting, moved to the next waiting receipt's deadline,
cancelled when the submission comes (nothing is left to release); when it fires,
:func:`reconcile_decision.on_deadline` runs. A deadline record headed :data:`H_DEADLINE`
arriving on ``carrier-receipts`` (released by the delay tiers, which the stage no longer writes
to) still takes the same path.

Delivery guarantee: at-least-once. Outputs and the state changelog are flushed before input
offsets are committed; a crash repeats the records since the last checkpoint against the state
of that checkpoint, so the same status updates are produced again, and the status stage
absorbs them as duplicates (same status for the same attempt). A deadline fires at least once,
at or after its due time; fired again after a crash it meets the same state and gives the same
updates, which the status stage absorbs.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from pipeline.codec import SINGLE_OBJECT_MARKER, AvroCodec
from pipeline.headers import H_DEADLINE
from pipeline.metrics import PROCESSING_SECONDS, RECORDS
from pipeline.records import receipt_key
from pipeline.runtime.stage import Input, KeyedStage, Out, Record, StoreSpec
from pipeline.runtime.store import KeyState
from pipeline.settings import Settings
from pipeline.stages.reconcile import decision

STAGE = "reconcile"
IN_TOPIC = "carrier-receipts"
OUT_TOPICS = ("status-updates", "receipts-unmatched", "dlq-reconcile")
STORE = "match"
_STATE_KEY = "match"

log = structlog.get_logger("telex.reconcile")


class ReconcileStage(KeyedStage):
    """Feeds the match decisions record by record with the key's state; never raises."""

    name = STAGE

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self._codec = codec
        self._ttl_ms = int(settings.receipt_match_ttl_s * 1000)
        # A submission is kept as long as its receipts may come: the receipt window, plus the
        # wait of a receipt that came first.
        keep_s = settings.receipt_window_s + settings.receipt_match_ttl_s
        self.inputs = (Input(IN_TOPIC, StoreSpec(STORE, keep_s, disk=True)),)
        self._outcomes = {o: RECORDS.labels(STAGE, o) for o in (
            "submission", "matched", "waiting", "unmapped", "released", "unmatched", "idle")}
        self._latency = PROCESSING_SECONDS.labels(STAGE)
        # A submission is passed on unchanged (decision.on_submission): when it was read in
        # today's single-object StatusUpdate, re-encoding it would give back the bytes read
        # (Avro's binary encoding is a function of schema and datum), so those are written.
        self._current_update = SINGLE_OBJECT_MARKER + codec.fingerprint("status_update")

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        assert state is not None
        started = time.perf_counter()
        outs = self._decide(record.value or b"", record.key, record.headers, state, now_ms)
        self._latency.observe(time.perf_counter() - started)
        return outs

    def message_id_of(self, record: Record) -> str | None:
        return None  # keyed connector:carrier id, not by message

    def on_timer(self, key: str, state: KeyState, now_ms: int) -> list[Out]:
        """The key's TTL deadline came due: release what waited long enough."""
        return self._outputs(key, state, decision.on_deadline(state.get(_STATE_KEY), now_ms,
                                                              self._ttl_ms))

    def _decide(self, value: bytes, key: str | None, headers: Any, state: KeyState,
                now_ms: int) -> list[Out]:
        current = state.get(_STATE_KEY)
        read: tuple[dict[str, Any], bytes] | None = None
        if any(k == H_DEADLINE for k, _ in headers or ()):
            match = decision.on_deadline(current, now_ms, self._ttl_ms)
        else:
            name, record = self._codec.decode_with_name(value)
            if name == "carrier_receipt":
                expected = receipt_key(record["connector"], record["carrier_message_id"])
                match = decision.on_receipt(current, record, now_ms, self._ttl_ms)
            elif name == "status_update" and record["status"] == "sent":
                expected = receipt_key(str(record["connector"]),
                                       str(record["carrier_message_id"]))
                match = decision.on_submission(current, record)
                if value.startswith(self._current_update):
                    read = (record, value)
            else:
                raise ValueError(f"carrier-receipts takes receipts and submissions, not {name}")
            if key != expected:
                raise ValueError(f"record key {key!r} is not its connector:carrier id "
                                 f"{expected!r}")
        return self._outputs(key, state, match, read)

    def _outputs(self, key: str | None, state: KeyState, match: decision.Match,
                 read: tuple[dict[str, Any], bytes] | None = None) -> list[Out]:
        """Store the match's state and timer; the records it leads to. ``read``: the
        StatusUpdate record just decoded and its bytes, written again for an equal update."""
        if match.state is None:
            state.delete(_STATE_KEY)
        elif match.state != state.get(_STATE_KEY):
            state.set(_STATE_KEY, match.state)
        if match.deadline_ms is not None:
            state.set_timer(match.deadline_ms)
        elif match.state is None or not match.state.get("pending"):
            state.set_timer(None)  # nothing waits: nothing to release
        self._outcomes[match.outcome].inc()
        encode = self._codec.encode
        outs = [Out("status-updates", u["message_id"],
                    read[1] if read is not None and u == read[0] else encode("status_update", u))
                for u in match.updates]
        for receipt in match.unmatched:
            log.info("receipt_unmatched", connector=receipt["connector"],
                     carrier_message_id=receipt["carrier_message_id"],
                     carrier_status=receipt["carrier_status"])
            outs.append(Out("receipts-unmatched", key or "",
                            self._codec.encode("carrier_receipt", receipt)))
        return outs


def build(settings: Settings) -> ReconcileStage:
    """The reconcile stage for the batch runtime (group ``<prefix>reconcile``)."""
    return ReconcileStage(settings, AvroCodec.from_settings(settings))
