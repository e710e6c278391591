"""The REST API as a Starlette app: routes, and the order of checks every route makes.

Every route under /v1/accounts/{account} checks, in order: an API key (401), that the key
belongs to ``{account}`` (else 404, exactly as for a message that does not exist: a key never
learns whether another account exists or what it holds), the account's request rate (429 +
Retry-After), then the request itself.

POST publishes with these steps (each failure answered before anything is acknowledged):
1. validate the body with the models, then with ingest's rules (400 with ingest's code);
2. reserve the message id (derived from account + Idempotency-Key) in ``api_messages``: a row
   with another content hash is a reused key (422, 21656); a published row is a replay,
   answered with the stored resource and not published again (requests for one message id
   take these steps one at a time in a process, so concurrent retries publish once);
3. publish through the SDK and wait for Kafka's acknowledgement (none within
   ``api_publish_timeout_s``: 503 + Retry-After; librdkafka has then dropped the request, so
   it is never published later by surprise);
4. mark the row published (GET sees it from here on) and answer 201.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import psycopg
import structlog
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.api import messages
from pipeline.api.accesslog import AccessLog
from pipeline.api.keys import KeyRing, parse_basic
from pipeline.api.models import STATUSES, MessageCreate, MessagePage
from pipeline.api.problems import not_found, problem, unauthorized
from pipeline.api.ratelimit import RequestLimiter
from pipeline.api.store import Cursor, MessageStore, decode_cursor, encode_cursor
from pipeline.errors import Code, ConfigError
from pipeline.sdk import OutboundMessage, PublishError, TelexProducer
from pipeline.senders import SenderRegistry, load_registry
from pipeline.settings import Settings
from pipeline.stages.ingest.validate import Rejection, validate

__all__ = ["ApiContext", "build_app"]

log = structlog.get_logger("telex.api")

_SID = re.compile(r"^TX[0-9a-f]{32}$")
_MAX_KEY = 255
_PAGE_DEFAULT, _PAGE_MAX = 50, 1000


class _TooLarge(Exception):
    pass


@dataclass
class ApiContext:
    """What the handlers share: settings, keys, limiter, store and producer."""

    settings: Settings
    keys: KeyRing
    limiter: RequestLimiter
    store: MessageStore
    producer: TelexProducer | None = None
    senders: SenderRegistry | None = None
    openapi: bytes = b""
    # Message ids a request is reserving and publishing now; resolved when it answered.
    publishing: dict[str, asyncio.Future[None]] = field(default_factory=dict)


def _json(body: str | bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _authorize(ctx: ApiContext, request: Request) -> Response | str:
    """The path's account if the key may act on it, else the answer to give."""
    presented = parse_basic(request.headers.get("authorization"))
    if presented is None:
        return unauthorized()
    account = ctx.keys.account_of(*presented)
    if account is None:
        return unauthorized()
    if account != request.path_params["account"]:
        return not_found()  # same answer as for a missing resource: isolation
    request.state.account = account
    wait_s = ctx.limiter.admit(account, time.monotonic() * 1000)
    if wait_s:
        return problem(429, Code.TOO_MANY_REQUESTS,
                       f"Account request rate exceeded; retry in {wait_s} s",
                       {"Retry-After": str(wait_s)})
    return account


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_create(content_type: str, body: bytes) -> MessageCreate | Response:
    kind = content_type.split(";", 1)[0].strip().lower()
    try:
        if kind == "application/json" or kind.endswith("+json"):
            return MessageCreate.model_validate_json(body)
        if kind == "application/x-www-form-urlencoded":
            return MessageCreate.model_validate(messages.form_fields(body))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return problem(400, Code.INVALID_PARAMETER, f"{where}: {first['msg']}")
    except UnicodeDecodeError:
        return problem(400, Code.INVALID_PARAMETER, "the form body is not UTF-8")
    return problem(415, Code.INVALID_PARAMETER,
                   "Content-Type must be application/json or application/x-www-form-urlencoded")


