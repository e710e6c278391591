"""The API's PostgreSQL I/O: its own table of accepted requests, read together with the status
sink's ``message_status`` (pipeline/stages/pgsink.py), which the delivery-status topic keeps
current.

``api_messages`` holds what only the request knows (recipient, sender, body, the content hash
that decides idempotency) and whether Kafka acknowledged it (``published``); the status, error
and segments come from ``message_status`` once the status stage has reported on the message.
A row is written before publishing and marked published after the acknowledgement, so a
request whose publish failed is invisible to GET and is published by the client's retry.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pipeline.stages.pgsink import ddl as sink_ddl

__all__ = ["Cursor", "MessageStore", "Reserved", "decode_cursor", "encode_cursor"]

_FIELDS = ("message_id", "account_id", "content_hash", "channel", "sender",
           "messaging_service_sid", "recipient", "body", "media_urls", "status_callback_url",
           "validity_period_s", "send_at", "segments", "date_created")


def ddl(schema: str) -> list[str]:
    """The API's table, and the sink's (GET reads both, whichever process starts first)."""
    return [*sink_ddl(schema), f"""CREATE TABLE IF NOT EXISTS {schema}.api_messages (
            message_id text PRIMARY KEY, account_id text NOT NULL, content_hash text NOT NULL,
            channel text NOT NULL, sender text NOT NULL, messaging_service_sid text,
            recipient text NOT NULL, body text, media_urls text[] NOT NULL,
            status_callback_url text, validity_period_s integer, send_at timestamptz,
            segments integer NOT NULL, date_created timestamptz NOT NULL,
            published boolean NOT NULL DEFAULT false)""",
        f"""CREATE INDEX IF NOT EXISTS api_messages_account_created
            ON {schema}.api_messages (account_id, date_created DESC, message_id DESC)""",
        f"""CREATE INDEX IF NOT EXISTS api_messages_account_recipient
            ON {schema}.api_messages (account_id, recipient, date_created DESC)"""]


@dataclass(frozen=True, slots=True)
class Reserved:
    """The stored row for a message id: the new one, or the one an earlier request made."""

    content_hash: str
    published: bool


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last row of a page (newest first)."""

    date_created: datetime
    message_id: str


