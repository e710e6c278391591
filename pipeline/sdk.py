"""Producer SDK: how internal services hand a message to Telex.

``send`` returns only once the broker has acknowledged the request (idempotent producer,
acks=all), so a returned message id is durable; anything else raises. The message id is derived
from account + idempotency key, so a client that retries after a timeout gets the same id and the
dedup stage absorbs the repeat. Records are keyed by message id, the key of every stage's state.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from pipeline.codec import AvroCodec
from pipeline.errors import TelexError
from pipeline.producing import produce_waiting
from pipeline.settings import Settings, get_settings
from pipeline.stages.ingest.validate import Rejection, validate

__all__ = [
    "OutboundMessage",
    "PublishError",
    "RequestRejected",
    "TelexProducer",
    "message_id_for",
]

CLIENT = "telex-python-sdk/0.1"


class PublishError(TelexError):
    """The broker did not acknowledge a request (outage, timeout, authorisation)."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(f"message {message_id} was not published: {reason}")
        self.message_id = message_id
        self.reason = reason


class RequestRejected(TelexError):
    """The request fails a check the SDK can make locally; nothing was published."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.code}: {rejection.reason}")
        self.code = rejection.code
        self.reason = rejection.reason


def message_id_for(account_id: str, idempotency_key: str) -> str:
    """Deterministic message id: 'TX' + 32 hex chars of SHA-256(account, key)."""
    digest = hashlib.sha256(f"{account_id}\x00{idempotency_key}".encode()).hexdigest()
    return "TX" + digest[:32]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What a caller asks Telex to send."""

    account_id: str
    channel: str
    sender: str
    recipient: str
    body: str | None = None
    media_urls: Sequence[str] = ()
    idempotency_key: str | None = None  # a random one when omitted: then retries are not deduped
    status_callback_url: str | None = None
    validity_period_s: int | None = None
    send_at_ms: int | None = None
    trace_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_request(self, now_ms: int) -> dict[str, Any]:
        key = self.idempotency_key or uuid.uuid4().hex
        return {
            "message_id": message_id_for(self.account_id, key),
            "account_id": self.account_id, "idempotency_key": key, "channel": self.channel,
            "sender": self.sender, "recipient": self.recipient, "body": self.body,
            "media_urls": list(self.media_urls), "status_callback_url": self.status_callback_url,
            "validity_period_s": self.validity_period_s, "send_at_ms": self.send_at_ms,
            "requested_at_ms": now_ms, "trace_id": self.trace_id or uuid.uuid4().hex,
            "client": CLIENT, "metadata": dict(self.metadata),
        }


class TelexProducer:
    """Publishes message requests. Thread-safe; one per process is enough."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        delivery_timeout_s: float = 30.0,
        codec: AvroCodec | None = None,
    ) -> None:
        self._settings = settings or get_settings()
        self._topic = self._settings.topic("message-requested")
        self._codec = codec or AvroCodec.from_settings(self._settings)
        self._timeout_s = delivery_timeout_s
        self._producer = Producer({
            **self._settings.producer_config(),
            "message.timeout.ms": int(delivery_timeout_s * 1000),
        })

    def _encode(self, message: OutboundMessage, now_ms: int) -> dict[str, Any]:
        request = message.to_request(now_ms)
        verdict = validate(request, senders=None)
        if isinstance(verdict, Rejection):
            raise RequestRejected(verdict)
        return request

    def _produce(self, request: dict[str, Any], on_done: Any) -> None:
        value = self._codec.encode("message_requested", request)
        produce_waiting(self._producer, self._topic, key=request["message_id"], value=value,
                        on_delivery=on_done)

    def send(self, message: OutboundMessage) -> str:
        """Publish one request; returns its message id once the broker acknowledged it."""
        return self.send_batch([message])[0]

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[str]:
        """Publish many requests with one flush; raises PublishError naming the first failure.

        Every request is validated before any is published, so a bad one publishes nothing.
        """
        now_ms = int(time.time() * 1000)
        requests = [self._encode(m, now_ms) for m in messages]
        failures: dict[str, str] = {}

        def on_done(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures[msg.key().decode()] = err.str()

        for request in requests:
            self._produce(request, on_done)
        remaining = self._producer.flush(self._timeout_s + 5)
        ids = [r["message_id"] for r in requests]
        if remaining:
            raise PublishError(ids[-1], f"{remaining} requests still unacknowledged after flush")
        if failures:
            first = next(i for i in ids if i in failures)
            raise PublishError(first, f"{failures[first]} ({len(failures)} of {len(ids)} failed)")
        return ids

    async def send_async(self, message: OutboundMessage) -> str:
        """asyncio variant of :meth:`send`: awaits the broker's acknowledgement."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        request = self._encode(message, int(time.time() * 1000))

        def on_done(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                loop.call_soon_threadsafe(_resolve, future, request["message_id"], None)
            else:
                exc = PublishError(request["message_id"], err.str())
                loop.call_soon_threadsafe(_resolve, future, None, exc)

        self._produce(request, on_done)
        self._ensure_poller()
        return await future

    def _ensure_poller(self) -> None:
        if getattr(self, "_poller", None) is None:
            self._stop = threading.Event()
            self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                            name="telex-sdk-poll")
            self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def close(self) -> None:
        """Deliver what is pending, then stop the background poller."""
        self._producer.flush(self._timeout_s + 5)
        if getattr(self, "_poller", None) is not None:
            self._stop.set()
            self._poller.join()
            self._poller = None

    def __enter__(self) -> TelexProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(future: asyncio.Future[str], value: str | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)  # type: ignore[arg-type]
