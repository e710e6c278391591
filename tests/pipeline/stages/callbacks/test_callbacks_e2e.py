"""Status callbacks end to end on the real broker: status stage → callbacks stage → receivers
that verify every signature with the reference ``standardwebhooks`` library."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.simulators.smsc_model import SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.codec import AvroCodec
from pipeline.dev.callback_receiver import callback_receiver
from pipeline.headers import H_ERROR_MESSAGE, H_MESSAGE_ID
from pipeline.records import update_record
from pipeline.runtime.deadletter import header_dict
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from pipeline.stages.callbacks.signing import generate_secret
from tests.fixtures.telex import Worker, produce, read_all
from tests.fixtures.waiting import until_sync
from tests.pipeline.stages.pipeline_helpers import (
    ALL_STAGES,
    applied,
    carriers_file,
    smpp,
    start_pipeline,
    wait_final,
)

CODEC = AvroCodec()
SECRET = generate_secret()
T0 = 1_800_000_000_000


def _callback_settings(topics: Settings, tmp_path: Path, **extra: object) -> Settings:
    secrets = tmp_path / "callback-secrets.json"
    secrets.write_text(json.dumps({"*": [SECRET]}))
    return topics.model_copy(update={
        "callback_secrets_file": str(secrets), "callback_allow_http": True,
        "callback_allow_networks": "127.0.0.0/8", "callback_timeout_s": 2.0,
        "callback_retry_ceilings_s": "0.3,0.3,0.3", **extra})


def _lifecycle(mid: str, url: str | None, final: str = "delivered") -> list[tuple[str, bytes]]:
    """accepted (naming the URL) → sent → ``final``: three events that each move the status."""
    def update(status: str, source: str, t: int, **kw: object) -> tuple[str, bytes]:
        return mid, CODEC.encode("status_update", update_record(
            mid, source, T0 + t, status=status, account_id="acc-1", channel="sms", **kw))
    return [update("accepted", "ingest", 0, status_callback_url=url),
            update("sent", "dispatch", 10, attempt=1, connector="smsc",
                   carrier_message_id=f"c-{mid}"),
            update(final, "receipt", 20, attempt=1, connector="smsc",
                   carrier_message_id=f"c-{mid}")]


def _by_message(received: list) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in received:
        out.setdefault(r.body["MessageSid"], []).append(r.body["SequenceNumber"])
    return out


def _first_delivery(received: list) -> list:
    """Each webhook-id once, at its first delivery."""
    seen: set[str] = set()
    return [r for r in received if not (r.webhook_id in seen or seen.add(r.webhook_id))]


def test_every_status_change_arrives_signed_once_per_webhook_id_in_order(
        topics: Settings, tmp_path: Path, worker: Callable[[str, Settings], Worker]) -> None:
    """Healthy and flaky endpoints: every moving event delivered once per webhook-id, each
    message's events in sequence order, every signature verified; messages without a URL
    produce nothing."""
    # Every first attempt fails at the flaky endpoint: too many in a row for the default
    # breaker, whose behaviour test_fairness covers; here only retries are under test.
    settings = _callback_settings(topics, tmp_path, callback_breaker_failures=1000)

    def flaky(_wid: str, attempt: int) -> int:
        return 503 if attempt == 1 else 200

    with callback_receiver(SECRET, "127.0.0.1") as healthy, \
            callback_receiver(SECRET, "127.0.0.2", flaky) as retried:
        records = []
        for i in range(12):
            records += _lifecycle(f"ok-{i}", healthy.url())
        for i in range(6):
            records += _lifecycle(f"flaky-{i}", retried.url())
        for i in range(6):
            records += _lifecycle(f"none-{i}", None)
        produce(settings, "status-updates", records)
        workers = [worker("status", settings), worker("callbacks", settings)]

        def done() -> bool:
            for w in workers:
                w.assert_alive()
            return len(healthy.delivered()) == 36 and len(retried.delivered()) == 18

        until_sync(done, 90, "36 + 18 delivered callbacks", interval_s=0.1)
        for receiver, prefix, count in ((healthy, "ok", 12), (retried, "flaky", 6)):
            assert all(r.verified for r in receiver.all())
            ids = [r.webhook_id for r in receiver.delivered()]
            assert len(ids) == len(set(ids)) == 3 * count  # once per webhook-id
            order = _by_message(receiver.delivered())
            assert order == {f"{prefix}-{i}": [1, 2, 3] for i in range(count)}
            statuses = {tuple(r.body["MessageStatus"] for r in receiver.delivered()
                              if r.body["MessageSid"] == f"{prefix}-0")}
            assert statuses == {("accepted", "sent", "delivered")}
        # The flaky endpoint saw each event twice (503, then 200): the retry kept its id.
        assert len(retried.all()) == 36
        # Every attempt is on callback-attempts for telex trace: the flaky ones retried once.
        attempts = [CODEC.decode(m.value()) for m in read_all(
            settings, "callback-attempts", until=lambda r: len(r) >= 72, timeout=30)]
        flaky_0 = [(a["sequence"], a["attempt"], a["verdict"]) for a in attempts
                   if a["message_id"] == "flaky-0"]
        assert flaky_0 == [(1, 1, "retry"), (1, 2, "delivered"), (2, 1, "retry"),
                           (2, 2, "delivered"), (3, 1, "retry"), (3, 2, "delivered")]
        assert not [r for r in healthy.all() + retried.all()
                    if r.body["MessageSid"].startswith("none-")]


def test_refused_and_rejected_callbacks_are_dead_lettered_with_their_reason(
        topics: Settings, tmp_path: Path, worker: Callable[[str, Settings], Worker]) -> None:
    """A URL the SSRF guard refuses gets no connection; a 400 is not retried; both end in
    dlq-callbacks with the reason, and the message's next events still go (to the good one)."""
    settings = _callback_settings(topics, tmp_path, callback_allow_networks="127.0.0.2/32")
    with callback_receiver(SECRET, "127.0.0.2", lambda _w, _a: 400) as refusing, \
            callback_receiver(SECRET, "127.0.0.3") as private:
        produce(settings, "status-updates",
                _lifecycle("bad-request", refusing.url())
                + _lifecycle("private", private.url()))
        worker("status", settings)
        worker("callbacks", settings)
        dead = read_all(settings, "dlq-callbacks", until=lambda r: len(r) >= 6, timeout=90)
        reasons = {(header_dict(m.headers())[H_MESSAGE_ID],
                    CODEC.decode(m.value())["sequence"]): header_dict(m.headers())[H_ERROR_MESSAGE]
                   for m in dead}
        assert set(reasons) == {(m, s) for m in ("bad-request", "private") for s in (1, 2, 3)}
        assert all("HTTP 400" in reasons[("bad-request", s)] for s in (1, 2, 3))
        assert all("SSRF" in reasons[("private", s)] and "127.0.0.3" in reasons[("private", s)]
                   for s in (1, 2, 3))
        assert len(refusing.all()) == 3  # one attempt per event: a 400 is final
        assert private.all() == []  # refused before any connection


