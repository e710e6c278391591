"""A WhatsApp-Cloud-API-shaped connector over HTTP, on httpx's asyncio client.

httpx rather than the standard library in a thread pool: it is natively asyncio (no thread
per in-flight request), pools keep-alive connections, and has per-request timeouts; it is
already in the environment through confluent-kafka's schema-registry client, and is now a
direct dependency.

Sends ``POST /{version}/{phone_number_id}/messages``. The Telex message id travels as
``biz_opaque_callback_data``, which the Cloud API echoes in status webhooks, so receipts name
their message without a lookup. Receipts come from webhooks: the pipeline's HTTP endpoint hands
the raw request to :meth:`WhatsAppClient.accept_webhook`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from connectors.base import (
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
from connectors.http_channel.errors import kind_for
from connectors.http_channel.webhook import receipts_from_request

CHANNEL = "whatsapp"


@dataclass(frozen=True, slots=True)
class WhatsAppConfig:
    base_url: str  # e.g. https://graph.facebook.com
    phone_number_id: str
    access_token: str = field(repr=False)
    app_secret: str = field(default="", repr=False)  # for webhook signatures
    api_version: str = "v21.0"
    name: str = "whatsapp"
    window: int = 64  # concurrent requests, and pooled connections
    timeout_s: float = 10.0
    receipt_buffer: int = 10_000
    trust_env: bool = True  # honour HTTP(S)_PROXY etc.; tests on loopback turn it off


class WhatsAppClient:
    """The WhatsApp connector; satisfies :class:`connectors.base.Connector`."""

    def __init__(self, config: WhatsAppConfig) -> None:
        self.name = config.name
        self._cfg = config
        self._http: httpx.AsyncClient | None = None
        self._window = asyncio.Semaphore(config.window)
        self._in_flight = 0
        self._receipts = ReceiptStream(config.receipt_buffer)
        self._last_error: str | None = None
        self._path = f"/{config.api_version}/{config.phone_number_id}/messages"

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=self._cfg.window,
                              max_keepalive_connections=self._cfg.window)
        self._http = httpx.AsyncClient(
            base_url=self._cfg.base_url, timeout=self._cfg.timeout_s, limits=limits,
            trust_env=self._cfg.trust_env,
            headers={"Authorization": f"Bearer {self._cfg.access_token}"})

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._receipts.close()

    async def __aenter__(self) -> WhatsAppClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def health(self) -> Health:
        return Health(self._http is not None, self._in_flight, self._cfg.window,
                      last_error=self._last_error)

    def receipts(self) -> AsyncIterator[Receipt]:
        return aiter(self._receipts)

    def accept_webhook(self, raw_body: bytes, signature: str | None) -> list[Receipt]:
        """Verify and parse one webhook request, queue its receipts, and return them.

        Raises WebhookSignatureError (answer 401) or ValueError (answer 400). Call it on the
        connector's event loop; receipts that do not fit the buffer are returned but not queued.
        """
        receipts = receipts_from_request(raw_body, signature, self._cfg.app_secret,
                                         connector=self.name)
        for receipt in receipts:
            self._receipts.offer(receipt)
        return receipts

    async def submit(self, req: SubmitRequest) -> SubmitResult:
        if self._http is None:
            raise ConnectorError(ErrorKind.CONNECTION_LOST, "client not started", channel=CHANNEL)
        if not req.body or req.media_urls:
            raise ConnectorError(ErrorKind.REJECTED_CONTENT,
                                 "only text messages are supported", channel=CHANNEL)
        payload = {
            "messaging_product": "whatsapp", "recipient_type": "individual",
            "to": req.recipient.removeprefix("whatsapp:").removeprefix("+"), "type": "text",
            "text": {"body": req.body, "preview_url": False},
            "biz_opaque_callback_data": req.message_id,
        }
        async with self._window:
            self._in_flight += 1
            try:
                resp = await self._http.post(self._path, json=payload)
            except httpx.TimeoutException as exc:
                raise self._error(ErrorKind.TIMEOUT, repr(exc)) from exc
            except httpx.TransportError as exc:
                raise self._error(ErrorKind.CONNECTION_LOST, repr(exc)) from exc
            finally:
                self._in_flight -= 1
        if resp.status_code != 200:
            raise self._http_error(resp)
        try:
            wamid = resp.json()["messages"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._error(ErrorKind.SERVER_ERROR, f"unexpected response: {exc!r}") from exc
        carrier_id = normalise_message_id(str(wamid), IdBase.OPAQUE)
        return SubmitResult(carrier_id, now_ms(), 1, (carrier_id,))

    def _http_error(self, resp: httpx.Response) -> ConnectorError:
        wa_code, title = _wa_error(resp)
        kind = kind_for(wa_code, resp.status_code)
        retry_after = resp.headers.get("Retry-After", "")
        return self._error(kind, f"HTTP {resp.status_code} {wa_code or ''} {title}".strip(),
                           float(retry_after) if retry_after.isdigit() else None)

    def _error(self, kind: ErrorKind, detail: str,
               retry_after_s: float | None = None) -> ConnectorError:
        self._last_error = detail
        return ConnectorError(kind, detail, channel=CHANNEL, retry_after_s=retry_after_s)


def _wa_error(resp: httpx.Response) -> tuple[int | None, str]:
    """(code, message) of a Graph API error body ``{"error": {"code", "message"}}``."""
    try:
        body: Any = resp.json()
    except ValueError:
        return None, ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    return (code if isinstance(code, int) else None), str(error.get("message", ""))[:200]
