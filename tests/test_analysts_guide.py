"""The recipes of docs/analysts.md, run as written: the fenced blocks marked
``<!-- tested: NAME -->`` are extracted from the guide and executed against a real broker and a
real PostgreSQL, so the guide cannot drift from what Telex writes.

Apache ``avro`` is here as an independent implementation: if it ever computes the fingerprint
Telex writes (the trap the guide works around), ``test_apache_avro_fingerprint_misses_the_header``
fails and the guide's section on it must be rewritten.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import psycopg
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from pydantic import SecretStr

from pipeline.codec import SINGLE_OBJECT_MARKER, AvroCodec
from pipeline.settings import Settings
from pipeline.stages.pgsink import StatusSink, row
from tests.fixtures.samples import T0_MS, sample
from tests.fixtures.telex import REPO, produce, read_all

GUIDE = REPO / "docs" / "analysts.md"
SCHEMAS = REPO / "schemas"
CURRENT = SCHEMAS / "delivery_status.avsc"
PREVIOUS = sorted(SCHEMAS.glob("previous/delivery_status.*.avsc"))
CODEC = AvroCodec()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NEW_FIELDS = ("effective_status", "attempt", "source")  # absent from the previous version


def snippet(name: str) -> str:
    """The fenced block that follows ``<!-- tested: name -->`` in the guide."""
    found = re.findall(rf"<!-- tested: {re.escape(name)} -->\n```\w+\n(.*?)\n```",
                       GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    assert len(found) == 1, f"docs/analysts.md has {len(found)} blocks marked {name!r}"
    return str(found[0])


def run(*names: str) -> dict[str, Any]:
    """Execute the guide's blocks in order, in one namespace, as a reader's script would."""
    namespace: dict[str, Any] = {"__name__": "analysts_guide"}
    for name in names:
        exec(compile(snippet(name), f"docs/analysts.md <{name}>", "exec"), namespace)
    return namespace


def wire_fingerprint(path: Path) -> bytes:
    parsed = fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def apache_fingerprint(path: Path) -> bytes:
    return bytes(avro.schema.parse(path.read_text(encoding="utf-8")).fingerprint("CRC-64-AVRO"))


def previous_version(record: dict[str, Any]) -> bytes:
    """``record`` as a status stage of the previous schema version wrote it."""
    (path,) = PREVIOUS  # one kept version today; a second needs its own _NEW_FIELDS
    old = {k: v for k, v in record.items() if k not in _NEW_FIELDS}
    schema = fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
    body = BytesIO()
    fastavro.schemaless_writer(body, schema, old)
    return SINGLE_OBJECT_MARKER + wire_fingerprint(path) + body.getvalue()


def history() -> tuple[list[tuple[str, bytes]], dict[tuple[str, int], dict[str, Any]]]:
    """Records for delivery-status (one a redelivery, one of the previous version) and the
    events a reader must end with, by (message id, sequence)."""
    a, b = "TX" + "a" * 32, "TX" + "b" * 32
    steps = [(a, 1, "accepted"), (a, 2, "sent"), (a, 3, "delivered"), (b, 2, "sent")]
    events = {(m, s): sample("delivery_status", message_id=m, sequence=s, status=st,
                             effective_status=st, event_time_ms=T0_MS + s, source="test")
              for m, s, st in steps}
    old = sample("delivery_status", message_id=b, sequence=1, status="accepted",
                 **dict.fromkeys(_NEW_FIELDS))
    records = [(m, CODEC.encode("delivery_status", e)) for (m, _), e in events.items()]
    records.insert(3, (b, previous_version(old)))
    records.append(records[2])  # the status stage wrote a@3 again after a crash
    assert CODEC.decode(records[3][1]) == old  # a genuine previous-version record for Telex
    return records, {**events, (b, 1): old}


def as_written(event: dict[str, Any]) -> dict[str, Any]:
    """A decoded event with its timestamps back in epoch milliseconds, as Telex wrote them."""
    return {k: (v - _EPOCH) // timedelta(milliseconds=1) if isinstance(v, datetime) else v
            for k, v in event.items()}


@pytest.fixture
def reader_env(topics: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A shell as the guide assumes it: in a checkout, pointed at the test's broker and prefix."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", topics.kafka_bootstrap_servers)
    monkeypatch.setenv("TELEX_TOPIC_PREFIX", topics.topic_prefix)
    return topics


def test_fastavro_recipe_reads_every_event_once(reader_env: Settings) -> None:
    """The guide's fastavro decode and reading loop give every event once, old versions too."""
    records, expected = history()
    produce(reader_env, "delivery-status", records)
    got = run("fastavro", "read")["events"]
    assert {k: as_written(e) for k, e in got.items()} == expected


def test_apache_avro_recipe_reads_every_event_once(reader_env: Settings) -> None:
    """The guide's Apache avro workaround decodes what Telex wrote, old versions too."""
    records, expected = history()
    produce(reader_env, "delivery-status", records)
    got = run("apache-avro", "read")["events"]
    assert {k: as_written(e) for k, e in got.items()} == expected


