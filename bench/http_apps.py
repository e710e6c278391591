"""The endpoint ``bench.http_stack`` serves, once per HTTP stack: the same model, body and answer.

``POST /v1/accounts/{account}/messages`` validates a ~300-byte JSON body into
:class:`MessageCreate` and answers ``201`` with a ~400-byte :class:`MessageResource`;
``GET /v1/accounts/{account}/messages/{sid}`` answers ``200`` with a stored resource. Nothing
else happens per request (no Kafka, no store), so the figures are the stack's own cost.

Each stack is written the way Telex would write it: FastAPI with a body model and a
``response_model``; Starlette with a pydantic ``TypeAdapter`` over the raw bytes; the
hand-written ``pipeline.runtime.httpserver`` the same way as Starlette.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

_E164 = r"^\+[1-9][0-9]{6,14}$"
_CREATED = "2026-12-01T10:00:00Z"


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    To: Annotated[str, Field(pattern=_E164)]
    From: Annotated[str, Field(pattern=_E164)]
    Body: Annotated[str, Field(min_length=1, max_length=1600)]
    StatusCallback: Annotated[str, Field(max_length=2048)] | None = None
    ValidityPeriod: Annotated[int, Field(ge=1, le=36_000)] | None = None
    SendAt: str | None = None


class MessageResource(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    sid: str
    account_sid: str
    to: str
    from_: Annotated[str, Field(alias="from", serialization_alias="from")]
    body: str
    status: Literal["accepted", "queued", "sending", "sent", "delivered", "undelivered",
                    "failed"]
    num_segments: int
    error_code: int | None = None
    error_message: str | None = None
    price: str | None = None
    date_created: str
    date_sent: str | None = None
    uri: str


_CREATE = TypeAdapter(MessageCreate)
_RESOURCE = TypeAdapter(MessageResource)
_GOT = MessageResource.model_validate({
    "sid": "SM" + "0" * 32, "account_sid": "AC" + "1" * 32, "to": "+15550001234",
    "from": "+15550009876", "body": "Your verification code is 123456. It expires in ten minutes.",
    "status": "delivered", "num_segments": 1, "date_created": _CREATED, "date_sent": _CREATED,
    "uri": "/v1/accounts/AC" + "1" * 32 + "/messages/SM" + "0" * 32})


def _create(account: str, m: MessageCreate) -> MessageResource:
    sid = "SM" + hashlib.blake2b(m.To.encode() + m.Body.encode(), digest_size=16).hexdigest()
    return MessageResource(sid=sid, account_sid=account, to=m.To, from_=m.From, body=m.Body,
                           status="queued", num_segments=1 + len(m.Body) // 160,
                           date_created=_CREATED,
                           uri=f"/v1/accounts/{account}/messages/{sid}")


# --- FastAPI -------------------------------------------------------------------------------

def fastapi_app() -> Any:
    """Factory (``--factory``), so importing this module loads no framework."""
    from fastapi import FastAPI

    app = FastAPI(title="bench")

    @app.post("/v1/accounts/{account}/messages", status_code=201,
              response_model=MessageResource, response_model_by_alias=True)
    async def create(account: str, message: MessageCreate) -> MessageResource:
        return _create(account, message)

    @app.get("/v1/accounts/{account}/messages/{sid}", response_model=MessageResource)
    async def get(account: str, sid: str) -> MessageResource:
        return _GOT

    @app.post("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(2)
        return {"ok": True}

    return app


# --- Starlette -----------------------------------------------------------------------------

def starlette_app() -> Any:
    """Factory (``--factory``)."""
    from pydantic import ValidationError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def create(request: Request) -> Response:
        try:
            message = _CREATE.validate_json(await request.body())
        except ValidationError as exc:
            return Response(exc.json(), 422, media_type="application/json")
        resource = _create(request.path_params["account"], message)
        return Response(_RESOURCE.dump_json(resource, by_alias=True), 201,
                        media_type="application/json")

    async def get(request: Request) -> Response:
        return Response(_RESOURCE.dump_json(_GOT, by_alias=True),
                        media_type="application/json")

    async def slow(request: Request) -> Response:
        await asyncio.sleep(2)
        return Response(b'{"ok":true}', media_type="application/json")

    return Starlette(routes=[
        Route("/v1/accounts/{account}/messages", create, methods=["POST"]),
        Route("/v1/accounts/{account}/messages/{sid}", get, methods=["GET"]),
        Route("/slow", slow, methods=["POST"])])


# --- the hand-written server (baseline) ----------------------------------------------------

async def serve_handwritten(port: int) -> None:
    """``pipeline.runtime.httpserver`` with the same endpoint, until cancelled."""
    from pydantic import ValidationError

    from pipeline.runtime.httpserver import HttpServer, Request, Response

    json_type = "application/json"

    async def handle(request: Request) -> Response:
        if request.path == "/slow":
            await asyncio.sleep(2)
            return Response(200, b'{"ok":true}', json_type)
        parts = request.path.split("/")  # '', v1, accounts, {account}, messages[, {sid}]
        if len(parts) < 5 or parts[1:3] != ["v1", "accounts"] or parts[4] != "messages":
            return Response(404)
        if request.method == "POST" and len(parts) == 5:
            try:
                message = _CREATE.validate_json(await request.body())
            except ValidationError as exc:
                return Response(422, exc.json().encode(), json_type)
            return Response(201, _RESOURCE.dump_json(_create(parts[3], message), by_alias=True),
                            json_type)
        if request.method == "GET" and len(parts) == 6:
            return Response(200, _RESOURCE.dump_json(_GOT, by_alias=True), json_type)
        return Response(405)

    server = HttpServer(handle, "127.0.0.1", port)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.close(grace_s=1)
