"""Dispatch stage: where a message leaves Telex, once, or ends in an explained failure.

A dedicated asyncio loop on confluent-kafka (not Quix Streams): carrier I/O is concurrent (an SMPP
window of outstanding submits), and a synchronous call inside a Quix ``apply`` would stall the
partition. Per batch of up to ``TELEX_DISPATCH_BATCH`` records from ``dispatch-ready``:

1. decide per record (pure, :mod:`pipeline.stages.dispatch.decision`): skip a message id the
   journal already finished (a duplicate release), resolve an in-doubt one, route the rest
   (:mod:`~pipeline.stages.dispatch.routing`: longest prefix, circuit breaker per connector,
   failover);
2. journal ATTEMPTING for every record to submit, and flush: durable before any network call;
3. submit them all concurrently through their connectors;
4. journal SUBMITTED (carrier id) or FAILED; announce each submission (its ``sent``) on
   ``carrier-receipts`` under ``connector:carrier id`` (the journal re-keyed for the reconciler,
   which passes it on to the status stage), emit ``failed`` status updates, schedule retries
   through the delay tiers (back into ``dispatch-ready``, attempt + 1), and flush;
5. commit the batch's offsets.

Guarantee: at-least-once to the carrier, with duplicates bounded by one batch. A crash between 2
and 4 leaves ATTEMPTING entries without a result: those messages are read again from
``dispatch-ready`` and resolved by the per-channel in-doubt policy; each resulting duplicate
submit is matched by an in-doubt journal entry. The journal (compacted, keyed and partitioned
like ``dispatch-ready``) is the changelog of a bounded on-disk store per assigned partition
(:mod:`pipeline.stages.dispatch.journal`: retention and why); written to disk between batches,
once a second, after the records behind it are acknowledged.

Receipts that arrive on a connector's session (SMPP deliver_sm) are produced to
``carrier-receipts`` as they come; the SMPP client has already acknowledged them to the SMSC, so
a crash can lose the few not yet acknowledged by the broker: those messages end by the receipt
window (``undelivered``, 30008), explained, never silently. A record with header
``telex.resend.avoid`` is a resend the status stage ordered after a failed receipt: it may go
out again although the journal says SUBMITTED, through another route when there is one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any

import structlog
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from connectors.base import Connector, ConnectorError, ErrorKind, SubmitRequest, SubmitResult
from pipeline.codec import AvroCodec
from pipeline.errors import CheckpointError, ConfigError
from pipeline.headers import H_RESEND_AVOID, H_TIMER_DUE
from pipeline.metrics import (
    CONNECTOR_BREAKER_STATE,
    CONNECTOR_SUBMIT_SECONDS,
    CONNECTOR_SUBMITS,
    CONNECTOR_WINDOW_IN_USE,
    RECORDS,
    RETRIES,
)
from pipeline.producing import produce_waiting
from pipeline.records import IN_DOUBT, RESENDABLE_CHANNELS, receipt_key, update_record
from pipeline.runtime.deadletter import counted, dead_letter_topic, headers_of
from pipeline.runtime.delay import delay_headers, tier_for, tier_topic
from pipeline.runtime.membership import is_lost_membership
from pipeline.settings import Settings
from pipeline.stages.dispatch import decision
from pipeline.stages.dispatch.carriers import Carriers
from pipeline.stages.dispatch.journal import Journal
from pipeline.stages.dispatch.routing import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    choose,
    counts_against_health,
)

STAGE = "dispatch"
_BREAKER_LEVEL = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
IN_TOPIC = "dispatch-ready"

log = structlog.get_logger("telex.dispatch")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class DispatchWorker:
    """Consumes dispatch-ready and submits through the configured connectors."""

    def __init__(self, settings: Settings, carriers: Carriers | None = None,
                 rng: random.Random | None = None) -> None:
        if carriers is None:
            if not settings.carriers_file:
                raise ConfigError("the dispatch stage needs TELEX_CARRIERS_FILE")
            carriers = Carriers.from_file(settings.carriers_file)
        self._settings = settings
        self._carriers = carriers
        self._codec = AvroCodec.from_settings(settings)
        self._journal = Journal(settings, self._codec)
        self._rng = rng or random.Random()
        self._connectors: dict[str, Connector] = {}
        self._unstarted: set[str] = set()
        self._starting: set[str] = set()
        self._breakers = {name: carriers.breaker(name) for name in carriers.connectors}
        self._consumer = Consumer(settings.consumer_config(settings.topic(STAGE)))
        self._producer = Producer(settings.producer_config())
        self._running = True
        self._outcomes = {o: RECORDS.labels(STAGE, o) for o in (
            "submitted", "failed", "retry", "duplicate", "in_doubt_resend", "receipt")}
        self._receipt_tasks: set[asyncio.Task[None]] = set()
        self._between_batches = True  # every journal record so far acknowledged

    def stop(self) -> None:
        self._running = False

    async def run(self) -> None:
        for name in self._carriers.connectors:
            await self._start_connector(name)
        self._consumer.subscribe([self._settings.topic(IN_TOPIC)], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        next_checkpoint = time.monotonic() + self._settings.commit_interval_s
        try:
            while self._running:
                batch = await asyncio.to_thread(
                    self._consumer.consume, self._settings.dispatch_batch, 0.05)
                # A record of a partition revoked during the poll is the next owner's.
                records = [m for m in batch
                           if m.error() is None and self._journal.owns(m.partition())]
                if records:
                    await self._dispatch(records)
                if time.monotonic() >= next_checkpoint:
                    # Between batches every journal record produced so far is acknowledged.
                    swept = self._journal.checkpoint()
                    if swept:
                        log.info("journal_swept", entries=swept)
                    next_checkpoint = time.monotonic() + self._settings.commit_interval_s
        finally:
            for connector in self._connectors.values():
                await connector.close()
            for task in self._receipt_tasks:
                task.cancel()
            await asyncio.to_thread(self._producer.flush, 30)
            self._consumer.close()
            self._journal.close()

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
        async for receipt in connector.receipts():
            self._produce("carrier-receipts",
                          receipt_key(receipt.connector, receipt.carrier_message_id),
                          self._codec.encode("carrier_receipt", receipt.to_record()))
            self._outcomes["receipt"].inc()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        loaded = self._journal.assign([tp.partition for tp in partitions])
        log.info("journal_loaded", partitions=[tp.partition for tp in partitions],
                 entries=loaded)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Between batches every journal record produced so far was flushed with its batch;
        # not after a batch that failed (the store then drops what it did not persist).
        self._journal.revoke([tp.partition for tp in partitions], durable=self._between_batches)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._journal.revoke([tp.partition for tp in partitions], durable=False)

    async def _dispatch(self, records: list[Message]) -> None:
        self._between_batches = False
        await self._dispatch_batch(records)
        self._between_batches = True

    async def _dispatch_batch(self, records: list[Message]) -> None:
        now = _now_ms()
        to_submit: list[tuple[Message, dict[str, Any], str]] = []
        attempting: set[str] = set()  # message ids this batch journaled ATTEMPTING for
        for msg in records:
            try:
                message = self._codec.decode(msg.value(), expected="message_accepted")
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
                avoid = next((v.decode() for k, v in msg.headers() or ()
                              if k == H_RESEND_AVOID and v is not None), None)
                plan = self._plan(message, now, avoid, msg.value(), msg.partition())
            except Exception as exc:  # routed, counted and logged, never raised
                self._dead_letter(msg, exc, now)
                continue
            if plan is not None:
                self._journal_write(msg.partition(), decision.attempting_entry(
                    message, plan, now))
                attempting.add(message["message_id"])
                to_submit.append((msg, message, plan))
        await self._flush()

        results = await asyncio.gather(
            *(self._submit(message, connector) for _, message, connector in to_submit),
            return_exceptions=True)
        done = _now_ms()
        for (msg, message, connector), result in zip(to_submit, results, strict=True):
            self._settle(message, connector, result, done, msg.value(), msg.partition())
        await self._flush()
        offsets: dict[tuple[str, int], int] = {}
        for msg in records:
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        try:
            await asyncio.to_thread(self._consumer.commit, offsets=[
                TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            if not is_lost_membership(exc):
                raise
            # The group moved on without us (e.g. the broker was away longer than the session
            # timeout): the new owner re-reads these records and the journal skips what was
            # submitted. Nothing to undo; rejoining is the consumer's job.
            log.warning("commit_after_lost_membership", error=exc.args[0].str(),
                        partitions=sorted({p for _, p in offsets}))

    def _plan(self, message: Mapping[str, Any], now: int, avoid: str | None,
              raw: bytes | None, partition: int) -> str | None:
        """The connector to submit through, or None when nothing must be sent. ``avoid``: a
        resend after a failed receipt, to go through another connector when there is one."""
        latest = self._journal.get(partition, message["message_id"])
        plan = decision.plan(latest, message, now, resend=avoid is not None,
                             reconcile_window_ms=int(self._settings.in_doubt_window_s * 1000))
        resolved = plan.in_doubt
        if resolved is not None:
            assert latest is not None  # only an ATTEMPTING entry is in doubt
            self._journal_write(partition, dict(resolved.journal))
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
            self._settle(dict(message), "none", expired, now, None, partition)
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
                partition: int) -> None:
        if isinstance(result, BaseException) and not isinstance(result, ConnectorError):
            result = ConnectorError(ErrorKind.SERVER_ERROR, f"{type(result).__name__}: {result}")
        outcome = decision.on_result(message, result, now, self._rng, connector=connector,
                                     schedule=self._settings.retry_schedule_s)
        self._journal_write(partition, dict(outcome.journal))
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

    def _journal_write(self, partition: int, entry: dict[str, Any]) -> None:
        """Journal ``entry`` on the partition of the record it is about: the journal topic is
        the changelog of that partition's store (same key, same partition number)."""
        self._journal.record(partition, entry)
        produce_waiting(self._producer, self._journal.topic, key=entry["message_id"],
                        value=self._codec.encode("dispatch_journal_entry", entry),
                        partition=partition, on_delivery=self._journal_landed)

    def _journal_landed(self, err: KafkaError | None, msg: Message) -> None:
        _check_delivery(err, msg)
        self._journal.delivered(msg.partition(), msg.offset())

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
        produce_waiting(self._producer, self._settings.topic(topic), key=key, value=value,
                        headers=headers or [], on_delivery=_check_delivery)

    async def _flush(self) -> None:
        if await asyncio.to_thread(self._producer.flush, 30) != 0:
            raise CheckpointError("dispatch: journal or outputs not acknowledged within 30 s")

    def _dead_letter(self, msg: Message, exc: Exception, now: int) -> None:
        key = msg.key().decode() if msg.key() else ""
        self._produce(dead_letter_topic(STAGE), key, msg.value() or b"",
                      headers_of(msg, STAGE, exc, now, key))
        counted(STAGE, exc, msg.topic(), msg.partition(), msg.offset())


def _check_delivery(err: KafkaError | None, _msg: Message) -> None:
    if err is not None:
        raise CheckpointError(f"dispatch: delivery failed: {err.str()}")


def run(settings: Settings) -> int:
    """``telex worker dispatch``: submit until SIGTERM/SIGINT."""
    import asyncio
    import signal

    from pipeline.topics import admin_client, apply_topics, catalogue

    apply_topics(admin_client(settings), catalogue(settings))
    dispatch = DispatchWorker(settings)
    signal.signal(signal.SIGTERM, lambda *_: dispatch.stop())
    signal.signal(signal.SIGINT, lambda *_: dispatch.stop())
    asyncio.run(dispatch.run())
    return 0
