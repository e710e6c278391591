"""The status stage's deadlines as timers of its store (punctuation), without Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.codec import AvroCodec
from pipeline.headers import H_CALLBACK_URL, H_TIMER_DUE
from pipeline.records import IN_DOUBT, update_record
from pipeline.runtime.stage import Out, Record
from pipeline.runtime.store import DiskStore, KeyState, MemoryStore, Store
from pipeline.settings import Settings
from pipeline.stages.status.stage import StatusStage

CODEC = AvroCodec()
WINDOW_MS = 10_000


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    made: Store = (MemoryStore("status", 0, None) if request.param == "memory"
                   else DiskStore("status", 0, None, tmp_path / "db"))
    yield made
    made.close()


@pytest.fixture
def stage() -> StatusStage:
    return StatusStage(Settings(TELEX_RECEIPT_WINDOW_S=WINDOW_MS / 1000), CODEC)


def _feed(stage: StatusStage, store: Store, update: dict, now_ms: int,
          headers: list | None = None) -> list[Out]:
    record = Record("status-updates", 0, 0, update["message_id"],
                    CODEC.encode("status_update", update), headers, now_ms)
    return stage.process([record], {("status-updates", 0): store}, now_ms)


def _sent(message_id: str = "m1", at_ms: int = 1_000) -> dict:
    return update_record(message_id, "dispatch", at_ms, status="sent", attempt=1,
                         account_id="acc", channel="sms", connector="smsc",
                         carrier_message_id="c1")


def _statuses(outs: list[Out]) -> list[tuple[str, str, int | None]]:
    return [(o.topic, (d := CODEC.decode(o.value))["status"], d["error_code"]) for o in outs]


def test_sent_books_a_receipt_window_timer_and_writes_no_deadline_record(
        stage: StatusStage, store: Store):
    """A ``sent`` outputs only its history events; its deadline is the entry's timer."""
    outs = _feed(stage, store, _sent(at_ms=1_000), 1_000)
    assert {o.topic for o in outs} == {"delivery-status", "delivery-status-latest"}
    assert KeyState(store, "m1", 1_000).timer == 1_000 + WINDOW_MS


def test_the_latest_view_of_a_moving_update_is_its_history_record(
        stage: StatusStage, store: Store):
    """The view record carries the same bytes as the history event that moved the status."""
    outs = _feed(stage, store, _sent(at_ms=1_000), 1_000)
    history, latest = outs
    assert (history.topic, latest.topic, latest.view) == (
        "delivery-status", "delivery-status-latest", True)
    assert latest.value == history.value
    assert latest.value == CODEC.encode("delivery_status", CODEC.decode(history.value))


def test_the_receipt_window_fires_undelivered_30008_once_due(stage: StatusStage, store: Store):
    """Punctuation before the due time does nothing; at it, undelivered 30008, timer gone."""
    _feed(stage, store, _sent(at_ms=1_000), 1_000)
    assert stage.punctuate(1_000 + WINDOW_MS - 1, store) == []
    outs = stage.punctuate(1_000 + WINDOW_MS, store)
    assert _statuses(outs) == [("delivery-status", "undelivered", 30008),
                               ("delivery-status-latest", "undelivered", 30008)]
    assert KeyState(store, "m1", 0).timer is None
    assert stage.punctuate(10 * WINDOW_MS, store) == []


def test_a_receipt_cancels_the_receipt_window_timer(stage: StatusStage, store: Store):
    """A delivered receipt makes the deadline dead: dropped in the same write, never fired."""
    _feed(stage, store, _sent(at_ms=1_000), 1_000)
    delivered = update_record("m1", "receipt", 2_000, status="delivered", attempt=1)
    _feed(stage, store, delivered, 2_000)
    state = KeyState(store, "m1", 2_000)
    assert state.timer is None and state.get("timers") is None
    assert stage.punctuate(10 * WINDOW_MS, store) == []


def test_a_timer_fired_twice_gives_the_same_outputs(stage: StatusStage, tmp_path: Path):
    """A crash before the firing's checkpoint fires it again on the restored state: same events
    (same sequence), which readers absorb."""
    first = MemoryStore("status", 0, None)
    _feed(stage, first, _sent(at_ms=1_000), 1_000)
    changelog = list(first.changes(0))
    fired = stage.punctuate(20_000, first)
    again = MemoryStore("status", 0, None)
    for key, raw in changelog:  # restore of the checkpoint before the firing
        again.restore(key, raw)
    refired = stage.punctuate(20_000, again)
    assert [CODEC.decode(o.value) for o in refired] == [CODEC.decode(o.value) for o in fired]


def test_an_in_doubt_deadline_on_status_updates_is_booked_then_fired(
        stage: StatusStage, store: Store):
    """Dispatch's in-doubt deadline, headed with its due time, waits in the store; then failed."""
    _feed(stage, store, update_record("m1", "ingest", 0, status="accepted", account_id="acc",
                                      channel="whatsapp"), 0)
    deadline = update_record("m1", "dispatch", 1_000, timer=IN_DOUBT, attempt=1,
                             account_id="acc", channel="whatsapp", connector="wa")
    assert _feed(stage, store, deadline, 1_000, [(H_TIMER_DUE, b"5000")]) == []
    assert KeyState(store, "m1", 1_000).timer == 5_000
    assert _statuses(stage.punctuate(5_000, store)) == [
        ("delivery-status", "failed", 30008), ("delivery-status-latest", "failed", 30008)]


def test_a_deadline_released_by_the_delay_tiers_is_still_applied(stage: StatusStage, store: Store):
    """A deadline record already in flight (no due header: written by the old status stage)
    is applied when it arrives, as before."""
    _feed(stage, store, _sent(at_ms=1_000), 1_000)
    legacy = {**_sent(at_ms=1_000), "status": None, "timer": "receipt_window",
              "source": "timeout", "resend_message": None}
    outs = _feed(stage, store, legacy, 11_000)
    assert _statuses(outs)[0] == ("delivery-status", "undelivered", 30008)
    assert stage.punctuate(11_000, store) == []  # the booked timer is dead now


def test_every_event_of_a_message_with_a_callback_url_is_headed_with_it(
        stage: StatusStage, store: Store):
    """Ingest's first update names the URL; the entry keeps it; each history event carries it
    (the callbacks stage's only source), the latest view and other messages' events do not."""
    url = "https://hooks.example.com/telex?t=1"
    accepted = update_record("m1", "ingest", 500, status="accepted", account_id="acc",
                             channel="sms", status_callback_url=url)
    outs = _feed(stage, store, accepted, 500) + _feed(stage, store, _sent(at_ms=1_000), 1_000)
    history = [o for o in outs if o.topic == "delivery-status"]
    assert [CODEC.decode(o.value)["sequence"] for o in history] == [1, 2]
    assert all(o.headers == [(H_CALLBACK_URL, url.encode())] for o in history)
    assert all(not o.headers for o in outs if o.topic == "delivery-status-latest")
    other = _feed(stage, store, _sent("m2"), 1_000)
    assert all(not o.headers for o in other)
