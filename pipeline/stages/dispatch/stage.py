"""Dispatch stage: where a message leaves Telex, once, or ends in an explained failure.

A batch stage of the runtime (:class:`~pipeline.runtime.runner.StageRunner`, consumer group
``<prefix>dispatch``), whose carrier I/O is concurrent: the connectors (``connectors/``) are
asyncio clients, an SMPP window of outstanding submits per bind. They live on an event loop
in a thread this stage owns (started by :meth:`DispatchStage.open`): a batch's submits are handed
to it and run together while the runner's thread waits, and receipts arriving on a session are
produced from that loop as they come, whatever the runner is doing (``Runtime.emit``). Kept
apart from the runner's thread, the loop's sessions answer the SMSC (enquire_link,
deliver_sm_resp) while a batch is being decided or a checkpoint flushes. Per batch of up to
``TELEX_DISPATCH_BATCH`` records from ``dispatch-ready``:

1. decide per record (pure, :mod:`pipeline.stages.dispatch.decision`): skip a message id the
   journal already finished (a duplicate release), resolve an in-doubt one, route the rest
   (:mod:`~pipeline.stages.dispatch.routing`: longest prefix, circuit breaker per connector,
   failover);
2. journal ATTEMPTING for every record to submit, and ``Runtime.durable()``: flushed and every
   delivery checked (with everything produced before: the previous batch's results) before any
   network call;
3. submit them all concurrently through their connectors (on the connectors' loop);
4. journal SUBMITTED (carrier id) or FAILED; announce each submission (its ``sent``) on
   ``carrier-receipts`` under ``connector:carrier id`` (the journal re-keyed for the reconciler,
   which passes it on to the status stage), emit ``failed`` status updates, schedule retries
   through the delay tiers (back into ``dispatch-ready``, attempt + 1): the batch's outputs,
   which the runner produces;
5. the runner's checkpoint flushes them and commits the batch's offsets (not before every
   output of the batch is acknowledged).

Guarantee: at-least-once to the carrier, with duplicates bounded by one batch. A crash between 2
and 4 — or after 4, before the next batch's barrier or checkpoint acknowledged its outputs —
leaves ATTEMPTING entries without a result, of one batch at most (each barrier acknowledges the
previous batch's results before the next carrier call): those messages are read again from
``dispatch-ready`` and resolved by the per-channel in-doubt policy; each resulting duplicate
submit is matched by an in-doubt journal entry. The journal (compacted, keyed and partitioned
like ``dispatch-ready``) is the changelog of a bounded on-disk store per assigned partition
(:mod:`pipeline.stages.dispatch.journal`: retention and why), which the runner restores on
assignment and writes to disk at each checkpoint, after the records behind it are acknowledged.

Receipts that arrive on a connector's session (SMPP deliver_sm) are produced to
``carrier-receipts`` as they come; the SMPP client has already acknowledged them to the SMSC, so
a crash can lose the few not yet acknowledged by the broker: those messages end by the receipt
window (``undelivered``, 30008), explained, never silently. A record with header
``telex.resend.avoid`` is a resend the status stage ordered after a failed receipt: it may go
out again although the journal says SUBMITTED, through another route when there is one.

In the whole-topology worker dispatch stays a process of its own (``StageSpec.own_process``),
see :mod:`pipeline.cli.worker` for why.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from connectors.base import Connector, ConnectorError, ErrorKind, SubmitRequest, SubmitResult
from pipeline.breaker import CLOSED, HALF_OPEN, OPEN
from pipeline.codec import AvroCodec
from pipeline.errors import ConfigError
from pipeline.headers import H_RESEND_AVOID, H_TIMER_DUE
from pipeline.metrics import (
    CONNECTOR_BREAKER_STATE,
    CONNECTOR_SUBMIT_SECONDS,
    CONNECTOR_SUBMITS,
    CONNECTOR_WINDOW_IN_USE,
    RECORDS,
    RETRIES,
)
from pipeline.records import IN_DOUBT, RESENDABLE_CHANNELS, receipt_key, update_record
from pipeline.runtime.delay import delay_headers, tier_for, tier_topic
from pipeline.runtime.stage import Input, Out, Record, Runtime, Stage
from pipeline.runtime.store import Store
from pipeline.settings import Settings
from pipeline.stages.dispatch import decision, journal
from pipeline.stages.dispatch.carriers import Carriers
from pipeline.stages.dispatch.routing import choose, counts_against_health

__all__ = ["DispatchStage", "build"]

STAGE = "dispatch"
_BREAKER_LEVEL = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
IN_TOPIC = "dispatch-ready"

log = structlog.get_logger("telex.dispatch")
T = TypeVar("T")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def build(settings: Settings) -> DispatchStage:
    """The registry's entry point (``telex worker dispatch``)."""
    return DispatchStage(settings)


