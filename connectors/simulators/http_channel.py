"""A WhatsApp-Cloud-API-shaped server on loopback: ``python -m connectors.simulators.http_channel``.

``POST /{version}/{phone_number_id}/messages`` with a bearer token answers like the Cloud API
(``messages[0].id`` a wamid), after a configurable latency, with 429 above a rate cap and with
injected errors. Accepted messages get status webhooks (sent, delivered, read or failed) POSTed
to ``callback_url`` after a delay, signed with X-Hub-Signature-256, optionally duplicated,
reordered or badly signed. Receipt chaos for reconciliation tests (statuses POSTed before the
send is answered, lost, final-before-intermediate, for a wamid never issued) is decided per send
and recorded in :attr:`SendRecord.receipts`. Every request and webhook is recorded.

Standard-library ``ThreadingHTTPServer``: one thread per connection is plenty on loopback, and
the server can be used from synchronous and asyncio tests alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from connectors.simulators.smsc_model import TokenBucket
from connectors.simulators.webhook_sender import WebhookRecord, WebhookSender

_STATUS_CHAIN = {"sent": ["sent"], "delivered": ["sent", "delivered"],
                 "read": ["sent", "delivered", "read"], "failed": ["failed"]}
_INTERMEDIATE = "sent"


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog of 5 drops SYNs when a client opens its pool at
    # once; the retransmit then costs a whole second.
    request_queue_size = 256


@dataclass(frozen=True, slots=True)
class HttpChannelConfig:
    host: str = "127.0.0.1"
    port: int = 0
    access_token: str = "test-token"
    app_secret: str = "test-app-secret"
    callback_url: str | None = None  # where status webhooks go; None: no webhooks
    latency_s: float = 0.0
    max_requests_per_s: float | None = None  # excess answered 429 (code 130429)
    status_delay_s: float = 0.0
    outcomes: Mapping[str, float] = field(default_factory=lambda: {"read": 1.0})
    failed_code: int = 131026  # error code of "failed" statuses
    seed: int | None = None
    # The status outcome as a function of (seed, recipient) instead of the next draw (exact
    # demo counts whatever order sends arrive in).
    outcome_by_recipient: bool = False
    # Append "<wall ms> <text body>" per accepted send here (benchmarks: latency measured
    # where the carrier receives the message); block-buffered, flushed every 100 ms.
    submit_log: str | None = None
    # Keep only the last N send and webhook records (None: all, as tests read them).
    keep_records: int | None = None
    webhook_batch: int = 1  # statuses due together leave in one POST, up to this many


@dataclass(slots=True)
class HttpFaults:
    throttle_rate: float = 0.0  # 429
    server_error_rate: float = 0.0  # 500, code 131000
    reject_recipients: set[str] = field(default_factory=set)  # 400 with ``reject_code``
    reject_code: int = 131026
    fail_recipients: set[str] = field(default_factory=set)  # accepted, then a failed status
    duplicate_receipt_rate: float = 0.0  # one status of the message sent twice
    reorder_rate: float = 0.0  # statuses of a message sent in reverse order
    bad_signature_rate: float = 0.0
    # Receipt chaos, as the SMSC simulator's Faults names it (see StatusPlan).
    early_receipt_rate: float = 0.0  # statuses POSTed (and answered) before the send's response
    unknown_receipt_rate: float = 0.0  # one more status, for a wamid never issued
    lost_receipt_rate: float = 0.0  # no status at all (overrides early/duplicate/reorder)
    out_of_order_rate: float = 0.0  # the final status first, then "sent"

    @property
    def duplicate_status_rate(self) -> float:
        """Former name of :attr:`duplicate_receipt_rate`."""
        return self.duplicate_receipt_rate

    @duplicate_status_rate.setter
    def duplicate_status_rate(self, rate: float) -> None:
        self.duplicate_receipt_rate = rate


@dataclass(frozen=True, slots=True)
class StatusPlan:
    """What the simulator decided to send as status webhooks for one accepted message.

    ``status`` is the outcome (the message's expected final state unless ``lost``); ``statuses``
    are the webhooks for ``wamid`` in the order POSTed, () when lost. ``early``: they were all
    POSTed, and answered by the receiver, before the send's HTTP response was written.
    ``unknown_id`` names an extra webhook (status ``status``, no biz_opaque_callback_data) for a
    wamid no response ever carried.
    """

    wamid: str
    status: str
    statuses: tuple[str, ...]
    early: bool = False
    duplicate: bool = False
    lost: bool = False
    reordered: bool = False
    out_of_order: bool = False
    unknown_id: str | None = None


@dataclass(frozen=True, slots=True)
class SendRecord:
    at: float
    phone_number_id: str
    to: str
    body: str
    opaque: str | None  # biz_opaque_callback_data
    wamid: str | None
    http_status: int
    receipts: StatusPlan | None = None  # None: not accepted, or no callback_url


class HttpChannelSimulator:
    """``with HttpChannelSimulator(config) as sim:`` then send to ``sim.base_url``."""

    def __init__(self, config: HttpChannelConfig | None = None,
                 faults: HttpFaults | None = None) -> None:
        self.config = config or HttpChannelConfig()
        self.faults = faults or HttpFaults()
        keep = self.config.keep_records
        self.sends: deque[SendRecord] | list[SendRecord] = (
            deque(maxlen=keep) if keep is not None else [])
        self.send_count = 0
        self._log = open(self.config.submit_log, "a") if self.config.submit_log else None  # noqa: SIM115
        self._log_stop = threading.Event()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._bucket = (TokenBucket(self.config.max_requests_per_s)
                        if self.config.max_requests_per_s else None)
        self._webhooks = WebhookSender(self.config.callback_url, self.config.app_secret,
                                       keep_records=keep, batch=self.config.webhook_batch)
        self._server = _Server((self.config.host, self.config.port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="http-channel-simulator", daemon=True)
        self._gate = threading.Event()
        self._gate.set()
        self._held = 0

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def webhooks(self) -> list[WebhookRecord]:
        return self._webhooks.sent

    def receipt_plans(self) -> dict[str, StatusPlan]:
        """Status webhook decisions so far, by issued wamid."""
        return {r.receipts.wamid: r.receipts for r in list(self.sends) if r.receipts}

    def hold(self) -> None:
        """Hold every send request from now on without answering it (until :meth:`release`):
        a test that must crash its client while a send is in flight waits for
        :attr:`held` instead of hoping a kill lands inside the latency."""
        self._gate.clear()

    def release(self) -> None:
        """Answer the held requests (as received: each is recorded and gets its statuses)."""
        self._gate.set()

    @property
    def held(self) -> int:
        """Send requests waiting at the gate now."""
        return self._held

    def _wait_at_gate(self) -> None:
        if self._gate.is_set():
            return
        with self._lock:
            self._held += 1
        try:
            self._gate.wait()
        finally:
            with self._lock:
                self._held -= 1

    def start(self) -> HttpChannelSimulator:
        self._thread.start()
        self._webhooks.start()
        if self._log is not None:
            threading.Thread(target=self._flush_log, name="submit-log", daemon=True).start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self._webhooks.stop()
        self._log_stop.set()
        if self._log is not None:
            with self._lock:
                self._log.close()

    def _flush_log(self) -> None:
        while not self._log_stop.wait(0.1):
            with self._lock:
                if self._log is not None and not self._log.closed:
                    self._log.flush()

    def __enter__(self) -> HttpChannelSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Decisions (called from handler threads) -------------------------------------------

    def answer(self, phone_number_id: str,
               message: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """HTTP status and JSON body for one well-formed send request."""
        to = str(message.get("to", ""))
        body = str((message.get("text") or {}).get("body", ""))
        opaque = message.get("biz_opaque_callback_data")
        f = self.faults
        early: list[tuple[dict[str, Any], str, str, bool]] = []
        with self._lock:
            if (self._bucket and not self._bucket.take()) or self._chance(f.throttle_rate):
                status, reply = 429, _error(130429, "Rate limit hit")
            elif self._chance(f.server_error_rate):
                status, reply = 500, _error(131000, "Something went wrong")
            elif to in f.reject_recipients:
                status, reply = 400, _error(f.reject_code, "Message undeliverable")
            else:
                status, reply = 200, {}
            wamid = "wamid." + secrets.token_urlsafe(24) if status == 200 else None
            plan = None
            if wamid is not None:
                reply = {"messaging_product": "whatsapp",
                         "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]}
                plan = self._schedule(phone_number_id, wamid, to, opaque, early)
            self.sends.append(SendRecord(time.monotonic(), phone_number_id, to, body,
                                         opaque if isinstance(opaque, str) else None, wamid,
                                         status, plan))
            self.send_count += 1
            if self._log is not None and wamid is not None:
                self._log.write(f"{time.time_ns() // 1_000_000} {body}\n")
        # Early statuses go out from this handler thread, outside the lock, before the caller
        # writes the response: the receiver has seen (and answered) them before the sender
        # learns the wamid.
        for payload, wamid_, status_, bad in early:
            self._webhooks.post_now(payload, wamid_, status_, bad_signature=bad, early=True)
        return status, reply

    def _schedule(self, phone_number_id: str, wamid: str, to: str, opaque: object,
                  early: list[tuple[dict[str, Any], str, str, bool]]) -> StatusPlan | None:
        """Decide this message's status webhooks; schedule them, or append them to ``early``."""
        if self.config.callback_url is None:
            return None
        plan = self._plan(wamid, to)
        due = time.monotonic() + self.config.status_delay_s
        for status in plan.statuses:
            payload = _status_payload(phone_number_id, wamid, to, status, opaque,
                                      self.config.failed_code)
            bad = self._chance(self.faults.bad_signature_rate)
            if plan.early:
                early.append((payload, wamid, status, bad))
            else:
                self._webhooks.schedule(due, payload, wamid, status, bad_signature=bad)
        if plan.unknown_id is not None:
            payload = _status_payload(phone_number_id, plan.unknown_id, to, plan.status, None,
                                      self.config.failed_code)
            self._webhooks.schedule(due, payload, plan.unknown_id, plan.status, unknown=True)
        return plan

    def _plan(self, wamid: str, to: str) -> StatusPlan:
        """The statuses of one message. Rates are drawn in a fixed order and only when above
        zero, so a seed replays the same run, and the same run as before a fault existed."""
        f = self.faults
        outcomes = self.config.outcomes
        rng = (random.Random(f"{self.config.seed}:{to}") if self.config.outcome_by_recipient
               else self._rng)
        outcome = "failed" if to in f.fail_recipients else rng.choices(
            list(outcomes), list(outcomes.values()))[0]
        base = _STATUS_CHAIN[outcome]
        duplicate = self._chance(f.duplicate_receipt_rate)
        extra = self._rng.choice(base) if duplicate else None
        reordered = self._chance(f.reorder_rate)
        lost = self._chance(f.lost_receipt_rate)
        early = self._chance(f.early_receipt_rate)
        out_of_order = self._chance(f.out_of_order_rate) and outcome != _INTERMEDIATE
        unknown_id = ("wamid." + secrets.token_urlsafe(24)
                      if self._chance(f.unknown_receipt_rate) else None)
        if lost:
            return StatusPlan(wamid, outcome, (), lost=True, unknown_id=unknown_id)
        chain = list(base)
        if out_of_order:
            chain = [outcome, *(s for s in base if s != outcome)] if len(base) > 1 else [
                outcome, _INTERMEDIATE]
        if extra is not None:
            chain.append(extra)
        if reordered:
            chain.reverse()
        return StatusPlan(wamid, outcome, tuple(chain), early=early, duplicate=duplicate,
                          reordered=reordered, out_of_order=out_of_order, unknown_id=unknown_id)

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code,
                      "fbtrace_id": secrets.token_hex(8)}}


