"""``telex demo``: the pipeline end to end on a local broker, with real output.

Starts a Maven-assembled Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS is set), an SMSC
simulator (SMPP 3.4 over TCP, sending delivery receipts) and a WhatsApp-style HTTP channel
simulator (signed status webhooks), applies the topic catalogue, runs the stage workers as real
processes (ingest, rate limit, scheduler, dispatch, reconcile, status, webhook receiver),
publishes a mixed batch of requests through the SDK (duplicates, conflicting repeats,
unregistered senders) and prints the final status of every message, read from the compacted
``delivery-status-latest`` topic.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

from pipeline.codec import AvroCodec
from pipeline.dev.broker import DevBroker
from pipeline.dev.callback_receiver import Receiver, callback_receiver
from pipeline.ops.topic_reader import read_from_start
from pipeline.procutil import free_ports
from pipeline.runtime.registry import dead_letter_topics
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings, load_settings
from pipeline.stages.callbacks.signing import generate_secret
from pipeline.topics import admin_client, apply_topics, catalogue

FINAL = ("delivered", "undelivered", "failed", "read", "canceled")
# Senders of the demo registry with their default limits: short code 100/s, alphanumeric
# 10/s, toll-free 3/s; requests are spread 90/8/2 % over them.
_SENDERS = ((90, "55501"), (8, "TELEX"), (2, "+18445550100"))
WA_SENDER = "whatsapp:+14155550199"
WA_SECRET = "demo-app-secret"  # the local simulator's; never printed


def _sender(i: int) -> str:
    slot = i % 100
    for share, sender in _SENDERS:
        if slot < share:
            return sender
        slot -= share
    return _SENDERS[0][1]


def _request(i: int, callback_url: str | None = None) -> OutboundMessage:
    # Account acct-1 (a fifth of the messages) asked for status callbacks.
    url = callback_url if i % 5 == 1 else None
    if i % 10 == 5:  # 10 % WhatsApp
        return OutboundMessage(account_id=f"acct-{i % 5}", channel="whatsapp",
                               sender=WA_SENDER, recipient=f"whatsapp:+1415556{i % 10_000:04d}",
                               body=f"Your order {i} has shipped", idempotency_key=f"demo-{i}",
                               status_callback_url=url)
    return OutboundMessage(
        account_id=f"acct-{i % 5}", channel="sms",
        sender="+19995550100" if i % 50 == 0 else _sender(i),  # 2 % unregistered
        recipient="+1415555" + f"{i % 10_000:04d}", body=f"Your code is {100000 + i}",
        idempotency_key=f"demo-{i}", status_callback_url=url)


def _requests(count: int, rng: random.Random, callback_url: str | None = None
              ) -> tuple[list[OutboundMessage], dict[str, int]]:
    base = [_request(i, callback_url) for i in range(count)]
    repeats = rng.sample(base, count // 10)
    conflicts = [replace(m, body=f"{m.body} (edited)") for m in rng.sample(base, count // 50)]
    plan = {"requests": count + len(repeats) + len(conflicts), "unique": count,
            "identical repeats": len(repeats), "conflicting repeats": len(conflicts)}
    return base + repeats + conflicts, plan


def _drain(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    return [(m.key(), m.value())
            for m in read_from_start(settings, settings.topic(topic), timeout=None)]


def run(count: int = 2000, timeout: float = 120.0) -> int:
    """Run the demo; returns 0 when every unique request reached a status in time."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with TemporaryDirectory(prefix="telex-demo-") as tmp, ExitStack() as stack:
        broker = None if existing else DevBroker(Path(tmp) / "kafka", die_with_parent=True)
        bootstrap = existing or broker.start()  # type: ignore[union-attr]
        print(f"broker: {'existing' if existing else 'Kafka (Maven Central jars)'} at {bootstrap}")
        settings = load_settings(kafka_bootstrap_servers=bootstrap,
                                 topic_prefix=f"demo{int(time.time())}.",
                                 state_dir=str(Path(tmp) / "state"))
        report = apply_topics(admin_client(settings), catalogue(settings))
        print(f"topics: {len(report.created)} created with prefix {settings.topic_prefix}")
        smsc_port = free_ports(1)[0]
        smsc = subprocess.Popen([sys.executable, "-m", "connectors.simulators.smsc",
                                 "--port", str(smsc_port), "--account", "telex:demopass",
                                 "--latency-ms", "2", "--throttle-rate", "0.02", "--seed", "1",
                                 "--outcome-by-recipient",
                                 "--receipt-delay-ms", "200", "--outcome", "DELIVRD:0.96",
                                 "--outcome", "UNDELIV:0.02", "--outcome", "EXPIRED:0.02"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wa_port, hook_port = free_ports(2)
        channel = subprocess.Popen([
            sys.executable, "-m", "connectors.simulators.http_channel", "--port", str(wa_port),
            "--access-token", "demo-token", "--app-secret", WA_SECRET, "--seed", "2",
            "--outcome-by-recipient",
            "--callback-url", f"http://127.0.0.1:{hook_port}/webhooks/wa-demo",
            "--latency-ms", "5", "--status-delay-ms", "200", "--outcome", "read:0.9",
            "--outcome", "delivered:0.05", "--outcome", "failed:0.05"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        carriers = Path(tmp) / "carriers.json"
        carriers.write_text(json.dumps({
            "connectors": [{"name": "smsc-demo", "type": "smpp", "host": "127.0.0.1",
                            "port": smsc_port, "system_id": "telex",
                            "password": "demopass", "window": 50},
                           {"name": "wa-demo", "type": "whatsapp",
                            "base_url": f"http://127.0.0.1:{wa_port}",
                            "phone_number_id": "1099", "access_token": "demo-token",
                            "app_secret": WA_SECRET, "trust_env": False}],
            "routes": [{"channel": "sms", "prefix": "", "connectors": ["smsc-demo"]},
                       {"channel": "whatsapp", "prefix": "", "connectors": ["wa-demo"]}]}))
        print(f"carrier: SMSC simulator (SMPP 3.4) on 127.0.0.1:{smsc_port}, 2 ms latency, "
              "2 % throttled; receipts after 200 ms: 96 % DELIVRD, 2 % UNDELIV, 2 % EXPIRED")
        print(f"carrier: WhatsApp-style HTTP channel simulator on 127.0.0.1:{wa_port}; signed "
              f"status webhooks to the receiver on 127.0.0.1:{hook_port}: 90 % read, "
              "5 % delivered, 5 % failed")
        secrets = Path(tmp) / "callback-secrets.json"
        secret = generate_secret()
        secrets.write_text(json.dumps({"acct-1": [secret]}))
        receiver = stack.enter_context(callback_receiver(secret))
        print(f"customer: status callbacks of account acct-1 to {receiver.url()}, signed "
              "(Standard Webhooks); loopback allowed by TELEX_CALLBACK_ALLOW_NETWORKS")
        # Loopback and http are refused by default (SSRF guard); the demo allows them
        # explicitly, as a local deployment would.
        settings = settings.model_copy(update={"carriers_file": str(carriers),
                                               "retry_schedule_s": (1, 2, 4),
                                               "receipt_window_s": 60,
                                               "webhook_port": hook_port,
                                               "callback_secrets_file": str(secrets),
                                               "callback_allow_http": True,
                                               "callback_allow_networks": "127.0.0.0/8"})
        env = {**os.environ, **settings.to_env(),
               "TELEX_LOG_LEVEL": os.environ.get("TELEX_LOG_LEVEL", "WARNING")}
        # One worker runs the whole topology (every stage this configuration has), as a
        # deployment on one machine would.
        logs = {"topology": Path(tmp) / "worker.log"}
        workers = []
        for path in logs.values():
            with path.open("wb") as out:  # the child keeps its own descriptor
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "pipeline.cli.main", "worker"], env=env,
                    stdout=out, stderr=subprocess.STDOUT))
        workers += [smsc, channel]
        try:
            result = _run_batch(settings, count, timeout, receiver)
            if result != 0:
                for stage, path in logs.items():
                    tail = path.read_text(errors="replace").splitlines()[-15:]
                    print(f"\n--- {stage} worker log (last lines) ---\n" + "\n".join(tail))
            return result
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(30)
            if broker is not None:
                broker.stop()


def _run_batch(settings: Settings, count: int, timeout: float, receiver: Receiver) -> int:
    codec = AvroCodec.from_settings(settings)
    requests, plan = _requests(count, random.Random(1), receiver.url())
    started = time.monotonic()
    with TelexProducer(settings) as producer:
        producer.send_batch(requests)
    print("published: " + ", ".join(f"{v} {k}" for k, v in plan.items()))
    deadline = started + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        for key, value in _drain(settings, "delivery-status-latest"):
            statuses[key.decode()] = codec.decode(value)["status"]
        if sum(s in FINAL for s in statuses.values()) >= count:
            break
        time.sleep(0.5)  # pacing between polls of the topic; the condition is above
    elapsed = time.monotonic() - started
    history = _drain(settings, "delivery-status")
    conflicts = len(_drain(settings, "request-rejections"))
    dead = sum(len(_drain(settings, name)) for name in dead_letter_topics())
    deferred = len({k for k, _ in _drain(settings, "ratelimit-deferrals")})
    summary = Counter(statuses.values())
    print(f"\nfinal statuses after {elapsed:.1f} s ({len(statuses)} messages, "
          f"{len(history)} status events):")
    for status, n in sorted(summary.items()):
        print(f"  {status:20} {n:6}")
    print(f"  {'conflicts':20} {conflicts:6}   (idempotency key reused with other content)")
    print(f"  {'dead-letter':20} {dead:6}")
    print(f"  duplicates absorbed: {plan['identical repeats']} identical repeats emitted nothing")
    print(f"  deferred by rate limits: {deferred} (short code 100/s, alphanumeric 10/s, "
          "toll-free 3/s)")
    retries = sum(codec.decode(v)["state"] == "FAILED" and codec.decode(v)["retryable"]
                  for _, v in _drain(settings, "dispatch-journal"))
    print(f"  carrier retries (throttled, then resent): {retries}")
    receipts = len(_drain(settings, "carrier-receipts"))
    resent = sum(codec.decode(v)["error_reason"] is not None
                 and "resending" in codec.decode(v)["error_reason"] for _, v in history)
    print(f"  carrier receipts and submissions reconciled: {receipts}; resent after a failed "
          f"receipt: {resent}")
    finals = sum(s in FINAL for s in statuses.values()) >= count
    called = _callbacks(settings, codec, history, receiver, deadline)
    return 0 if finals and called else 1


def _callbacks(settings: Settings, codec: AvroCodec, history: list[tuple[bytes, bytes]],
               receiver: Receiver, deadline: float) -> bool:
    """Wait for a callback per status change of acct-1's messages; print what arrived."""
    events = [codec.decode(v) for _, v in history]
    expected = {f"msg_{e['message_id']}_{e['sequence']}" for e in events
                if e["account_id"] == "acct-1"
                and (e["effective_status"] or e["status"]) == e["status"]}
    while time.monotonic() < deadline:
        if expected <= {r.webhook_id for r in receiver.delivered()}:
            break
        time.sleep(0.2)  # pacing between looks at the receiver; the condition is above
    got = {r.webhook_id for r in receiver.delivered()}
    unverified = sum(not r.verified for r in receiver.all())
    print(f"  status callbacks to acct-1's endpoint: {len(got & expected)} of "
          f"{len(expected)} status changes, {unverified} with a bad signature")
    return expected <= got and unverified == 0
