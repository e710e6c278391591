"""Delivers scheduled, signed webhooks from one background thread (for the HTTP simulator).

A heap ordered by due time and a condition variable: the thread waits exactly until the next
webhook is due or a new one is scheduled, so delays are honoured without polling.

One keep-alive connection to the receiver (a connect per webhook costs more than the webhook).
With ``batch`` > 1, statuses due at the same time leave in one POST (up to ``batch`` statuses
in ``entry[0].changes[0].value.statuses``, as Meta batches them under load); a badly signed one
always leaves alone.
"""

from __future__ import annotations

import copy
import heapq
import http.client
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
    def __init__(self, url: str | None, app_secret: str, timeout_s: float = 5.0, *,
                 keep_records: int | None = None, batch: int = 1) -> None:
        self.url, self._secret, self._timeout, self._batch = url, app_secret, timeout_s, batch
        self.sent: deque[WebhookRecord] | list[WebhookRecord] = (
            deque(maxlen=keep_records) if keep_records is not None else [])
        self._conn: http.client.HTTPConnection | None = None
        self._conn_lock = threading.Lock()  # post_now runs on handler threads
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    def start(self) -> None:
        if self.url is not None:
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(self._timeout + 1)
        with self._conn_lock:  # the kept-alive connection ends with the sender
            if self._conn is not None:
                self._conn.close()
                self._conn = None

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
            self._post([_Job(payload, wamid, status, bad_signature, False)], early=early)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                        not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                jobs = [heapq.heappop(self._heap)[2]]
                now = time.monotonic()
                while (len(jobs) < self._batch and self._heap and self._heap[0][0] <= now
                       and not jobs[0].bad_signature and not self._heap[0][2].bad_signature):
                    jobs.append(heapq.heappop(self._heap)[2])
            self._post(jobs)

    def _post(self, jobs: list[_Job], *, early: bool = False) -> None:
        assert self.url is not None
        payload = jobs[0].payload
        if len(jobs) > 1:
            payload = copy.deepcopy(payload)
            statuses = payload["entry"][0]["changes"][0]["value"]["statuses"]
            for job in jobs[1:]:
                statuses += job.payload["entry"][0]["changes"][0]["value"]["statuses"]
        body = json.dumps(payload).encode()
        signature = sign(body, self._secret + ("-wrong" if jobs[0].bad_signature else ""))
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature}
        with self._conn_lock:
            code = self._request(body, headers)
        at = time.monotonic()
        for job in jobs:
            self.sent.append(WebhookRecord(at, job.wamid, job.status, job.bad_signature, code,
                                           early, job.unknown))

    def _request(self, body: bytes, headers: dict[str, str]) -> int:
        """POST on the kept-alive connection; a stale one (closed by the receiver while idle)
        is replaced once. Returns the HTTP status, 0 when the receiver cannot be reached."""
        assert self.url is not None
        url = urlsplit(self.url)
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port,
                                                        timeout=self._timeout)
            try:
                self._conn.request("POST", url.path or "/", body=body, headers=headers)
                resp = self._conn.getresponse()
                resp.read()
                if resp.will_close:
                    self._conn.close()
                    self._conn = None
                return resp.status
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if not reused or attempt:
                    return 0
        return 0
