"""Delivers scheduled, signed webhooks from one background thread (for the HTTP simulator).

A heap ordered by due time and a condition variable: the thread waits exactly until the next
webhook is due or a new one is scheduled, so delays are honoured without polling.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from connectors.http_channel.webhook import SIGNATURE_HEADER, sign


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    at: float
    wamid: str
    status: str
    bad_signature: bool
    response_status: int  # the receiver's HTTP status; 0 when it could not be reached
    early: bool = False  # POSTed before the send that issued ``wamid`` was answered
    unknown: bool = False  # ``wamid`` was never issued


@dataclass(frozen=True, slots=True)
class _Job:
    payload: dict[str, Any]
    wamid: str
    status: str
    bad_signature: bool
    unknown: bool


class WebhookSender:
    def __init__(self, url: str | None, app_secret: str, timeout_s: float = 5.0) -> None:
        self.url, self._secret, self._timeout = url, app_secret, timeout_s
        self.sent: list[WebhookRecord] = []
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        # Loopback only: never route a simulated webhook through an environment proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self) -> None:
        if self.url is not None:
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(self._timeout + 1)

    def schedule(self, due: float, payload: dict[str, Any], wamid: str, status: str,
                 *, bad_signature: bool = False, unknown: bool = False) -> None:
        """POST at ``due`` (monotonic) from the sender thread; equal due times keep their order."""
        job = _Job(payload, wamid, status, bad_signature, unknown)
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), job))
            self._cond.notify()

    def post_now(self, payload: dict[str, Any], wamid: str, status: str,
                 *, bad_signature: bool = False, early: bool = False) -> None:
        """POST from the calling thread and return once the receiver answered."""
        if self.url is not None:
            self._post(_Job(payload, wamid, status, bad_signature, False), early=early)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                        not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, _, job = heapq.heappop(self._heap)
            self._post(job)

    def _post(self, job: _Job, *, early: bool = False) -> None:
        assert self.url is not None
        body = json.dumps(job.payload).encode()
        signature = sign(body, self._secret + ("-wrong" if job.bad_signature else ""))
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature})
        try:
            with self._opener.open(request, timeout=self._timeout) as resp:
                code = resp.status
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
        except (urllib.error.URLError, OSError):
            code = 0
        self.sent.append(WebhookRecord(time.monotonic(), job.wamid, job.status,
                                       job.bad_signature, code, early, job.unknown))
