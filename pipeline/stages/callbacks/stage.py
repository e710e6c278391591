"""Callbacks stage: every status change of a message POSTed to its customer's URL, in order.

Input ``delivery-status`` (keyed by message id, written in sequence order by the status stage).
Only records headed :data:`~pipeline.headers.H_CALLBACK_URL` concern this stage (the message
was sent with a status callback URL); the others are passed over without being decoded.
Design and its reasons: ``docs/adr/0005-status-callbacks.md``.

Per message, the store entry (on disk, changelogged) holds the URL and account, the last
sequence seen, and the queue of events still to call back, head first. One callback per event
that moved the status, in sequence order: only the head is ever in flight; the next goes once
it is delivered or given up. The head's next action is the entry's **timer**: a retry's due
time, a wait for its host's turn, or, while an attempt is in flight, a watchdog
(:data:`WATCHDOG_MS`) that a worker which did not launch the attempt (restarted after a crash,
or the partition's new owner) takes as its cue to send it again. Pending retries thus live in
the changelogged store, not in memory.

Attempts run on an asyncio loop this stage owns (:mod:`~pipeline.stages.callbacks.sender`,
behind the SSRF guard), never on the runner's thread: a batch never waits for a customer. Their
results come back through the runtime's holding hooks (:meth:`next_wake_ms` is due while
results wait; :meth:`wake` applies them to the entries). Fairness (caps per host and account,
shares across workers, breakers, disabled hosts) is :mod:`~pipeline.stages.callbacks.fairness`.

Outputs:
- ``callback-attempts``: one CallbackAttempt per attempt answered (answer, verdict, when the
  next is due): what ``telex trace`` shows;
- ``callback-endpoints`` (compacted, key = host): a host this worker has just disabled, for
  every other worker and ``telex health`` (:mod:`~pipeline.stages.callbacks.endpoints`);
- ``dlq-callbacks``: the event's original record with provenance and the last verdict, for a
  callback given up (attempts exhausted, refused by the endpoint or by the SSRF guard, host
  disabled); ``telex dlq replay`` re-publishes it and this stage sends it again (a replayed
  record bypasses the sequence check).

Guarantee: at-least-once per event; an attempt is launched before the checkpoint that records
it, so a crash repeats at most the attempts in flight, with the same ``webhook-id``, which
receivers deduplicate on. Nothing else repeats: an event at or below the last sequence seen
is a replay of the input and is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

import structlog

from pipeline.codec import AvroCodec
from pipeline.errors import ConfigError, TelexError
from pipeline.headers import H_CALLBACK_URL, H_REPLAY_COUNT
from pipeline.metrics import (
    CALLBACK_ATTEMPTS,
    CALLBACK_DEAD_LETTERED,
    CALLBACK_HOSTS,
    CALLBACK_IN_FLIGHT,
    CALLBACK_SECONDS,
    RECORDS,
)
from pipeline.runtime.deadletter import Provenance, counted, dead_letter_headers
from pipeline.runtime.stage import Input, KeyedStage, Out, Record, Runtime, StoreSpec
from pipeline.runtime.store import KeyState, Store
from pipeline.settings import Settings
from pipeline.stages.callbacks import endpoints, policy
from pipeline.stages.callbacks.body import callback_body
from pipeline.stages.callbacks.fairness import Gates
from pipeline.stages.callbacks.sender import (
    CallbackSender,
    DeliveryError,
    Resolver,
    SystemResolver,
    Targets,
)
from pipeline.stages.callbacks.signing import NoSecretError, SecretBook, signed_headers, webhook_id
from pipeline.stages.callbacks.ssrf import RefusedURL, check_url

__all__ = ["CallbacksStage", "build"]

STAGE = "callbacks"
IN_TOPIC = "delivery-status"
DLQ = "dlq-callbacks"
ATTEMPTS = "callback-attempts"
STORE = "callbacks"
#: events queued per message at most; a message has a handful (accepted … delivered, read).
QUEUE_MAX = 32
#: while an attempt is in flight its entry's timer is a watchdog this far ahead: firing while the
#: attempt is still in flight here it only moves on; firing in a worker that never launched it
#: (restarted, or the partition's new owner) it sends the callback again, with the same id.
WATCHDOG_MS = 2_000
#: callbacks waiting in memory for their hosts, all hosts together (bounded: beyond, they rely
#: on their timers; the host holding the most gives up places first, see _wait).
WAITING_MAX = 100_000
#: a waiting callback's timer is the safety net of a restart (which forgets the waiting lists)
#: and of the callbacks beyond WAITING_MAX: due in 3 x how long it has waited, at least this and
#: at most WAIT_SAFETY_MAX_MS, plus up to half again (so a restarted worker does not retry them
#: all at once). Growing with the wait keeps a dead endpoint's backlog cheap: 400 callbacks/s
#: piling up for an hour cost ~600 timer firings/s, not one per callback every 30-60 s (14,000/s).
WAIT_SAFETY_MS = 30_000
WAIT_SAFETY_MAX_MS = 3_600_000
#: while attempts are in flight, the runner's poll waits at most this long for their answers.
ANSWER_POLL_MS = 5
#: how long a starting worker waits to have read every disabled host (callback-endpoints).
ENDPOINTS_CATCH_UP_S = 30.0

log = structlog.get_logger("telex.callbacks")


class CallbackGivenUp(TelexError):
    """A status callback that will not be attempted again (the reason says why)."""


@dataclass(frozen=True, slots=True)
class _Job:
    partition: int
    key: str
    seq: int
    attempt: int
    url: str
    host: str
    account: str
    status: str
    body: bytes


@dataclass(frozen=True, slots=True)
class _Answer:
    job: _Job
    verdict: policy.Verdict
    answer: str  # 2xx, 4xx, 410, 5xx, timeout, connect, tls, protocol, dns, refused, unsigned
    http_status: int | None = None
    duration_ms: int = 0


@functools.lru_cache(maxsize=4096)
def _host(url: str) -> str:
    """The URL's host, for fairness and logs (cached: one parse per URL, not per attempt)."""
    try:
        return check_url(url, allow_http=True).host
    except RefusedURL:
        return "(invalid)"


