"""The PostgreSQL status sink on the real broker and a real PostgreSQL: every event once, the
current status per message, poison dead-lettered, a SIGKILL absorbed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from pipeline.codec import AvroCodec
from pipeline.settings import Settings
from tests.fixtures.samples import sample
from tests.fixtures.telex import Worker, produce, read_all
from tests.fixtures.waiting import wait_for

CODEC = AvroCodec()
STEPS = (("accepted", "accepted"), ("sent", "sent"), ("delivered", "delivered"),
         ("sent", "delivered"))  # the last one came late: history only


def events(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        mid = f"TX{i:032x}"
        for seq, (status, effective) in enumerate(STEPS, start=1):
            out.append((mid, CODEC.encode("delivery_status", sample(
                "delivery_status", message_id=mid, status=status, effective_status=effective,
                sequence=seq, source="test"))))
    return out


def wait_rows(url: str, schema: str, table: str, expected: int, workers: list[Worker],
              timeout: float = 90) -> int:
    """The row count of ``schema.table`` once it reaches ``expected`` (every worker still
    alive while it has not)."""
    def rows() -> int:
        with psycopg.connect(url) as db:
            exists = db.execute("SELECT to_regclass(%s)", (f"{schema}.{table}",)).fetchone()
            count = (db.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0]
                     if exists and exists[0] else 0)
        if count < expected:
            for w in workers:
                w.assert_alive()
        return int(count)

    return wait_for(rows, until=lambda count: count >= expected, timeout=timeout,
                    what=f"{expected} rows in {schema}.{table}", interval_s=0.3)


def test_sink_writes_each_event_once_and_the_current_status(
        topics: Settings, database_url: str, worker: Callable[[str, Settings], Worker]) -> None:
    """Across a SIGKILL, 100 redelivered events and a poison record: 300 messages with 4 events
    each, all current delivered, the late sent kept as history, the poison alone in dlq-pgsink."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    settings = topics.model_copy(update={"database_url": database_url, "pg_schema": schema})
    first, second = events(300)[:600], events(300)[600:]
    produce(settings, "delivery-status", first)
    sink = worker("pgsink", settings)
    wait_rows(database_url, schema, "delivery_status_events", 300, [sink])
    sink.kill()  # mid-stream: its last batch may be written and not committed
    produce(settings, "delivery-status", second)
    produce(settings, "delivery-status", first[:100])  # redelivered events (same sequences)
    produce(settings, "delivery-status", [("TXpoison", b"\x00not avro")])
    sink = worker("pgsink", settings)
    wait_rows(database_url, schema, "delivery_status_events", 1200, [sink])

    with psycopg.connect(database_url) as db:
        rows: list[Any] = db.execute(
            f"SELECT message_id, count(*), max(sequence) FROM {schema}.delivery_status_events "
            "GROUP BY message_id").fetchall()
        current = dict(db.execute(
            f"SELECT message_id, status FROM {schema}.message_status").fetchall())
        late = db.execute(
            f"SELECT status, effective_status FROM {schema}.delivery_status_events "
            "WHERE sequence = 4 LIMIT 1").fetchone()
    assert len(rows) == 300 and {(c, m) for _, c, m in rows} == {(4, 4)}
    assert len(current) == 300 and set(current.values()) == {"delivered"}
    assert late == ("sent", "delivered")
    dead = read_all(settings, "dlq-pgsink")
    assert [m.key() for m in dead] == [b"TXpoison"]
