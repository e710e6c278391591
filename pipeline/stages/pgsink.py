"""PostgreSQL sink: the delivery-status history as tables analysts can query with SQL.

Reads ``delivery-status`` and writes, in one transaction per polled batch:

- ``<schema>.delivery_status_events``: every event, primary key (message_id, sequence), so a
  redelivered event (the status stage is at-least-once with stable sequence numbers) is a
  no-op (``ON CONFLICT DO NOTHING``);
- ``<schema>.message_status``: one row per message, replaced only by an event with a higher
  sequence, so it always shows the message's current (effective) status whatever the order
  in which batches from different partitions land.

Offsets are committed at the runtime's next checkpoint, after the database commit: a crash
between the two replays the records since the last checkpoint, which the keys above absorb.
Guarantee: effectively-once rows, at-least-once delivery.
A record that is not a DeliveryStatus goes to ``dlq-pgsink`` with provenance; the partition
keeps moving.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import structlog

from pipeline.codec import AvroCodec
from pipeline.errors import ConfigError
from pipeline.metrics import PROCESSING_SECONDS, RECORDS
from pipeline.runtime.stage import Input, Out, Record, Stage
from pipeline.runtime.store import Store
from pipeline.settings import Settings

STAGE = "pgsink"
IN_TOPIC = "delivery-status"

log = structlog.get_logger("telex.pgsink")

_COLUMNS = ("message_id", "sequence", "account_id", "channel", "status", "effective_status",
            "event_time", "recorded_at", "error_code", "error_reason", "carrier_message_id",
            "connector", "segments", "attempt", "source", "trace_id")


_TIMES = ("event_time", "recorded_at")
_INSERT_EVENT = (
    "INSERT INTO {schema}.delivery_status_events (" + ", ".join(_COLUMNS) + ") VALUES ("
    + ", ".join("to_timestamp(%s)" if c in _TIMES else "%s" for c in _COLUMNS)
    + ") ON CONFLICT (message_id, sequence) DO NOTHING")


def ddl(schema: str) -> list[str]:
    """Idempotent table definitions (the schema name is validated by Settings)."""
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"""CREATE TABLE IF NOT EXISTS {schema}.delivery_status_events (
            message_id text NOT NULL, sequence bigint NOT NULL, account_id text NOT NULL,
            channel text NOT NULL, status text NOT NULL, effective_status text NOT NULL,
            event_time timestamptz NOT NULL, recorded_at timestamptz NOT NULL,
            error_code integer, error_reason text, carrier_message_id text, connector text,
            segments integer, attempt integer, source text, trace_id text,
            PRIMARY KEY (message_id, sequence))""",
        f"""CREATE INDEX IF NOT EXISTS delivery_status_events_account_time
            ON {schema}.delivery_status_events (account_id, event_time)""",
        f"""CREATE TABLE IF NOT EXISTS {schema}.message_status (
            message_id text PRIMARY KEY, sequence bigint NOT NULL, account_id text NOT NULL,
            channel text NOT NULL, status text NOT NULL, updated_at timestamptz NOT NULL,
            error_code integer, error_reason text, carrier_message_id text, connector text,
            segments integer)""",
    ]


def row(event: dict[str, Any]) -> tuple[Any, ...]:
    """A DeliveryStatus as a delivery_status_events row (timestamps as epoch seconds)."""
    return (event["message_id"], event["sequence"], event["account_id"], event["channel"],
            event["status"], event.get("effective_status") or event["status"],
            event["event_time_ms"] / 1000, event["recorded_at_ms"] / 1000,
            event.get("error_code"), event.get("error_reason"),
            event.get("carrier_message_id"), event.get("connector"), event.get("segments"),
            event.get("attempt"), event.get("source"), event.get("trace_id"))


class StatusSink(Stage):
    """Writes each polled batch of delivery-status in one transaction; the runtime commits the
    batch's offsets at its next checkpoint, after this commit (so after the rows exist)."""

    name = STAGE
    inputs = (Input(IN_TOPIC),)

    def __init__(self, settings: Settings) -> None:
        if settings.database_url is None:
            raise ConfigError("the status sink needs DATABASE_URL")
        self._schema = settings.pg_schema
        self._codec = AvroCodec.from_settings(settings)
        self._db = psycopg.connect(settings.database_url.get_secret_value(), autocommit=False)
        with self._db.transaction():
            for statement in ddl(self._schema):
                self._db.execute(statement)  # type: ignore[arg-type]
        self._written = RECORDS.labels(STAGE, "written")
        self._latency = PROCESSING_SECONDS.labels(STAGE)

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        started = time.perf_counter()
        rows, dead = [], []
        for record in records:
            try:
                rows.append(row(self._codec.decode(record.value or b"",
                                                   expected="delivery_status")))
            except Exception as exc:  # routed, counted and logged, never raised
                dead.append(self.dead_letter(record, exc, now_ms))
        self.write(rows)
        self._latency.observe(time.perf_counter() - started)
        return dead

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert events and advance current statuses, in one transaction."""
        with self._db.transaction(), self._db.cursor() as cur:
            cur.executemany(_INSERT_EVENT.format(schema=self._schema), rows)  # type: ignore[arg-type]
            cur.executemany(
                f"INSERT INTO {self._schema}.message_status AS m (message_id, sequence, "  # type: ignore[arg-type]
                "account_id, channel, status, updated_at, error_code, error_reason, "
                "carrier_message_id, connector, segments) VALUES (%s, %s, %s, %s, %s, "
                "to_timestamp(%s), %s, %s, %s, %s, %s) ON CONFLICT (message_id) DO UPDATE SET "
                "sequence = EXCLUDED.sequence, status = EXCLUDED.status, "
                "updated_at = EXCLUDED.updated_at, error_code = EXCLUDED.error_code, "
                "error_reason = EXCLUDED.error_reason, "
                "carrier_message_id = EXCLUDED.carrier_message_id, "
                "connector = EXCLUDED.connector, segments = EXCLUDED.segments "
                "WHERE m.sequence < EXCLUDED.sequence",
                [(r[0], r[1], r[2], r[3], r[5], r[7], r[8], r[9], r[10], r[11], r[12])
                 for r in rows])
        self._written.inc(len(rows))

    def close(self) -> None:
        self._db.close()


def build(settings: Settings) -> StatusSink:
    """The status sink for the batch runtime (group ``<prefix>pgsink``)."""
    return StatusSink(settings)
