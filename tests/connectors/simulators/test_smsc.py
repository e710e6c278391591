"""The SMSC simulator itself: protocol rules, recording, the thread host and the CLI."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from connectors.base import SubmitRequest
from connectors.simulators.bench_smpp import smsc_process
from connectors.simulators.smsc_model import SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from connectors.smpp import SmppClient, SmppConfig
from connectors.smpp import pdu as p
from tests.fixtures.waiting import until, until_sync


class RawEsme:
    """A blocking SMPP peer built on the codec alone, to poke the simulator directly."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.seq = 0

    def request(self, pdu: p.Pdu) -> p.Pdu:
        self.seq += 1
        pdu.sequence = self.seq
        self.sock.sendall(p.encode(pdu))
        return self.read()

    def read(self) -> p.Pdu:
        head = self._exactly(4)
        (length,) = struct.unpack(">I", head)
        return p.decode(head + self._exactly(length - 4))

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data


@contextmanager
def raw(port: int) -> Iterator[RawEsme]:
    esme = RawEsme(port)
    try:
        yield esme
    finally:
        esme.sock.close()


def test_binds_check_credentials_and_state() -> None:
    """Unknown system_id, wrong password, submit before bind and a second bind are refused."""
    with ThreadedSmsc(SmscConfig(accounts={"acme": "pw"})) as smsc, raw(smsc.port) as esme:
        assert esme.request(p.SubmitSm()).status == p.Status.ESME_RINVBNDSTS
        assert esme.request(p.BindTransceiver(system_id="nobody", password="pw")).status == (
            p.Status.ESME_RINVSYSID)
        assert esme.request(p.BindTransceiver(system_id="acme", password="no")).status == (
            p.Status.ESME_RINVPASWD)
        ok = esme.request(p.BindTransceiver(system_id="acme", password="pw"))
        assert isinstance(ok, p.BindTransceiverResp) and ok.status == 0
        assert esme.request(p.BindTransceiver(system_id="acme", password="pw")).status == (
            p.Status.ESME_RALYBND)
        assert isinstance(esme.request(p.EnquireLink()), p.EnquireLinkResp)
        nack = esme.request(p.UnknownPdu(raw_command_id=0x00000003))
        assert isinstance(nack, p.GenericNack) and nack.status == p.Status.ESME_RINVCMDID


def test_records_submits_with_udh_and_sar_parts() -> None:
    """Each submit_sm is recorded with decoded text and concatenation from UDH or sar TLVs."""
    with ThreadedSmsc() as smsc, raw(smsc.port) as esme:
        esme.request(p.BindTransceiver(system_id="telex", password="secret"))
        esme.request(p.SubmitSm(destination_addr="1", esm_class=0x40,
                                validity_period="000000010000000R",
                                short_message=bytes.fromhex("050003 09 02 01") + b"hi"))
        esme.request(p.SubmitSm(destination_addr="2", short_message=b"yo", tlvs={
            p.Tag.SAR_MSG_REF_NUM: p.tlv_u16(300), p.Tag.SAR_TOTAL_SEGMENTS: p.tlv_u8(2),
            p.Tag.SAR_SEGMENT_SEQNUM: p.tlv_u8(2)}))
        udh, sar = smsc.submits
    assert (udh.text, udh.concat and udh.concat.ref, udh.validity_period) == (
        "hi", 9, "000000010000000R")
    assert (sar.text, sar.concat and (sar.concat.ref, sar.concat.total, sar.concat.seq)) == (
        "yo", (300, 2, 2))
    assert udh.system_id == "telex" and udh.message_id and udh.status == 0


def test_receipts_wait_for_a_receiver_bind() -> None:
    """Submitted on a transmitter bind, the receipt is stored until a receiver binds."""
    with ThreadedSmsc() as smsc:
        with raw(smsc.port) as tx:
            tx.request(p.BindTransmitter(system_id="telex", password="secret"))
            resp = tx.request(p.SubmitSm(destination_addr="1", registered_delivery=1,
                                         short_message=b"x"))
            assert isinstance(resp, p.SubmitSmResp)
        assert smsc.receipts_sent == []
        with raw(smsc.port) as rx:
            assert rx.request(p.BindReceiver(system_id="telex", password="secret")).status == 0
            dsm = rx.read()
        until_sync(lambda: len(smsc.receipts_sent) == 1, what="receipt sent")
    assert isinstance(dsm, p.DeliverSm) and dsm.esm_class == 0x04
    assert f"id:{resp.message_id} " in dsm.short_message.decode()


def test_threaded_host_serves_an_asyncio_client() -> None:
    """ThreadedSmsc runs on its own loop; call() reaches into it (here: drop the bind)."""
    with ThreadedSmsc() as smsc:
        async def scenario() -> None:
            cfg = SmppConfig("127.0.0.1", smsc.port, "telex", "secret",
                             reconnect_initial_s=0.02)
            async with SmppClient(cfg) as esme:
                await esme.submit(SubmitRequest("a", "Telex", "+1555", "one"))
                assert smsc.call(lambda sim: sim.drop_connections()) == 1
                await until(lambda: smsc.simulator.binds == 2 and esme.health.connected)
                await esme.submit(SubmitRequest("b", "Telex", "+1555", "two"))

        asyncio.run(scenario())
        assert [r.text for r in smsc.submits] == ["one", "two"]
        assert smsc.simulator.binds == 2


def test_command_line_simulator() -> None:
    """``python -m connectors.simulators.smsc`` serves a bind and submits on its port."""
    async def scenario(port: int) -> str:
        async with SmppClient(SmppConfig("127.0.0.1", port, "telex", "secret")) as esme:
            result = await esme.submit(SubmitRequest("m", "Telex", "+1555", "hi"))
            return result.carrier_message_id

    with smsc_process(["--id-format", "decimal"]) as port:
        carrier_id = asyncio.run(scenario(port))
    assert carrier_id
