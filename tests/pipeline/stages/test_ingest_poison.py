"""Malformed and fuzzed input never stalls or crashes the ingest stage, and is never lost."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline.codec import AvroCodec
from pipeline.headers import (
    H_ERROR_CLASS,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TOPIC,
    H_STAGE,
)
from pipeline.runtime.deadletter import header_dict
from pipeline.settings import Settings
from tests.fixtures.samples import sample
from tests.fixtures.telex import Worker, produce, read_all
from tests.fixtures.waiting import wait_for

CODEC = AvroCodec()
SINGLE_OBJECT_MARKER = b"\xc3\x01"


def request_bytes(**fields: Any) -> tuple[str, bytes]:
    """A MessageRequested that passes validation, unless ``fields`` say otherwise."""
    mid = "TX" + uuid.uuid4().hex
    valid = {"sender": "+14155550100", "recipient": "+14155550123", "send_at_ms": None}
    return mid, CODEC.encode("message_requested", sample("message_requested", message_id=mid,
                                                          **(valid | fields)))


def test_poison_records_are_dead_lettered_with_provenance(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """Garbage, a wrong schema, a truncated body and a wrong key each land in dlq-ingest with
    provenance headers, and the valid record behind them is still accepted."""
    good_id, good = request_bytes()
    poison = [
        ("garbage", b"\x00\x01not avro at all"),
        ("empty", b""),
        ("wrong-schema", CODEC.encode("delivery_status", sample("delivery_status"))),
        ("truncated", request_bytes()[1][:-5]),
        ("wrong-key", request_bytes()[1]),
    ]
    produce(topics, "message-requested", [*poison, (good_id, good)])
    w = worker("ingest", topics)
    accepted = read_all(topics, "message-accepted", until=lambda r: len(r) >= 1, timeout=120)
    dlq = read_all(topics, "dlq-ingest", until=lambda r: len(r) >= len(poison), timeout=60)
    w.assert_alive()
    assert [CODEC.decode(m.value())["message_id"] for m in accepted] == [good_id]
    by_key = {m.key().decode(): m for m in dlq}
    assert set(by_key) == {k for k, _ in poison}
    for key, value in poison:
        record = by_key[key]
        h = header_dict(record.headers())
        assert record.value() == value or (value == b"" and record.value() in (b"", None))
        assert h[H_ORIGINAL_TOPIC] == topics.topic("message-requested")
        assert h[H_STAGE] == "ingest" and h[H_ERROR_CLASS]
        assert int(h[H_ORIGINAL_OFFSET]) >= 0 and int(h[H_ORIGINAL_PARTITION]) >= 0


_text = st.text(max_size=40)
_fuzzed_request = st.fixed_dictionaries({
    "recipient": _text | st.sampled_from(["+14155550123", "+19005550100", "", "whatsapp:+1"]),
    "sender": _text | st.just("+14155550100"),
    "body": st.none() | st.text(max_size=1700),
    "validity_period_s": st.none() | st.integers(-(2**31), 2**31 - 1),
    "channel": st.sampled_from(["sms", "whatsapp", "messenger"]),
    "media_urls": st.lists(_text, max_size=3),
})


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["bytes", "header+bytes", "fields"]))
    if kind == "bytes":
        return "TX" + uuid.uuid4().hex, draw(st.binary(max_size=300))
    if kind == "header+bytes":
        return "TX" + uuid.uuid4().hex, SINGLE_OBJECT_MARKER + draw(st.binary(max_size=300))
    return request_bytes(**draw(_fuzzed_request))


def test_fuzzed_events_each_end_dead_lettered_failed_or_accepted(
    topics: Settings, worker: Callable[[str, Settings], Worker]
):
    """Every fuzzed event ends in exactly one place: dlq-ingest, a failed status, or accepted;
    the worker survives all of them."""
    w = worker("ingest", topics)
    seen_ids: set[str] = set()

    @hsettings(max_examples=8, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(malformed(), min_size=10, max_size=40))
    def check(batch: list[tuple[str, bytes]]) -> None:
        produce(topics, "message-requested", batch)
        ids = {k for k, _ in batch}
        seen_ids.update(ids)

        def outcomes() -> dict[str, list[str]]:
            where: dict[str, list[str]] = {}
            for m in read_all(topics, "dlq-ingest"):
                where.setdefault(m.key().decode(), []).append("dlq-ingest")
            for m in read_all(topics, "message-accepted"):  # keyed by account
                where.setdefault(CODEC.decode(m.value())["message_id"], []).append(
                    "message-accepted")
            for m in read_all(topics, "status-updates"):
                if CODEC.decode(m.value())["status"] == "failed":
                    where.setdefault(m.key().decode(), []).append("failed")
            return where

        def outcomes_while_alive() -> dict[str, list[str]]:
            where = outcomes()
            if not ids <= set(where):
                w.assert_alive()
            return where

        where = wait_for(outcomes_while_alive, until=lambda where: ids <= set(where),
                         timeout=120, what="an outcome for every event of the batch",
                         describe=lambda where: f"none yet for {sorted(ids - set(where))}")
        for key in ids:
            assert where.get(key, []) in (["dlq-ingest"], ["failed"], ["message-accepted"]), (
                key, where.get(key))
        w.assert_alive()

    check()