def _status_payload(phone_number_id: str, wamid: str, to: str, status: str, opaque: object,
                    failed_code: int) -> dict[str, Any]:
    item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())),
                            "recipient_id": to}
    if isinstance(opaque, str):
        item["biz_opaque_callback_data"] = opaque
    if status == "failed":
        item["errors"] = [{"code": failed_code, "title": "Message undeliverable",
                           "message": "Message undeliverable",
                           "error_data": {"details": "simulated failure"}}]
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550000000",
                          "phone_number_id": phone_number_id},
             "statuses": [item]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "0", "changes": [{"field": "messages", "value": value}]}]}


def _handler(sim: HttpChannelSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the connector's pool expects
        # Headers and body in one segment, sent at once: otherwise Nagle plus delayed ACKs
        # add ~40 ms to every keep-alive response.
        wbufsize = 65_536
        disable_nagle_algorithm = True
        timeout = 30  # an idle keep-alive connection's thread ends eventually

        def do_POST(self) -> None:
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if len(parts) != 3 or parts[2] != "messages":
                return self._reply(404, _error(100, "Unknown path"))
            if self.headers.get("Authorization") != f"Bearer {sim.config.access_token}":
                return self._reply(401, _error(190, "Invalid OAuth access token"))
            try:
                message = json.loads(body)
            except ValueError:
                return self._reply(400, _error(100, "Invalid JSON"))
            if (not isinstance(message, dict) or message.get("messaging_product") != "whatsapp"
                    or message.get("type") != "text" or not message.get("to")):
                return self._reply(400, _error(100, "Invalid parameter"))
            if sim.config.latency_s > 0:
                time.sleep(sim.config.latency_s)  # the simulated carrier's processing time
            sim._wait_at_gate()
            self._reply(*sim.answer(parts[1], message))

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests and benchmarks read the records, not an access log

    return Handler


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m connectors.simulators.http_channel",
                                 description="WhatsApp-Cloud-API-shaped simulator (loopback).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--access-token", default="test-token")
    ap.add_argument("--app-secret", default="test-app-secret")
    ap.add_argument("--callback-url", default=None)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--max-rate", type=float, default=None)
    ap.add_argument("--status-delay-ms", type=float, default=0.0)
    ap.add_argument("--throttle-rate", type=float, default=0.0)
    ap.add_argument("--server-error-rate", type=float, default=0.0)
    ap.add_argument("--outcome", action="append", default=[], metavar="STATUS:WEIGHT",
                    help="status outcome mix, e.g. read:0.8 failed:0.2 (default read:1)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--outcome-by-recipient", action="store_true",
                    help="outcome from (seed, recipient), not from the order of arrival")
    ap.add_argument("--submit-log", default=None, metavar="PATH",
                    help="append '<wall ms> <text>' per accepted send (benchmarks)")
    ap.add_argument("--keep-records", type=int, default=10_000, metavar="N",
                    help="records of sends and webhooks kept in memory (the last N)")
    ap.add_argument("--webhook-batch", type=int, default=1, metavar="N",
                    help="statuses due together leave in one POST, up to N")
    ap.add_argument("--duplicate-receipt-rate", "--duplicate-status-rate", type=float,
                    default=0.0)
    ap.add_argument("--reorder-rate", type=float, default=0.0)
    ap.add_argument("--early-receipt-rate", type=float, default=0.0,
                    help="statuses POSTed before the send is answered")
    ap.add_argument("--unknown-receipt-rate", type=float, default=0.0,
                    help="extra status for a wamid never issued")
    ap.add_argument("--lost-receipt-rate", type=float, default=0.0, help="no status at all")
    ap.add_argument("--out-of-order-rate", type=float, default=0.0,
                    help="final status first, then sent")
    a = ap.parse_args(argv)
    outcomes = {k: float(v) for k, v in (x.split(":", 1) for x in a.outcome)} or {"read": 1.0}
    unknown = set(outcomes) - set(_STATUS_CHAIN)
    if unknown:
        ap.error(f"unknown outcome {sorted(unknown)}; known: {sorted(_STATUS_CHAIN)}")
    config = HttpChannelConfig(
        host=a.host, port=a.port, access_token=a.access_token, app_secret=a.app_secret,
        callback_url=a.callback_url, latency_s=a.latency_ms / 1000, max_requests_per_s=a.max_rate,
        status_delay_s=a.status_delay_ms / 1000, outcomes=outcomes, seed=a.seed,
        outcome_by_recipient=a.outcome_by_recipient,
        submit_log=a.submit_log, keep_records=a.keep_records, webhook_batch=a.webhook_batch)
    faults = HttpFaults(throttle_rate=a.throttle_rate, server_error_rate=a.server_error_rate,
                        duplicate_receipt_rate=a.duplicate_receipt_rate,
                        reorder_rate=a.reorder_rate, early_receipt_rate=a.early_receipt_rate,
                        unknown_receipt_rate=a.unknown_receipt_rate,
                        lost_receipt_rate=a.lost_receipt_rate,
                        out_of_order_rate=a.out_of_order_rate)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with HttpChannelSimulator(config, faults) as sim:
        print(f"http channel listening on {sim.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
