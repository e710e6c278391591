"""Fault-injection suite: the whole pipeline under process crashes, pauses, a broker crash and
carrier faults, then a Jepsen-style check that no accepted message was lost.

    python -m bench.faults [--seconds 300] [--rate 150] [--seed N] [--json results.json]
                           [--short]

One run:

1. Its own broker (:class:`~pipeline.dev.broker.DevBroker`, never ``KAFKA_BOOTSTRAP_SERVERS``:
   the suite SIGKILLs and restarts it on the same data dir and port), a fresh topic prefix, an
   in-process SMSC simulator with carrier faults (throttling, unanswered submits, receipts early,
   duplicated, out of order, lost, for unknown ids; mostly DELIVRD, a few EXPIRED and UNDELIV),
   and every stage as a real ``telex worker`` process.
2. Open-loop load through :class:`~pipeline.sdk.TelexProducer` (unique idempotency keys and
   recipients); the ids the SDK got acknowledged are the *accepted* messages.
3. Meanwhile, at seeded-random moments: SIGKILL of a stage worker (restarted 0 to 2 s later),
   SIGSTOP/SIGCONT of a worker and of the broker JVM (1 to 5 s), broker SIGKILL and restart, and
   dropped SMPP binds. Every fault is logged with its time.
4. After the load, a bounded wait until every accepted message has a final status, then the
   checker (see :func:`check`): lost messages, one final status per message with no regression,
   every duplicate carrier submit explained by a journal entry or a receipt-driven resend, final
   states where the carrier's receipt makes them knowable; and recovery after each SIGKILL.

Exit code 0 when lost == 0, unexplained duplicates == 0 and regressions == 0; 1 otherwise;
2 on a usage error. A stage process that exits on its own is a finding: it is logged with its
exit code and log tail, listed under ``unexpected_exits`` and restarted so the run can go on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import REPO
from connectors.base import normalise_message_id
from connectors.simulators.smsc_model import Faults, SmscConfig, SubmitRecord
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.codec import AvroCodec
from pipeline.dev.broker import DevBroker
from pipeline.dev.history import FINAL, HistoryReader, applied, regressions
from pipeline.ops.topic_reader import read_from_start
from pipeline.procutil import die_with_parent
from pipeline.sdk import OutboundMessage, PublishError, TelexProducer
from pipeline.settings import Settings, load_settings
from pipeline.topics import admin_client, apply_topics, catalogue

STAGES = ("ingest", "ratelimit", "scheduler", "dispatch", "reconcile", "status")
FAULT_KINDS = ("kill_stage", "pause_stage", "kill_broker", "pause_broker", "drop_binds")
SENDER = "55501"  # demo registry short code
CONNECTOR = "smsc"
RECOVERED_SHARE = 0.9  # "back at full rate": a 1 s window with ≥ 90 % of the offered rate
RECOVERY_TARGET_S = 10.0  # the target; measured and reported, never asserted
# Carrier-side codes that say the SMSC refused the submit (so it cannot have been accepted):
# throttled (30022) and queue full (30001). Any other retryable failure (time-out, dropped bind,
# server error) may have been accepted, so it explains one duplicate.
_REFUSED_CODES = frozenset({30022, 30001})
_TICK_S = 0.2


@dataclass(frozen=True)
class Profile:
    """What one run offers: load length and rate, the seed of every random choice."""

    seconds: float
    rate: float
    seed: int
    short: bool

    @property
    def settle_timeout_s(self) -> float:
        """Bound on waiting for final statuses after the load: the receipt window and the
        retry schedule must run out for the slowest message, plus the backlog a late fault
        (a broker restart) may leave."""
        return 150.0 if self.short else 300.0


# --- processes ----------------------------------------------------------------------------


@dataclass
class StageProcess:
    """One stage worker as a real OS process; each (re)start logs to its own file."""

    stage: str
    env: dict[str, str]
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_path: Path | None = None
    down: bool = False  # killed on purpose and not restarted yet: not the supervisor's to restart

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"{self.stage}-{self.starts}.log"
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            # Spawned from the main thread only: die_with_parent fires when the spawning
            # *thread* exits.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli.main", "worker", self.stage], cwd=REPO,
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class FaultRecord:
    kind: str
    target: str
    at_s: float  # seconds since the load started
    duration_s: float = 0.0  # pause length, or down time until restarted / ready
    back_at_s: float | None = None  # process restarted (or resumed, or broker ready)
    detail: dict[str, Any] = field(default_factory=dict)


class Rig:
    """Broker, simulator and stage workers of one run; the only place that spawns processes,
    always from the main thread (see :class:`StageProcess`)."""

    def __init__(self, workdir: Path, profile: Profile) -> None:
        self.workdir = workdir
        self.profile = profile
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.broker = DevBroker(workdir / "kafka", die_with_parent=True)
        self.smsc: ThreadedSmsc | None = None
        self.workers: dict[str, StageProcess] = {}
        self.t0 = time.monotonic()  # reset when the load starts
        self.faults: list[FaultRecord] = []
        self.unexpected_exits: list[dict[str, Any]] = []

    def rel(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def start(self) -> Settings:
        bootstrap = self.broker.start(timeout=180)
        chaos = Faults(throttle_rate=0.02, no_response_rate=0.01, early_receipt_rate=0.05,
                       duplicate_receipt_rate=0.03, out_of_order_rate=0.03,
                       lost_receipt_rate=0.01, unknown_receipt_rate=0.01)
        self.smsc = ThreadedSmsc(SmscConfig(
            seed=self.profile.seed, latency_s=0.02,
            outcomes={"DELIVRD": 0.95, "EXPIRED": 0.04, "UNDELIV": 0.01}), chaos).start()
        carriers = self.workdir / "carriers.json"
        carriers.write_text(json.dumps({
            "connectors": [{
                "name": CONNECTOR, "type": "smpp", "host": "127.0.0.1", "port": self.smsc.port,
                "system_id": "telex", "password": "secret", "window": 50,
                "response_timeout_s": 2, "reconnect_max_s": 1,
                # The bind drops on purpose: a breaker opening for seconds would turn the retry
                # schedule into final failures and hide what the suite looks for.
                "breaker": {"failure_threshold": 50, "base_cooldown_ms": 500,
                            "max_cooldown_ms": 2000}}],
            "routes": [{"channel": "sms", "prefix": "", "connectors": [CONNECTOR]}]}))
        limits = self.workdir / "limits.json"
        huge = {"rate": 1_000_000, "burst": 1_000_000}
        # The sender bucket at 3x the offered rate: catch-up bursts after a fault go through
        # the rate limiter's deferrals and the scheduler's pacing instead of around them.
        sender = {"rate": max(10, round(3 * self.profile.rate)),
                  "burst": max(10, round(self.profile.rate))}
        limits.write_text(json.dumps({"senders": {f"sms:{SENDER}": sender},
                                      "account_default": huge, "route_default": huge}))
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap, topic_prefix=f"flt{uuid.uuid4().hex[:8]}.",
            partitions=3, state_dir=str(self.workdir / "state"), commit_interval_s=0.2,
            carriers_file=str(carriers), limits_file=str(limits), retry_schedule_s=(1, 2, 4),
            receipt_window_s=20, receipt_match_ttl_s=3)
        apply_topics(admin_client(settings), catalogue(settings))
        env = {**os.environ, **settings.to_env(), "TELEX_LOG_LEVEL": "INFO"}
        for stage in STAGES:
            self.workers[stage] = StageProcess(stage, env, self.logs)
            self.workers[stage].start()
        return settings

    def supervise(self) -> None:
        """Restart any worker that exited on its own, and record it as a finding."""
        for w in self.workers.values():
            code = w.exited()
            if code is None or w.down:
                continue
            finding = {"stage": w.stage, "noticed_at_s": self.rel(), "exit_code": code,
                       "log": str(w.log_path), "log_tail": w.log_tail()}
            self.unexpected_exits.append(finding)
            print(f"  !! {w.stage} worker exited on its own with {code} at "
                  f"{finding['noticed_at_s']:.1f} s (log {w.log_path}); restarting it",
                  flush=True)
            w.start()

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass (pacing the fault schedule), supervising meanwhile."""
        end = time.monotonic() + max(0.0, seconds)
        while (left := end - time.monotonic()) > 0:
            self.supervise()
            time.sleep(min(_TICK_S, left))

    def close(self) -> None:
        for w in self.workers.values():
            w.stop()
        if self.smsc is not None:
            self.smsc.stop()
        if self.broker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.broker.pid, signal.SIGCONT)
        self.broker.stop()

    # -- faults --

    def inject(self, kind: str, target: str, rng: random.Random) -> FaultRecord:
        record = FaultRecord(kind, target, self.rel())
        if kind == "kill_stage":
            w = self.workers[target]
            self.supervise()  # an exit before ours is the stage's own, not ours
            w.down = True
            w.kill()
            delay = rng.uniform(0, 2)
            self.idle(delay)
            w.start()
            w.down = False
            record.back_at_s = self.rel()
            record.duration_s = round(record.back_at_s - record.at_s, 3)
            record.detail = {"restart_delay_s": round(delay, 3)}
        elif kind == "pause_stage":
            pause = rng.uniform(1, 5)
            w = self.workers[target]
            w.signal(signal.SIGSTOP)
            time.sleep(pause)  # a stopped process is not supervised: it cannot exit
            w.signal(signal.SIGCONT)
            record.back_at_s = self.rel()
            record.duration_s = round(pause, 3)
        elif kind == "pause_broker":
            pause = rng.uniform(1, 5)
            assert self.broker.pid is not None
            os.kill(self.broker.pid, signal.SIGSTOP)
            self.idle(pause)
            os.kill(self.broker.pid, signal.SIGCONT)
            record.back_at_s = self.rel()
            record.duration_s = round(pause, 3)
        elif kind == "kill_broker":
            self.broker.kill()
            delay = rng.uniform(0, 2)
            self.idle(delay)
            self.broker.start(timeout=180)  # same data dir and ports
            record.back_at_s = self.rel()
            record.duration_s = round(record.back_at_s - record.at_s, 3)
            record.detail = {"restart_delay_s": round(delay, 3),
                             "jvm_start_s": self.broker.timings.get("start_s")}
        elif kind == "drop_binds":
            assert self.smsc is not None
            record.detail = {"sessions": self.smsc.call(lambda sim: sim.drop_connections())}
            record.back_at_s = record.at_s
        else:
            raise ValueError(f"unknown fault {kind!r}")
        self.faults.append(record)
        print(f"  fault at {record.at_s:6.1f} s: {kind:12} {target:10} "
              f"{record.duration_s:5.1f} s {record.detail or ''}", flush=True)
        return record