def test_apache_avro_fingerprint_misses_the_header(topics: Settings) -> None:
    """Apache avro's fingerprints miss every record header (the trap; fails once avro fixes it)."""
    records, _ = history()
    produce(topics, "delivery-status", records)
    headers = {m.value()[2:10] for m in read_all(topics, "delivery-status")}
    versions = [CURRENT, *PREVIOUS]
    assert headers == {wire_fingerprint(p) for p in versions}
    assert headers.isdisjoint(apache_fingerprint(p) for p in versions)
    assert f"computes `{apache_fingerprint(CURRENT).hex()}`" in GUIDE.read_text()


def test_guide_quotes_the_schema_files_fingerprints() -> None:
    """The guide's fingerprint table lists every delivery_status version, and no stale value."""
    text = GUIDE.read_text(encoding="utf-8")
    row_pattern = r"^\| `((?:previous/)?delivery_status[\w.]*\.avsc)` \| `([0-9a-f]{16})`"
    table = dict(re.findall(row_pattern, text, re.MULTILINE))
    files = {str(p.relative_to(SCHEMAS)): wire_fingerprint(p).hex() for p in [CURRENT, *PREVIOUS]}
    assert table == files
    quoted = set(re.findall(r"\b[0-9a-f]{16}\b", text))
    assert quoted <= {*files.values(), apache_fingerprint(CURRENT).hex()}


# --- PostgreSQL ------------------------------------------------------------------------------


def status_rows() -> list[dict[str, Any]]:
    """Histories of six messages on 2025-11-22, as the status stage writes them."""
    out = []

    def message(mid: str, channel: str, *steps: tuple[int, str, str, int | None],
                account: str = "AC0001") -> None:
        for seq, (offset_s, status, effective, code) in enumerate(steps, start=1):
            out.append(sample("delivery_status", message_id=mid, account_id=account,
                              channel=channel, sequence=seq, status=status,
                              effective_status=effective, error_code=code,
                              event_time_ms=T0_MS + 1000 * offset_s,
                              recorded_at_ms=T0_MS + 1000 * offset_s + 250))

    message("M1", "sms", (0, "accepted", "accepted", None), (1, "sent", "sent", None),
            (3, "delivered", "delivered", None))
    message("M2", "sms", (0, "accepted", "accepted", None), (2, "sent", "sent", None),
            (5, "delivered", "delivered", None))
    message("M3", "whatsapp", (0, "accepted", "accepted", None), (1, "sent", "sent", None),
            (2, "delivered", "delivered", None))
    # ended by the receipt window, then a late failed receipt of the same rank: history only
    message("M4", "sms", (0, "accepted", "accepted", None), (1, "sent", "sent", None),
            (9, "undelivered", "undelivered", 30008), (10, "failed", "undelivered", 30005))
    message("M5", "sms", (0, "failed", "failed", 21606))
    message("M6", "sms", (0, "accepted", "accepted", None), account="AC0002")
    return out


@dataclass(frozen=True)
class StatusTables:
    """The pgsink tables in a PostgreSQL schema of the test's own."""

    url: str
    schema: str

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, options="-c TimeZone=UTC") as db:
            return db.execute(sql.replace("telex.", f"{self.schema}.")).fetchall()  # type: ignore[arg-type]


@pytest.fixture
def tables(settings: Settings, database_url: str) -> StatusTables:
    """The pgsink tables holding :func:`status_rows`, written by the sink's own code."""
    made = StatusTables(database_url, f"t_{uuid.uuid4().hex[:10]}")
    sink = StatusSink(settings.model_copy(
        update={"database_url": SecretStr(database_url), "pg_schema": made.schema}))
    try:
        sink.write([row(e) for e in status_rows()])
    finally:
        sink.close()
    return made


def test_sql_current_statuses_of_an_account(tables: StatusTables) -> None:
    """The guide's message_status query counts an account's messages by effective status."""
    counts = tables.query(snippet("sql-current"))
    assert counts == [("delivered", 3), ("failed", 1), ("undelivered", 1)]


def test_sql_time_to_delivery_per_channel(tables: StatusTables) -> None:
    """The guide's latency query gives the median seconds from accepted to delivered."""
    assert tables.query(snippet("sql-latency")) == [("sms", 2, 4.0), ("whatsapp", 1, 2.0)]


def test_sql_errors_come_from_the_event_that_set_the_status(tables: StatusTables) -> None:
    """The guide's error query reports 30008 where message_status shows the late event's 30005."""
    assert tables.query(snippet("sql-errors")) == [("failed", 21606, 1), ("undelivered", 30008, 1)]
    shown = tables.query("SELECT status, error_code FROM telex.message_status "
                         "WHERE message_id = 'M4'")
    assert shown == [("undelivered", 30005)]  # the trap the guide warns of
