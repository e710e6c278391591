"""Dispatch routing end to end: ingest → rate limit → scheduler → dispatch, with the carriers
file choosing the connector: WhatsApp through the HTTP channel simulator, and SMS failing over
from an unhealthy SMSC to the next one in the route (and back once it recovers)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.base import IdBase, normalise_message_id
from connectors.simulators.http_channel import HttpChannelConfig, HttpChannelSimulator
from connectors.simulators.smsc_model import SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings
from tests.fixtures.telex import Worker
from tests.pipeline.stages.test_dispatch_e2e import statuses

SMS_SENDER = "55501"  # demo registry short code
WA_SENDER = "whatsapp:+14155550199"  # demo registry WhatsApp sender
TOKEN = "e2e-access-token"


@pytest.fixture
def wa_sim() -> Iterator[HttpChannelSimulator]:
    with HttpChannelSimulator(HttpChannelConfig(access_token=TOKEN, seed=3)) as sim:
        yield sim


@pytest.fixture
def smsc_a() -> Iterator[ThreadedSmsc]:
    with ThreadedSmsc(SmscConfig(seed=11)) as server:
        yield server


@pytest.fixture
def smsc_b() -> Iterator[ThreadedSmsc]:
    with ThreadedSmsc(SmscConfig(seed=12)) as server:
        yield server


def smpp(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "smpp", "host": "127.0.0.1", "port": port,
            "system_id": "telex", "password": "secret", "window": 20,
            "response_timeout_s": 5, **extra}


def with_carriers(settings: Settings, tmp_path: Path, connectors: list[dict[str, Any]],
                  routes: list[dict[str, Any]]) -> Settings:
    path = tmp_path / "carriers.json"
    path.write_text(json.dumps({"connectors": connectors, "routes": routes}))
    return settings.model_copy(update={"carriers_file": str(path),
                                       "retry_schedule_s": (1, 2, 4, 8)})


def start(settings: Settings, worker: Callable[[str, Settings], Worker]) -> dict[str, Worker]:
    return {s: worker(s, settings) for s in ("ingest", "ratelimit", "scheduler", "dispatch")}


def sms(n: int, tag: str) -> list[OutboundMessage]:
    return [OutboundMessage(account_id="acct-1", channel="sms", sender=SMS_SENDER,
                            recipient=f"+1415202{i:04d}", body=f"{tag} {i}",
                            idempotency_key=f"{tag}-{i}") for i in range(n)]


def accepted_texts(*servers: ThreadedSmsc) -> Counter[str]:
    return Counter(r.text for s in servers for r in s.submits if r.status == 0)


def test_whatsapp_messages_are_sent_once_through_the_http_channel(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    wa_sim: HttpChannelSimulator,
):
    """40 WhatsApp messages: each accepted once by the simulator (bearer token checked), each
    'sent' through the whatsapp connector with the simulator's wamid as carrier id."""
    settings = with_carriers(topics, tmp_path, [{
        "name": "wa", "type": "whatsapp", "base_url": wa_sim.base_url,
        "phone_number_id": "1099", "access_token": TOKEN, "app_secret": "e2e-app-secret",
        "window": 16, "timeout_s": 5, "trust_env": False,
    }], [{"channel": "whatsapp", "prefix": "", "connectors": ["wa"]}])
    start(settings, worker)
    batch = [OutboundMessage(account_id="acct-1", channel="whatsapp", sender=WA_SENDER,
                             recipient=f"whatsapp:+1415203{i:04d}", body=f"wa {i}",
                             idempotency_key=f"wa-{i}") for i in range(40)]
    with TelexProducer(settings) as producer:
        ids = producer.send_batch(batch)
    final = statuses(settings, len(ids), timeout=90)
    assert set(final) == set(ids)
    assert {(s["status"], s["connector"]) for s in final.values()} == {("sent", "wa")}
    ok = [r for r in wa_sim.sends if r.http_status == 200]
    assert not [r for r in wa_sim.sends if r.http_status != 200], "no refused request"
    assert Counter(r.opaque for r in ok) == Counter(set(ids)), "each message accepted once"
    assert {r.phone_number_id for r in ok} == {"1099"}
    assert all(r.to.isdigit() for r in ok), "the Cloud API wants bare digits in 'to'"
    wamid = {r.opaque: normalise_message_id(str(r.wamid), IdBase.OPAQUE) for r in ok}
    assert {i: s["carrier_message_id"] for i, s in final.items()} == wamid


