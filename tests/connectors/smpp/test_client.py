"""The ESME client against the SMSC simulator over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from connectors.base import BindError, ConnectorError, ErrorKind, IdBase, Receipt, SubmitRequest
from connectors.simulators.smsc import SmscSimulator
from connectors.simulators.smsc_model import Faults, IdFormat, ReceiptForm, SmscConfig
from connectors.smpp import SmppClient, SmppConfig
from tests.fixtures.waiting import until

FAST = dict(response_timeout_s=2.0, bind_timeout_s=5.0, reconnect_initial_s=0.02,
            reconnect_max_s=0.2)


def msg(i: int, body: str = "hello", to: str = "+14155550123") -> SubmitRequest:
    return SubmitRequest(f"TX{i}", "+14155550100", to, body)


@contextlib.asynccontextmanager
async def pair(config: SmscConfig | None = None, faults: Faults | None = None,
               **client: object) -> AsyncIterator[tuple[SmscSimulator, SmppClient]]:
    """A started simulator and a client bound to it; both stopped on exit."""
    async with SmscSimulator(config or SmscConfig(), faults) as smsc:
        cfg = SmppConfig("127.0.0.1", smsc.port, "telex", "secret", **{**FAST, **client})  # type: ignore[arg-type]
        async with SmppClient(cfg) as esme:
            yield smsc, esme


async def test_thousand_submits_through_a_window_of_ten() -> None:
    """1,000 concurrent submits all get distinct ids; no more than 10 are ever outstanding."""
    async with pair(SmscConfig(latency_s=0.001), window=10) as (smsc, esme):
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, esme.health.window_in_use)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(*(esme.submit(msg(i)) for i in range(1000)))
        watcher.cancel()
        assert len({r.carrier_message_id for r in results}) == 1000
        assert len(smsc.submits) == 1000
        assert 1 < peak <= 10


async def test_window_bounds_outstanding_submit_sm() -> None:
    """With an SMSC that never answers, exactly ``window`` submit_sm reach it until timeouts."""
    faults = Faults(no_response_rate=1.0)
    async with pair(faults=faults, window=3, response_timeout_s=0.5) as (smsc, esme):
        tasks = [asyncio.create_task(esme.submit(msg(i))) for i in range(5)]
        await until(lambda: len(smsc.submits) == 3, what="3 submits")
        assert esme.health.window_in_use == 3
        await until(lambda: len(smsc.submits) == 5, what="the last 2 after timeouts")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, ConnectorError) and r.kind is ErrorKind.TIMEOUT
                   for r in results)


async def test_submit_ids_are_canonical() -> None:
    """Zero-padded upper-case hex from submit_sm_resp becomes lower-case hex."""
    async with pair(SmscConfig(id_width=12)) as (smsc, esme):
        result = await esme.submit(msg(1))
        assert smsc.submits[0].message_id == result.carrier_message_id.upper().zfill(12)
        assert result.carrier_message_id == result.carrier_message_id.lstrip("0").lower()


async def test_multipart_message_is_one_submit_sm_per_part() -> None:
    """400 GSM-7 characters → 3 submit_sm sharing a UDH reference, numbered 1..3."""
    body = "".join(chr(ord("a") + i % 26) for i in range(400))
    async with pair() as (smsc, esme):
        result = await esme.submit(msg(1, body))
        assert result.segments == 3 and len(result.part_ids) == 3
        assert result.carrier_message_id == result.part_ids[0]
        concats = [r.concat for r in smsc.submits]
        assert all(c is not None for c in concats)
        parts = sorted(smsc.submits, key=lambda r: r.concat.seq if r.concat else 0)
        assert [(c.seq, c.total) for c in concats if c] == [(1, 3), (2, 3), (3, 3)]
        assert len({c.ref for c in concats if c}) == 1
        assert all(r.esm_class & 0x40 and r.data_coding == 0 for r in parts)
        assert "".join(r.text for r in parts) == body
        assert [r.message_id.lstrip("0").lower() for r in parts if r.message_id] == list(
            result.part_ids)


async def test_ucs2_multipart_and_distinct_references() -> None:
    """Two long UCS-2 messages: data_coding 8, different UDH references, text intact."""
    body = "Привет, мир! " * 10
    async with pair() as (smsc, esme):
        await asyncio.gather(esme.submit(msg(1, body)), esme.submit(msg(2, body)))
        refs = {r.concat.ref for r in smsc.submits if r.concat}
        assert len(smsc.submits) == 4 and len(refs) == 2
        assert all(r.data_coding == 0x08 for r in smsc.submits)


async def test_throttling_is_retryable() -> None:
    """ESME_RTHROTTLED → ConnectorError(throttled), retryable, code 30022."""
    async with pair(faults=Faults(throttle_rate=1.0)) as (_, esme):
        with pytest.raises(ConnectorError) as info:
            await esme.submit(msg(1))
    assert (info.value.kind, info.value.retryable, info.value.code) == (
        ErrorKind.THROTTLED, True, 30022)
    assert info.value.carrier_error == "ESME_RTHROTTLED"


async def test_rate_cap_throttles_the_excess() -> None:
    """A simulator capped at 100/s throttles most of a 300-message burst."""
    async with pair(SmscConfig(max_submits_per_s=100), window=50) as (_, esme):
        results = await asyncio.gather(*(esme.submit(msg(i)) for i in range(300)),
                                       return_exceptions=True)
    throttled = [r for r in results if isinstance(r, ConnectorError)]
    assert throttled and all(r.kind is ErrorKind.THROTTLED for r in throttled)
    assert len(results) - len(throttled) < 150


async def test_invalid_destination_is_permanent() -> None:
    """ESME_RINVDSTADR → invalid_destination, not retryable, code 21211."""
    faults = Faults(reject_destinations={"15550000000"})
    async with pair(faults=faults) as (_, esme):
        with pytest.raises(ConnectorError) as info:
            await esme.submit(msg(1, to="+15550000000"))
        ok = await esme.submit(msg(2))  # the bind is unaffected
    assert (info.value.kind, info.value.retryable, info.value.code) == (
        ErrorKind.INVALID_DESTINATION, False, 21211)
    assert ok.carrier_message_id


async def test_other_rejections_are_permanent() -> None:
    """Any status outside the temporary list (here ESME_RSUBMITFAIL) is a permanent reject."""
    async with pair(faults=Faults(reject_rate=1.0, reject_status=0x45)) as (_, esme):
        with pytest.raises(ConnectorError) as info:
            await esme.submit(msg(1))
    assert (info.value.kind, info.value.retryable) == (ErrorKind.REJECTED, False)


async def test_no_response_times_out_retryably() -> None:
    """A submit_sm never answered → timeout, retryable, code 30008."""
    async with pair(faults=Faults(no_response_rate=1.0), response_timeout_s=0.2) as (_, esme):
        with pytest.raises(ConnectorError) as info:
            await esme.submit(msg(1))
    assert (info.value.kind, info.value.retryable, info.value.code) == (
        ErrorKind.TIMEOUT, True, 30008)


async def test_bad_password_fails_start() -> None:
    """bind refused with ESME_RINVPASWD: start() raises BindError, not retryable."""
    async with SmscSimulator() as smsc:
        esme = SmppClient(SmppConfig("127.0.0.1", smsc.port, "telex", "wrong", **FAST))  # type: ignore[arg-type]
        with pytest.raises(BindError, match="ESME_RINVPASWD") as info:
            await esme.start()
    assert not info.value.retryable


async def test_unreachable_smsc_fails_start_retryably() -> None:
    """Nobody listening: start() gives up after bind_timeout_s with connection_lost."""
    async with SmscSimulator() as smsc:
        port = smsc.port
    esme = SmppClient(SmppConfig("127.0.0.1", port, "telex", "secret",
                                 **{**FAST, "bind_timeout_s": 0.3}))  # type: ignore[arg-type]
    with pytest.raises(ConnectorError) as info:
        await esme.start()
    assert info.value.kind is ErrorKind.CONNECTION_LOST and info.value.retryable


async def _submit_retrying(esme: SmppClient, req: SubmitRequest) -> str:
    """What dispatch will do: retry retryable errors (here at once)."""
    while True:
        try:
            return (await esme.submit(req)).carrier_message_id
        except ConnectorError as exc:
            assert exc.retryable, exc


async def test_dropped_bind_reconnects_and_continues() -> None:
    """The SMSC aborts the connection at the 50th submit: in-flight submits fail with
    connection_lost (retryable), the client rebinds, and every message ends with an id."""
    faults = Faults(drop_after_submits=50)
    async with pair(faults=faults, window=10) as (smsc, esme):
        ids = await asyncio.gather(*(_submit_retrying(esme, msg(i)) for i in range(200)))
        assert len(set(ids)) == 200
        assert smsc.binds == 2 and esme.health.reconnects == 1 and esme.health.connected


async def test_connections_dropped_mid_stream() -> None:
    """drop_connections() while idle: the next submit waits for the rebind and succeeds."""
    async with pair() as (smsc, esme):
        await esme.submit(msg(1))
        assert smsc.drop_connections() == 1
        await until(lambda: smsc.binds == 2, what="rebind")
        assert (await esme.submit(msg(2))).carrier_message_id


async def test_unbind_from_smsc_triggers_rebind() -> None:
    """An SMSC-initiated unbind is answered and followed by a fresh bind."""
    async with pair() as (smsc, esme):
        await smsc.unbind_all()
        await until(lambda: smsc.binds == 2 and esme.health.connected, what="rebind")
        assert (await esme.submit(msg(1))).carrier_message_id


async def test_enquire_link_keeps_alive_and_detects_a_hung_smsc() -> None:
    """enquire_link is sent periodically; when it goes unanswered the client reconnects."""
    faults = Faults()
    async with pair(faults=faults, enquire_link_s=0.05, response_timeout_s=0.2) as (smsc, esme):
        await until(lambda: smsc.enquire_links >= 3, what="keep-alives")
        faults.ignore_enquire_link = True
        await until(lambda: esme.health.reconnects >= 1, what="reconnect")
        faults.ignore_enquire_link = False
        await until(lambda: esme.health.connected, what="rebound")
        assert (await esme.submit(msg(1))).carrier_message_id


async def _collect(esme: SmppClient, n: int, timeout_s: float = 5.0) -> list[Receipt]:
    out: list[Receipt] = []

    async def take() -> None:
        async for receipt in esme.receipts():
            out.append(receipt)
            if len(out) == n:
                return

    await asyncio.wait_for(take(), timeout_s)
    return out


async def test_receipts_are_delivered_and_parsed() -> None:
    """Each submit gets a DELIVRD receipt matched by canonical id, with its message id."""
    async with pair() as (_, esme):
        results = await asyncio.gather(*(esme.submit(msg(i)) for i in range(20)))
        receipts = await _collect(esme, 20)
    by_id = {r.carrier_message_id: r for r in receipts}
    assert set(by_id) == {r.carrier_message_id for r in results}
    assert {r.message_id for r in receipts} == {f"TX{i}" for i in range(20)}
    assert all(r.status == "delivered" and r.done_at_ms for r in receipts)


@pytest.mark.parametrize(("fmt", "client_base"), [(IdFormat.HEX, IdBase.DECIMAL),
                                                  (IdFormat.DECIMAL, IdBase.HEX)])
async def test_receipt_ids_in_the_other_form_still_match(fmt: IdFormat,
                                                         client_base: IdBase) -> None:
    """Hex submit ids with decimal receipt ids, and the reverse, meet in one canonical id."""
    submit_base = IdBase.HEX if fmt is IdFormat.HEX else IdBase.DECIMAL
    config = SmscConfig(id_format=fmt, receipt_ids_other_form=True)
    async with pair(config, submit_id_base=submit_base, receipt_id_base=client_base) as (
            smsc, esme):
        result = await esme.submit(msg(1))
        [receipt] = await _collect(esme, 1)
    assert smsc.receipts_sent[0].message_id != smsc.submits[0].message_id
    assert receipt.carrier_message_id == result.carrier_message_id
    assert receipt.message_id == "TX1"


async def test_outcome_mix_tlv_receipts_and_duplicates() -> None:
    """UNDELIV receipts in TLV form map to undelivered/30003; duplicates are passed on."""
    config = SmscConfig(outcomes={"UNDELIV": 1.0}, receipt_form=ReceiptForm.TLV)
    async with pair(config, Faults(duplicate_receipt_rate=1.0)) as (_, esme):
        await esme.submit(msg(1))
        receipts = await _collect(esme, 2)
    assert [(r.status, r.error_code, r.carrier_status) for r in receipts] == [
        ("undelivered", 30003, "UNDELIV")] * 2


async def test_full_receipt_buffer_pushes_back_on_the_smsc() -> None:
    """With no reader and a buffer of 1, the SMSC is told RX_T_APPN and redelivers later."""
    config = SmscConfig(receipt_retry_s=0.05)
    async with pair(config, receipt_buffer=1) as (smsc, esme):
        await asyncio.gather(*(esme.submit(msg(i)) for i in range(3)))
        await until(lambda: len(smsc.receipts_sent) >= 4, what="redelivery")
        receipts = await _collect(esme, 3)
    assert {r.message_id for r in receipts} == {"TX0", "TX1", "TX2"}


async def test_receipt_callback_instead_of_stream() -> None:
    """on_receipt gets receipts on the reader; a failing callback makes the SMSC retry."""
    got: list[Receipt] = []
    calls = 0

    def on_receipt(receipt: Receipt) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("consumer hiccup")
        got.append(receipt)

    with capture_logs() as logs:
        async with SmscSimulator(SmscConfig(receipt_retry_s=0.05)) as smsc:
            cfg = SmppConfig("127.0.0.1", smsc.port, "telex", "secret", **FAST)  # type: ignore[arg-type]
            async with SmppClient(cfg, on_receipt=on_receipt) as esme:
                await esme.submit(msg(1))
                await until(lambda: len(got) == 1, what="redelivered receipt")
    assert got[0].message_id == "TX1" and calls == 2
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "smpp_receipt_callback_failed"]


async def test_close_unbinds() -> None:
    """close() unbinds: the simulator sees the session go away, health says disconnected."""
    async with SmscSimulator() as smsc:
        cfg = SmppConfig("127.0.0.1", smsc.port, "telex", "secret", **FAST)  # type: ignore[arg-type]
        esme = SmppClient(cfg)
        await esme.start()
        assert smsc.bound_sessions == 1
        await esme.close()
        await until(lambda: smsc.bound_sessions == 0, what="unbind")
        assert not esme.health.connected
        with pytest.raises(ConnectorError):
            await esme.submit(msg(1))