class DispatchStage(Stage):
    """Consumes dispatch-ready and submits through the configured connectors."""

    name = STAGE

    def __init__(self, settings: Settings, carriers: Carriers | None = None,
                 rng: random.Random | None = None) -> None:
        if carriers is None:
            if not settings.carriers_file:
                raise ConfigError("the dispatch stage needs TELEX_CARRIERS_FILE")
            carriers = Carriers.from_file(settings.carriers_file)
        self._settings = settings
        self._carriers = carriers
        self._codec = AvroCodec.from_settings(settings)
        self.inputs = (Input(IN_TOPIC, journal.store_spec(settings, self._codec)),)
        self.batch_max = settings.dispatch_batch
        self._rng = rng or random.Random()
        self._connectors: dict[str, Connector] = {}
        self._unstarted: set[str] = set()
        self._starting: set[str] = set()
        self._breakers = {name: carriers.breaker(name) for name in carriers.connectors}
        self._outcomes = {o: RECORDS.labels(STAGE, o) for o in (
            "submitted", "failed", "retry", "duplicate", "in_doubt_resend", "receipt")}
        self._receipt_tasks: set[asyncio.Task[None]] = set()
        self._runtime: Runtime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._outs: list[Out] = []  # the outputs of the batch being decided

    # -- lifecycle (the connectors' loop) --

    def open(self, runtime: Runtime) -> None:
        """Start the connectors' loop on its own thread, then every connector on it."""
        self._runtime = runtime
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dispatch-carriers",
                                        daemon=True)
        self._thread.start()
        self._on_loop(self._start_all())

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return
        try:
            self._on_loop(self._close_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            self._loop = None

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the connectors' loop and wait for it (from the runner's thread)."""
        assert self._loop is not None, "open() starts the loop"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _start_all(self) -> None:
        for name in self._carriers.connectors:
            await self._start_connector(name)

    async def _close_all(self) -> None:
        for connector in self._connectors.values():
            await connector.close()
        for task in list(self._receipt_tasks):
            task.cancel()

    async def _start_connector(self, name: str) -> bool:
        """(Re)build and start a connector; on failure its breaker keeps traffic away, and a
        later half-open trial starts it again (a client that never started stays closed)."""
        if name in self._starting:  # another submit of this batch is starting it
            return False
        self._starting.add(name)
        connector = self._carriers.build(name)
        self._connectors[name] = connector
        try:
            await connector.start()
        except ConnectorError as exc:
            log.warning("connector_unavailable", connector=name, error=str(exc))
            self._breakers[name].trip(_now_ms())
            self._unstarted.add(name)
            return False
        finally:
            self._starting.discard(name)
        self._unstarted.discard(name)
        task = asyncio.create_task(self._forward_receipts(connector), name=f"receipts-{name}")
        self._receipt_tasks.add(task)
        task.add_done_callback(self._receipt_tasks.discard)
        return True

    async def _forward_receipts(self, connector: Connector) -> None:
        """Receipts from a connector's session → ``carrier-receipts`` (until it closes)."""
        assert self._runtime is not None
        async for receipt in connector.receipts():
            self._runtime.emit([Out(
                "carrier-receipts", receipt_key(receipt.connector, receipt.carrier_message_id),
                self._codec.encode("carrier_receipt", receipt.to_record()))])
            self._outcomes["receipt"].inc()

    # -- a batch --

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        assert self._runtime is not None, "the runner opens the stage first"
        self._outs = outs = []
        now = _now_ms()
        to_submit: list[tuple[Record, dict[str, Any], str, Store]] = []
        attempting: set[str] = set()  # message ids this batch journaled ATTEMPTING for
        for record in records:
            store = stores[(record.topic, record.partition)]
            try:
                message = self._codec.decode(record.value, expected="message_accepted")
                if message["message_id"] in attempting:
                    # Another copy of a message this batch already attempts (upstream stages
                    # are at-least-once): that ATTEMPTING entry is ours, not a dead worker's,
                    # so it must not be taken for an in-doubt attempt and sent again. (A copy
                    # skipped without an attempt, e.g. a stale release before its retry, does
                    # not count: the retry in the same batch must still go out.)
                    self._outcomes["duplicate"].inc()
                    log.info("dispatch_skipped", message_id=message["message_id"],
                             reason="another copy is being attempted in this batch")
                    continue
                avoid = record.header(H_RESEND_AVOID)
                plan = self._plan(message, now, None if avoid is None else avoid.decode(),
                                  record.value, store)
            except Exception as exc:  # routed, counted and logged, never raised
                outs.append(self.dead_letter(record, exc, now, record.key))
                continue
            if plan is not None:
                self._journal_write(store, decision.attempting_entry(message, plan, now))
                attempting.add(message["message_id"])
                to_submit.append((record, message, plan, store))
        if not to_submit:
            return outs
        # Write-ahead: the ATTEMPTING entries (and all produced before) on the broker first.
        self._runtime.emit(outs)
        self._outs = outs = []
        self._runtime.durable()
        results = self._on_loop(self._submit_all([(m, c) for _, m, c, _ in to_submit]))
        done = _now_ms()
        for (record, message, connector, store), result in zip(to_submit, results, strict=True):
            self._settle(message, connector, result, done, record.value, store)
        return outs

    async def _submit_all(self, submits: list[tuple[dict[str, Any], str]]
                          ) -> list[SubmitResult | BaseException]:
        return await asyncio.gather(*(self._submit(message, connector)
                                      for message, connector in submits),
                                    return_exceptions=True)

    def _plan(self, message: Mapping[str, Any], now: int, avoid: str | None,
              raw: bytes | None, store: Store) -> str | None:
        """The connector to submit through, or None when nothing must be sent. ``avoid``: a
        resend after a failed receipt, to go through another connector when there is one."""
        latest = store.get(message["message_id"], _now_ms())
        plan = decision.plan(latest, message, now, resend=avoid is not None,
                             reconcile_window_ms=int(self._settings.in_doubt_window_s * 1000))
        resolved = plan.in_doubt
        if resolved is not None:
            assert latest is not None  # only an ATTEMPTING entry is in doubt
            self._journal_write(store, dict(resolved.journal))
            self._outcomes["in_doubt_resend"].inc()
            log.warning("in_doubt_resolved", message_id=message["message_id"],
                        policy=str(resolved.policy), connector=latest["connector"],
                        attempt=latest["attempt"])
            if resolved.status is not None:
                self._status(message, resolved.status)
            if resolved.await_receipt_until_ms is not None:
                self._deadline(message, latest, resolved.await_receipt_until_ms, now)
        if plan.action == decision.EXPIRE:
            expired = ConnectorError(ErrorKind.EXPIRED, "validity period ended before dispatch")
            self._settle(dict(message), "none", expired, now, None, store)
            return None
        if plan.action == decision.SKIP:
            self._outcomes["duplicate"].inc()
            log.info("dispatch_skipped", message_id=message["message_id"], reason=plan.reason)
            if plan.reannounce is not None:
                self._reannounce(message, plan.reannounce, raw)
            return None
        candidates = self._carriers.routes.candidates(message["channel"], message["recipient"])
        if avoid is not None:
            candidates = [c for c in candidates if c != avoid] or candidates
        # All unhealthy: keep the primary; _submit fails it retryably without calling it.
        return choose(candidates, self._breakers, now) or candidates[0]

    async def _submit(self, message: Mapping[str, Any], name: str) -> SubmitResult:
        breaker = self._breakers[name]
        if breaker.state(_now_ms()) == OPEN:  # choose() found no healthy route
            raise ConnectorError(ErrorKind.CONNECTION_LOST, f"{name}: circuit open, no healthy "
                                 "route")
        req = SubmitRequest(
            message_id=message["message_id"], sender=message["sender"],
            recipient=message["recipient"], body=message.get("body"),
            channel=message["channel"],
            validity_ms=max(1, int(message["expires_at_ms"]) - _now_ms()),
            media_urls=tuple(message.get("media_urls") or ()),
        )
        if name in self._unstarted and not await self._start_connector(name):
            raise ConnectorError(ErrorKind.CONNECTION_LOST, f"{name}: cannot connect")
        connector = self._connectors[name]
        started = time.perf_counter()
        try:
            result = await connector.submit(req)
        except ConnectorError as exc:
            if counts_against_health(exc.kind):
                breaker.record_failure(_now_ms())
            else:  # a refusal of this message: the carrier itself is answering
                breaker.record_success(_now_ms())
            self._observe(name, str(exc.kind), started)
            raise
        breaker.record_success(_now_ms())
        self._observe(name, "ok", started)
        return result

    def _observe(self, name: str, result: str, started: float) -> None:
        CONNECTOR_SUBMITS.labels(name, result).inc()
        CONNECTOR_SUBMIT_SECONDS.labels(name).observe(time.perf_counter() - started)
        CONNECTOR_WINDOW_IN_USE.labels(name).set(self._connectors[name].health.window_in_use)
        CONNECTOR_BREAKER_STATE.labels(name).set(
            _BREAKER_LEVEL[self._breakers[name].state(_now_ms())])

    def _settle(self, message: dict[str, Any], connector: str,
                result: SubmitResult | BaseException, now: int, raw: bytes | None,
                store: Store) -> None:
        if isinstance(result, BaseException) and not isinstance(result, ConnectorError):
            result = ConnectorError(ErrorKind.SERVER_ERROR, f"{type(result).__name__}: {result}")
        outcome = decision.on_result(message, result, now, self._rng, connector=connector,
                                     schedule=self._settings.retry_schedule_s)
        self._journal_write(store, dict(outcome.journal))
        if outcome.status is not None:
            self._status(message, outcome.status, raw)
        if outcome.retry is not None:
            retry = {**message, "attempt": outcome.retry.attempt}
            self._produce(tier_topic(tier_for(outcome.retry.due_at_ms - now)),
                          message["message_id"], self._codec.encode("message_accepted", retry),
                          delay_headers(outcome.retry.due_at_ms, IN_TOPIC))
            RETRIES.labels(STAGE, str(outcome.retry.attempt)).inc()
            self._outcomes["retry"].inc()
        else:
            self._outcomes["submitted" if outcome.journal["state"] == decision.SUBMITTED
                           else "failed"].inc()

    def _journal_write(self, store: Store, entry: dict[str, Any]) -> None:
        """Journal ``entry`` in the store of the partition of the record it is about, and on
        that partition of the journal topic: the store's changelog (same key, same number)."""
        store.put(entry["message_id"], entry, int(entry["at_ms"]))
        self._outs.append(Out(journal.TOPIC, entry["message_id"],
                              self._codec.encode("dispatch_journal_entry", entry),
                              partition=store.partition))

    def _status(self, message: Mapping[str, Any], update: decision.StatusUpdate,
                raw: bytes | None = None) -> None:
        """A status update for the status stage. A ``sent`` one goes through the reconciler
        (it announces the carrier id receipts will name), and carries the message for a
        receipt-driven resend where the channel allows one."""
        resend = (raw if update.status == "sent" and self._settings.receipt_resends > 0
                  and message["channel"] in RESENDABLE_CHANNELS else None)
        value = self._codec.encode("status_update", update_record(
            message["message_id"], STAGE, update.event_time_ms, status=update.status,
            attempt=message.get("attempt", 0), account_id=message["account_id"],
            channel=message["channel"], error_code=update.error_code,
            error_reason=update.error_reason, carrier_message_id=update.carrier_message_id,
            connector=update.connector, segments=message["segments"],
            trace_id=message.get("trace_id"), resend_message=resend))
        if update.status == "sent" and update.carrier_message_id and update.connector:
            # Through the reconciler, which passes it on before any receipt it matches.
            self._produce("carrier-receipts",
                          receipt_key(update.connector, update.carrier_message_id), value)
        else:
            self._produce("status-updates", message["message_id"], value)

    def _reannounce(self, message: Mapping[str, Any], entry: Mapping[str, Any],
                    raw: bytes | None) -> None:
        """Say again what the journal says of a finished attempt. A crash can land the
        journal entry on the broker without the status written beside it (they go to other
        partitions); the record is then redelivered and skipped here, and this makes its
        status whole. The status stage absorbs the repeat (same status, same attempt)."""
        at = {**message, "attempt": entry["attempt"]}
        if entry["state"] == decision.SUBMITTED:
            self._status(at, decision.StatusUpdate(
                "sent", int(entry["at_ms"]), carrier_message_id=entry["carrier_message_id"],
                connector=entry["connector"]), raw)
        elif entry["state"] == decision.FAILED and not entry.get("retryable", False):
            self._status(at, decision.StatusUpdate(
                "failed", int(entry["at_ms"]), error_code=entry["error_code"],
                error_reason=entry["error_reason"], connector=entry["connector"]))

    def _deadline(self, message: Mapping[str, Any], entry: Mapping[str, Any], until_ms: int,
                  now: int) -> None:
        """Book the in-doubt deadline: the status stage fails the message with 30008 then,
        unless a receipt (naming our message id) proved the send in the meantime. Written
        straight to status-updates with its due time: the status stage keeps it as a timer."""
        value = self._codec.encode("status_update", update_record(
            message["message_id"], STAGE, now, timer=IN_DOUBT, attempt=entry["attempt"],
            account_id=message["account_id"], channel=message["channel"],
            connector=entry["connector"], segments=message["segments"],
            trace_id=message.get("trace_id")))
        self._produce("status-updates", message["message_id"], value,
                      [(H_TIMER_DUE, str(int(until_ms)).encode())])

    def _produce(self, topic: str, key: str, value: bytes,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        self._outs.append(Out(topic, key, value, headers or []))
