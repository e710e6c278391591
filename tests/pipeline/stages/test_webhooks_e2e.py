"""The webhook receiver on the real broker: status webhooks from the HTTP channel simulator
become carrier-receipts records; bad signatures, unknown connectors, oversized and unparseable
bodies are refused or dead-lettered as documented; stop is graceful."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from connectors.base import SubmitRequest
from connectors.http_channel import SIGNATURE_HEADER, WhatsAppClient, WhatsAppConfig, sign
from connectors.simulators.http_channel import HttpChannelConfig, HttpChannelSimulator, HttpFaults
from pipeline.codec import AvroCodec
from pipeline.procutil import die_with_parent, free_ports
from pipeline.records import receipt_key
from pipeline.runtime.deadletter import header_dict
from pipeline.settings import Settings
from pipeline.stages.dispatch.carriers import Carriers
from pipeline.stages.webhooks import MAX_BODY, WebhookReceiver, whatsapp_secrets
from tests.fixtures.telex import REPO, read_all
from tests.fixtures.waiting import until_sync

APP_SECRET = "wa-app-secret"
VERIFY_TOKEN = "verify-me"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def carriers_file(tmp_path: Path) -> Path:
    path = tmp_path / "carriers.json"
    path.write_text(json.dumps({"connectors": [
        {"name": "wa", "type": "whatsapp", "base_url": "http://127.0.0.1:9",
         "phone_number_id": "106540352242922", "access_token": "t", "app_secret": APP_SECRET},
        {"name": "smsc", "type": "smpp", "host": "127.0.0.1", "port": 9, "system_id": "telex",
         "password": "secret"}], "routes": []}))
    return path


@pytest.fixture
def receiver(topics: Settings, tmp_path: Path) -> Iterator[WebhookReceiver]:
    """A receiver serving on its own thread and loop (free port), stopped after the test."""
    secrets = whatsapp_secrets(Carriers.from_file(carriers_file(tmp_path)))
    rx = WebhookReceiver(topics.model_copy(update={"webhook_port": 0}), secrets, VERIFY_TOKEN)
    thread = host(rx)
    yield rx
    rx.stop()
    thread.join(60)
    assert not thread.is_alive(), "receiver did not stop"


def host(rx: WebhookReceiver) -> threading.Thread:
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(rx.serve())
        except BaseException as exc:  # reported below instead of a bare ready time-out
            failure.append(exc)
            rx.ready.set()

    thread = threading.Thread(target=serve, name="webhook-receiver", daemon=True)
    thread.start()
    assert rx.ready.wait(60) and not failure, failure
    return thread


def url(rx: WebhookReceiver, path: str) -> str:
    return f"http://127.0.0.1:{rx.port}{path}"


def http(method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(target, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def post_signed(target: str, body: bytes, secret: str = APP_SECRET) -> int:
    return http("POST", target, body, {SIGNATURE_HEADER: sign(body, secret),
                                       "Content-Type": "application/json"})[0]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def status_body(wamid: str, status: str = "delivered") -> bytes:
    value = {"messaging_product": "whatsapp", "statuses": [
        {"id": wamid, "status": status, "timestamp": "1700000000", "recipient_id": "1555"}]}
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "0", "changes": [{"field": "messages",
                                                          "value": value}]}]}).encode()


async def send(sim: HttpChannelSimulator, count: int) -> list[str]:
    config = WhatsAppConfig(sim.base_url, "106540352242922", "test-token", name="wa",
                            window=16, trust_env=False)
    async with WhatsAppClient(config) as wa:
        results = await asyncio.gather(*(wa.submit(SubmitRequest(
            f"TX{i:04d}", "+15550001111", "+14155550123", f"hello {i}", channel="whatsapp"))
            for i in range(count)))
    return [r.carrier_message_id for r in results]


def simulator(rx: WebhookReceiver, faults: HttpFaults, **config: Any) -> HttpChannelSimulator:
    return HttpChannelSimulator(HttpChannelConfig(
        app_secret=APP_SECRET, callback_url=url(rx, "/webhooks/wa"), **config), faults)


def expected_webhooks(sim: HttpChannelSimulator) -> int:
    """Webhooks the simulator decided to send (each POST carries one status)."""
    return sum(len(p.statuses) + (p.unknown_id is not None) for p in sim.receipt_plans().values())


def test_every_status_webhook_becomes_one_receipt_record(receiver: WebhookReceiver,
                                                         topics: Settings) -> None:
    """Each status POSTed (duplicates, reordered, early and unknown ones included) is exactly
    one CarrierReceipt keyed connector:wamid, acknowledged before the 200."""
    before = metric("telex_webhook_receipts_total", connector="wa", status="delivered")
    faults = HttpFaults(duplicate_receipt_rate=0.2, reorder_rate=0.1, early_receipt_rate=0.1,
                        unknown_receipt_rate=0.05, out_of_order_rate=0.1)
    mix = {"delivered": 0.5, "read": 0.3, "failed": 0.2}
    with simulator(receiver, faults, outcomes=mix, seed=7) as sim:
        asyncio.run(send(sim, 60))
        until_sync(lambda: len(sim.webhooks) == expected_webhooks(sim), 60, "all webhooks")
        webhooks = list(sim.webhooks)
        plans = sim.receipt_plans()
    assert [w.response_status for w in webhooks] == [200] * len(webhooks)

    records = read_all(topics, "carrier-receipts")  # to the end: every 200 was acked already
    codec = AvroCodec.from_settings(topics)
    got = Counter()
    for record in records:
        value = codec.decode(record.value(), "carrier_receipt")
        assert record.key().decode() == receipt_key("wa", value["carrier_message_id"])
        got[(value["carrier_message_id"], value["carrier_status"], value["message_id"])] += 1
    opaque = {s.wamid: s.opaque for s in sim.sends}
    assert got == Counter((w.wamid, w.status, opaque.get(w.wamid)) for w in webhooks)
    assert any(p.unknown_id for p in plans.values()) and any(p.duplicate for p in plans.values())
    delivered = sum(1 for w in webhooks if w.status == "delivered")
    assert metric("telex_webhook_receipts_total", connector="wa",
                  status="delivered") - before == delivered


def test_bad_or_missing_signature_gets_401_and_produces_nothing(receiver: WebhookReceiver,
                                                                topics: Settings) -> None:
    """Wrongly signed webhooks and unsigned ones: 401, counted, logged without the body."""
    before = metric("telex_webhook_rejected_total", connector="wa", reason="bad_signature")
    with capture_logs() as logs:
        with simulator(receiver, HttpFaults(bad_signature_rate=1.0),
                       outcomes={"delivered": 1.0}) as sim:
            asyncio.run(send(sim, 5))
            until_sync(lambda: len(sim.webhooks) == 10, 60, "10 webhook attempts")
        unsigned = http("POST", url(receiver, "/webhooks/wa"), status_body("wamid.X"))[0]
    assert [w.response_status for w in sim.webhooks] == [401] * 10 and unsigned == 401
    assert metric("telex_webhook_rejected_total", connector="wa",
                  reason="bad_signature") - before == 11
    assert read_all(topics, "carrier-receipts") == []
    refused = [e for e in logs if e["event"] == "webhook_bad_signature"]
    assert len(refused) == 11 and all("wamid" not in json.dumps(e) for e in refused)


@pytest.mark.parametrize(("body", "error_class"), [
    (b'{"entry": [ not json', "JSONDecodeError"),
    (b'{"entry": "not a list of objects"}', "AttributeError"),
    (b'["a", "list"]', "ValueError"),
])
def test_well_signed_unparseable_body_is_dead_lettered_and_answered_200(
        receiver: WebhookReceiver, topics: Settings, body: bytes, error_class: str) -> None:
    """It will never parse, so a retry cannot help: dlq-webhooks with provenance, then 200."""
    with capture_logs() as logs:
        assert post_signed(url(receiver, "/webhooks/wa"), body) == 200
    [record] = read_all(topics, "dlq-webhooks")
    headers = header_dict(record.headers())
    assert record.value() == body and record.key() is None
    assert {k: headers[f"telex.dlq.{k}"] for k in (
        "original_topic", "original_partition", "original_offset", "stage", "error_class")} == {
        "original_topic": "webhook:wa", "original_partition": "-1", "original_offset": "-1",
        "stage": "webhooks", "error_class": error_class}
    assert read_all(topics, "carrier-receipts") == []
    [event] = [e for e in logs if e["event"] == "webhook_dead_lettered"]
    assert event["answered"] == 200 and event["error_class"] == error_class
    assert body.decode() not in json.dumps(event)


def test_unknown_or_non_whatsapp_connector_is_404(receiver: WebhookReceiver,
                                                  topics: Settings) -> None:
    """A connector not in the carriers file, or not of type whatsapp, is 404; nothing produced."""
    body = status_body("wamid.A")
    assert post_signed(url(receiver, "/webhooks/nope"), body) == 404
    assert post_signed(url(receiver, "/webhooks/smsc"), body) == 404
    assert post_signed(url(receiver, "/elsewhere"), body) == 404
    assert read_all(topics, "carrier-receipts") == []


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_body_over_1_mib_is_413_without_reading_it(receiver: WebhookReceiver) -> None:
    """The head announces MAX_BODY + 1 bytes; the answer comes before any body byte is sent."""
    head = (f"POST /webhooks/wa HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n"
            f"{SIGNATURE_HEADER}: sha256=00\r\n\r\n").encode()
    answer = raw_exchange(receiver.port, head)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer


def test_subscription_verification_and_health(receiver: WebhookReceiver) -> None:
    """GET echoes hub.challenge for the right verify token, 403 otherwise; /healthz is 200."""
    query = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token="
    assert http("GET", url(receiver, f"/webhooks/wa?{query}{VERIFY_TOKEN}")) == (
        200, b"1158201444")
    assert http("GET", url(receiver, f"/webhooks/wa?{query}wrong"))[0] == 403
    assert http("GET", url(receiver, f"/webhooks/nope?{query}{VERIFY_TOKEN}"))[0] == 404
    assert http("GET", url(receiver, "/healthz")) == (200, b"ok")


def read_response(sock: socket.socket) -> bytes:
    """One response (head + Content-Length body) from a keep-alive connection."""
    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the connection before a whole response")
        return chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data += more()
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += more()
    return head + b"\r\n\r\n" + rest


def signed_request(body: bytes) -> bytes:
    return (f"POST /webhooks/wa HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{SIGNATURE_HEADER}: {sign(body, APP_SECRET)}\r\n\r\n").encode() + body


def test_stop_finishes_the_request_in_flight(topics: Settings, tmp_path: Path) -> None:
    """Keep-alive serves two requests on one connection; a stop while the second's body is on
    its way still answers it (200, Connection: close, record acked), then refuses new ones."""
    secrets = whatsapp_secrets(Carriers.from_file(carriers_file(tmp_path)))
    rx = WebhookReceiver(topics.model_copy(update={"webhook_port": 0}), secrets)
    thread = host(rx)
    with socket.create_connection(("127.0.0.1", rx.port), timeout=30) as sock:
        sock.sendall(signed_request(status_body("wamid.first")))
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        second = signed_request(status_body("wamid.second"))
        sock.sendall(second[:-10])
        # The second head read, its answer not written; in_flight alone could still count the
        # first request, whose answer the client can hold before the server clears its flag.
        until_sync(lambda: rx.received == 2 and rx.in_flight == 1, 30,
                   "the second request in flight")
        rx.stop()
        until_sync(lambda: not rx.accepting, 30, "the listener closed")
        sock.sendall(second[-10:])
        answer = read_response(sock)
    thread.join(60)
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", rx.port), timeout=5)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
    keys = sorted(m.key() for m in read_all(topics, "carrier-receipts"))
    assert keys == [b"wa:wamid.first", b"wa:wamid.second"]


def test_run_serves_until_sigterm(topics: Settings, tmp_path: Path) -> None:
    """``run(settings)`` in its own process: carriers from TELEX_CARRIERS_FILE, verify token
    from TELEX_WEBHOOK_VERIFY_TOKEN; SIGTERM ends it with exit code 0 after a flush."""
    [port] = free_ports(1)
    env = {**os.environ, **topics.to_env(), "TELEX_WEBHOOK_PORT": str(port),
           "TELEX_CARRIERS_FILE": str(carriers_file(tmp_path)),
           "TELEX_WEBHOOK_VERIFY_TOKEN": "from-env"}
    code = ("import sys; from pipeline.settings import get_settings; "
            "from pipeline.observability import configure_logging; configure_logging('INFO'); "
            "from pipeline.stages.webhooks import run; sys.exit(run(get_settings()))")
    log_path = tmp_path / "webhooks.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    try:
        base = f"http://127.0.0.1:{port}"
        until_sync(lambda: proc.poll() is not None or healthy(base), 60, "the receiver up")
        assert proc.poll() is None, log_path.read_text()
        challenge = "/webhooks/wa?hub.mode=subscribe&hub.challenge=42&hub.verify_token=from-env"
        assert http("GET", base + challenge) == (200, b"42")
        assert post_signed(base + "/webhooks/wa", status_body("wamid.run", "read")) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    events = [json.loads(line)["event"] for line in log_path.read_text().splitlines()
              if line.startswith("{")]
    assert "webhooks_listening" in events and events[-1] == "webhooks_stopped"
    [record] = read_all(topics, "carrier-receipts")
    assert record.key() == b"wa:wamid.run"


def healthy(base: str) -> bool:
    try:
        return http("GET", base + "/healthz")[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False