def plan_faults(profile: Profile, rng: random.Random) -> list[tuple[float, str, str]]:
    """(planned time, kind, target), seeded. Every kind at least once, and in --short every
    stage SIGKILLed once; then, in longer runs, random faults until the load's end. Faults stop
    10 s before the load ends so the last one's recovery can still be seen."""
    must = [("kill_stage", s) for s in STAGES]
    must += [("kill_broker", "broker"), ("pause_broker", "broker"),
             ("pause_stage", rng.choice(STAGES)), ("drop_binds", CONNECTOR),
             ("drop_binds", CONNECTOR)]
    rng.shuffle(must)
    first, last = 5.0, max(6.0, profile.seconds - 10)
    if profile.short:
        step = (last - first) / len(must)
        return [(first + i * step + rng.uniform(0, step / 3), k, t)
                for i, (k, t) in enumerate(must)]
    plan, at = [], first
    choices = [*[("kill_stage", s) for s in STAGES], ("kill_broker", "broker"),
               ("pause_broker", "broker"), *[("pause_stage", s) for s in STAGES],
               ("drop_binds", CONNECTOR)]
    while at <= last:
        kind, target = must.pop() if must else rng.choice(choices)
        plan.append((at, kind, target))
        at += rng.uniform(8, 16)
    return plan