def encode_cursor(cursor: Cursor) -> str:
    raw = f"{cursor.date_created.isoformat()}|{cursor.message_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor | None:
    """None for a token this API did not make."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        when, _, message_id = raw.partition("|")
        parsed = datetime.fromisoformat(when)
    except ValueError:
        return None
    if parsed.tzinfo is None or not message_id.isascii() or "\x00" in message_id:
        return None
    return Cursor(parsed, message_id)


class MessageStore:
    """A small pool of async connections (autocommit: every statement is its own
    transaction, and each is idempotent)."""

    def __init__(self, url: str, schema: str, size: int) -> None:
        self._url, self._schema, self._size = url, schema, size
        self._pool: asyncio.Queue[psycopg.AsyncConnection[dict[str, Any]]] = asyncio.Queue()
        self._all: list[psycopg.AsyncConnection[dict[str, Any]]] = []
        self._marks: list[tuple[str, asyncio.Future[None]]] = []
        self._marking = False
        self._reserves: list[tuple[dict[str, Any], asyncio.Future[Reserved], int]] = []
        self._reserving = False
        types = ("text", "text", "text", "text", "text", "text", "text", "text", "text", "text",
                 "int", "timestamptz", "int", "timestamptz")
        unnest = ", ".join(f"%s::{t}[]" for t in types)
        values = ", ".join("ARRAY(SELECT jsonb_array_elements_text(media_urls::jsonb))"
                           if f == "media_urls" else f for f in _FIELDS)
        self._reserve_sql = (
            f"WITH input AS (SELECT * FROM unnest({unnest}) AS t({', '.join(_FIELDS)})), "
            f"new AS (INSERT INTO {schema}.api_messages ({', '.join(_FIELDS)}) "
            f"SELECT {values} FROM input ON CONFLICT (message_id) DO NOTHING "
            "RETURNING message_id, content_hash, published) "
            "SELECT message_id, content_hash, published FROM new UNION ALL "
            f"SELECT message_id, content_hash, published FROM {schema}.api_messages "
            "WHERE message_id = ANY(%s::text[])")
        s = schema
        self._select = (
            f"SELECT a.*, m.status, m.updated_at, m.error_code, m.error_reason, "
            f"m.segments AS live_segments FROM {s}.api_messages a "
            f"LEFT JOIN {s}.message_status m ON m.message_id = a.message_id "
            "WHERE a.published AND a.account_id = %s")

    async def open(self) -> None:
        for _ in range(self._size):
            conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                         row_factory=dict_row)
            self._all.append(conn)
            self._pool.put_nowait(conn)
        async with self._conn() as conn:
            for statement in ddl(self._schema):
                await conn.execute(statement)  # type: ignore[arg-type]

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
        conn = await self._pool.get()
        try:
            if conn.closed:  # the server restarted: reconnect once, then let errors surface
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True,
                                                             row_factory=dict_row)
            yield conn
        finally:
            self._pool.put_nowait(conn)

    async def reserve(self, row: dict[str, Any]) -> Reserved:
        """Insert the request's row unless its message id has one; return the stored row's
        content hash and whether it was published. Grouped like the marks: one statement
        reserves every row that arrived while the previous one ran."""
        waiter: asyncio.Future[Reserved] = asyncio.get_running_loop().create_future()
        self._reserves.append((row, waiter, 0))
        if not self._reserving:
            self._reserving = True
            asyncio.get_running_loop().create_task(self._flush_reserves())
        return await waiter

    async def _flush_reserves(self) -> None:
        try:
            while self._reserves:
                batch: list[tuple[dict[str, Any], asyncio.Future[Reserved], int]] = []
                later, ids = [], set()
                for item in self._reserves:  # one row per id and statement
                    (later if item[0]["message_id"] in ids else batch).append(item)
                    ids.add(item[0]["message_id"])
                self._reserves = later
                try:
                    found = await self._reserve_rows([r for r, _, _ in batch])
                except Exception as exc:  # every waiter gets the failure; none is lost
                    for _, waiter, _ in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for row, waiter, tries in batch:
                    got = found.get(row["message_id"])
                    if got is not None:
                        waiter.set_result(got)
                    elif tries < 3:
                        # A concurrent insert of the same id committed after this statement's
                        # snapshot: INSERT did nothing and SELECT saw nothing; the next sees it.
                        self._reserves.append((row, waiter, tries + 1))
                    else:
                        waiter.set_exception(psycopg.OperationalError("reserved row vanished"))
        finally:
            self._reserving = False

    async def _reserve_rows(self, rows: list[dict[str, Any]]) -> dict[str, Reserved]:
        cols = [[r[f] for r in rows] for f in _FIELDS]
        cols[_FIELDS.index("media_urls")] = [json.dumps(r["media_urls"]) for r in rows]
        async with self._conn() as conn:
            cur = await conn.execute(self._reserve_sql, [*cols, cols[0]])  # type: ignore[arg-type]
            return {r["message_id"]: Reserved(r["content_hash"], r["published"])
                    for r in await cur.fetchall()}

    async def mark_published(self, message_id: str) -> None:
        """Returns once the row is marked. Marks are grouped: while one UPDATE runs, the ids
        that arrive wait for the next, so a busy API makes one round trip for many POSTs
        instead of one each (psycopg's per-statement cost is most of a POST's CPU)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append((message_id, waiter))
        if not self._marking:
            self._marking = True
            asyncio.get_running_loop().create_task(self._flush_marks())
        await waiter

    async def _flush_marks(self) -> None:
        try:
            while self._marks:
                batch, self._marks = self._marks, []
                try:
                    async with self._conn() as conn:
                        await conn.execute(
                            f"UPDATE {self._schema}.api_messages SET published = true "  # type: ignore[arg-type]
                            "WHERE message_id = ANY(%s) AND NOT published",
                            [[m for m, _ in batch]])
                except Exception as exc:  # every waiter gets the failure; none is lost
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            self._marking = False

    async def get(self, account_id: str, message_id: str) -> dict[str, Any] | None:
        """The row of a published message of ``account_id`` (None for another account's)."""
        async with self._conn() as conn:
            cur = await conn.execute(self._select + " AND a.message_id = %s",  # type: ignore[arg-type]
                                     [account_id, message_id])
            return await cur.fetchone()

    async def page(self, account_id: str, *, status: str | None, to: str | None,
                   created_after: datetime | None, after: Cursor | None,
                   limit: int) -> Sequence[dict[str, Any]]:
        """Up to ``limit`` rows newest first, strictly after ``after``."""
        sql, args = self._select, [account_id]
        if status is not None:
            sql += (" AND COALESCE(m.status, CASE WHEN a.send_at IS NULL THEN 'accepted' "
                    "ELSE 'scheduled' END) = %s")
            args.append(status)
        if to is not None:
            sql += " AND a.recipient = %s"
            args.append(to)
        if created_after is not None:
            sql += " AND a.date_created >= %s"
            args.append(created_after)
        if after is not None:
            sql += " AND (a.date_created, a.message_id) < (%s, %s)"
            args += [after.date_created, after.message_id]
        sql += " ORDER BY a.date_created DESC, a.message_id DESC LIMIT %s"
        args.append(limit)
        async with self._conn() as conn:
            cur = await conn.execute(sql, args)  # type: ignore[arg-type]
            return await cur.fetchall()
