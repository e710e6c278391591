"""The callbacks stage without Kafka: queue order, retries as timers, give-ups, replays.

A fake sender answers from a script and records what was sent; a stub resolver maps every
name to 127.0.0.1 (allowed by the settings, as in the demo)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from pipeline.codec import AvroCodec
from pipeline.headers import H_CALLBACK_URL, H_ERROR_MESSAGE, H_REPLAY_COUNT
from pipeline.runtime.deadletter import header_dict
from pipeline.runtime.stage import Out, Record
from pipeline.runtime.store import KeyState, MemoryStore, Store
from pipeline.settings import Settings
from pipeline.stages.callbacks.sender import Response, Target
from pipeline.stages.callbacks.signing import SecretBook, generate_secret
from pipeline.stages.callbacks.stage import CallbacksStage
from tests.fixtures.waiting import until_sync

CODEC = AvroCodec()
URL = "http://hooks.customer.test/status"
NOW = 1_800_000_000_000


class StubResolver:
    async def resolve(self, host: str, port: int) -> list[str]:
        return ["127.0.0.1"]


class FakeSender:
    """Answers each POST with ``script(body, n)``; records (webhook-id, sequence)."""

    def __init__(self, script: Callable[[dict, int], int] = lambda _b, _n: 200) -> None:
        self.script = script
        self.sent: list[tuple[str, int]] = []

    async def post(self, target: Target, body: bytes, headers: Mapping[str, str],
                   timeout_s: float) -> Response:
        event = json.loads(body)
        self.sent.append((headers["webhook-id"], event["SequenceNumber"]))
        return Response(self.script(event, len(self.sent)), {}, 0.001)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"*": [generate_secret()]}))
    return Settings(TELEX_CALLBACK_SECRETS_FILE=str(secrets), TELEX_CALLBACK_ALLOW_HTTP=True,
                    TELEX_CALLBACK_ALLOW_NETWORKS="127.0.0.0/8",
                    TELEX_CALLBACK_RETRY_CEILINGS_S="1,1", TELEX_PARTITIONS=1,
                    TELEX_CALLBACK_HOST_RATE=1e9)  # the host rate is test_fairness's


def _stage(settings: Settings, sender: FakeSender) -> CallbacksStage:
    stage = CallbacksStage(settings, SecretBook.from_file(settings.callback_secrets_file),
                           resolver=StubResolver(), sender=sender)  # type: ignore[arg-type]
    stage.open(None)  # type: ignore[arg-type]
    return stage


def _event(settings: Settings, seq: int, status: str, mid: str = "m1",
           effective: str | None = None, headers: list | None = None,
           url: str | None = URL) -> Record:
    value = CODEC.encode("delivery_status", {
        "message_id": mid, "account_id": "acc", "channel": "sms", "status": status,
        "sequence": seq, "event_time_ms": NOW + seq, "recorded_at_ms": NOW + seq,
        "error_code": None, "error_reason": None, "carrier_message_id": None,
        "connector": None, "segments": 1, "trace_id": None,
        "effective_status": effective or status, "attempt": 1, "source": "test"})
    hdrs = ([(H_CALLBACK_URL, url.encode())] if url else []) + (headers or [])
    return Record(settings.topic("delivery-status"), 0, seq, mid, value, hdrs, NOW)


class Harness:
    """Drives the stage as the runner would: batches, answers applied in wake, timers."""

    def __init__(self, settings: Settings, sender: FakeSender) -> None:
        self.stage = _stage(settings, sender)
        self.store: Store = MemoryStore("callbacks", 0, None)
        self.stores = {(settings.topic("delivery-status"), 0): self.store}
        self.sender = sender
        self.outs: list[Out] = []

    def feed(self, *records: Record, now: int = NOW) -> None:
        self.outs += self.stage.process(list(records), self.stores, now)

    def answers(self, count: int, now: int = NOW) -> None:
        """Wait for ``count`` POSTs in all, applying answers as they come."""
        def applied() -> bool:
            self.outs += self.stage.wake(now, self.stores)
            return len(self.sender.sent) >= count and not self.stage._in_flight
        until_sync(applied, 5, f"{count} callbacks answered")

    def fire(self, now: int) -> None:
        self.outs += self.stage.punctuate(now, self.store)

    def close(self) -> None:
        self.stage.close()


def test_events_go_one_at_a_time_in_sequence_order(settings: Settings) -> None:
    """Three events queued at once: sequence 2 is sent only after 1 was answered."""
    h = Harness(settings, FakeSender())
    h.feed(_event(settings, 1, "accepted"), _event(settings, 2, "sent"),
           _event(settings, 3, "delivered"))
    h.answers(3)
    assert h.sender.sent == [("msg_m1_1", 1), ("msg_m1_2", 2), ("msg_m1_3", 3)]
    assert KeyState(h.store, "m1", NOW).get("queue") is None
    h.close()


def test_a_retry_waits_as_the_entry_timer_and_keeps_its_webhook_id(settings: Settings) -> None:
    """A 503 books the retry as the store timer (no later event overtakes it); the retry
    carries the same webhook-id."""
    h = Harness(settings, FakeSender(lambda _b, n: 503 if n == 1 else 200))
    h.feed(_event(settings, 1, "accepted"), _event(settings, 2, "sent"))
    h.answers(1)
    timer = KeyState(h.store, "m1", NOW).timer
    assert timer is not None and NOW <= timer <= NOW + 1_000
    h.fire(NOW + 1_000)
    h.answers(3, now=NOW + 1_000)
    assert h.sender.sent == [("msg_m1_1", 1), ("msg_m1_1", 1), ("msg_m1_2", 2)]
    attempts = [CODEC.decode(o.value) for o in h.outs if o.topic == "callback-attempts"]
    assert [(a["sequence"], a["attempt"], a["answer"], a["verdict"]) for a in attempts] == [
        (1, 1, "5xx", "retry"), (1, 2, "2xx", "delivered"), (2, 1, "2xx", "delivered")]
    assert attempts[0]["next_attempt_at_ms"] == timer
    assert {a["webhook_id"] for a in attempts[:2]} == {"msg_m1_1"}
    h.close()


def test_a_refused_request_is_dead_lettered_and_the_next_event_goes(settings: Settings) -> None:
    """400 is final: the event goes to dlq-callbacks with the reason; sequence 2 still goes."""
    h = Harness(settings, FakeSender(lambda b, _n: 400 if b["SequenceNumber"] == 1 else 200))
    h.feed(_event(settings, 1, "accepted"), _event(settings, 2, "sent"))
    h.answers(2)
    [dead] = [o for o in h.outs if o.topic == "dlq-callbacks"]
    assert CODEC.decode(dead.value)["sequence"] == 1
    assert "HTTP 400" in header_dict(dead.headers)[H_ERROR_MESSAGE]
    assert header_dict(dead.headers)[H_CALLBACK_URL] == URL  # a replay can send it again
    assert h.sender.sent[-1] == ("msg_m1_2", 2)
    h.close()


def test_attempts_run_out_into_the_dead_letters(settings: Settings) -> None:
    """Ceilings "1,1": three attempts, then the callback is given up."""
    h = Harness(settings, FakeSender(lambda _b, _n: 500))
    h.feed(_event(settings, 1, "accepted"))
    h.answers(1)
    for n, now in ((2, NOW + 1_000), (3, NOW + 2_000)):
        h.fire(now)
        h.answers(n, now=now)
    [dead] = [o for o in h.outs if o.topic == "dlq-callbacks"]
    assert "3 attempts" in header_dict(dead.headers)[H_ERROR_MESSAGE]
    h.close()


def test_input_replays_are_dropped_but_dlq_replays_go_again(settings: Settings) -> None:
    """The same sequence read twice (a restarted status stage) sends nothing new; a record
    replayed from dlq-callbacks (replay header) is sent again."""
    h = Harness(settings, FakeSender())
    h.feed(_event(settings, 1, "accepted"))
    h.answers(1)
    h.feed(_event(settings, 1, "accepted"))
    h.feed(_event(settings, 1, "accepted", headers=[(H_REPLAY_COUNT, b"1")]))
    h.answers(2)
    assert h.sender.sent == [("msg_m1_1", 1), ("msg_m1_1", 1)]
    h.close()


def test_no_url_or_a_lower_late_event_sends_nothing(settings: Settings) -> None:
    """No header: not even decoded; a late event that did not move the status: no callback."""
    h = Harness(settings, FakeSender())
    h.feed(_event(settings, 1, "accepted", mid="quiet", url=None))
    h.feed(_event(settings, 1, "delivered"), _event(settings, 2, "sent", effective="delivered"))
    h.answers(1)
    assert h.sender.sent == [("msg_m1_1", 1)]
    h.close()


def test_callbacks_waiting_for_a_full_host_go_as_slots_free_without_polling(
        settings: Settings) -> None:
    """Host cap 1: the second and third messages wait in memory (their timers only a distant
    safety net) and go one by one as each answer frees the slot; no timer has to fire."""
    h = Harness(settings.model_copy(update={"callback_host_concurrency": 1}), FakeSender())
    h.feed(*(_event(settings, 1, "accepted", mid=f"m{i}") for i in range(3)))
    assert len(h.stage._in_flight) == 1
    assert all(KeyState(h.store, f"m{i}", NOW).timer >= NOW + 30_000 for i in (1, 2))
    h.answers(3)
    assert sorted(h.sender.sent) == [("msg_m0_1", 1), ("msg_m1_1", 1), ("msg_m2_1", 1)]
    h.close()


def test_a_long_wait_makes_the_safety_timer_rarer(settings: Settings) -> None:
    """A callback waiting behind a dead endpoint is rechecked in proportion to how long it has
    waited (3x, capped at an hour), not every 30-60 s: a big backlog stays cheap. Once sent,
    the wait is forgotten."""
    h = Harness(settings.model_copy(update={"callback_host_concurrency": 1}), FakeSender())
    h.feed(_event(settings, 1, "accepted", mid="m0"), _event(settings, 1, "accepted", mid="m1"))
    waiting = KeyState(h.store, "m1", NOW)
    assert NOW + 30_000 <= waiting.timer <= NOW + 45_000
    assert waiting.get("waiting_since") == NOW
    later = NOW + 600_000  # ten minutes on, its safety timer fires: the host is still full
    h.fire(later)
    waiting = KeyState(h.store, "m1", later)
    assert later + 1_800_000 <= waiting.timer <= later + 2_700_000
    much_later = NOW + 86_400_000
    h.fire(much_later)
    assert much_later + 3_600_000 <= KeyState(h.store, "m1", much_later).timer \
        <= much_later + 5_400_000
    h.answers(2, now=much_later)  # m0's answer frees the slot; m1 goes
    assert KeyState(h.store, "m1", much_later).get("waiting_since") is None
    h.close()


def test_a_dead_hosts_backlog_never_takes_a_healthy_hosts_waiting_place(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the waiting lists full of a dead host's callbacks, a healthy host's callback that
    finds its host at the cap still gets a place (the dead host gives up its newest) and goes
    as soon as a slot frees, without waiting for its safety timer."""
    import pipeline.stages.callbacks.stage as stage_module

    monkeypatch.setattr(stage_module, "WAITING_MAX", 4)
    dead = "http://dead.customer.test/status"
    sender = FakeSender()
    h = Harness(settings.model_copy(update={"callback_host_concurrency": 1}), sender)
    hold = threading.Event()
    original = sender.post

    async def post(target: Target, body: bytes, headers: Mapping[str, str],
                   timeout_s: float) -> Response:
        if target.url.host == "dead.customer.test":
            await asyncio.get_running_loop().run_in_executor(None, hold.wait)
        return await original(target, body, headers, timeout_s)

    sender.post = post  # type: ignore[method-assign]
    h.feed(*(_event(settings, 1, "accepted", mid=f"dead{i}", url=dead) for i in range(6)))
    assert h.stage._waiting_count == 4  # one in flight, four waiting, one beyond: on its timer
    h.feed(_event(settings, 1, "accepted", mid="ok0"), _event(settings, 1, "accepted", mid="ok1"))
    assert list(h.stage._waiting["hooks.customer.test"]) == [(0, "ok1")]
    assert len(h.stage._waiting["dead.customer.test"]) == 3

    def ok1_sent() -> bool:  # ok0's answer frees the healthy host's slot: ok1 goes at once
        h.outs += h.stage.wake(NOW, h.stores)
        return ("msg_ok1_1", 1) in sender.sent

    until_sync(ok1_sent, 5, "ok1 sent once ok0 was answered, with no timer fired")
    hold.set()
    h.close()