@pytest.mark.parametrize("missing", ["callback_secrets_file"])
def test_the_stage_needs_its_secrets(topics: Settings, missing: str) -> None:
    """Without signing secrets the stage refuses to start: an unsigned callback is a forgery."""
    from pipeline.errors import ConfigError
    from pipeline.stages.callbacks.stage import build
    with pytest.raises(ConfigError, match="TELEX_CALLBACK_SECRETS_FILE"):
        build(topics.model_copy(update={missing: None}))


def test_a_worker_killed_with_attempts_in_flight_repeats_only_those(
        topics: Settings, tmp_path: Path, worker: Callable[[str, Settings], Worker]) -> None:
    """SIGKILL while every message's first callback hangs at the endpoint: after a restart each
    event is delivered; only the attempts that were in flight went twice (same webhook-id)."""
    settings = _callback_settings(topics, tmp_path, callback_timeout_s=30.0,
                                  callback_breaker_failures=1000)
    hold = threading.Event()
    with callback_receiver(SECRET, "127.0.0.1", hold=hold) as endpoint:
        produce(settings, "status-updates",
                [r for i in range(8) for r in _lifecycle(f"m-{i}", endpoint.url())])
        worker("status", settings)
        first = worker("callbacks", settings)
        def in_flight() -> bool:
            first.assert_alive()
            return endpoint.arrived >= 8

        until_sync(in_flight, 60, "8 callbacks in flight", interval_s=0.05)
        first.kill()
        hold.set()  # answers now go to a dead worker: those attempts count as lost
        second = worker("callbacks", settings)

        def done() -> bool:
            second.assert_alive()
            return len({r.webhook_id for r in endpoint.delivered()}) == 24

        until_sync(done, 90, "24 distinct callbacks delivered", interval_s=0.1)
        counts = Counter(r.webhook_id for r in endpoint.all())
        repeated = {wid for wid, n in counts.items() if n > 1}
        assert repeated <= {f"msg_m-{i}_1" for i in range(8)}  # only the in-flight ones
        assert max(counts.values()) == 2
        assert _by_message(_first_delivery(endpoint.delivered())) == {
            f"m-{i}": [1, 2, 3] for i in range(8)}


