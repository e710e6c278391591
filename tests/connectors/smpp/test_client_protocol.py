"""The client's answers to PDUs our simulator never sends, from a scripted SMSC on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from connectors.base import ConnectorError, ErrorKind, SubmitRequest
from connectors.smpp import SmppClient, SmppConfig
from connectors.smpp import pdu as p
from tests.fixtures.waiting import until

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _scripted(script: Script) -> tuple[asyncio.Server, list[p.Pdu]]:
    """A server that accepts one bind, then runs ``script``; ``seen`` gets what it reads."""
    seen: list[p.Pdu] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bind = await p.read_pdu(reader)
        writer.write(p.encode(p.BindTransceiverResp(sequence=bind.sequence, system_id="x")))
        try:
            await script(reader, writer)
            while True:
                seen.append(await p.read_pdu(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), seen


def _client(server: asyncio.Server) -> SmppClient:
    port = server.sockets[0].getsockname()[1]
    return SmppClient(SmppConfig("127.0.0.1", port, "u", "p", response_timeout_s=0.3))


async def test_generic_nack_to_a_submit_is_classified() -> None:
    """generic_nack ESME_RINVCMDLEN in answer to submit_sm → permanent rejection."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        submit = await p.read_pdu(reader)
        writer.write(p.encode(p.GenericNack(sequence=submit.sequence,
                                            status=p.Status.ESME_RINVCMDLEN)))

    server, _ = await _scripted(script)
    async with server, _client(server) as esme:
        with pytest.raises(ConnectorError) as info:
            await esme.submit(SubmitRequest("m", "Telex", "+1555", "hi"))
    assert (info.value.kind, info.value.retryable, info.value.carrier_error) == (
        ErrorKind.REJECTED, False, "ESME_RINVCMDLEN")


async def test_unknown_commands_mo_messages_and_unbind_are_answered() -> None:
    """query_sm → generic_nack RINVCMDID; an MO deliver_sm → deliver_sm_resp OK; the SMSC's
    enquire_link and unbind → their responses."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(p.encode(p.UnknownPdu(sequence=11, raw_command_id=0x00000003)))
        writer.write(p.encode(p.DeliverSm(sequence=12, esm_class=0x00, short_message=b"hi")))
        writer.write(p.encode(p.EnquireLink(sequence=13)))
        writer.write(p.encode(p.Unbind(sequence=14)))

    server, seen = await _scripted(script)
    async with server, _client(server) as esme:
        await until(lambda: len(seen) >= 4, what="four answers")
        assert [(type(x).__name__, x.sequence, x.status) for x in seen[:4]] == [
            ("GenericNack", 11, p.Status.ESME_RINVCMDID), ("DeliverSmResp", 12, 0),
            ("EnquireLinkResp", 13, 0), ("UnbindResp", 14, 0)]
        assert esme.health.reconnects <= 1
