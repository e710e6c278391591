"""Rate-limit stage: each message passes its account, carrier-route and sender buckets in turn.

Ownership: every bucket lives on exactly one partition of the topic keyed by that bucket
(``message-accepted`` by account — ingest keys it so, and the account step reads it straight —
``rl-route`` by channel:+country, ``rl-sender`` by channel:sender), so across N workers each
bucket has one owner, by Kafka's partitioning, with no shared lock. A step releases a message
keyed for the next step: one topic hop per bucket after the first re-partitions.

Decision (pure, :func:`decide`): reserve the message's slot in the bucket (GCRA, cost = its
segments). Due now → released to the next step. Due later → deferred through the delay tiers
(:mod:`pipeline.runtime.delay`) straight to the next step, with an explanation event on
``ratelimit-deferrals``; nothing waits in front of other buckets' messages. Booked beyond the
queue cap → ``failed`` 21611 (queue full). Due after its validity ends → ``failed`` 30036.
Scheduled sends (send-at) wait in the same delay tiers before the first bucket, and come back
to ``message-accepted`` when due.

Guarantee: at-least-once, as every batch-runtime stage (see ``pipeline/runtime/runner.py``). After a
crash, records since the last checkpoint are reserved again on top of the recovered TATs: the
recovered state is never laxer than before the crash (re-reservation only books later slots);
a message released twice keeps its message id and dispatch's journal absorbs it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from pipeline.codec import AvroCodec
from pipeline.errors import Code
from pipeline.gcra import Limit, Reservation, reserve
from pipeline.metrics import (
    RATELIMIT_BACKLOG,
    RATELIMIT_QUEUED_SEGMENTS,
    RECORDS,
    REJECTED,
)
from pipeline.records import update_record
from pipeline.runtime.delay import Pace, delay_headers, tier_for, tier_topic
from pipeline.runtime.stage import Input, KeyedStage, Out, Record, StoreSpec
from pipeline.runtime.store import KeyState
from pipeline.senders import load_registry
from pipeline.settings import Settings
from pipeline.stages.ratelimit.limits import ACCOUNT, ROUTE, SENDER, Limits, bucket_of, load_limits

STAGE = "ratelimit"
# After a bucket deferred a message, its later messages also go through the scheduler (due at
# once) until this long after the last deferred slot. The scheduler paces a bucket's releases
# on actual release times, but only the releases it sees: if it runs late, a message released
# here directly could land right next to a late one and burst the carrier. A scheduler later
# than this margin could still let that happen; the rate-limit benchmark measures lateness.
SCHEDULER_MARGIN_MS = 30_000
# (dimension, input topic, next topic, key of the next topic)
# The sender bucket, the strictest, comes last: a message it defers is released by the delay
# tiers straight into dispatch-ready at its slot, with no stage hop left to add jitter.
STEPS: tuple[tuple[str, str, str, Callable[[Mapping[str, Any]], str]], ...] = (
    (ACCOUNT, "message-accepted", "rl-route", lambda m: bucket_of(ROUTE, m)),
    (ROUTE, "rl-route", "rl-sender", lambda m: bucket_of(SENDER, m)),
    (SENDER, "rl-sender", "dispatch-ready", lambda m: str(m["message_id"])),
)
ENTRY_TOPIC = STEPS[0][1]
# A message passes the three steps with the same value bytes, one produce-and-consume apart;
# the steps of one worker share this many decoded messages (~2 KB each: under 8 MB),
# which covers several batches in flight even at 10,000 msg/s, so the second and third steps
# usually skip decoding. Across workers (a step on another member) it simply misses.
DECODED_MAX = 4096

log = structlog.get_logger("telex.ratelimit")


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # release | defer | queue_full | expired
    reservation: Reservation
    code: int | None = None
    reason: str = ""


def decide(tat_ms: float | None, now_ms: float, cost: int, limit: Limit,
           expires_at_ms: float, queue_cap_ms: float,
           via_scheduler_until_ms: float | None = None) -> Verdict:
    """What happens to a message of ``cost`` segments arriving at a bucket now.

    ``via_scheduler_until_ms``: until then, even a message due now is deferred (due at once),
    so that the scheduler, which paces the bucket, sees every release of a recently queued
    bucket.
    """
    r = reserve(tat_ms, now_ms, cost, limit)
    wait = r.wait_ms(now_ms)
    if wait > queue_cap_ms:
        return Verdict("queue_full", r, Code.QUEUE_FULL,
                       f"queue full: {wait / 1000:.0f} s booked ahead, the cap is "
                       f"{queue_cap_ms / 1000:.0f} s")
    if r.release_at_ms > expires_at_ms:
        return Verdict("expired", r, Code.EXPIRED,
                       f"cannot leave before its validity period ends "
                       f"({(r.release_at_ms - expires_at_ms) / 1000:.1f} s too late)")
    direct = wait <= 0 and (via_scheduler_until_ms is None or now_ms >= via_scheduler_until_ms)
    return Verdict("release" if direct else "defer", r)


class RateLimitStage(KeyedStage):
    """Feeds :func:`decide` record by record with the bucket's state; never raises.

    One store per bucket dimension (``account``, ``route``, ``sender``), each on the topic
    keyed by that dimension; a bucket's entry is its TAT and the end of its scheduler margin.
    Buckets are bounded by configuration (senders, accounts, routes), so they never expire.
    """

    name = STAGE

    def __init__(self, settings: Settings, limits: Limits, codec: AvroCodec,
                 clock: Callable[[], float] = time.time) -> None:
        self._limits = limits
        self._codec = codec
        self._clock = clock
        self._decoded = functools.lru_cache(maxsize=DECODED_MAX)(self._decode)
        self.inputs = tuple(Input(topic, StoreSpec(dimension, None))
                            for dimension, topic, _, _ in STEPS)
        self._routes: dict[str, Callable[[Record, KeyState | None, float], list[Out]]] = {}
        for dimension, topic, next_topic, next_key in STEPS:
            self._routes[settings.topic(topic)] = self.step(dimension, topic, next_topic, next_key)
        self._outcomes = {(d, o): RECORDS.labels(f"{STAGE}-{d}", o)
                          for d, *_ in STEPS for o in ("released", "deferred", "queue_full",
                                                       "expired")}

    def handle(self, record: Record, state: KeyState | None, now_ms: int) -> list[Out]:
        return self._routes[record.topic](record, state, self._clock() * 1000)

    def message_id_of(self, record: Record) -> str | None:
        return self._message_id_of(record.value or b"")

    # -- one bucket step --

    def step(self, dimension: str, topic: str, next_topic: str,
             next_key: Callable[[Mapping[str, Any]], str]
             ) -> Callable[[Record, KeyState | None, float], list[Out]]:
        def process(record: Record, state: KeyState | None, now_ms: float) -> list[Out]:
            assert state is not None
            value = record.value or b""
            msg = self._decoded(value)  # shared with the other steps: read only
            bucket = bucket_of(dimension, msg)
            if record.key != bucket:
                raise ValueError(f"record key {record.key!r} is not its {dimension} bucket")
            send_at = msg.get("send_at_ms")
            if dimension == ACCOUNT and send_at is not None and send_at > now_ms:
                # A scheduled send waits before taking any slot, and comes back here when due.
                return self._defer(msg, value, bucket, topic, send_at, now_ms,
                                   bucket="schedule", position=0,
                                   reason=f"scheduled send-at {int(send_at)}")
            limit = self._limits.for_bucket(dimension, bucket)
            booked = state.get("tat")
            verdict = decide(booked, now_ms, max(1, int(msg["segments"])), limit,
                             msg["expires_at_ms"], self._limits.queue_cap_ms(limit),
                             state.get("via_scheduler_until"))
            outs = self._act(dimension, bucket, limit, verdict, msg, value, next_topic,
                             next_key(msg), now_ms, booked or 0.0)
            if verdict.kind in ("release", "defer"):
                state.set("tat", verdict.reservation.tat_ms)
            if verdict.kind == "defer":
                state.set("via_scheduler_until",
                          verdict.reservation.release_at_ms + SCHEDULER_MARGIN_MS)
                ahead_s = max(0.0, verdict.reservation.tat_ms - now_ms) / 1000
                RATELIMIT_BACKLOG.labels(dimension, bucket).set(ahead_s)
                RATELIMIT_QUEUED_SEGMENTS.labels(dimension, bucket).set(ahead_s * limit.rate)
            self._outcomes[(dimension, _OUTCOME[verdict.kind])].inc()
            return outs

        return process

    def _decode(self, value: bytes) -> Mapping[str, Any]:
        """A MessageAccepted, decoded (cached by :attr:`_decoded` on its bytes)."""
        return self._codec.decode(value, expected="message_accepted")

    def _message_id_of(self, value: bytes) -> str | None:
        """The message id of a record being dead-lettered, when it decodes at all: these
        topics are keyed by bucket, so only the header lets `telex trace` find it."""
        try:
            return str(self._codec.decode(value, expected="message_accepted")["message_id"])
        except Exception:  # undecodable: no id to give
            return None

    def _act(self, dimension: str, bucket: str, limit: Limit, verdict: Verdict,
             msg: Mapping[str, Any], value: bytes, next_topic: str, next_key: str,
             now_ms: float, booked_ms: float) -> list[Out]:
        if verdict.kind == "release":
            # Stamped with the decision time, the clock the bucket's slots were booked on
            # (and the one the scheduler stamps its releases with), not the produce time
            # after the batch: the released records' timestamps then keep the bucket's limit.
            return [Out(next_topic, next_key, value, timestamp_ms=int(now_ms))]
        r = verdict.reservation
        if verdict.kind == "defer":
            reason = (f"{dimension} bucket {bucket} ({limit.rate:g}/s, burst {limit.burst:g}): "
                      f"{r.position:.0f} segments booked ahead")
            pace = Pace(limit.rate, limit.burst, max(1, int(msg["segments"])), booked_ms,
                        f"{dimension}:{bucket}")
            return self._defer(msg, value, next_key, next_topic, r.release_at_ms, now_ms,
                               bucket=f"{dimension}:{bucket}", position=int(r.position),
                               reason=reason, pace=pace)
        REJECTED.labels(f"{STAGE}-{dimension}", str(verdict.code)).inc()
        log.info("message_" + verdict.kind, message_id=msg["message_id"],
                 bucket=f"{dimension}:{bucket}", code=verdict.code)
        return [Out("status-updates", str(msg["message_id"]), self._codec.encode(
            "status_update", update_record(
                msg["message_id"], STAGE, int(now_ms), status="failed",
                attempt=msg.get("attempt"), account_id=msg["account_id"],
                channel=msg["channel"], error_code=verdict.code, error_reason=verdict.reason,
                segments=msg["segments"], trace_id=msg.get("trace_id"))))]

    def _defer(self, msg: Mapping[str, Any], value: bytes, key: str, target: str, due_ms: float,
               now_ms: float, *, bucket: str, position: int, reason: str,
               pace: Pace | None = None) -> list[Out]:
        tier = tier_topic(tier_for(due_ms - now_ms))
        explain = self._codec.encode("ratelimit_deferral", {
            "message_id": msg["message_id"], "bucket": bucket, "position": position,
            "expected_release_ms": int(due_ms), "reason": reason,
            "deferred_at_ms": int(now_ms),
        })
        return [Out(tier, key, value, delay_headers(due_ms, target, pace)),
                Out("ratelimit-deferrals", str(msg["message_id"]), explain)]



_OUTCOME = {"release": "released", "defer": "deferred", "queue_full": "queue_full",
            "expired": "expired"}


def build(settings: Settings) -> RateLimitStage:
    """The rate-limit stage for the batch runtime: entry plus the three bucket steps."""
    return RateLimitStage(settings, load_limits(settings.limits_file,
                                                load_registry(settings.senders_file)),
                          AvroCodec.from_settings(settings))