def test_a_hanging_and_a_failing_endpoint_delay_nobody_else(
        topics: Settings, tmp_path: Path, worker: Callable[[str, Settings], Worker]) -> None:
    """One endpoint never answers, one answers 500: the healthy endpoint gets all its callbacks
    while theirs are still pending, and the hanging one never holds more attempts than the
    host cap."""
    # No attempt times out during the test, so every request open at the hanging endpoint is
    # one Telex holds in flight (an abandoned one would stay open there too).
    settings = _callback_settings(topics, tmp_path, callback_timeout_s=60.0,
                                  callback_host_concurrency=3,
                                  callback_retry_ceilings_s="0.5,0.5,0.5,0.5,0.5,0.5")
    hold = threading.Event()
    with callback_receiver(SECRET, "127.0.0.1", hold=hold) as hanging, \
            callback_receiver(SECRET, "127.0.0.2", lambda _w, _a: 500) as failing, \
            callback_receiver(SECRET, "127.0.0.3") as healthy:
        records = []
        for i in range(20):
            records += _lifecycle(f"hang-{i}", hanging.url())
            records += _lifecycle(f"fail-{i}", failing.url())
            records += _lifecycle(f"ok-{i}", healthy.url())
        produce(settings, "status-updates", records)
        workers = [worker("status", settings), worker("callbacks", settings)]

        def healthy_done() -> bool:
            for w in workers:
                w.assert_alive()
            return len(healthy.delivered()) == 60

        until_sync(healthy_done, 90, "the healthy endpoint's 60 callbacks", interval_s=0.1)
        assert _by_message(healthy.delivered()) == {f"ok-{i}": [1, 2, 3] for i in range(20)}
        assert hanging.received == []  # still waiting: none answered yet
        assert hanging.open_max <= 3  # the host cap, held however long it hangs
        assert {r.body["SequenceNumber"] for r in failing.all()} == {1}  # in order: no 2 yet


