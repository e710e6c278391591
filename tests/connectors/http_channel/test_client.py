"""The WhatsApp connector against the HTTP channel simulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from connectors.base import ConnectorError, ErrorKind, SubmitRequest
from connectors.http_channel import WhatsAppClient, WhatsAppConfig
from connectors.simulators.http_channel import HttpChannelConfig, HttpChannelSimulator, HttpFaults
from tests.connectors.http_channel.conftest import APP_SECRET, Receiver
from tests.fixtures.waiting import until


def msg(i: int = 1, to: str = "+14155550123", body: str = "hello") -> SubmitRequest:
    return SubmitRequest(f"TX{i}", "+15550001111", to, body, channel="whatsapp")


@contextlib.contextmanager
def simulator(config: HttpChannelConfig | None = None,
              faults: HttpFaults | None = None) -> Iterator[HttpChannelSimulator]:
    with HttpChannelSimulator(config or HttpChannelConfig(app_secret=APP_SECRET), faults) as sim:
        yield sim


@contextlib.asynccontextmanager
async def client(sim: HttpChannelSimulator, **overrides: object) -> AsyncIterator[WhatsAppClient]:
    settings: dict[str, object] = {
        "base_url": sim.base_url, "phone_number_id": "106540352242922",
        "access_token": "test-token", "app_secret": APP_SECRET, "timeout_s": 5.0,
        "trust_env": False, **overrides}
    async with WhatsAppClient(WhatsAppConfig(**settings)) as wa:  # type: ignore[arg-type]
        yield wa


async def test_send_returns_the_wamid() -> None:
    """POST /v21.0/{id}/messages with the Cloud API body; the id is messages[0].id."""
    with simulator() as sim:
        async with client(sim) as wa:
            result = await wa.submit(msg(7))
    [sent] = sim.sends
    assert result.carrier_message_id == sent.wamid and sent.wamid.startswith("wamid.")
    assert (sent.phone_number_id, sent.to, sent.body, sent.opaque) == (
        "106540352242922", "14155550123", "hello", "TX7")
    assert result.segments == 1


async def test_many_concurrent_sends_share_the_pool() -> None:
    """100 concurrent sends through a window of 8 all succeed."""
    with simulator() as sim:
        async with client(sim, window=8) as wa:
            results = await asyncio.gather(*(wa.submit(msg(i)) for i in range(100)))
    assert len({r.carrier_message_id for r in results}) == 100


async def test_429_is_retryable_throttling() -> None:
    """HTTP 429 (code 130429) → throttled, retryable, 63018, with Retry-After."""
    with simulator(faults=HttpFaults(throttle_rate=1.0)) as sim:
        async with client(sim) as wa:
            with pytest.raises(ConnectorError) as info:
                await wa.submit(msg())
    err = info.value
    assert (err.kind, err.retryable, err.code, err.retry_after_s) == (
        ErrorKind.THROTTLED, True, 63018, 1.0)
    assert "HTTP 429" in err.carrier_error


async def test_5xx_is_retryable() -> None:
    """HTTP 500 (code 131000) → server_error, retryable, 30500."""
    with simulator(faults=HttpFaults(server_error_rate=1.0)) as sim:
        async with client(sim) as wa:
            with pytest.raises(ConnectorError) as info:
                await wa.submit(msg())
    assert (info.value.kind, info.value.retryable, info.value.code) == (
        ErrorKind.SERVER_ERROR, True, 30500)


async def test_4xx_invalid_recipient_is_permanent() -> None:
    """HTTP 400 with WhatsApp code 131026 → invalid_destination, 63024, not retryable."""
    faults = HttpFaults(reject_recipients={"15550009999"})
    with simulator(faults=faults) as sim:
        async with client(sim) as wa:
            with pytest.raises(ConnectorError) as info:
                await wa.submit(msg(to="+15550009999"))
    assert (info.value.kind, info.value.retryable, info.value.code) == (
        ErrorKind.INVALID_DESTINATION, False, 63024)


async def test_bad_token_is_permanent() -> None:
    """HTTP 401 (code 190) → rejected, not retryable."""
    with simulator() as sim:
        async with client(sim, access_token="expired") as wa:
            with pytest.raises(ConnectorError) as info:
                await wa.submit(msg())
    assert (info.value.kind, info.value.retryable) == (ErrorKind.REJECTED, False)


async def test_timeout_and_refused_connection_are_retryable() -> None:
    """A slow server → timeout; nobody listening → connection_lost; both retryable."""
    with simulator(HttpChannelConfig(latency_s=0.5)) as sim:
        async with client(sim, timeout_s=0.1) as wa:
            with pytest.raises(ConnectorError) as slow:
                await wa.submit(msg())
        base_url = sim.base_url
    async with WhatsAppClient(WhatsAppConfig(base_url, "1", "t", trust_env=False)) as wa:
        with pytest.raises(ConnectorError) as refused:
            await wa.submit(msg())
    assert (slow.value.kind, slow.value.retryable) == (ErrorKind.TIMEOUT, True)
    assert (refused.value.kind, refused.value.retryable) == (ErrorKind.CONNECTION_LOST, True)


async def test_media_is_refused_before_sending() -> None:
    """Only text is implemented: media requests fail permanently without an HTTP call."""
    with simulator() as sim:
        async with client(sim) as wa:
            with pytest.raises(ConnectorError) as info:
                await wa.submit(SubmitRequest("m", "s", "+1", None, channel="whatsapp",
                                              media_urls=("https://x/y.png",)))
    assert info.value.kind is ErrorKind.REJECTED_CONTENT and not sim.sends


async def test_signed_status_webhooks_are_verified_and_parsed(
        webhook_receiver: Receiver) -> None:
    """sent → delivered → read arrive signed; each becomes a receipt naming our message."""
    config = HttpChannelConfig(app_secret=APP_SECRET, callback_url=webhook_receiver.url)
    with simulator(config) as sim:
        async with client(sim) as wa:
            result = await wa.submit(msg(3))
        await until(lambda: len(webhook_receiver.receipts) == 3, what="3 statuses")
    statuses = [r.status for r in webhook_receiver.receipts]
    assert sorted(statuses) == ["delivered", "read", "sent"]
    assert {r.carrier_message_id for r in webhook_receiver.receipts} == {
        result.carrier_message_id}
    assert {r.message_id for r in webhook_receiver.receipts} == {"TX3"}
    assert all(r.done_at_ms for r in webhook_receiver.receipts)


async def test_failed_status_maps_its_error_code(webhook_receiver: Receiver) -> None:
    """A failed status with WhatsApp code 131026 → failed, 63024."""
    config = HttpChannelConfig(app_secret=APP_SECRET, callback_url=webhook_receiver.url)
    with simulator(config, HttpFaults(fail_recipients={"14155550123"})) as sim:
        async with client(sim) as wa:
            await wa.submit(msg())
        await until(lambda: len(webhook_receiver.receipts) == 1, what="failed status")
    [receipt] = webhook_receiver.receipts
    assert (receipt.status, receipt.error_code) == ("failed", 63024)
    assert receipt.carrier_error and receipt.carrier_error.startswith("131026")


async def test_badly_signed_webhooks_are_rejected(webhook_receiver: Receiver) -> None:
    """Webhooks signed with the wrong secret get 401 and produce no receipts."""
    config = HttpChannelConfig(app_secret=APP_SECRET, callback_url=webhook_receiver.url,
                               outcomes={"sent": 1.0})
    with simulator(config, HttpFaults(bad_signature_rate=1.0)) as sim:
        async with client(sim) as wa:
            await wa.submit(msg())
        await until(lambda: len(sim.webhooks) == 1, what="webhook attempt")
    assert sim.webhooks[0].response_status == 401
    assert webhook_receiver.rejected == 1 and not webhook_receiver.receipts


async def test_duplicated_and_reordered_statuses_all_arrive(webhook_receiver: Receiver) -> None:
    """Duplicates and reverse order are delivered as-is; ordering is reconciliation's job."""
    config = HttpChannelConfig(app_secret=APP_SECRET, callback_url=webhook_receiver.url,
                               outcomes={"delivered": 1.0})
    faults = HttpFaults(duplicate_receipt_rate=1.0, reorder_rate=1.0)
    with simulator(config, faults) as sim:
        async with client(sim) as wa:
            await wa.submit(msg())
        await until(lambda: len(webhook_receiver.receipts) == 3, what="3 statuses")
    assert [w.status for w in sim.webhooks][-2:] == ["delivered", "sent"]
