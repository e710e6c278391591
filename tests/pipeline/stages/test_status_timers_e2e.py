"""Status and reconcile deadlines as store timers, end to end on the real broker: they survive a
SIGKILL of their stage (the restored store fires them) and never travel the delay tiers."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.codec import AvroCodec
from pipeline.headers import H_TIMER_DUE
from pipeline.records import IN_DOUBT, update_record
from pipeline.runtime.delay import TIER_DELAYS_MS, tier_topic
from pipeline.settings import Settings
from tests.fixtures.telex import Worker, produce, read_all
from tests.fixtures.waiting import until_sync

CODEC = AvroCodec()


def _updates(prefix: str, n_sms: int, n_wa: int, now_ms: int
             ) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(status updates, in-doubt deadlines headed with their due time) for the messages."""
    plain: list[tuple[str, bytes]] = []
    for i in range(n_sms):
        mid = f"{prefix}-sms-{i}"
        plain.append((mid, CODEC.encode("status_update", update_record(
            mid, "ingest", now_ms, status="accepted", account_id="acc", channel="sms"))))
        plain.append((mid, CODEC.encode("status_update", update_record(
            mid, "dispatch", now_ms, status="sent", attempt=1, account_id="acc",
            channel="sms", connector="smsc-a", carrier_message_id=f"c{i}"))))
    deadlines: list[tuple[str, bytes]] = []
    for i in range(n_wa):
        mid = f"{prefix}-wa-{i}"
        plain.append((mid, CODEC.encode("status_update", update_record(
            mid, "ingest", now_ms, status="accepted", account_id="acc", channel="whatsapp"))))
        deadlines.append((mid, CODEC.encode("status_update", update_record(
            mid, "dispatch", now_ms, timer=IN_DOUBT, attempt=1, account_id="acc",
            channel="whatsapp", connector="wa"))))
    return plain, deadlines


def _consumer(settings: Settings, group: str) -> Consumer:
    return Consumer({**settings.consumer_config(group), "enable.auto.commit": False})


def _all_committed(settings: Settings, stage: str, topic: str) -> bool:
    """Whether the stage's group committed every record of ``topic``."""
    c = _consumer(settings, settings.topic(stage))
    try:
        parts = [TopicPartition(settings.topic(topic), p) for p in range(settings.partitions)]
        committed = c.committed(parts, timeout=10)
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        return all(tp.offset == end for tp, end in zip(committed, ends, strict=True))
    finally:
        c.close()


def _tier_records(settings: Settings) -> int:
    c = _consumer(settings, settings.topic("probe"))
    try:
        return sum(c.get_watermark_offsets(TopicPartition(settings.topic(tier_topic(t)), p),
                                           timeout=10)[1]
                   for t in range(len(TIER_DELAYS_MS)) for p in range(settings.partitions))
    finally:
        c.close()


def _final_events(settings: Settings, ids: set[str]) -> list[dict[str, Any]]:
    """The timeout events in delivery-status-latest, once every message in ``ids`` has one."""
    def done(records: list[Any]) -> bool:
        return ids <= {CODEC.decode(m.value())["message_id"] for m in records
                       if CODEC.decode(m.value())["source"] == "timeout"}
    records = read_all(settings, "delivery-status-latest", until=done, timeout=120)
    return [e for e in (CODEC.decode(m.value()) for m in records) if e["source"] == "timeout"]


@pytest.mark.parametrize("new_owner", [False, True], ids=["same-disk", "new-owner"])
def test_deadlines_pending_across_a_sigkill_fire_once_from_the_restored_store(
        topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
        new_owner: bool) -> None:
    """Receipt-window and in-doubt deadlines booked, committed, then the status stage SIGKILLed
    and restarted before they are due — on its own disk (local index) or as a new owner with
    an empty state dir (index rebuilt from the changelog): every message ends undelivered (SMS)
    or failed (in doubt) with 30008, exactly once in delivery-status-latest."""
    settings = topics.model_copy(update={"receipt_window_s": 25})
    status = worker("status", settings)
    now_ms = int(time.time() * 1000)
    plain, deadlines = _updates("k", 60, 20, now_ms)
    produce(settings, "status-updates", plain)
    produce(settings, "status-updates", deadlines,
            headers=[(H_TIMER_DUE, str(now_ms + 25_000).encode())])
    until_sync(lambda: _all_committed(settings, "status", "status-updates"), 120,
               "the status group to commit every status update", interval_s=0.5)
    assert time.time() * 1000 < now_ms + 25_000, "precondition: killed before the deadlines"
    status.kill()  # nothing left to replay: the deadlines live only in the store
    if new_owner:
        settings = settings.model_copy(update={"state_dir": str(tmp_path / "other-state")})
    status = worker("status", settings)

    ids = {k for k, _ in plain}
    events = _final_events(settings, ids)
    per_message = Counter(e["message_id"] for e in events)
    assert set(per_message) == ids and set(per_message.values()) == {1}
    assert {(e["message_id"].split("-")[1], e["status"], e["error_code"]) for e in events} == {
        ("sms", "undelivered", 30008), ("wa", "failed", 30008)}
    status.assert_alive()


def test_status_and_reconcile_deadlines_write_nothing_to_the_delay_tiers(
        topics: Settings, worker: Callable[[str, Settings], Worker]) -> None:
    """Receipt windows, in-doubt deadlines and a receipt's match TTL all fire without a single
    record in any delay tier (nothing else runs here that would write one)."""
    settings = topics.model_copy(update={"receipt_window_s": 3, "receipt_match_ttl_s": 2})
    workers = [worker("status", settings), worker("reconcile", settings)]
    now_ms = int(time.time() * 1000)
    plain, deadlines = _updates("t", 30, 10, now_ms)
    produce(settings, "status-updates", plain)
    produce(settings, "status-updates", deadlines,
            headers=[(H_TIMER_DUE, str(now_ms + 3_000).encode())])
    early = {"connector": "smsc-a", "carrier_message_id": "nosuch", "carrier_status": "DELIVRD",
             "status": "delivered", "error_code": None, "carrier_error": None,
             "done_at_ms": None, "received_at_ms": now_ms, "message_id": None, "raw": None}
    produce(settings, "carrier-receipts",
            [("smsc-a:nosuch", CODEC.encode("carrier_receipt", early))])

    _final_events(settings, {k for k, _ in plain})
    unmatched = read_all(settings, "receipts-unmatched", until=lambda r: len(r) >= 1)
    assert [CODEC.decode(m.value())["carrier_message_id"] for m in unmatched] == ["nosuch"]
    for w in workers:
        w.assert_alive()
    assert _tier_records(settings) == 0