def test_messages_through_the_simulators_call_their_customer_back(
        topics: Settings, tmp_path: Path, worker: Callable[[str, Settings], Worker]) -> None:
    """The customer's view: SMS sent with the SDK and a callback URL, delivered or expired by an
    SMSC simulator over SMPP; the receiver gets every status the history moved through, signed,
    in order, ending in each message's final status."""
    with ThreadedSmsc(SmscConfig(seed=7, outcomes={"DELIVRD": 0.8, "EXPIRED": 0.2})) as smsc, \
            callback_receiver(SECRET, "127.0.0.1") as endpoint:
        settings = _callback_settings(topics, tmp_path).model_copy(update={
            "carriers_file": carriers_file(
                tmp_path, [smpp("smsc-a", smsc.port)],
                [{"channel": "sms", "prefix": "", "connectors": ["smsc-a"]}])})
        workers = start_pipeline(settings, worker, (*ALL_STAGES, "callbacks"))
        with TelexProducer(settings) as producer:
            ids = {producer.send(OutboundMessage(
                account_id="acct-1", channel="sms", sender="55501",
                recipient=f"+1415302{i:04d}", body=f"cb {i}", idempotency_key=f"cb-{i}",
                status_callback_url=endpoint.url())) for i in range(40)}
        history = wait_final(settings, ids, workers)
        moved = {i: [e["status"] for e in applied(history[i])
                     if (e["effective_status"] or e["status"]) == e["status"]] for i in ids}

        def all_called_back() -> bool:
            for w in workers.values():
                w.assert_alive()
            return len(endpoint.delivered()) >= sum(len(s) for s in moved.values())

        until_sync(all_called_back, 90, "a callback per status change", interval_s=0.1)
        assert all(r.verified for r in endpoint.all())
        got: dict[str, list[str]] = {}
        for r in _first_delivery(endpoint.delivered()):
            got.setdefault(r.body["MessageSid"], []).append(r.body["MessageStatus"])
        assert got == moved
        assert {s[-1] for s in got.values()} <= {"delivered", "undelivered"}
        assert {s[0] for s in got.values()} == {"accepted"}


def test_a_gone_endpoint_stays_disabled_across_restarts_until_an_operator_enables_it(
        topics: Settings, tmp_path: Path, worker: Callable[[str, Settings], Worker]) -> None:
    """410 Gone disables the host: its callbacks are dead-lettered unsent, `telex health` lists
    it, and a restarted worker knows before it sends anything (callback-endpoints). After
    `telex callbacks enable` callbacks go again."""
    from tests.pipeline.test_ops_cli import telex

    settings = _callback_settings(topics, tmp_path)
    gone = threading.Event()
    gone.set()
    with callback_receiver(SECRET, "127.0.0.2",
                           lambda _w, _a: 410 if gone.is_set() else 200) as endpoint:
        produce(settings, "status-updates", _lifecycle("first", endpoint.url()))
        worker("status", settings)
        first = worker("callbacks", settings)
        read_all(settings, "dlq-callbacks", until=lambda r: len(r) >= 3, timeout=90)
        assert len(endpoint.all()) == 1  # one 410; the next two events were never sent
        health = telex(settings, "health", "--json")
        assert json.loads(health.stdout)["callback_endpoints_disabled"] == {
            "127.0.0.2": "the endpoint answered 410 Gone"}, health.stderr

        first.stop()
        second = worker("callbacks", settings)
        produce(settings, "status-updates", _lifecycle("second", endpoint.url()))
        read_all(settings, "dlq-callbacks", until=lambda r: len(r) >= 6, timeout=90)
        assert len(endpoint.all()) == 1  # the restarted worker knew the host was disabled

        gone.clear()
        enabled = telex(settings, "callbacks", "enable", "127.0.0.2")
        assert enabled.returncode == 0, enabled.stdout + enabled.stderr

        def learnt() -> bool:  # the worker logs each record of callback-endpoints it applies
            second.assert_alive()
            return any('"callback_endpoint_learnt"' in line and '"enabled"' in line
                       for line in second.log_path.read_text().splitlines())

        until_sync(learnt, 30, "the worker learning that the host is enabled", interval_s=0.1)
        produce(settings, "status-updates", _lifecycle("third", endpoint.url()))
        until_sync(lambda: len(endpoint.delivered()) == 3, 90, "third's 3 callbacks",
                   interval_s=0.1)
        assert _by_message(endpoint.delivered()) == {"third": [1, 2, 3]}
        listed = telex(settings, "callbacks", "list", "--json")
        assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