async def create_message(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    account = _authorize(ctx, request)
    if isinstance(account, Response):
        return account
    try:
        body = await _read_body(request, ctx.settings.api_max_body_bytes)
    except _TooLarge:
        return problem(413, Code.INVALID_PARAMETER,
                       f"Request body exceeds {ctx.settings.api_max_body_bytes} bytes")
    create = _parse_create(request.headers.get("content-type", ""), body)
    if isinstance(create, Response):
        return create
    key = request.headers.get("idempotency-key") or uuid.uuid4().hex
    if len(key) > _MAX_KEY or not messages.text_is_storable(
            key, create.to, create.from_, create.body, create.status_callback, *create.media_url):
        return problem(400, Code.INVALID_PARAMETER,
                       "Parameters and Idempotency-Key must be text (at most 255 characters "
                       "for the key) without NUL characters")
    outbound = messages.outbound(account, create, key)
    now_ms = int(time.time() * 1000)
    requested = outbound.to_request(now_ms)
    verdict = validate(requested, ctx.senders)
    if isinstance(verdict, Rejection):
        return problem(400, verdict.code, verdict.reason)
    created = datetime.fromtimestamp(now_ms / 1000, UTC)
    row: dict[str, Any] = {
        "message_id": requested["message_id"], "account_id": account,
        "content_hash": verdict.content_hash, "channel": outbound.channel,
        "sender": verdict.sender, "messaging_service_sid": create.messaging_service_sid,
        "recipient": verdict.recipient, "body": outbound.body,
        "media_urls": list(outbound.media_urls), "status_callback_url": create.status_callback,
        "validity_period_s": outbound.validity_period_s,
        "send_at": None if outbound.send_at_ms is None
        else datetime.fromtimestamp(outbound.send_at_ms / 1000, UTC),
        "segments": verdict.segments, "date_created": created,
    }
    # One request per message id at a time in this process: a concurrent identical request
    # waits, then finds the row published and answers the replay without publishing again.
    while (busy := ctx.publishing.get(row["message_id"])) is not None:
        await asyncio.shield(busy)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ctx.publishing[row["message_id"]] = done
    try:
        return await _reserve_and_publish(ctx, account, outbound, row)
    finally:
        del ctx.publishing[row["message_id"]]
        done.set_result(None)


async def _reserve_and_publish(ctx: ApiContext, account: str, outbound: OutboundMessage,
                               row: dict[str, Any]) -> Response:
    """Steps 2-4 for one message id."""
    unavailable = problem(503, Code.SERVICE_UNAVAILABLE, None, {
        "Retry-After": str(math.ceil(ctx.settings.api_publish_timeout_s))})
    try:
        stored = await ctx.store.reserve(row)
    except psycopg.Error as exc:
        log.warning("api_store_unavailable", message_id=row["message_id"], error=str(exc))
        return unavailable
    if stored.content_hash != row["content_hash"]:
        return problem(422, Code.IDEMPOTENCY_CONFLICT,
                       "Idempotency-Key was already used with a different request")
    if stored.published:
        replay = await ctx.store.get(account, row["message_id"])
        if replay is not None:
            return _json(messages.resource(replay).model_dump_json(by_alias=True), 201)
    answer = await _publish(ctx, outbound, row)
    return _json(answer, 201) if answer is not None else unavailable


async def _publish(ctx: ApiContext, outbound: OutboundMessage, row: dict[str, Any]
                   ) -> bytes | None:
    """Steps 3 and 4: the 201 body once Kafka acknowledged and the row is marked, else None."""
    assert ctx.producer is not None
    try:
        await ctx.producer.send_async(outbound)
    except PublishError as exc:
        log.warning("api_publish_failed", message_id=row["message_id"], reason=exc.reason)
        return None
    try:
        await ctx.store.mark_published(row["message_id"])
    except psycopg.Error as exc:  # published: the answer stands; a retry marks it
        log.warning("api_mark_published_failed", message_id=row["message_id"], error=str(exc))
    return messages.resource(row).model_dump_json(by_alias=True).encode()


async def get_message(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    account = _authorize(ctx, request)
    if isinstance(account, Response):
        return account
    sid = request.path_params["sid"]
    row = await ctx.store.get(account, sid) if _SID.match(sid) else None
    if row is None:
        return not_found()
    return _json(messages.resource(row).model_dump_json(by_alias=True))


def _list_query(request: Request) -> dict[str, Any] | Response:
    q = request.query_params
    unknown = set(q) - {"status", "to", "date_sent_after", "PageSize", "PageToken"}
    if unknown:
        return problem(400, Code.INVALID_PARAMETER, f"unknown parameter {sorted(unknown)[0]}")
    status = q.get("status")
    if status is not None and status not in STATUSES:
        return problem(400, Code.INVALID_PARAMETER, "status is not a message status")
    to = q.get("to")
    if to is not None and not messages.text_is_storable(to):
        return problem(400, Code.INVALID_PARAMETER, "to is not text")
    after: datetime | None = None
    if (raw := q.get("date_sent_after")) is not None:
        try:
            after = datetime.fromisoformat(raw)
        except ValueError:
            return problem(400, Code.INVALID_PARAMETER, "date_sent_after is not an RFC 3339 time")
        after = after if after.tzinfo else after.replace(tzinfo=UTC)
    size = q.get("PageSize", str(_PAGE_DEFAULT))
    if not (size.isascii() and size.isdigit() and 1 <= int(size) <= _PAGE_MAX):
        return problem(400, Code.INVALID_PARAMETER, f"PageSize must be 1-{_PAGE_MAX}")
    cursor: Cursor | None = None
    if (token := q.get("PageToken")) is not None:
        cursor = decode_cursor(token)
        if cursor is None:
            return problem(400, Code.INVALID_PARAMETER, "PageToken is not one this API made")
    return {"status": status, "to": to, "created_after": after, "after": cursor,
            "limit": int(size)}


async def list_messages(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    account = _authorize(ctx, request)
    if isinstance(account, Response):
        return account
    query = _list_query(request)
    if isinstance(query, Response):
        return query
    limit = query.pop("limit")
    rows = await ctx.store.page(account, limit=limit + 1, **query)
    uri = f"/v1/accounts/{account}/messages"
    next_uri = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        params = dict(request.query_params)
        params["PageToken"] = encode_cursor(Cursor(last["date_created"], last["message_id"]))
        params["PageSize"] = str(limit)
        next_uri = f"{uri}?{urlencode(params)}"
    page = MessagePage(messages=[messages.resource(r) for r in rows], page_size=limit,
                       next_page_uri=next_uri, uri=uri)
    return _json(page.model_dump_json(by_alias=True))


async def openapi_document(request: Request) -> Response:
    return _json(request.app.state.ctx.openapi)


ROUTES = [
    Route("/v1/accounts/{account}/messages", create_message, methods=["POST"],
          name="create_message"),
    Route("/v1/accounts/{account}/messages", list_messages, methods=["GET"],
          name="list_messages"),
    Route("/v1/accounts/{account}/messages/{sid}", get_message, methods=["GET"],
          name="get_message"),
    Route("/openapi.json", openapi_document, methods=["GET"], name="openapi"),
]


async def _database_down(request: Request, exc: Exception) -> Response:
    """PostgreSQL unreachable on a read: nothing to show now, and nothing was written."""
    log.warning("api_store_unavailable", error=str(exc))
    return problem(503, Code.SERVICE_UNAVAILABLE, "The message store is unavailable",
                   {"Retry-After": "1"})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed) in the one error shape."""
    status = getattr(exc, "status_code", 400)
    if status == 404:
        return not_found()
    return problem(status, Code.INVALID_PARAMETER, str(getattr(exc, "detail", "")) or None,
                   getattr(exc, "headers", None))


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("api_internal_error", exc_info=exc)
    return problem(500, Code.INTERNAL, "Internal error")


def build_app(settings: Settings, keys: KeyRing | None = None) -> AccessLog:
    """The API app. Its lifespan opens the store and the producer and, on shutdown (after
    uvicorn has let the requests in flight finish), flushes the producer."""
    from pipeline.api.openapi import document_bytes

    if settings.database_url is None:
        raise ConfigError("the API needs DATABASE_URL (its read model and idempotency keys)")
    ctx = ApiContext(
        settings=settings, keys=keys or KeyRing.from_file(settings.api_keys_file),
        limiter=RequestLimiter(settings.api_rate, settings.api_burst),
        store=MessageStore(settings.database_url.get_secret_value(), settings.pg_schema,
                           settings.api_db_connections),
        senders=load_registry(settings.senders_file),  # ingest's registry: 21606 at once
        openapi=document_bytes(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ctx.store.open()
        ctx.producer = TelexProducer(settings,
                                     delivery_timeout_s=settings.api_publish_timeout_s)
        log.info("api_started")
        try:
            yield
        finally:
            await asyncio.to_thread(ctx.producer.close)
            await ctx.store.close()
            log.info("api_stopped")

    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={
        HTTPException: _http_error, psycopg.Error: _database_down, Exception: _internal})
    app.state.ctx = ctx
    return AccessLog(app, app.router)
