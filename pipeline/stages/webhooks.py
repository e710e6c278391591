"""Webhook receiver: chat channels' status webhooks become CarrierReceipt records on Kafka.

``telex worker webhooks`` (:func:`run`) serves, on ``TELEX_WEBHOOK_HOST:TELEX_WEBHOOK_PORT``:

* ``POST /webhooks/<connector>``, ``<connector>`` a whatsapp connector of ``TELEX_CARRIERS_FILE``:
  (1) unknown connector → 404; (2) body over 1 MiB → 413, unread; (3) X-Hub-Signature-256 checked
  on the raw bytes with the connector's app secret → 401, counted, logged without the body;
  (4) parsed; a well-signed body that does not parse is dead-lettered to ``dlq-webhooks`` and
  answered 200, since it will never parse and a retry cannot help; (5) every status is produced
  as a CarrierReceipt keyed :func:`receipt_key`; (6) 200 once the broker has acknowledged every
  record of the request (acks=all, idempotent producer), else 503 so the provider retries.
  Answering before (6) would lose receipts on a crash: the provider only retries non-2xx.
* ``GET /webhooks/<connector>``: Meta's subscription check (hub.mode, hub.verify_token,
  hub.challenge) against ``TELEX_WEBHOOK_VERIFY_TOKEN``; 403 when it is unset or differs.
* ``GET /healthz``: 200 while serving, 503 while stopping.

Guarantee: at-least-once. A provider retry after a lost 200 produces the receipts again, and
the simulator and Meta duplicate statuses anyway; deduplication is reconciliation's job.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
import time
from collections.abc import Mapping

import structlog
from confluent_kafka import KafkaError, Producer
from prometheus_client import Counter, Histogram

from connectors.base import Receipt
from connectors.http_channel import SIGNATURE_HEADER, WebhookSignatureError, verify_subscription
from connectors.http_channel.webhook import receipts_from_request
from pipeline.codec import AvroCodec
from pipeline.errors import ConfigError, TelexError
from pipeline.metrics import DEAD_LETTERS
from pipeline.producing import produce_waiting
from pipeline.records import receipt_key
from pipeline.runtime.deadletter import Provenance, dead_letter_headers, dead_letter_topic
from pipeline.runtime.httpserver import HttpServer, Request, Response
from pipeline.settings import Settings
from pipeline.stages.dispatch.carriers import Carriers

STAGE = "webhooks"
MAX_BODY = 1_048_576  # Meta batches at most a few KiB per webhook; this only bounds abuse
ACK_TIMEOUT_S = 30.0  # past this the provider is told 503 and retries; the record may still land
_UNKNOWN = "-"  # connector label of requests naming no known connector (bounded cardinality)

RECEIPTS = Counter(
    "telex_webhook_receipts_total",
    "Statuses received by webhook and acknowledged by the broker, per connector and status.",
    ["connector", "status"],
)
REJECTED = Counter(
    "telex_webhook_rejected_total",
    "Webhook requests not turned into receipts, by reason (bad_signature, unknown_connector, "
    "too_large, dead_lettered, not_acknowledged, http_4xx/5xx from the HTTP layer, ...).",
    ["connector", "reason"],
)
REQUEST_SECONDS = Histogram(
    "telex_webhook_request_seconds",
    "Time from a webhook request's head until its answer (includes the broker's ack).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)

log = structlog.get_logger("telex.webhooks")


class UnparseableWebhook(TelexError):
    """Well signed, yet not a status webhook we can read; ``cause`` is the parser's error."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class NotAcknowledged(TelexError):
    """The broker did not acknowledge a record; the provider must retry the request."""


def read_receipts(connector: str, app_secret: str, body: bytes,
                  signature: str | None) -> list[Receipt]:
    """The receipts of one webhook request (pure).

    Raises WebhookSignatureError (answer 401) or UnparseableWebhook (dead-letter, answer 200).
    Shape errors (``"entry": "x"``) surface from the parser as TypeError/AttributeError/KeyError
    rather than ValueError, and are just as permanent.
    """
    try:
        return receipts_from_request(body, signature, app_secret, connector=connector)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise UnparseableWebhook(exc) from exc


def whatsapp_secrets(carriers: Carriers) -> dict[str, str]:
    """App secret of every whatsapp connector (validated by :class:`Carriers` already)."""
    return {name: str(raw.get("app_secret", "")) for name, raw in carriers.connectors.items()
            if raw.get("type", "smpp") == "whatsapp"}


