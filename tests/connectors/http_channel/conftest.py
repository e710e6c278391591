"""A webhook receiver on loopback, as the pipeline's status endpoint will be: verify, parse."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from connectors.base import Receipt
from connectors.http_channel import SIGNATURE_HEADER, WebhookSignatureError, receipts_from_request

APP_SECRET = "test-app-secret"


@dataclass
class Receiver:
    url: str
    receipts: list[Receipt] = field(default_factory=list)
    rejected: int = 0


@pytest.fixture
def webhook_receiver() -> Iterator[Receiver]:
    """Answers 200 to well-signed status webhooks (keeping their receipts), 401 otherwise."""
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                receiver.receipts.extend(receipts_from_request(
                    raw, self.headers.get(SIGNATURE_HEADER), APP_SECRET))
                status = 200
            except WebhookSignatureError:
                receiver.rejected += 1
                status = 401
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/whatsapp"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
