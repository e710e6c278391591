"""An asyncio SMPP 3.4 ESME: one bind_transceiver, a window of outstanding submit_sm.

Throughput comes from pipelining: up to ``window`` submit_sm are on the wire at once, each
waiting on a future keyed by sequence number, so a submit costs one write and one wake-up, not
a round trip of its own. A background task owns the session: connect, bind, read every PDU,
keep the link alive with enquire_link and, when the connection dies, fail what is in flight
(retryable ``connection_lost``) and reconnect with exponential backoff.

Multipart messages: every part is one submit_sm; the SubmitResult's ``carrier_message_id`` is
the *first* part's id and ``part_ids`` keeps them all, since the SMSC sends a receipt per part.
If any part fails, the submit raises (a permanent error wins over a retryable one); parts
already accepted stay accepted, so a retry may deliver them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, timezone

import structlog

from connectors.base import (
    BindError,
    ConnectorError,
    ErrorKind,
    Health,
    IdBase,
    Receipt,
    ReceiptStream,
    SubmitRequest,
    SubmitResult,
    normalise_message_id,
    now_ms,
)
from connectors.smpp import pdu as p
from connectors.smpp.encoding import is_receipt
from connectors.smpp.receipt import receipt_from_deliver_sm
from connectors.smpp.status import SESSION_ERRORS, status_error
from connectors.smpp.submit import build_submit_sms, worst_error

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SmppConfig:
    """One bind to one SMSC. ``*_id_base`` say how the SMSC writes ids in each place."""

    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    system_type: str = ""
    name: str = "smpp"
    window: int = 10
    response_timeout_s: float = 10.0
    bind_timeout_s: float = 10.0
    enquire_link_s: float = 30.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    submit_id_base: IdBase = IdBase.HEX
    receipt_id_base: IdBase = IdBase.HEX
    receipt_tz: timezone = UTC
    receipt_buffer: int = 10_000
    # Carrier id → message id, to fill Receipt.message_id. Only a receipt that beats
    # dispatch's announcement of the carrier id to the reconciler needs it, and such a receipt
    # comes within seconds of the submit_sm_resp; a later one is matched by carrier id. So
    # ids are kept ``remembered_s`` (and at most ``remembered_ids``), not until the count fills:
    # at a steady rate the map stops growing after ``remembered_s``.
    remembered_ids: int = 100_000
    remembered_s: float = 120.0


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[p.Pdu]
    timer: asyncio.TimerHandle
    message_id: str | None


class SmppClient:
    """The SMPP connector. Receipts go to ``on_receipt`` if given, else to :meth:`receipts`.

    ``on_receipt`` runs on the reader; if it raises, or the receipt buffer is full, the
    deliver_sm is answered ESME_RX_T_APPN so the SMSC redelivers it later.
    """

    def __init__(
        self, config: SmppConfig, *, on_receipt: Callable[[Receipt], None] | None = None
    ) -> None:
        self.name = config.name
        self._cfg = config
        self._on_receipt = on_receipt
        self._window = asyncio.Semaphore(config.window)
        self._in_flight = 0
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._ref = random.randrange(256)
        self._writer: asyncio.StreamWriter | None = None
        self._out: list[bytes] = []  # PDUs written in this loop iteration, sent together
        self._flush_scheduled = False
        self._bound = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._receipts = ReceiptStream(config.receipt_buffer)
        self._known: OrderedDict[str, str] = OrderedDict()
        self._known_at: deque[tuple[float, str]] = deque()  # (monotonic time, carrier id)
        self._reconnects = 0
        self._last_error: str | None = None

    # Lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and bind; raises BindError if refused, ConnectorError if unreachable."""
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(first), name=f"smpp-{self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(first), self._cfg.bind_timeout_s)
        except TimeoutError:
            await self.close()
            raise ConnectorError(ErrorKind.CONNECTION_LOST,
                                 f"no bind within {self._cfg.bind_timeout_s}s: "
                                 f"{self._last_error}") from None
        except BindError:
            await self.close()
            raise

    async def close(self) -> None:
        """Unbind politely (bounded wait), stop the session task, end :meth:`receipts`."""
        self._closing = True
        if self._bound.is_set() and self._writer is not None:
            with contextlib.suppress(ConnectorError, OSError):
                await asyncio.wait_for(self._request(p.Unbind()),
                                       min(2.0, self._cfg.response_timeout_s))
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._receipts.close()

    async def __aenter__(self) -> SmppClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def health(self) -> Health:
        return Health(self._bound.is_set(), self._in_flight, self._cfg.window,
                      self._reconnects, self._last_error)

    def receipts(self) -> AsyncIterator[Receipt]:
        return aiter(self._receipts)

    # Submitting ---------------------------------------------------------------------------

    async def submit(self, req: SubmitRequest) -> SubmitResult:
        """Send every part of ``req``; raises ConnectorError classified by command_status."""
        if self._closing:
            raise ConnectorError(ErrorKind.CONNECTION_LOST, "connector closed")
        pdus = build_submit_sms(req, self._next_ref())
        if len(pdus) == 1:
            ids = [await self._submit_one(pdus[0], req.message_id)]
        else:
            results = await asyncio.gather(
                *(self._submit_one(pdu, req.message_id) for pdu in pdus), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise worst_error(errors)
            ids = [r for r in results if isinstance(r, str)]
        return SubmitResult(ids[0], now_ms(), len(ids), tuple(ids))

    async def _submit_one(self, pdu: p.SubmitSm, message_id: str) -> str:
        async with self._window:
            self._in_flight += 1
            try:
                if not self._bound.is_set():
                    await self._wait_bound()
                resp = await self._request(pdu, message_id)
            finally:
                self._in_flight -= 1
        if resp.status:
            if resp.status in SESSION_ERRORS:
                self._abort("SMSC says session not bound")
            raise status_error(resp.status)
        if not isinstance(resp, p.SubmitSmResp):
            raise ConnectorError(ErrorKind.REJECTED, f"unexpected {type(resp).__name__}")
        return normalise_message_id(resp.message_id, self._cfg.submit_id_base)

    async def _wait_bound(self) -> None:
        try:
            await asyncio.wait_for(self._bound.wait(), self._cfg.response_timeout_s)
        except TimeoutError:
            raise ConnectorError(ErrorKind.CONNECTION_LOST,
                                 f"not bound: {self._last_error}") from None

    async def _request(self, pdu: p.Pdu, message_id: str | None = None) -> p.Pdu:
        """Send a request and await its response; timeout → retryable ConnectorError."""
        writer = self._writer
        if writer is None or (self._closing and not isinstance(pdu, p.Unbind)):
            raise ConnectorError(ErrorKind.CONNECTION_LOST, "not connected")
        pdu.sequence = self._next_seq()
        data = p.encode(pdu)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[p.Pdu] = loop.create_future()
        timer = loop.call_later(self._cfg.response_timeout_s, self._expire, pdu.sequence)
        self._pending[pdu.sequence] = _Pending(future, timer, message_id)
        self._send(data)
        try:
            return await future
        finally:
            entry = self._pending.pop(pdu.sequence, None)
            if entry is not None:
                entry.timer.cancel()

    def _send(self, data: bytes) -> None:
        """Queue a PDU; everything queued in one loop iteration leaves in one write.

        No drain(): what can be outstanding is bounded by the window (submits), one
        enquire_link, and the SMSC's own window (deliver_sm_resp), so the buffer cannot grow
        without limit, and one syscall per batch instead of per PDU roughly doubles throughput.
        """
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self._writer is not None:
            self._writer.write(b"".join(out))

    def _expire(self, seq: int) -> None:
        entry = self._pending.pop(seq, None)
        if entry is not None and not entry.future.done():
            entry.future.set_exception(ConnectorError(
                ErrorKind.TIMEOUT, f"no response within {self._cfg.response_timeout_s}s"))

    def _next_seq(self) -> int:
        while True:  # 1..0x7FFFFFFF (SMPP 3.4 §5.1.4), skipping numbers still in flight
            self._seq = self._seq % 0x7FFFFFFF + 1
            if self._seq not in self._pending:
                return self._seq

    def _next_ref(self) -> int:
        self._ref = (self._ref + 1) & 0xFF
        return self._ref

    # Session -------------------------------------------------------------------------------

    async def _run(self, first: asyncio.Future[None]) -> None:
        delay = self._cfg.reconnect_initial_s
        while not self._closing:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self._cfg.host, self._cfg.port),
                    self._cfg.bind_timeout_s)
                await asyncio.wait_for(self._bind(reader, writer), self._cfg.bind_timeout_s)
                self._writer = writer
                self._bound.set()
                delay = self._cfg.reconnect_initial_s
                if not first.done():
                    first.set_result(None)
                log.info("smpp_bound", connector=self.name, reconnects=self._reconnects)
                await self._session(reader, writer)
            except BindError as exc:
                self._last_error = str(exc)
                if not first.done():
                    first.set_exception(exc)
                    return
                log.warning("smpp_bind_refused", connector=self.name, error=str(exc))
            except (OSError, EOFError, TimeoutError, p.PduError, ConnectorError) as exc:
                if not self._closing:
                    self._last_error = repr(exc)
                    log.warning("smpp_connection_lost", connector=self.name, error=repr(exc))
            finally:
                self._bound.clear()
                self._writer = None
                self._out.clear()  # never replay a dead session's PDUs on the next one
                self._fail_pending(self._last_error or "connection closed")
                if writer is not None:
                    writer.transport.abort()
            if self._closing:
                return
            self._reconnects += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # backoff, not a readiness wait
            delay = min(delay * 2, self._cfg.reconnect_max_s)

    async def _bind(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self._cfg
        bind = p.BindTransceiver(sequence=self._next_seq(), system_id=cfg.system_id,
                                 password=cfg.password, system_type=cfg.system_type)
        writer.write(p.encode(bind))
        await writer.drain()
        while True:
            resp = await p.read_pdu(reader)
            if resp.sequence == bind.sequence and resp.is_response:
                break
        if resp.status or not isinstance(resp, p.BindTransceiverResp):
            raise BindError(ErrorKind.REJECTED, f"bind refused: {p.status_name(resp.status)}")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while True:
                self._handle(await p.read_pdu(reader))
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _keepalive(self) -> None:
        """enquire_link every ``enquire_link_s``; an unanswered one means the link is dead."""
        while True:
            await asyncio.sleep(self._cfg.enquire_link_s)
            try:
                await self._request(p.EnquireLink())
            except ConnectorError as exc:
                self._abort(f"enquire_link failed: {exc}")
                return

    def _handle(self, pdu: p.Pdu) -> None:
        if pdu.is_response:
            entry = self._pending.pop(pdu.sequence, None)
            if entry is None:
                return  # already timed out: the caller was told "timeout", keep it that way
            entry.timer.cancel()
            if isinstance(pdu, p.SubmitSmResp) and not pdu.status and entry.message_id:
                self._remember(pdu.message_id, entry.message_id)
            if not entry.future.done():
                entry.future.set_result(pdu)
        elif isinstance(pdu, p.DeliverSm):
            self._send(p.encode(p.DeliverSmResp(sequence=pdu.sequence,
                                                status=self._deliver(pdu))))
        elif isinstance(pdu, p.EnquireLink):
            self._send(p.encode(p.EnquireLinkResp(sequence=pdu.sequence)))
        elif isinstance(pdu, p.Unbind):
            log.info("smpp_unbound_by_peer", connector=self.name)
            self._bound.clear()  # submits wait for the rebind instead of going out now
            self._send(p.encode(p.UnbindResp(sequence=pdu.sequence)))
            self._flush()
            if self._writer is not None:
                self._writer.close()  # sends the unbind_resp; the reader sees EOF, we rebind
        else:
            resp_type = p.RESPONSE_OF.get(pdu.command_id, p.GenericNack)
            self._send(p.encode(resp_type(sequence=pdu.sequence,
                                          status=p.Status.ESME_RINVCMDID)))

    def _deliver(self, pdu: p.DeliverSm) -> int:
        """Hand a receipt on; the command_status to answer the deliver_sm with."""
        if not is_receipt(pdu.esm_class):
            log.info("smpp_mo_ignored", connector=self.name)  # inbound SMS: not handled yet
            return p.Status.ESME_ROK
        receipt = receipt_from_deliver_sm(
            pdu, connector=self.name, received_at_ms=now_ms(),
            id_base=self._cfg.receipt_id_base, tz=self._cfg.receipt_tz, message_ids=self._known)
        if receipt is None:
            log.warning("smpp_receipt_without_id", connector=self.name)
            return p.Status.ESME_ROK  # redelivery would not make it parseable
        if self._on_receipt is None:
            return p.Status.ESME_ROK if self._receipts.offer(receipt) else p.Status.ESME_RX_T_APPN
        try:
            self._on_receipt(receipt)
        except Exception:
            log.exception("smpp_receipt_callback_failed", connector=self.name)
            return p.Status.ESME_RX_T_APPN
        return p.Status.ESME_ROK

    def _remember(self, raw_id: str, message_id: str) -> None:
        key = normalise_message_id(raw_id, self._cfg.submit_id_base)
        now = time.monotonic()
        self._known[key] = message_id
        self._known_at.append((now, key))
        cutoff = now - self._cfg.remembered_s
        known, known_at = self._known, self._known_at
        while known_at and (known_at[0][0] < cutoff or len(known_at) > self._cfg.remembered_ids):
            _, old = known_at.popleft()
            known.pop(old, None)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            entry.timer.cancel()
            if not entry.future.done():
                entry.future.set_exception(ConnectorError(ErrorKind.CONNECTION_LOST, reason))

    def _abort(self, reason: str) -> None:
        self._last_error = reason
        if self._writer is not None:
            self._writer.transport.abort()

