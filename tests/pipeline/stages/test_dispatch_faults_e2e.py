"""Dispatch under load and faults, end to end on the real broker with both simulators."""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from connectors.simulators.http_channel import HttpChannelConfig, HttpChannelSimulator
from connectors.simulators.smsc_model import Faults, SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.codec import AvroCodec
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.telex import Worker, read_all
from tests.fixtures.waiting import until_sync
from tests.pipeline.stages.test_dispatch_e2e import statuses
from tests.pipeline.stages.test_dispatch_routing_e2e import (
    TOKEN,
    WA_SENDER,
    accepted_texts,
    smpp,
    start,
)

CODEC = AvroCodec()
# Generous limits: these tests are about dispatch, not about waiting for rate limits.
FAST = {"senders": {"sms:55501": {"rate": 20_000, "burst": 20_000},
                    f"whatsapp:{WA_SENDER}": {"rate": 20_000, "burst": 20_000}},
        "account_default": {"rate": 20_000, "burst": 20_000}}


def configure(settings: Settings, tmp_path: Path, connectors: list[dict],
              routes: list[dict], schedule: tuple[int, ...] = (1, 2, 4, 8)) -> Settings:
    (tmp_path / "carriers.json").write_text(json.dumps({"connectors": connectors,
                                                         "routes": routes}))
    (tmp_path / "limits.json").write_text(json.dumps(FAST))
    return settings.model_copy(update={
        "carriers_file": str(tmp_path / "carriers.json"),
        "limits_file": str(tmp_path / "limits.json"), "retry_schedule_s": schedule})


def sms(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(account_id="acct-1", channel="sms", sender="55501",
                            recipient=f"+1415{204 + i // 10_000:03d}{i % 10_000:04d}",
                            body=f"{tag} {i}", idempotency_key=f"{tag}-{i}") for i in range(n)]


def journal_of(settings: Settings) -> dict[str, list[dict]]:
    entries: dict[str, list[dict]] = defaultdict(list)
    for m in read_all(settings, "dispatch-journal", timeout=120):
        e = CODEC.decode(m.value())
        entries[e["message_id"]].append(e)
    return entries


def test_ten_thousand_messages_over_smpp_and_http_are_each_submitted_once(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
):
    """8,000 SMS over SMPP and 2,000 WhatsApp over HTTP: each accepted exactly once by its
    carrier, each 'sent' with the carrier's id, and the journal holds the same id."""
    with ThreadedSmsc(SmscConfig(seed=1)) as smsc, HttpChannelSimulator(
            HttpChannelConfig(access_token=TOKEN, seed=2)) as wa:
        settings = configure(topics, tmp_path, [
            smpp("smsc", smsc.port, window=50),
            {"name": "wa", "type": "whatsapp", "base_url": wa.base_url,
             "phone_number_id": "1099", "access_token": TOKEN, "window": 32, "timeout_s": 10,
             "trust_env": False}],
            [{"channel": "sms", "prefix": "", "connectors": ["smsc"]},
             {"channel": "whatsapp", "prefix": "", "connectors": ["wa"]}])
        start(settings, worker)
        batch = sms(8000, "ten") + [
            OutboundMessage(account_id="acct-1", channel="whatsapp", sender=WA_SENDER,
                            recipient=f"whatsapp:+1415205{i:04d}", body=f"wa {i}",
                            idempotency_key=f"wa-{i}") for i in range(2000)]
        with TelexProducer(settings) as producer:
            ids = producer.send_batch(batch)
        final = statuses(settings, len(ids), timeout=240)
        assert set(final) == set(ids)
        assert {s["status"] for s in final.values()} == {"sent"}
        sms_accepted = accepted_texts(smsc)
        assert len(sms_accepted) == 8000 and set(sms_accepted.values()) == {1}
        wa_ok = Counter(r.opaque for r in wa.sends if r.http_status == 200)
        assert len(wa_ok) == 2000 and set(wa_ok.values()) == {1}
    journal = journal_of(settings)
    for mid in ids:
        last = journal[mid][-1]
        assert last["state"] == "SUBMITTED"
        assert last["carrier_message_id"] == final[mid]["carrier_message_id"]