class WebhookReceiver:
    """The HTTP endpoint and its producer. ``await serve()`` on a loop; ``stop()`` from anywhere.

    One confluent-kafka producer, polled by its own thread: delivery reports settle per-record
    futures on the event loop, so no request ever flushes the producer.
    """

    def __init__(self, settings: Settings, app_secrets: Mapping[str, str],
                 verify_token: str | None = None) -> None:
        self._settings = settings
        self._secrets = dict(app_secrets)
        self._verify_token = verify_token or None
        self._codec = AvroCodec.from_settings(settings)
        self._receipts_topic = settings.topic("carrier-receipts")
        self._dlq_topic = settings.topic(dead_letter_topic(STAGE))
        self._producer = Producer(settings.producer_config())
        self._http = HttpServer(self._handle, settings.webhook_host, settings.webhook_port,
                                on_refused=lambda reason: REJECTED.labels(_UNKNOWN, reason).inc())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._stop_requested = False  # a signal may come before serve() has its loop
        self._polling = threading.Event()
        self.ready = threading.Event()  # set once listening: ``port`` is valid from then on

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def in_flight(self) -> int:
        """Requests whose head has arrived and that are not answered yet."""
        return self._http.in_flight

    @property
    def received(self) -> int:
        """Request heads read so far (see :attr:`HttpServer.received`)."""
        return self._http.received

    @property
    def accepting(self) -> bool:
        """Whether new connections are accepted (False once a stop began)."""
        return self._http.accepting

    def stop(self) -> None:
        """Begin a graceful stop; safe from any thread and from signal handlers."""
        self._stop_requested = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def serve(self, grace_s: float = 30.0) -> None:
        """Serve until :meth:`stop`: then stop accepting, finish in-flight requests, flush."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        self._polling.set()
        poller = threading.Thread(target=self._poll, name="webhooks-producer", daemon=True)
        poller.start()
        try:
            await self._http.start()
            log.info("webhooks_listening", host=self._settings.webhook_host, port=self.port,
                     connectors=sorted(self._secrets))
            self.ready.set()
            await self._stop.wait()
            self._stopping = True
            log.info("webhooks_stopping", in_flight=self.in_flight)
            await self._http.close(grace_s)
        finally:
            left = await self._loop.run_in_executor(None, self._producer.flush, 10.0)
            self._polling.clear()
            poller.join(5)
            log.info("webhooks_stopped", unflushed=left)

    # Requests --------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await self._route(request)
        finally:
            REQUEST_SECONDS.observe(time.perf_counter() - started)

    async def _route(self, request: Request) -> Response:
        if request.path == "/healthz" and request.method == "GET":
            return Response(503, b"stopping") if self._stopping else Response(200, b"ok")
        prefix, _, connector = request.path.strip("/").partition("/")
        if prefix != "webhooks" or not connector or "/" in connector:
            return Response(404, b"not found")
        if connector not in self._secrets:
            REJECTED.labels(_UNKNOWN, "unknown_connector").inc()
            return Response(404, b"unknown connector")
        if request.method == "GET":
            return self._subscribe(connector, request.query)
        if request.method != "POST":
            return Response(405, b"method not allowed", headers={"Allow": "GET, POST"})
        return await self._receive(connector, request)

    def _subscribe(self, connector: str, query: Mapping[str, str]) -> Response:
        challenge = (verify_subscription(query, self._verify_token)
                     if self._verify_token is not None else None)
        if challenge is None:
            REJECTED.labels(connector, "bad_verify_token").inc()
            log.warning("webhook_subscription_refused", connector=connector,
                        token_configured=self._verify_token is not None)
            return Response(403, b"forbidden")
        log.info("webhook_subscription_verified", connector=connector)
        return Response(200, challenge.encode())

    async def _receive(self, connector: str, request: Request) -> Response:
        if request.content_length > MAX_BODY:
            REJECTED.labels(connector, "too_large").inc()
            log.warning("webhook_too_large", connector=connector, bytes=request.content_length)
            return Response(413, b"body over 1 MiB")
        body = await request.body()
        received_ms = time.time_ns() // 1_000_000
        try:
            receipts = read_receipts(connector, self._secrets[connector], body,
                                     request.headers.get(SIGNATURE_HEADER.lower()))
        except WebhookSignatureError:
            REJECTED.labels(connector, "bad_signature").inc()
            log.warning("webhook_bad_signature", connector=connector, bytes=len(body),
                        peer=request.peer, signed=SIGNATURE_HEADER.lower() in request.headers)
            return Response(401, b"bad signature")
        except UnparseableWebhook as exc:
            return await self._dead_letter(connector, body, exc.cause, received_ms)
        try:
            await self._deliver([
                (self._receipts_topic, receipt_key(r.connector, r.carrier_message_id),
                 self._codec.encode("carrier_receipt", r.to_record()), None) for r in receipts])
        except NotAcknowledged as exc:
            REJECTED.labels(connector, "not_acknowledged").inc()
            log.error("webhook_not_acknowledged", connector=connector, error=str(exc),
                      receipts=len(receipts))
            return Response(503, b"not stored, retry", headers={"Retry-After": "5"})
        for r in receipts:
            RECEIPTS.labels(connector, r.status.value).inc()
        log.debug("webhook_receipts", connector=connector,
                  carrier_message_ids=[r.carrier_message_id for r in receipts],
                  message_ids=[r.message_id for r in receipts])
        return Response(200, b"ok")

    async def _dead_letter(self, connector: str, body: bytes, error: Exception,
                           received_ms: int) -> Response:
        provenance = Provenance(f"webhook:{connector}", -1, -1, received_ms)
        headers = dead_letter_headers(None, provenance, STAGE, error, received_ms)
        try:
            await self._deliver([(self._dlq_topic, None, body, headers)])
        except NotAcknowledged as exc:
            REJECTED.labels(connector, "not_acknowledged").inc()
            log.error("webhook_not_acknowledged", connector=connector, error=str(exc))
            return Response(503, b"not stored, retry", headers={"Retry-After": "5"})
        REJECTED.labels(connector, "dead_lettered").inc()
        DEAD_LETTERS.labels(STAGE, type(error).__name__).inc()
        log.warning("webhook_dead_lettered", connector=connector, bytes=len(body),
                    error_class=type(error).__name__, error=str(error), topic=self._dlq_topic,
                    answered=200, why="well signed but unparseable: a retry cannot help")
        return Response(200, b"dead-lettered")

    # Producing -------------------------------------------------------------------------------

    async def _deliver(self, records: list[tuple[str, str | None, bytes,
                                                 list[tuple[str, bytes]] | None]]) -> None:
        """Produce ``records`` and return once the broker acknowledged all of them."""
        if not records:
            return
        assert self._loop is not None
        futures = []
        for topic, key, value, headers in records:
            future: asyncio.Future[None] = self._loop.create_future()
            produce_waiting(self._producer, topic, key=key, value=value, headers=headers,
                            on_delivery=functools.partial(self._delivered, future))
            futures.append(future)
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                await asyncio.gather(*futures)
        except TimeoutError:
            raise NotAcknowledged(f"no broker ack within {ACK_TIMEOUT_S}s") from None

    def _delivered(self, future: asyncio.Future[None], err: KafkaError | None,
                   _msg: object) -> None:
        """Delivery report, on the poll thread: settle the record's future on the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle, future, err)

    def _poll(self) -> None:
        while self._polling.is_set():
            self._producer.poll(0.1)


def _settle(future: asyncio.Future[None], err: KafkaError | None) -> None:
    if future.done():  # the request gave up waiting
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(NotAcknowledged(err.str()))


def run(settings: Settings) -> int:
    """``telex worker webhooks``: serve until SIGTERM/SIGINT, then stop gracefully."""
    from pipeline.topics import admin_client, apply_topics, catalogue

    if not settings.carriers_file:
        raise ConfigError("the webhook receiver needs TELEX_CARRIERS_FILE")
    app_secrets = whatsapp_secrets(Carriers.from_file(settings.carriers_file))
    if not app_secrets:
        raise ConfigError(f"{settings.carriers_file} names no whatsapp connector")
    for name in sorted(n for n, secret in app_secrets.items() if not secret):
        log.warning("webhook_connector_without_app_secret", connector=name,
                    effect="every webhook for it is refused with 401")
    apply_topics(admin_client(settings), catalogue(settings))
    token = settings.webhook_verify_token
    receiver = WebhookReceiver(settings, app_secrets,
                               token.get_secret_value() if token is not None else None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, receiver.stop)
        await receiver.serve()

    asyncio.run(main())
    return 0