class CallbacksStage(KeyedStage):
    """Feeds events into per-message queues; attempts run on the stage's own loop."""

    name = STAGE

    def __init__(self, settings: Settings, secrets: SecretBook, *,
                 resolver: Resolver | None = None, sender: CallbackSender | None = None,
                 rng: random.Random | None = None,
                 follower: endpoints.EndpointFollower | None = None) -> None:
        """``follower``: reads ``callback-endpoints`` (:func:`build` gives one; without it the
        worker neither learns nor forgets other workers' disabled hosts: unit tests)."""
        self._settings = settings
        self._secrets = secrets
        self._codec = AvroCodec.from_settings(settings)
        self._schedule = policy.Schedule(policy.parse_ceilings(settings.callback_retry_ceilings_s))
        keep_s = sum(self._schedule.ceilings_s) + 86_400  # a day past the last retry
        self.inputs = (Input(IN_TOPIC, StoreSpec(STORE, keep_s, disk=True)),)
        self._topic = settings.topic(IN_TOPIC)  # stores are keyed by the consumed name
        self._timeout_s = settings.callback_timeout_s
        allowed: Sequence[IPv4Network | IPv6Network] = settings.callback_networks()
        self._gates = Gates(settings.callback_host_concurrency,
                            settings.callback_account_concurrency,
                            settings.callback_breaker_failures,
                            int(settings.callback_disable_after_s * 1000),
                            settings.callback_host_rate)
        self._targets = Targets(resolver or SystemResolver(),
                                allow_http=settings.callback_allow_http, allowed=allowed)
        self._sender = sender
        self._rng = rng or random.Random()
        self._partitions = max(1, settings.partitions)
        self._share = 1.0
        self._answers: collections.deque[_Answer] = collections.deque()
        self._launches: collections.deque[_Job] = collections.deque()
        self._launch_due = False
        self._tasks: set[asyncio.Future[None]] = set()  # attempts running (kept referenced)
        self._health_due_ms = 0
        self._in_flight: dict[tuple[int, str], tuple[int, int]] = {}
        # Callbacks waiting for their host to have room, oldest first, and when to look again
        # at each host's list (now: an attempt to it ended; later: breaker or rate).
        self._waiting: dict[str, collections.OrderedDict[tuple[int, str], None]] = {}
        self._waiting_count = 0
        self._kick: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._endpoints = follower
        self._outcomes = {o: RECORDS.labels(STAGE, o) for o in (
            "queued", "no_callback", "not_moved", "replayed_input", "delivered", "given_up")}

    # -- lifecycle --

    def open(self, runtime: Runtime) -> None:
        if self._endpoints is not None:
            self._endpoints.start()
            if not self._endpoints.wait_caught_up(ENDPOINTS_CATCH_UP_S):
                log.warning("callback_endpoints_not_caught_up", waited_s=ENDPOINTS_CATCH_UP_S)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="callbacks-http",
                                        daemon=True)
        self._thread.start()
        if self._sender is None:
            # As many connections per host as this worker may have attempts in flight to it.
            self._sender = CallbackSender(
                connections_per_origin=self._settings.callback_host_concurrency)

    def close(self) -> None:
        if self._endpoints is not None:
            self._endpoints.close()
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        sender = self._sender
        if sender is not None:
            asyncio.run_coroutine_threadsafe(sender.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = None

    # -- input --

    def process(self, records: Sequence[Record], stores: Mapping[tuple[str, int], Store],
                now_ms: int) -> list[Out]:
        self._owned(stores)
        self._follow_endpoints()
        return super().process(records, stores, now_ms)

    def _follow_endpoints(self) -> None:
        if self._endpoints is not None:
            for change in self._endpoints.changes():
                self._learn(change)

    def _owned(self, stores: Mapping[tuple[str, int], Store]) -> None:
        """This worker's share of the caps: the fraction of the input's partitions it owns
        (their stores), kept while it owns none (between a revoke and an assign)."""
        if stores:
            self._share = len(stores) / self._partitions

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        assert state is not None
        url = record.header(H_CALLBACK_URL)
        if url is None:
            self._outcomes["no_callback"].inc()
            return []
        event = self._codec.decode(record.value or b"", expected="delivery_status")
        if record.key != event["message_id"]:
            raise ValueError(f"record key {record.key!r} is not its message id")
        seq = int(event["sequence"])
        replay = record.header(H_REPLAY_COUNT) is not None
        if not replay:
            if seq <= (state.get("last") or 0):
                self._outcomes["replayed_input"].inc()
                return []
            state.set("last", seq)
        if (event.get("effective_status") or event["status"]) != event["status"]:
            self._outcomes["not_moved"].inc()  # a late, lower event: history, no callback
            return []
        if state.get("url") is None:
            state.set("url", url.decode())
            state.set("account", event["account_id"])
        queue = list(state.get("queue") or [])
        if len(queue) >= QUEUE_MAX:
            raise ValueError(f"{QUEUE_MAX} callbacks already queued for the message")
        queue.append([seq, record.offset, record.timestamp, (record.value or b"").hex()])
        state.set("queue", queue)
        self._outcomes["queued"].inc()
        if len(queue) == 1:
            return self._start(record.partition, record.key or "", state, now_ms, event)
        return []

    # -- attempts --

    def on_timer(self, key: str, state: KeyState, now_ms: int) -> list[Out]:
        return self._start(state.partition, key, state, now_ms)

    def _start(self, partition: int, key: str, state: KeyState, now_ms: int,
               event: dict | None = None) -> list[Out]:
        """Launch the head of the message's queue if its host and account have room; else book
        the entry's timer for when to ask again. ``event``: the head, already decoded (by
        :meth:`handle`, which just queued it), to spare a second decode."""
        queue = state.get("queue") or []
        if not queue:
            state.set_timer(None)
            return []
        seq, _, _, value_hex = queue[0]
        if (partition, key) in self._in_flight:  # its answer has not been applied yet
            state.set_timer(now_ms + WATCHDOG_MS)
            return []
        url, account = state.get("url"), state.get("account")
        host = _host(url)
        admission = self._gates.admit(host, account, self._share, now_ms)
        if admission.disabled is not None:
            return self._give_up(partition, key, state, now_ms, "disabled",
                                 f"endpoint host {host} is disabled: {admission.disabled}")
        if not admission.go:
            # Waits in memory behind its host, woken when the host has room (an attempt to it
            # ends, its breaker's cooldown or its rate's next slot passes): no polling, so
            # thousands waiting for a dead endpoint cost nothing per second.
            self._wait(host, (partition, key))
            if admission.reason != "host at its cap":  # a cap is freed by a finish: see _apply
                self._kick[host] = min(self._kick.get(host, math.inf), admission.wait_until_ms)
            since = state.get("waiting_since")
            if since is None:
                since = now_ms
                state.set("waiting_since", since)
            nap = min(WAIT_SAFETY_MAX_MS, max(WAIT_SAFETY_MS, 3 * (now_ms - since)))
            state.set_timer(now_ms + nap + self._rng.randint(0, nap // 2))
            return []
        if state.get("waiting_since") is not None:
            state.delete("waiting_since")
        attempt = int(state.get("attempt") or 0) + 1
        state.set("attempt", attempt)
        state.set_timer(now_ms + WATCHDOG_MS)
        if event is None or int(event["sequence"]) != seq:
            event = self._codec.decode(bytes.fromhex(value_hex), expected="delivery_status")
        job = _Job(partition, key, seq, attempt, url, host, account, event["status"],
                   callback_body(event))
        self._in_flight[(partition, key)] = (seq, attempt)
        CALLBACK_IN_FLIGHT.set(len(self._in_flight))
        self._launch(job)
        return []

    def _launch(self, job: _Job) -> None:
        """Hand ``job`` to the stage's loop. Jobs started in one batch or wake share one
        wake-up of the loop (a write to its self-pipe costs ~25 µs, as much as the rest of
        launching an attempt)."""
        self._launches.append(job)
        if not self._launch_due:
            self._launch_due = True
            assert self._loop is not None, "open() starts the loop"
            self._loop.call_soon_threadsafe(self._start_launched)

    def _start_launched(self) -> None:
        """On the stage's loop: an attempt task for every job handed over. The flag is cleared
        first, so a job appended while this runs either is taken here or schedules another."""
        self._launch_due = False
        while self._launches:
            task = asyncio.ensure_future(self._attempt(self._launches.popleft()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempt(self, job: _Job) -> None:
        """One POST (on the stage's loop); its verdict is queued for the runner's thread."""
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            target = await self._targets.get(job.url)
            stamp = int(time.time())
            headers = signed_headers(self._secrets.for_account(job.account),
                                     webhook_id(job.key, job.seq), stamp, job.body)
            headers["content-type"] = "application/json"
            headers["user-agent"] = "Telex-Callbacks/1"
            assert self._sender is not None
            response = await self._sender.post(target, job.body, headers, self._timeout_s)
            status = response.status
            retry_after = policy.retry_after_s(response.headers.get("retry-after"), time.time())
        except RefusedURL as exc:
            verdict = policy.Verdict(policy.GIVE_UP, f"refused by the SSRF guard: {exc}")
            self._answers.append(_Answer(job, verdict, "refused"))
            return
        except NoSecretError as exc:
            verdict = policy.Verdict(policy.GIVE_UP, str(exc))
            self._answers.append(_Answer(job, verdict, "unsigned"))
            return
        except DeliveryError as exc:
            error = exc.kind
        except Exception as exc:  # never lose the answer: an unexpected failure is retried
            log.warning("callback_attempt_error", message_id=job.key, error=repr(exc))
            error = "protocol"
        answer = error or ("410" if status == 410 else f"{(status or 0) // 100}xx")
        took = time.monotonic() - started
        CALLBACK_SECONDS.labels(answer).observe(took)
        verdict = policy.judge(job.attempt, status, error, retry_after, self._schedule,
                               self._rng)
        self._answers.append(_Answer(job, verdict, answer, status, int(took * 1000)))

    # -- answers (runner's thread) --

    def next_wake_ms(self) -> float | None:
        if self._answers or (self._endpoints is not None and self._endpoints.pending()):
            return 0.0
        due = min(self._kick.values(), default=math.inf)
        if self._in_flight:
            due = min(due, time.time() * 1000 + ANSWER_POLL_MS)
        return None if due == math.inf else due

    def wake(self, now_ms: int, stores: Mapping[tuple[str, int], Store]) -> list[Out]:
        self._owned(stores)
        self._follow_endpoints()
        outs: list[Out] = []
        while self._answers:
            outs += self._apply(self._answers.popleft(), stores, now_ms)
        for host in [h for h, due in self._kick.items() if due <= now_ms]:
            del self._kick[host]
            outs += self._admit_waiting(host, stores, now_ms)
        CALLBACK_IN_FLIGHT.set(len(self._in_flight))
        if now_ms >= self._health_due_ms:  # the gauges once a second, not on every wake
            self._health_due_ms = now_ms + 1000
            self.health(now_ms)
            self._gates.prune(now_ms)
        return outs

    def _admit_waiting(self, host: str, stores: Mapping[tuple[str, int], Store],
                       now_ms: int) -> list[Out]:
        """Start the callbacks waiting for ``host``, oldest first, while it has room; the first
        refused one goes back to the front (and books the host's next kick)."""
        waiting = self._waiting.get(host)
        outs: list[Out] = []
        while waiting:
            (partition, key), _ = waiting.popitem(last=False)
            self._waiting_count -= 1
            store = stores.get((self._topic, partition))
            if store is None:
                continue
            state = KeyState(store, key, now_ms)
            launched = len(self._in_flight)
            outs += self._start(partition, key, state, now_ms)
            if len(self._in_flight) == launched and (partition, key) in waiting:
                waiting.move_to_end((partition, key), last=False)
                break
        if not waiting:
            self._waiting.pop(host, None)
        return outs

    def _wait(self, host: str, held: tuple[int, str]) -> None:
        """Put a callback on its host's waiting list. When the lists are full (WAITING_MAX over
        all hosts), the host holding the most gives up its newest place (that callback relies on
        its timer): a dead endpoint's backlog never takes the places of a healthy host's few.
        A callback of the host holding the most already relies on its timer instead."""
        waiting = self._waiting.get(host)
        if waiting is not None and held in waiting:
            return
        if self._waiting_count >= WAITING_MAX:
            biggest = max(self._waiting, key=lambda h: len(self._waiting[h]))
            if len(self._waiting[biggest]) <= len(waiting or ()) + 1:
                return
            self._waiting[biggest].popitem(last=True)
            self._waiting_count -= 1
        if waiting is None:
            waiting = self._waiting[host] = collections.OrderedDict()
        waiting[held] = None
        self._waiting_count += 1

    def _apply(self, answer: _Answer, stores: Mapping[tuple[str, int], Store],
               now_ms: int) -> list[Out]:
        job, verdict = answer.job, answer.verdict
        if self._in_flight.get((job.partition, job.key)) == (job.seq, job.attempt):
            del self._in_flight[(job.partition, job.key)]
        health = {policy.DELIVERED: "ok", policy.DISABLE: "gone"}.get(verdict.kind)
        if health is None:
            health = "ok" if answer.answer in ("3xx", "4xx") else "failed"
        was_disabled = self._gates.state(job.host, now_ms) == "disabled"
        if answer.answer not in ("refused", "unsigned"):
            self._gates.finish(job.host, job.account, health, now_ms)
        else:
            self._gates.finish(job.host, job.account, "ok", now_ms)  # nothing was sent
        outs: list[Out] = []
        if not was_disabled and self._gates.state(job.host, now_ms) == "disabled":
            outs.append(self._disabled(job.host, now_ms))
        if self._waiting.get(job.host):
            self._kick[job.host] = now_ms  # a slot is free: the next waiting one may go
        CALLBACK_ATTEMPTS.labels(answer.answer, verdict.kind).inc()
        log.info("callback_attempt", message_id=job.key, sequence=job.seq, attempt=job.attempt,
                 host=job.host, answer=answer.answer, verdict=verdict.kind,
                 reason=verdict.reason, wait_s=round(verdict.wait_s, 1))
        store = stores.get((self._topic, job.partition))
        if store is None:
            return outs  # the partition moved: its new owner's watchdog sends it again
        state = KeyState(store, job.key, now_ms)
        queue = state.get("queue") or []
        if not queue or queue[0][0] != job.seq or state.get("attempt") != job.attempt:
            return outs  # an older attempt's late answer
        due = now_ms + int(verdict.wait_s * 1000) if verdict.kind == policy.RETRY else None
        record = Out(ATTEMPTS, job.key, self._codec.encode("callback_attempt", {
            "message_id": job.key, "account_id": job.account, "sequence": job.seq,
            "status": job.status, "attempt": job.attempt,
            "webhook_id": webhook_id(job.key, job.seq), "host": job.host,
            "answer": answer.answer, "http_status": answer.http_status,
            "verdict": verdict.kind, "reason": verdict.reason,
            "duration_millis": answer.duration_ms, "attempted_at_ms": now_ms,
            "next_attempt_at_ms": due}))
        if verdict.kind == policy.DELIVERED:
            self._outcomes["delivered"].inc()
            return [*outs, record, *self._next(job.partition, job.key, state, now_ms)]
        if due is not None:
            state.set_timer(due)
            return [*outs, record]
        kind = "disabled" if verdict.kind == policy.DISABLE else answer.answer
        return [*outs, record, *self._give_up(job.partition, job.key, state, now_ms, kind,
                                              verdict.reason)]

    def _disabled(self, host: str, now_ms: int) -> Out:
        """This worker just disabled ``host``: tell every worker (and telex health)."""
        health = self._gates.hosts[host]
        reason = health.disabled or "disabled"
        log.warning("callback_endpoint_disabled", host=host, reason=reason)
        return Out(endpoints.TOPIC, host, endpoints.encode(self._codec, endpoints.EndpointState(
            host, endpoints.DISABLED, reason, now_ms, "callbacks")))

    def _learn(self, change: endpoints.EndpointState) -> None:
        """A record of ``callback-endpoints``: another worker disabled a host, or an operator
        enabled one (this worker's own records come back too and change nothing)."""
        if change.state == endpoints.DISABLED:
            if self._gates.hosts.get(change.host) is None or \
                    self._gates.hosts[change.host].disabled is None:
                self._gates.disable(change.host, change.reason)
                self._kick[change.host] = 0  # those waiting for it are given up now
                log.info("callback_endpoint_learnt", host=change.host, state=change.state,
                         by=change.changed_by)
        elif change.state == endpoints.ENABLED:
            self._gates.enable(change.host)
            log.info("callback_endpoint_learnt", host=change.host, state=change.state,
                     by=change.changed_by)

    def _next(self, partition: int, key: str, state: KeyState, now_ms: int) -> list[Out]:
        """The head is done: the next event of the message goes, or the entry rests."""
        queue = list(state.get("queue") or [])[1:]
        state.delete("attempt")
        if queue:
            state.set("queue", queue)
            return self._start(partition, key, state, now_ms)
        state.delete("queue")
        state.set_timer(None)
        return []

    def _give_up(self, partition: int, key: str, state: KeyState, now_ms: int, kind: str,
                 reason: str) -> list[Out]:
        """The head goes to dlq-callbacks (its original record, provenance, the reason)."""
        seq, offset, timestamp, value_hex = (state.get("queue") or [])[0]
        error = CallbackGivenUp(f"callback {seq} to {_host(state.get('url'))}: {reason}")
        counted(STAGE, error, IN_TOPIC, partition, offset)
        CALLBACK_DEAD_LETTERED.labels(kind).inc()
        self._outcomes["given_up"].inc()
        headers = dead_letter_headers(
            [(H_CALLBACK_URL, str(state.get("url")).encode())],
            Provenance(self._topic, partition, offset, timestamp),
            STAGE, error, now_ms, key)
        out = Out(DLQ, key, bytes.fromhex(value_hex), headers)
        return [out, *self._next(partition, key, state, now_ms)]

    def forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        gone = {p for _, p in partitions}
        for held in [k for k in self._in_flight if k[0] in gone]:
            del self._in_flight[held]  # its answer, when it comes, finds no store
        for host, waiting in list(self._waiting.items()):
            for held in [k for k in waiting if k[0] in gone]:
                del waiting[held]
                self._waiting_count -= 1
            if not waiting:
                del self._waiting[host]

    def health(self, now_ms: int) -> dict[str, int]:
        """Hosts by breaker state (also exported as a gauge)."""
        counts = collections.Counter(self._gates.state(h, now_ms) for h in self._gates.hosts)
        for state in ("closed", "open", "half_open", "disabled"):
            CALLBACK_HOSTS.labels(state).set(counts.get(state, 0))
        return dict(counts)


def build(settings: Settings) -> CallbacksStage:
    """The registry's entry point (``telex worker callbacks``)."""
    if not settings.callback_secrets_file:
        raise ConfigError("the callbacks stage needs TELEX_CALLBACK_SECRETS_FILE")
    return CallbacksStage(settings, SecretBook.from_file(settings.callback_secrets_file),
                          follower=endpoints.EndpointFollower(
                              settings, AvroCodec.from_settings(settings)))