def test_transient_faults_are_retried_when_due_and_permanent_ones_fail_once(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
):
    """5 % throttled, 1 % permanently rejected, 2 % never answered, the bind dropped every 3 s:
    every transient failure ends sent within the attempts, no retry before it is due,
    permanent rejects fail after one attempt with 21211, nothing is sent after its validity."""
    faults = Faults(throttle_rate=0.05, reject_rate=0.01, no_response_rate=0.02)
    with ThreadedSmsc(SmscConfig(seed=5), faults) as smsc:
        settings = configure(topics, tmp_path, [
            smpp("smsc", smsc.port, window=50, response_timeout_s=1, reconnect_max_s=1,
                 breaker={"failure_threshold": 50, "base_cooldown_ms": 500})],
            [{"channel": "sms", "prefix": "", "connectors": ["smsc"]}])
        start(settings, worker)
        stop = threading.Event()

        def drop_binds() -> None:
            while not stop.wait(3):
                smsc.call(lambda sim: sim.drop_connections())

        dropper = threading.Thread(target=drop_binds, daemon=True)
        dropper.start()
        try:
            with TelexProducer(settings) as producer:
                ids = producer.send_batch(sms(1000, "faults"))
            final = statuses(settings, len(ids), timeout=240)
        finally:
            stop.set()
            dropper.join()
    assert set(final) == set(ids), "every message ends sent or failed"
    journal = journal_of(settings)
    accepted = {CODEC.decode(m.value())["message_id"]: CODEC.decode(m.value())["expires_at_ms"]
                for m in read_all(settings, "message-accepted")}
    rejected = 0
    for mid, status in final.items():
        entries = journal[mid]
        if status["status"] == "failed":
            rejected += 1
            assert status["error_code"] == 21211, status
            final_failures = [e for e in entries if e["state"] == "FAILED" and not e["retryable"]]
            assert final_failures == [entries[-1]], "a permanent reject is never retried"
        else:
            assert status["event_time_ms"] <= accepted[mid], "sent after its validity"
        for before, after in itertools.pairwise(entries):
            if before["state"] == "FAILED" and after["state"] == "ATTEMPTING":
                wait = settings.retry_schedule_s[before["attempt"]] * 1000 * 0.8
                assert after["at_ms"] >= before["at_ms"] + wait, (mid, before, after)
    assert 0 < rejected < 40
    retried = sum(any(e["attempt"] > 0 for e in journal[m]) for m in ids)
    assert retried > 0, "faults were injected: some messages must have been retried"
    print(f"\nfaults: {retried} messages retried, {rejected} rejected for good")


def test_repeated_sigkill_while_the_smsc_holds_responses_loses_nothing(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
):
    """The dispatcher is SIGKILLed three times while the SMSC delays every response: no message
    is lost, and every message the SMSC accepted twice has an in-doubt journal entry."""
    with ThreadedSmsc(SmscConfig(seed=9, latency_s=0.05)) as smsc:
        settings = configure(topics, tmp_path,
                             [smpp("smsc", smsc.port, window=50)],
                             [{"channel": "sms", "prefix": "", "connectors": ["smsc"]}])
        workers = start(settings, worker)
        with TelexProducer(settings) as producer:
            ids = producer.send_batch(sms(2000, "kill"))
        dispatch = workers["dispatch"]
        for goal in (300, 800, 1300):
            until_sync(lambda goal=goal: sum(r.status == 0 for r in smsc.submits) >= goal, 120,
                       f"{goal} accepted submits (dispatch stalled before them)",
                       interval_s=0.02)
            dispatch.kill()
            dispatch = worker("dispatch", settings)
        final = statuses(settings, len(ids), timeout=240)
        accepted = accepted_texts(smsc)
    assert set(final) == set(ids) and {s["status"] for s in final.values()} == {"sent"}
    assert len(accepted) == 2000, "lost messages"
    journal = journal_of(settings)
    in_doubt = {m for m, es in journal.items()
                if any(e["state"] == "IN_DOUBT_RESOLVED" for e in es)}
    text_of = {mid: f"kill {i}" for i, mid in enumerate(ids)}
    twice = {m for m in ids if accepted[text_of[m]] > 1}
    print(f"\nduplicates after 3 SIGKILLs: {len(twice)}; in-doubt entries: {len(in_doubt)}")
    assert twice <= in_doubt, "every duplicate submit is explained by an in-doubt entry"
    assert len(in_doubt) <= 3 * settings.dispatch_batch
