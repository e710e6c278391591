"""An SMPP 3.4 SMSC on loopback, for tests and benchmarks: ``python -m connectors.simulators.smsc``.

It answers binds (checking credentials), submit_sm (with configurable latency, a throughput
cap and injected faults, see :mod:`connectors.simulators.smsc_model`), enquire_link and unbind,
and sends delivery receipts as deliver_sm after a delay. Every submit_sm is recorded in
:attr:`SmscSimulator.submits`, so a test can count parts per message and a benchmark can
measure rates on the server side.

Receipts go to a live transceiver/receiver session of the same system_id; when none is bound
they wait for the next bind, as an SMSC stores them. Receipt chaos (early, duplicated, lost,
out-of-order receipts and receipts for ids never issued) is decided per submit and recorded in
:attr:`SubmitRecord.receipts`, so a test knows every message's expected final state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import struct
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TextIO

from connectors.simulators.smsc_model import (
    Decider,
    Faults,
    IdAllocator,
    IdFormat,
    ReceiptForm,
    ReceiptPlan,
    ReceiptRecord,
    SmscConfig,
    SubmitRecord,
)
from connectors.smpp import pdu as p
from connectors.smpp.encoding import Concat, decode_text, split_udh
from connectors.smpp.receipt import MESSAGE_STATES, receipt_text

_STATE_OF_STAT = {stat: state for state, stat in MESSAGE_STATES.items()}
_BINDS = (p.BindTransceiver, p.BindTransmitter, p.BindReceiver)
_HEADER = struct.Struct(">IIII")


@dataclass(slots=True, eq=False)  # identity-hashed: sessions live in a set
class _Session:
    writer: asyncio.StreamWriter
    system_id: str | None = None
    receives: bool = False  # transceiver or receiver: may be sent deliver_sm
    seq: int = 0
    outstanding: dict[int, _Receipt] = field(default_factory=dict)
    out: list[bytes] = field(default_factory=list)

    def send(self, pdu: p.Pdu) -> None:
        """Queue ``pdu``; a loop iteration's PDUs leave in one write, as a busy SMSC's do."""
        self.send_raw(p.encode(pdu))

    def send_raw(self, frame: bytes) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush)
        self.out.append(frame)

    def flush(self) -> None:
        out, self.out = self.out, []
        if out and not self.writer.is_closing():
            self.writer.write(b"".join(out))

    def next_seq(self) -> int:
        self.seq = self.seq % 0x7FFFFFFF + 1
        return self.seq


@dataclass(frozen=True, slots=True)
class _Receipt:
    system_id: str
    number: int
    record: SubmitRecord
    stat: str
    duplicate: bool = False
    early: bool = False
    unknown: bool = False


class SmscSimulator:
    """``async with SmscSimulator(SmscConfig()) as smsc:`` then connect to ``smsc.port``."""

    def __init__(self, config: SmscConfig | None = None, faults: Faults | None = None) -> None:
        self.config = config or SmscConfig()
        self.faults = faults or Faults()
        # Bounded when ``keep_records`` is set: a long-running simulator must not grow.
        keep = self.config.keep_records
        self.submits: deque[SubmitRecord] | list[SubmitRecord] = (
            deque(maxlen=keep) if keep is not None else [])
        self.receipts_sent: deque[ReceiptRecord] | list[ReceiptRecord] = (
            deque(maxlen=keep) if keep is not None else [])
        self.submit_count = 0
        self.binds = 0
        self.enquire_links = 0
        self._decide = Decider(self.config, self.faults)
        self._ids = IdAllocator(self.config.id_format, self.config.id_width,
                                random.Random(self.config.seed).randrange(1 << 24, 1 << 32))
        self._sessions: set[_Session] = set()
        self._parked: defaultdict[str, list[_Receipt]] = defaultdict(list)
        self._server: asyncio.Server | None = None
        self._stopped = False
        self._submit_log: TextIO | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def bound_sessions(self) -> int:
        return sum(1 for s in self._sessions if s.system_id)

    def receipt_plans(self) -> dict[str, ReceiptPlan]:
        """Receipt decisions so far, by the message id issued in submit_sm_resp."""
        return {r.receipts.message_id: r.receipts for r in self.submits if r.receipts}

    async def start(self) -> None:
        if self.config.submit_log:
            # Block-buffered and flushed every 100 ms: a write per submit costs the simulator
            # more than the submit itself at thousands per second.
            self._submit_log = open(self.config.submit_log, "a")  # noqa: SIM115
            self._flush_log()
        self._server = await asyncio.start_server(self._serve, self.config.host, self.config.port)

    def _flush_log(self) -> None:
        if self._submit_log is not None and not self._submit_log.closed:
            self._submit_log.flush()
            asyncio.get_running_loop().call_later(0.1, self._flush_log)

    async def stop(self) -> None:
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self._submit_log is not None:
            self._submit_log.close()

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_connections(self) -> int:
        """Abort every TCP connection now, as a crashing SMSC would; returns how many."""
        sessions = list(self._sessions)
        for session in sessions:
            session.writer.transport.abort()
        return len(sessions)

    async def unbind_all(self) -> None:
        """Ask every bound ESME to unbind (a polite SMSC restart)."""
        for session in list(self._sessions):
            if session.system_id:
                session.send(p.Unbind(sequence=session.next_seq()))

    # Connection handling ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer)
        self._sessions.add(session)
        buffer = b""
        try:
            # Whatever has arrived is read at once and split into frames here: two awaits per
            # PDU (length, then body) cost more than the PDU's handling.
            while not self._stopped:
                data = await reader.read(1 << 16)
                if not data:
                    break
                buffer = self._on_data(session, buffer + data if buffer else data)
        except (ConnectionError, p.PduError):
            pass
        finally:
            self._sessions.discard(session)
            writer.transport.abort()

    def _on_data(self, session: _Session, data: bytes) -> bytes:
        """Handle every complete frame of ``data``; returns the incomplete rest."""
        offset, size = 0, len(data)
        while size - offset >= 16 and not self._stopped:
            length, command_id, status, seq = _HEADER.unpack_from(data, offset)
            if not 16 <= length <= p.MAX_PDU:
                raise p.PduError(f"command_length {length} outside 16..{p.MAX_PDU}")
            if size - offset < length:
                break
            if command_id == p.CommandId.DELIVER_SM_RESP:  # the commonest PDU: no decoding
                self._on_deliver_resp(session, seq, status)
            else:
                self._on_pdu(session, p.decode(data[offset:offset + length]))
            offset += length
        return data[offset:]

    def _on_pdu(self, session: _Session, pdu: p.Pdu) -> None:
        if isinstance(pdu, p.SubmitSm):
            self._on_submit(session, pdu)
        elif isinstance(pdu, p.DeliverSmResp):
            self._on_deliver_resp(session, pdu.sequence, pdu.status)
        elif isinstance(pdu, p.EnquireLink):
            self.enquire_links += 1
            if not self.faults.ignore_enquire_link:
                session.send(p.EnquireLinkResp(sequence=pdu.sequence))
        elif isinstance(pdu, _BINDS):
            self._on_bind(session, pdu)
        elif isinstance(pdu, p.Unbind):
            session.send(p.UnbindResp(sequence=pdu.sequence))
            session.flush()
            session.system_id = None
            session.writer.close()
        elif isinstance(pdu, p.UnknownPdu):
            session.send(p.GenericNack(sequence=pdu.sequence, status=p.Status.ESME_RINVCMDID))
        elif not pdu.is_response:
            resp = p.RESPONSE_OF.get(pdu.command_id, p.GenericNack)
            session.send(resp(sequence=pdu.sequence, status=p.Status.ESME_RINVCMDID))

    def _on_bind(self, session: _Session, pdu: p.BindTransceiver) -> None:
        resp_type = p.RESPONSE_OF[pdu.command_id]
        if session.system_id:
            status = p.Status.ESME_RALYBND
        elif pdu.system_id not in self.config.accounts:
            status = p.Status.ESME_RINVSYSID
        elif self.config.accounts[pdu.system_id] != pdu.password:
            status = p.Status.ESME_RINVPASWD
        else:
            status = p.Status.ESME_ROK
        resp = resp_type(sequence=pdu.sequence, status=status, system_id="telexsim")
        session.send(resp)
        if status == p.Status.ESME_ROK:
            self.binds += 1
            session.system_id = pdu.system_id
            session.receives = not isinstance(pdu, p.BindTransmitter)
            if session.receives:
                for receipt in self._parked.pop(pdu.system_id, []):
                    self._send_receipt(receipt)

    def _on_submit(self, session: _Session, pdu: p.SubmitSm) -> None:
        if not session.system_id:
            session.send(p.SubmitSmResp(sequence=pdu.sequence, status=p.Status.ESME_RINVBNDSTS))
            return
        drop = self._decide.should_drop()
        status = None if drop else self._decide.submit_status(pdu.destination_addr)
        number, message_id = self._ids.allocate() if status == p.Status.ESME_ROK else (0, None)
        plan = None
        if message_id and pdu.registered_delivery & 0x01 and (
                self.config.receipt_form is not ReceiptForm.NONE):
            plan = self._plan(message_id, self._decide.outcome(pdu.destination_addr))
        record = _record(session.system_id, pdu, status, message_id, plan)
        self.submits.append(record)
        self.submit_count += 1
        if self._submit_log is not None:
            self._submit_log.write(f"{time.time_ns() // 1_000_000} {record.text}\n")
        if drop:
            session.writer.transport.abort()
            return
        if status is None:
            return
        resp = _submit_resp(pdu.sequence, status, message_id)
        loop = asyncio.get_running_loop()
        receipts = self._receipts(session.system_id, number, record, plan) if plan else []
        if plan and plan.early:
            # Queued before the response: with one session both leave in one write, receipt
            # first, so the ESME reads a receipt for an id it has not been told yet.
            self._send_receipts([r for r in receipts if not r.unknown])
            receipts = [r for r in receipts if r.unknown]
        if self.config.latency_s > 0:
            loop.call_later(self.config.latency_s, session.send_raw, resp)
        else:
            session.send_raw(resp)
        if receipts:
            # One callback for the whole sequence: timers due at the same instant have no
            # guaranteed order, and out-of-order receipts must leave in the planned order.
            delay = self.config.latency_s + self.config.receipt_delay_s
            loop.call_later(delay, self._send_receipts, receipts)

    def _plan(self, message_id: str, stat: str) -> ReceiptPlan:
        duplicate, lost, early, out_of_order, unknown = self._decide.receipt_chaos(stat)
        stats: list[str] = [] if lost else [stat]
        if duplicate:
            stats.append(stat)
        if out_of_order:
            stats.append(self.faults.intermediate_stat)
        unknown_id = None
        if unknown:  # a number taken from the allocator is never issued to a submit
            unknown_id = self._ids.render(self._ids.allocate()[0],
                                          other=self.config.receipt_ids_other_form)
        return ReceiptPlan(message_id, stat, tuple(stats), early=early, duplicate=duplicate,
                           lost=lost, out_of_order=out_of_order, unknown_id=unknown_id)

    def _receipts(self, system_id: str, number: int, record: SubmitRecord,
                  plan: ReceiptPlan) -> list[_Receipt]:
        """The receipts of ``plan`` in wire order (the unknown id's last)."""
        receipts = [_Receipt(system_id, number, record, stat, duplicate=i > 0 and stat == plan.stat,
                             early=plan.early) for i, stat in enumerate(plan.stats)]
        if plan.unknown_id is not None:
            receipts.append(_Receipt(system_id, -1, record, plan.stat, unknown=True))
        return receipts

    # Receipts ----------------------------------------------------------------------------

    def _send_receipts(self, receipts: list[_Receipt]) -> None:
        for receipt in receipts:
            self._send_receipt(receipt)

    def _send_receipt(self, receipt: _Receipt) -> None:
        if self._stopped:
            return
        target = next((s for s in self._sessions
                       if s.system_id == receipt.system_id and s.receives), None)
        if target is None:
            self._parked[receipt.system_id].append(receipt)
            return
        rec = receipt.record
        if receipt.unknown:
            assert rec.receipts is not None and rec.receipts.unknown_id is not None
            reported = rec.receipts.unknown_id
        else:
            reported = self._ids.render(receipt.number, other=self.config.receipt_ids_other_form)
        submitted = datetime.now(UTC) - _age(rec.at)
        text = receipt_text(reported, receipt.stat, submit=submitted, done=datetime.now(UTC),
                            err="000" if receipt.stat == "DELIVRD" else "001",
                            # the receipt is latin-1: a UCS-2 text's other characters become ?
                            text=rec.text.encode("latin-1", "replace").decode("latin-1"))
        tlvs: dict[int, bytes] = {}
        if self.config.receipt_form is ReceiptForm.TLV:
            tlvs = {p.Tag.RECEIPTED_MESSAGE_ID: p.tlv_cstring(reported),
                    p.Tag.MESSAGE_STATE: p.tlv_u8(_STATE_OF_STAT.get(receipt.stat, 7))}
        seq = target.next_seq()
        target.outstanding[seq] = receipt
        target.send(p.DeliverSm(
            sequence=seq, source_addr=rec.destination_addr, destination_addr=rec.source_addr,
            esm_class=0x04, short_message=text.encode("latin-1"), tlvs=tlvs))
        self.receipts_sent.append(ReceiptRecord(time.monotonic(), receipt.system_id, reported,
                                                receipt.stat, receipt.duplicate,
                                                early=receipt.early, unknown=receipt.unknown))

    def _on_deliver_resp(self, session: _Session, sequence: int, status: int) -> None:
        receipt = session.outstanding.pop(sequence, None)
        if receipt is not None and status != p.Status.ESME_ROK:
            asyncio.get_running_loop().call_later(
                self.config.receipt_retry_s, self._send_receipt, receipt)


def _submit_resp(sequence: int, status: int, message_id: str | None) -> bytes:
    """submit_sm_resp wire bytes (what ``p.encode(p.SubmitSmResp(...))`` gives, cheaper)."""
    if status != p.Status.ESME_ROK:  # a failed response carries no body
        return _HEADER.pack(16, p.CommandId.SUBMIT_SM_RESP, status, sequence)
    body = (message_id or "").encode("latin-1") + b"\x00"
    return _HEADER.pack(16 + len(body), p.CommandId.SUBMIT_SM_RESP, status, sequence) + body


def _age(monotonic_at: float) -> timedelta:
    return timedelta(seconds=max(0.0, time.monotonic() - monotonic_at))


def _record(system_id: str, pdu: p.SubmitSm, status: int | None, message_id: str | None,
            receipts: ReceiptPlan | None) -> SubmitRecord:
    concat, payload = split_udh(pdu.esm_class, pdu.short_message)
    if concat is None and p.Tag.SAR_TOTAL_SEGMENTS in pdu.tlvs:
        concat = Concat(p.tlv_int(pdu, p.Tag.SAR_MSG_REF_NUM) or 0,
                        p.tlv_int(pdu, p.Tag.SAR_TOTAL_SEGMENTS) or 0,
                        p.tlv_int(pdu, p.Tag.SAR_SEGMENT_SEQNUM) or 0)
    return SubmitRecord(
        at=time.monotonic(), system_id=system_id, source_addr=pdu.source_addr,
        destination_addr=pdu.destination_addr, esm_class=pdu.esm_class,
        data_coding=pdu.data_coding, registered_delivery=pdu.registered_delivery,
        validity_period=pdu.validity_period, short_message=pdu.short_message,
        text=decode_text(pdu.data_coding, payload), concat=concat, status=status,
        message_id=message_id, receipts=receipts)


# Command line --------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> tuple[SmscConfig, Faults]:
    ap = argparse.ArgumentParser(prog="python -m connectors.simulators.smsc",
                                 description="SMPP 3.4 SMSC simulator (loopback).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2775)
    ap.add_argument("--account", action="append", default=[], metavar="SYSTEM_ID:PASSWORD",
                    help="accepted credentials (repeatable; default telex:secret)")
    ap.add_argument("--id-format", choices=[f.value for f in IdFormat], default="hex")
    ap.add_argument("--receipt-ids-other-form", action="store_true")
    ap.add_argument("--receipt-form", choices=[f.value for f in ReceiptForm], default="text")
    ap.add_argument("--receipt-delay-ms", type=float, default=0.0)
    ap.add_argument("--outcome", action="append", default=[], metavar="STAT:WEIGHT",
                    help="receipt outcome mix, e.g. DELIVRD:0.9 UNDELIV:0.1")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--max-rate", type=float, default=None, help="submits/s before THROTTLED")
    ap.add_argument("--throttle-rate", type=float, default=0.0)
    ap.add_argument("--reject-rate", type=float, default=0.0)
    ap.add_argument("--no-response-rate", type=float, default=0.0)
    ap.add_argument("--duplicate-receipt-rate", type=float, default=0.0)
    ap.add_argument("--early-receipt-rate", type=float, default=0.0,
                    help="receipt sent before the submit_sm_resp")
    ap.add_argument("--unknown-receipt-rate", type=float, default=0.0,
                    help="extra receipt for an id never issued")
    ap.add_argument("--lost-receipt-rate", type=float, default=0.0, help="no receipt at all")
    ap.add_argument("--out-of-order-rate", type=float, default=0.0,
                    help="final stat first, then --intermediate-stat")
    ap.add_argument("--intermediate-stat", choices=["ENROUTE", "ACCEPTD"], default="ENROUTE")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--outcome-by-recipient", action="store_true",
                    help="outcome from (seed, destination), not from the order of arrival")
    ap.add_argument("--submit-log", default=None, metavar="PATH",
                    help="append '<wall ms> <text>' per submit_sm (benchmarks)")
    ap.add_argument("--keep-records", type=int, default=10_000, metavar="N",
                    help="records of submits and receipts kept in memory (the last N)")
    a = ap.parse_args(argv)
    accounts = dict(x.split(":", 1) for x in a.account) or {"telex": "secret"}
    outcomes = {k: float(v) for k, v in (x.split(":", 1) for x in a.outcome)} or {"DELIVRD": 1.0}
    config = SmscConfig(
        host=a.host, port=a.port, accounts=accounts, id_format=IdFormat(a.id_format),
        receipt_ids_other_form=a.receipt_ids_other_form, receipt_form=ReceiptForm(a.receipt_form),
        receipt_delay_s=a.receipt_delay_ms / 1000, outcomes=outcomes,
        latency_s=a.latency_ms / 1000, max_submits_per_s=a.max_rate, seed=a.seed,
        outcome_by_recipient=a.outcome_by_recipient,
        submit_log=a.submit_log, keep_records=a.keep_records)
    faults = Faults(throttle_rate=a.throttle_rate, reject_rate=a.reject_rate,
                    no_response_rate=a.no_response_rate,
                    duplicate_receipt_rate=a.duplicate_receipt_rate,
                    early_receipt_rate=a.early_receipt_rate,
                    unknown_receipt_rate=a.unknown_receipt_rate,
                    lost_receipt_rate=a.lost_receipt_rate, out_of_order_rate=a.out_of_order_rate,
                    intermediate_stat=a.intermediate_stat)
    return config, faults


async def _main(config: SmscConfig, faults: Faults) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SmscSimulator(config, faults) as smsc:
        print(f"smsc listening on {config.host}:{smsc.port}", flush=True)
        await stop.wait()
        print(f"smsc stopping after {smsc.submit_count} submit_sm", flush=True)


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(*_parse_args(argv)))


if __name__ == "__main__":
    main()
