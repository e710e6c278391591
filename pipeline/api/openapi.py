"""The OpenAPI 3.1 document, built from the pydantic models and a route table (Starlette makes
none; docs/adr/0006). Committed as docs/openapi.json; a test fails when the code's document
differs from it: regenerate with ``python -m pipeline.api.openapi > docs/openapi.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from pipeline.api.models import STATUSES, ErrorBody, Message, MessageCreate, MessagePage

__all__ = ["ROUTE_TABLE", "Operation", "document", "document_bytes"]

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    """One route as the document describes it: what it takes and every answer it gives."""

    method: str
    path: str
    operation_id: str
    summary: str
    ok: tuple[int, type[BaseModel] | None]
    errors: tuple[int, ...]
    request: type[BaseModel] | None = None
    query: tuple[dict[str, Any], ...] = ()
    headers: tuple[dict[str, Any], ...] = ()
    secured: bool = True
    path_params: tuple[str, ...] = field(default=())


_ACCOUNT = {"name": "account", "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
_SID = {"name": "sid", "in": "path", "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 64}}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "description": "Same key and body: the same message, published once. Same key, "
                "other body: 422 (21656).",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
_LIST_QUERY = (
    {"name": "status", "in": "query", "required": False,
     "schema": {"type": "string", "enum": list(STATUSES)}},
    {"name": "to", "in": "query", "required": False,
     "description": "Recipient as stored (E.164, or whatsapp:/messenger: address).",
     "schema": {"type": "string", "maxLength": 64}},
    {"name": "date_sent_after", "in": "query", "required": False,
     "description": "Messages created at or after this RFC 3339 time.",
     "schema": {"type": "string", "format": "date-time"}},
    {"name": "PageSize", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
    {"name": "PageToken", "in": "query", "required": False,
     "description": "Opaque: taken from next_page_uri.", "schema": {"type": "string"}},
)

ROUTE_TABLE: tuple[Operation, ...] = (
    Operation("post", "/v1/accounts/{account}/messages", "createMessage",
              "Send a message: 201 once Kafka acknowledged it.", (201, Message),
              (400, 401, 404, 413, 415, 422, 429, 503), request=MessageCreate,
              headers=(_IDEMPOTENCY,), path_params=("account",)),
    Operation("get", "/v1/accounts/{account}/messages", "listMessages",
              "List messages, newest first, with cursor paging.", (200, MessagePage),
              (400, 401, 404, 429, 503), query=_LIST_QUERY, path_params=("account",)),
    Operation("get", "/v1/accounts/{account}/messages/{sid}", "getMessage",
              "Fetch a message and its current status.", (200, Message),
              (401, 404, 429, 503), path_params=("account", "sid")),
    Operation("get", "/openapi.json", "openapi", "This document.", (200, None), (),
              secured=False),
)

_PATH_PARAMS = {"account": _ACCOUNT, "sid": _SID}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(op: Operation) -> dict[str, Any]:
    ok_status, ok_model = op.ok
    responses: dict[str, Any] = {str(ok_status): {
        "description": "OK",
        "content": _json_content(_ref(ok_model) if ok_model else {"type": "object"})}}
    for status in op.errors:
        responses[str(status)] = {"description": "Error", "content": _json_content(_ref(ErrorBody))}
    out: dict[str, Any] = {
        "operationId": op.operation_id, "summary": op.summary, "responses": responses,
        "parameters": [_PATH_PARAMS[p] for p in op.path_params] + list(op.query)
        + list(op.headers),
        "security": [{"basic": []}] if op.secured else [],
    }
    if op.request is not None:
        out["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref(op.request)},
            "application/x-www-form-urlencoded": {"schema": _ref(op.request)}}}
    return out


@cache
def document() -> dict[str, Any]:
    """The whole document (built once per process)."""
    _, defs = models_json_schema(
        [(MessageCreate, "validation"), (Message, "serialization"),
         (MessagePage, "serialization"), (ErrorBody, "serialization")], ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in ROUTE_TABLE:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Telex Messages API", "version": "1.0.0",
                 "description": "Send messages and read their status; shaped like Twilio's "
                 "Messages resource."},
        "paths": paths,
        "components": {"schemas": defs["$defs"], "securitySchemes": {
            "basic": {"type": "http", "scheme": "basic",
                      "description": "API key id as user name, its secret as password."}}},
    }


def document_bytes() -> bytes:
    """The document as committed: sorted keys, two-space indent, final newline."""
    return (json.dumps(document(), indent=2, sort_keys=True) + "\n").encode()


if __name__ == "__main__":
    sys.stdout.write(document_bytes().decode())
