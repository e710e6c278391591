"""Customer callback endpoints for ``bench.callbacks``, cheap enough not to be what is measured.

    python -m bench.callback_endpoints --secrets-file F --log-dir D [--verify-every 100]
                                       --endpoint ok@127.0.0.1 [--endpoint hang@127.0.0.2 ...]

One process, one asyncio loop, one listener per ``--endpoint BEHAVIOUR@ADDRESS`` (any 127/8
address: Linux routes all of it to lo), each on a port of its own choosing; prints
``listening NAME=HOST:PORT ...`` once all listen. Behaviours:

* ``ok``: ``HTTP/1.1 204 No Content`` at once, connection kept alive;
* ``fail``: ``500`` at once (a broken endpoint);
* ``hang``: reads the request and never answers (the connection stays open until the caller
  gives up).

Raw HTTP/1.1 on an :class:`asyncio.Protocol` (no framework, no per-request task): Telex's
sender never pipelines, so one request per connection at a time, framed by Content-Length.
Each request is logged to ``D/NAME.log`` as ``<arrival µs> <webhook-id> <check>`` (flushed every
20 ms; ``bench.rig.SubmitLog`` reads it), ``check`` being ``v`` when its Standard Webhooks
signature was verified with the reference ``standardwebhooks`` library, ``X`` when that failed,
``.`` when not checked: 1 request in ``--verify-every`` is, to keep the endpoint's own CPU small.
The secret is the ``*`` entry of the callbacks stage's secrets file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import IO

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

BEHAVIOURS = ("ok", "fail", "hang")
FLUSH_S = 0.02
_ANSWERS = {"ok": b"HTTP/1.1 204 No Content\r\n\r\n",
            "fail": b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"}
_LENGTH = b"\r\ncontent-length:"
_ID = b"\r\nwebhook-id:"


def split_requests(buf: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Complete requests at the start of ``buf`` as (head, body), and the incomplete rest.

    ``head`` is the request line and headers without the blank line; a request without
    Content-Length has no body."""
    out: list[tuple[bytes, bytes]] = []
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out, buf
        head = buf[:end]
        length = _header(head, head.lower(), _LENGTH)
        total = end + 4 + (int(length) if length else 0)
        if len(buf) < total:
            return out, buf
        out.append((head, buf[end + 4:total]))
        buf = buf[total:]


def _header(head: bytes, lower: bytes, marker: bytes) -> bytes | None:
    """The value of the header ``marker`` (``b"\\r\\nname:"``, lower case) in ``head``."""
    at = lower.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    stop = head.find(b"\r\n", start)
    return head[start:stop if stop >= 0 else len(head)].strip()


class _Endpoint:
    """One listener's behaviour, its request count and its log."""

    def __init__(self, behaviour: str, log: IO[bytes], verifier: Webhook,
                 verify_every: int) -> None:
        self.answer = _ANSWERS.get(behaviour)  # None: hang
        self.log = log
        self.verifier = verifier
        self.verify_every = verify_every
        self.count = 0

    def request(self, head: bytes, body: bytes) -> bytes | None:
        """Logs one request; returns the answer to write, if any."""
        at_us = time.time_ns() // 1000
        self.count += 1
        lower = head.lower()
        wid = _header(head, lower, _ID) or b"-"
        check = b"."
        if self.count % self.verify_every == 0:
            check = b"v" if self._verified(head, body) else b"X"
        self.log.write(b"%d %s %s\n" % (at_us, wid, check))
        return self.answer

    def _verified(self, head: bytes, body: bytes) -> bool:
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        try:
            self.verifier.verify(body, headers)
        except WebhookVerificationError:
            return False
        return True


class _Connection(asyncio.Protocol):
    def __init__(self, endpoint: _Endpoint) -> None:
        self._endpoint = endpoint
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        requests, self._buf = split_requests(self._buf + data if self._buf else data)
        for head, body in requests:
            answer = self._endpoint.request(head, body)
            if answer is not None and self._transport is not None:
                self._transport.write(answer)


async def _serve(endpoints: list[tuple[str, str]], log_dir: Path, secret: str,
                 verify_every: int) -> None:
    verifier = Webhook(secret)
    logs: list[IO[bytes]] = []
    listening = []
    for behaviour, host in endpoints:
        log = (log_dir / f"{behaviour}.log").open("ab", buffering=1 << 16)
        logs.append(log)
        endpoint = _Endpoint(behaviour, log, verifier, verify_every)
        server = await asyncio.get_running_loop().create_server(
            lambda e=endpoint: _Connection(e), host, 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        listening.append(f"{behaviour}={host}:{port}")
    print("listening " + " ".join(listening), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        for log in logs:
            log.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FLUSH_S)
    for log in logs:
        log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", action="append", required=True,
                    help="BEHAVIOUR@ADDRESS, behaviour one of " + ", ".join(BEHAVIOURS))
    ap.add_argument("--secrets-file", type=Path, required=True)
    ap.add_argument("--log-dir", type=Path, required=True)
    ap.add_argument("--verify-every", type=int, default=100)
    a = ap.parse_args(argv)
    endpoints = [tuple(e.split("@", 1)) for e in a.endpoint]
    if any(len(e) != 2 or e[0] not in BEHAVIOURS for e in endpoints):
        ap.error("--endpoint is BEHAVIOUR@ADDRESS")
    if len({e[0] for e in endpoints}) != len(endpoints):
        ap.error("one endpoint per behaviour (each logs to BEHAVIOUR.log)")
    secret = json.loads(a.secrets_file.read_text())["*"][0]
    asyncio.run(_serve(endpoints, a.log_dir, secret, a.verify_every))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