def test_unreachable_primary_fails_over_and_is_started_again_when_it_is_back(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc_b: ThreadedSmsc,
):
    """Route sms → [smsc-a, smsc-b] with smsc-a not listening: every message ends 'sent'
    through smsc-b, accepted there exactly once. Once an SMSC listens on smsc-a's address, a
    half-open trial connects the never-started connector and traffic returns to it."""
    with ThreadedSmsc(SmscConfig()) as gone:  # a loopback port with nothing listening after
        dead_port = gone.port
    settings = with_carriers(topics, tmp_path, [
        smpp("smsc-a", dead_port, bind_timeout_s=2, reconnect_max_s=2,
             breaker={"base_cooldown_ms": 1000, "max_cooldown_ms": 2000}),
        smpp("smsc-b", smsc_b.port),
    ], [{"channel": "sms", "prefix": "", "connectors": ["smsc-a", "smsc-b"]}])
    start(settings, worker)
    with TelexProducer(settings) as producer:
        ids = producer.send_batch(sms(100, "down"))
        final = statuses(settings, len(ids), timeout=90)
        assert set(final) == set(ids), "every message ends sent or failed"
        assert {(s["status"], s["connector"]) for s in final.values()} == {("sent", "smsc-b")}
        accepted = accepted_texts(smsc_b)
        assert len(accepted) == len(ids) and set(accepted.values()) == {1}

        with ThreadedSmsc(SmscConfig(port=dead_port)) as revived:
            deadline = time.monotonic() + 60
            probes: list[str] = []
            while True:
                assert time.monotonic() < deadline, "smsc-a never took traffic back"
                probes += producer.send_batch(sms(1, f"revive{len(probes)}"))
                found = statuses(settings, len(ids) + len(probes), timeout=30)
                assert found[probes[-1]]["status"] == "sent"
                if found[probes[-1]]["connector"] == "smsc-a":
                    break
            assert accepted_texts(revived), "the revived SMSC received the probe"


def test_failover_while_primary_throttles_and_back_once_it_recovers(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc_a: ThreadedSmsc, smsc_b: ThreadedSmsc,
):
    """smsc-a throttles every submit: its breaker opens and all traffic ends 'sent' via smsc-b.
    Once smsc-a accepts again and the cool-down has passed, a half-open trial succeeds and new
    traffic goes through smsc-a again; no message is accepted twice across both SMSCs."""
    smsc_a.faults.throttle_rate = 1.0  # set before the worker binds: no submit has run yet
    settings = with_carriers(topics, tmp_path, [
        smpp("smsc-a", smsc_a.port, breaker={"failure_threshold": 3, "base_cooldown_ms": 2000}),
        smpp("smsc-b", smsc_b.port),
    ], [{"channel": "sms", "prefix": "", "connectors": ["smsc-a", "smsc-b"]}])
    start(settings, worker)
    with TelexProducer(settings) as producer:
        ids = producer.send_batch(sms(60, "over"))
        final = statuses(settings, len(ids), timeout=60)
        assert set(final) == set(ids), "every message ends sent or failed"
        assert {(s["status"], s["connector"]) for s in final.values()} == {("sent", "smsc-b")}
        assert any(r.status != 0 for r in smsc_a.submits), "the primary was tried first"

        smsc_a.call(lambda sim: setattr(sim.faults, "throttle_rate", 0.0))
        # One probe at a time until one is carried by smsc-a: the breaker's half-open trial.
        # Default cool-down is 5 s, doubled per failed trial; the carriers file asks for 2 s.
        deadline = time.monotonic() + 45
        probes: list[str] = []
        while True:
            assert time.monotonic() < deadline, "smsc-a never took traffic back"
            probes += producer.send_batch(sms(1, f"probe{len(probes)}"))
            found = statuses(settings, len(ids) + len(probes), timeout=20)
            assert probes[-1] in found and found[probes[-1]]["status"] == "sent"
            if found[probes[-1]]["connector"] == "smsc-a":
                break

        back = producer.send_batch(sms(40, "back"))
    final = statuses(settings, len(ids) + len(probes) + len(back), timeout=60)
    assert {(final[i]["status"], final[i]["connector"]) for i in back} == {("sent", "smsc-a")}
    accepted = accepted_texts(smsc_a, smsc_b)
    assert len(accepted) == len(ids) + len(probes) + len(back)
    assert set(accepted.values()) == {1}
    print(f"\nprobes until smsc-a took traffic back: {len(probes)}")