# --- load ---------------------------------------------------------------------------------


def _exchanges() -> Iterator[int]:
    """US central-office codes for the load's numbers (no N11 service codes; 999 is the
    warm-up's)."""
    return (x for x in range(200, 999) if x % 100 != 11)


class Load:
    """Open loop: message i is offered at t0 + i/rate whatever happened to earlier ones, so a
    stalled broker cannot slow the offered load down (no coordinated omission). Each send
    awaits its acknowledgement on its own; the acknowledged ids are the accepted messages."""

    def __init__(self, settings: Settings, rate: float, seconds: float, tag: str) -> None:
        self.settings, self.rate, self.seconds, self.tag = settings, rate, seconds, tag
        self.accepted: dict[str, str] = {}  # message id → recipient digits
        self.offered = 0
        self.publish_failures: list[str] = []
        self.error: BaseException | None = None
        self._exchanges = list(_exchanges())
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def message(self, i: int) -> OutboundMessage:
        exchange = self._exchanges[i // 10_000]
        return OutboundMessage(account_id=f"acct-{i % 4}", channel="sms", sender=SENDER,
                               recipient=f"+1415{exchange}{i % 10_000:04d}",
                               body=f"{self.tag} {i}", idempotency_key=f"{self.tag}-{i}")

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"load generator still running {timeout} s after its end")
        if self.error is not None:
            raise RuntimeError(f"load generator failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by join(); the thread must not die silently
            self.error = exc

    async def _main(self) -> None:
        # A broker restart takes seconds to tens of seconds on a loaded machine: the SDK must
        # keep a request that long rather than report it unpublished.
        producer = TelexProducer(self.settings, delivery_timeout_s=180)
        total = int(self.rate * self.seconds)
        sends: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        try:
            while self.offered < total:
                due = min(total, int((time.monotonic() - started) * self.rate) + 1)
                for i in range(self.offered, due):
                    task = asyncio.create_task(self._send(producer, self.message(i)))
                    sends.add(task)
                    task.add_done_callback(sends.discard)
                self.offered = due
                await asyncio.sleep(0.01)  # open-loop pacing to the next due message
            await asyncio.gather(*sends)
        finally:
            await asyncio.to_thread(producer.close)

    async def _send(self, producer: TelexProducer, message: OutboundMessage) -> None:
        try:
            message_id = await producer.send_async(message)
        except PublishError as exc:
            self.publish_failures.append(f"{exc.message_id}: {exc.reason}")
            return
        self.accepted[message_id] = message.recipient.lstrip("+")


def send_now(settings: Settings, messages: Iterable[OutboundMessage]) -> dict[str, str]:
    with TelexProducer(settings) as producer:
        batch = list(messages)
        ids = producer.send_batch(batch)
    return {i: m.recipient.lstrip("+") for i, m in zip(ids, batch, strict=True)}


# --- waiting ------------------------------------------------------------------------------


def pending_of(history: dict[str, list[dict[str, Any]]], ids: Iterable[str]) -> set[str]:
    return {i for i in ids
            if not history.get(i) or applied(history[i])[-1]["effective_status"] not in FINAL}


def wait_final(rig: Rig, reader: HistoryReader, ids: set[str], timeout: float,
               quiet_s: float = 5.0) -> float:
    """Until every id has a final status and then no new status event for ``quiet_s`` (a late
    receipt may still raise an ``undelivered`` by time-out to ``delivered``); bounded by
    ``timeout``. Returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    last_count, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        reader.catch_up()
        if reader.count != last_count:
            last_count, quiet_since = reader.count, time.monotonic()
        if not pending_of(reader.events, ids) and time.monotonic() - quiet_since >= quiet_s:
            break
        rig.idle(1.0)  # pacing between reads of the topic; the condition above decides
    reader.catch_up()
    return round(time.monotonic() - started, 1)


# --- the checker --------------------------------------------------------------------------


def _journal(settings: Settings, codec: AvroCodec) -> dict[str, list[dict[str, Any]]]:
    """Every journal entry per message, all versions (compaction is lazy, and the catalogue
    keeps an hour of uncompacted history)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in read_from_start(settings, settings.topic("dispatch-journal"), timeout=180):
        if m.value() is not None:
            entry = codec.decode(m.value(), expected="dispatch_journal_entry")
            out[entry["message_id"]].append(entry)
    return out


def _receipts_in_kafka(settings: Settings, codec: AvroCodec) -> dict[str, set[str]]:
    """Normalised carrier id → receipt statuses that reached ``carrier-receipts``."""
    out: dict[str, set[str]] = defaultdict(set)
    for m in read_from_start(settings, settings.topic("carrier-receipts"), timeout=180):
        name, record = codec.decode_with_name(m.value())
        if name == "carrier_receipt" and record["connector"] == CONNECTOR:
            out[normalise_message_id(record["carrier_message_id"])].add(record["status"])
    return out


def resend_permits(entries: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[str]:
    """What allowed this message to reach the carrier again, as ``kind@attempt@time``:

    * an IN_DOUBT_RESOLVED (retryable) of an ATTEMPTING that an *earlier* batch left behind (a
      worker died between journaling it and its result). A resolution stamped with the same
      time as the ATTEMPTING it resolves was written by the same batch: no crash left that
      attempt in doubt, so it permits nothing;
    * a retryable FAILED the carrier may have accepted (time-out, dropped bind), not a refusal;
    * a receipt-driven resend (a status event whose reason says "resending").

    ``entries`` in journal order. One record written twice (same state, attempt and time) is
    one permit; separate crashes are separate permits.
    """
    permits = set()
    attempting_at: int | None = None
    for e in entries:
        if e["state"] == "ATTEMPTING":
            attempting_at = e["at_ms"]
        elif e["state"] == "IN_DOUBT_RESOLVED" and e["retryable"]:
            if attempting_at is None or attempting_at < e["at_ms"]:
                permits.add(f"in_doubt@{e['attempt']}@{e['at_ms']}")
        elif (e["state"] == "FAILED" and e["retryable"]
              and e["error_code"] not in _REFUSED_CODES):
            permits.add(f"failed_{e['error_code']}@{e['attempt']}@{e['at_ms']}")
    for e in events:
        if "resending" in (e.get("error_reason") or ""):
            permits.add(f"receipt_resend@{e['attempt']}@{e['sequence']}")
    return sorted(permits)


def check(accepted: dict[str, str], history: dict[str, list[dict[str, Any]]],
          latest: dict[str, list[dict[str, Any]]], journal: dict[str, list[dict[str, Any]]],
          submits: list[SubmitRecord], receipts: dict[str, set[str]]) -> dict[str, Any]:
    """The checker, in the style of Jepsen's Kafka checker; every list names message ids."""
    by_recipient = {r: m for m, r in accepted.items()}
    carrier: dict[str, list[SubmitRecord]] = defaultdict(list)
    strangers = 0
    for r in submits:
        if r.destination_addr in by_recipient:
            carrier[by_recipient[r.destination_addr]].append(r)
        else:
            strangers += 1

    lost = sorted(pending_of(history, accepted))
    finals: Counter[str] = Counter()
    regressed, latest_disagrees, final_changed = [], [], 0
    duplicates, unexplained = {}, []
    wrong_final: list[dict[str, Any]] = []
    receipt_not_in_kafka: list[dict[str, Any]] = []
    delivered_unannounced: list[dict[str, Any]] = []
    for mid in sorted(accepted):
        events = applied(history.get(mid, []))
        if events:
            regressed += [{"message_id": mid, "problem": p} for p in regressions(events)]
        final = events[-1]["effective_status"] if events else None
        if final in FINAL:
            finals[final] += 1
            reached = [e["effective_status"] for e in events if e["effective_status"] in FINAL]
            final_changed += len(set(reached)) > 1
            last_latest = (latest.get(mid) or [{}])[-1].get("effective_status")
            if last_latest != final:
                latest_disagrees.append({"message_id": mid, "history": final,
                                         "latest": last_latest})
        ok_submits = [r for r in carrier.get(mid, []) if r.status == 0]
        extra = len(ok_submits) - 1
        if extra > 0:
            permits = resend_permits(journal.get(mid, []), events)
            duplicates[mid] = {"accepted_submits": len(ok_submits), "permits": permits}
            if extra > len(permits):
                unexplained.append({"message_id": mid, "accepted_submits": len(ok_submits),
                                    "permits": permits,
                                    "journal": [(e["state"], e["attempt"], e["error_code"],
                                                 e["carrier_message_id"], e["at_ms"])
                                                for e in journal.get(mid, [])]})
        if final not in FINAL:
            continue
        # Final state where knowable. Telex can only attribute a receipt to a submit whose
        # carrier id it journaled (SUBMITTED): a copy accepted in doubt (dispatch killed, or
        # the submit_sm_resp lost with a dropped bind) reports under an id Telex never learned.
        plans = {normalise_message_id(r.message_id): r.receipts for r in ok_submits
                 if r.message_id and r.receipts}
        announced = {normalise_message_id(e["carrier_message_id"]) for e in journal.get(mid, [])
                     if e["state"] == "SUBMITTED" and e["carrier_message_id"]}
        seen = {cid: plan for cid, plan in plans.items() if cid in announced and not plan.lost}
        delivrd = [cid for cid, plan in plans.items() if plan.stat == "DELIVRD" and not plan.lost]
        in_kafka = {cid: receipts.get(cid, set()) for cid in seen}
        proven = [cid for cid, plan in seen.items()
                  if plan.stat == "DELIVRD" and "delivered" in in_kafka[cid]]
        sample = {"message_id": mid, "final": final,
                  "plans": {cid: {"stat": p.stat, "lost": p.lost, "announced": cid in announced,
                                  "receipts_in_kafka": sorted(receipts.get(cid, ()))}
                            for cid, p in plans.items()}}
        if proven and final != "delivered":
            wrong_final.append({**sample, "want": "delivered"})
        elif final == "delivered" and not delivrd:
            wrong_final.append({**sample, "want": "not delivered: no DELIVRD receipt planned"})
        elif (seen and not delivrd and final != "undelivered"
              and all(p.stat == "EXPIRED" and "undelivered" in in_kafka[c]
                      for c, p in seen.items())):
            wrong_final.append({**sample, "want": "undelivered"})
        elif any(plans[c].stat == "DELIVRD" for c in seen) and final != "delivered":
            receipt_not_in_kafka.append(sample)
        elif delivrd and final != "delivered":
            delivered_unannounced.append(sample)

    explained = len(duplicates) - len(unexplained)
    return {
        "accepted": len(accepted), "final_by_status": dict(sorted(finals.items())),
        "lost": len(lost), "lost_ids": lost[:100],
        "regressions": len(regressed), "regression_samples": regressed[:50],
        "latest_disagrees": len(latest_disagrees), "latest_samples": latest_disagrees[:20],
        "final_changed_after_final": final_changed,
        "carrier_submits": len(submits), "carrier_submits_unknown_recipient": strangers,
        "carrier_accepted": sum(r.status == 0 for r in submits),
        "duplicates": len(duplicates),
        "duplicate_submits": sum(d["accepted_submits"] - 1 for d in duplicates.values()),
        "explained": explained, "unexplained": len(unexplained),
        "unexplained_samples": unexplained[:50],
        "duplicate_permits": dict(Counter(p.split("@")[0] for d in duplicates.values()
                                          for p in d["permits"])),
        "wrong_final": len(wrong_final), "wrong_final_samples": wrong_final[:50],
        # Not Telex's to know, counted so a change in them shows:
        "delivrd_receipt_not_in_kafka": len(receipt_not_in_kafka),
        "delivrd_receipt_not_in_kafka_samples": receipt_not_in_kafka[:20],
        "delivrd_copy_unannounced": len(delivered_unannounced),
        "delivrd_copy_unannounced_samples": delivered_unannounced[:20],
    }


# --- recovery -----------------------------------------------------------------------------


def recovery(times: list[float], rate: float, faults: list[FaultRecord], load_end: float,
             bucket_s: float = 0.1) -> list[dict[str, Any]]:
    """Per disruptive fault, seconds from the fault until the first 1 s window, starting once
    the faulted process is back, that carries ≥ 90 % of the offered rate. ``times`` are event
    times (seconds since the load started). None when no such window came before the load's
    end; ``overlapped`` when another fault began before recovery (its effect is included)."""
    counts = Counter(int(t / bucket_s) for t in times)
    per_window = round(1 / bucket_s)
    need = RECOVERED_SHARE * rate
    starts = sorted(f.at_s for f in faults)
    out = []
    for f in faults:
        if f.kind == "drop_binds" or f.back_at_s is None:
            continue
        got = None
        b = int(f.back_at_s / bucket_s)
        while (b + per_window) * bucket_s <= load_end:
            if sum(counts[b + i] for i in range(per_window)) >= need:
                got = round((b + per_window) * bucket_s - f.at_s, 2)
                break
            b += 1
        overlapped = got is not None and any(f.at_s < s < f.at_s + got for s in starts)
        out.append({"kind": f.kind, "target": f.target, "at_s": f.at_s,
                    "recovery_s": got, "overlapped": overlapped})
    return out


def _spread(values: list[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "median": round(statistics.median(values), 2) if values else None,
            "max": round(max(values), 2) if values else None}


def recovery_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    kills = [r for r in rows if r["kind"] == "kill_stage"]
    measured = [r["recovery_s"] for r in kills if r["recovery_s"] is not None]
    alone = [r["recovery_s"] for r in kills if r["recovery_s"] is not None and not r["overlapped"]]
    return {"stage_sigkill": _spread(measured), "stage_sigkill_not_overlapped": _spread(alone),
            "stage_sigkill_not_recovered_before_load_end":
                sum(r["recovery_s"] is None for r in kills),
            "within_target": sum(v <= RECOVERY_TARGET_S for v in measured),
            "target_s": RECOVERY_TARGET_S, "per_fault": rows}


# --- the run ------------------------------------------------------------------------------


def run(profile: Profile, workdir: Path) -> dict[str, Any]:
    rng = random.Random(profile.seed)
    rig = Rig(workdir, profile)
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        settings = rig.start()
        timings["setup_s"] = round(time.monotonic() - began, 1)
        print(f"broker {rig.broker.bootstrap} (pid {rig.broker.pid}), topics {settings.topic('')}"
              f"*, SMSC simulator :{rig.smsc.port if rig.smsc else '?'}, workers "
              + ", ".join(f"{s}={w.pid}" for s, w in rig.workers.items()), flush=True)
        reader = HistoryReader(settings)
        try:
            # Readiness: every stage consumes once a handful of messages reach a final status.
            tag = f"f{profile.seed}"
            warm = send_now(settings, [OutboundMessage(
                account_id="acct-0", channel="sms", sender=SENDER,
                recipient=f"+1415999{i:04d}", body=f"warm {i}",
                idempotency_key=f"{tag}-warm-{i}") for i in range(20)])
            waited = wait_final(rig, reader, set(warm), timeout=180, quiet_s=0)
            if pending_of(reader.events, warm):
                raise RuntimeError(f"pipeline not ready: warm-up not final after {waited} s")
            timings["ready_s"] = round(time.monotonic() - began, 1)

            load = Load(settings, profile.rate, profile.seconds, tag)
            plan = plan_faults(profile, rng)
            print(f"load: {profile.rate:g} msg/s for {profile.seconds:g} s; "
                  f"{len(plan)} faults planned", flush=True)
            rig.t0 = time.monotonic()
            t0_wall = time.time()
            load.start()
            for at, kind, target in plan:
                rig.idle(at - rig.rel())
                rig.inject(kind, target, rng)
            rig.idle(profile.seconds - rig.rel())
            load.join(timeout=240)
            load_end = rig.rel()
            timings["load_s"] = load_end
            accepted = {**warm, **load.accepted}
            print(f"load done at {load_end:.1f} s: {load.offered} offered, "
                  f"{len(load.accepted)} accepted, {len(load.publish_failures)} not published; "
                  "waiting for final statuses", flush=True)
            timings["settle_s"] = wait_final(rig, reader, set(accepted),
                                             profile.settle_timeout_s)
            codec = AvroCodec.from_settings(settings)
            with HistoryReader(settings, "delivery-status-latest") as latest_reader:
                latest = latest_reader.catch_up(120)
            assert rig.smsc is not None
            submits = list(rig.smsc.submits)
            result = check(accepted, reader.events, latest, _journal(settings, codec), submits,
                           _receipts_in_kafka(settings, codec))
        finally:
            reader.close()
        carrier_times = [r.at - rig.t0 for r in submits if r.status == 0]
        # fastavro reads timestamp-millis as an aware datetime
        sent_times = [e["recorded_at_ms"].timestamp() - t0_wall
                      for events in reader.events.values()
                      for e in applied(events) if e["status"] == "sent"]
        timings["total_s"] = round(time.monotonic() - began, 1)
    finally:
        rig.close()
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "profile": asdict(profile),
        "settings": {"partitions": settings.partitions, "retry_schedule_s":
                     list(settings.retry_schedule_s), "receipt_window_s":
                     settings.receipt_window_s, "receipt_match_ttl_s":
                     settings.receipt_match_ttl_s, "topic_prefix": settings.topic_prefix},
        "carrier_faults": {"throttle_rate": 0.02, "no_response_rate": 0.01,
                           "receipts": {"early": 0.05, "duplicate": 0.03, "out_of_order": 0.03,
                                        "lost": 0.01, "unknown_id": 0.01},
                           "outcomes": {"DELIVRD": 0.95, "EXPIRED": 0.04, "UNDELIV": 0.01}},
        "faults": [asdict(f) for f in rig.faults],
        "faults_by_kind": dict(Counter(f.kind for f in rig.faults)),
        "unexpected_exits": rig.unexpected_exits,
        "offered": load.offered, "publish_failures": len(load.publish_failures),
        "publish_failure_samples": load.publish_failures[:10],
        "counts": result,
        "recovery": {
            "carrier_submits": recovery_summary(
                recovery(carrier_times, profile.rate, rig.faults, load_end)),
            "sent_statuses": recovery_summary(
                recovery(sent_times, profile.rate, rig.faults, load_end)),
        },
        "timings": timings,
        "workdir": str(workdir),
    }


def verdict(results: dict[str, Any]) -> bool:
    c = results["counts"]
    return c["lost"] == 0 and c["unexplained"] == 0 and c["regressions"] == 0


def summarise(results: dict[str, Any]) -> None:
    c = results["counts"]
    print(f"\nfault suite: {results['profile']['rate']:g} msg/s for "
          f"{results['profile']['seconds']:g} s, seed {results['profile']['seed']}")
    print("  faults injected: " + ", ".join(f"{k} {v}" for k, v in
                                            sorted(results["faults_by_kind"].items())))
    print(f"  accepted {c['accepted']}, final: " + ", ".join(
        f"{k} {v}" for k, v in c["final_by_status"].items()))
    print(f"  lost {c['lost']}   regressions {c['regressions']}   "
          f"latest disagrees {c['latest_disagrees']}")
    print(f"  carrier submits {c['carrier_submits']} ({c['carrier_accepted']} accepted); "
          f"messages accepted twice or more {c['duplicates']} ({c['duplicate_submits']} extra "
          f"submits): explained {c['explained']}, unexplained {c['unexplained']}  "
          f"{c['duplicate_permits']}")
    print(f"  final state where knowable: wrong {c['wrong_final']}; not knowable: DELIVRD "
          f"receipt never reached Kafka {c['delivrd_receipt_not_in_kafka']}, DELIVRD copy under "
          f"a carrier id Telex never learned {c['delivrd_copy_unannounced']}")
    for name, r in results["recovery"].items():
        s = r["stage_sigkill"]
        print(f"  back to ≥90 % of the offered rate after a stage SIGKILL ({name}): median "
              f"{s['median']} s, max {s['max']} s over {s['n']} (target {r['target_s']:g} s; "
              f"{r['stage_sigkill_not_recovered_before_load_end']} not before the load's end)")
    if results["unexpected_exits"]:
        print("  !! workers that exited on their own: " + ", ".join(
            f"{e['stage']} (exit {e['exit_code']} at {e['noticed_at_s']} s)"
            for e in results["unexpected_exits"]))
    print(f"  {'PASS' if verdict(results) else 'FAIL'}  (timings {results['timings']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of load (300; 75 with --short)")
    parser.add_argument("--rate", type=float, default=None,
                        help="offered messages per second (150; 40 with --short)")
    parser.add_argument("--seed", type=int, default=None, help="fault schedule and carrier seed")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--short", action="store_true",
                        help="CI size: every stage SIGKILLed once, every other fault once")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (75.0 if args.short else 300.0)
    rate = args.rate if args.rate is not None else (40.0 if args.short else 150.0)
    if seconds < 30 or rate <= 0:
        parser.error("--seconds must be at least 30 and --rate positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    profile = Profile(seconds, rate, seed, args.short)
    workdir = Path(tempfile.mkdtemp(prefix="telex-faults-"))
    print(f"fault suite, seed {seed}, work dir {workdir}", flush=True)
    results = run(profile, workdir)
    summarise(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
        print(f"results written to {args.json}")
    passed = verdict(results)
    if passed and not results["unexpected_exits"]:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs kept in {workdir / 'logs'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
