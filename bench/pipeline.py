"""Whole-pipeline benchmark: maximum sustainable rate, latency percentiles, CPU and memory per
process, and a plain passthrough chain measured in the same run.

    python -m bench.pipeline [--runs 3] [--step-seconds 10] [--start-rate 200]
                             [--growth 1.5] [--json bench-pipeline.json]

Each run, on one broker (a fresh local one unless KAFKA_BOOTSTRAP_SERVERS is set):

1. Every stage as its own process (ingest, rate limit, scheduler, dispatch, reconcile, status),
   an SMSC simulator process (SMPP 3.4 over TCP, DELIVRD receipts) that logs each submit_sm's
   arrival time and text, and rate limits far above the offered load (this measures the
   machinery, not the limiter).
2. **Rate search.** An open-loop generator sends at a target rate for ``--step-seconds``,
   stamping each request's *intended* send time into its body (so a stalled generator cannot
   hide latency: no coordinated omission). A step is sustained when the simulator received at
   least 97 % of its messages within 2 s of the step's end and the consumer lag then is under
   one second of load. The rate grows by ``--growth`` until a step is not sustained.
3. **Latency** at half the maximum sustained rate: accept→carrier-submit at the simulator
   (arrival time minus intended time), and accept→final status (``delivery-status-latest``
   recorded time minus intended time), as HdrHistogram percentiles.
4. **Baseline**: the same number of hops (message-requested → 5 topics) through plain
   confluent-kafka consume→produce processes with the same producer settings
   (``bench.passthrough``); its drain rate of preloaded requests.
5. CPU seconds per 1,000 messages and peak RSS for every process, the broker JVM included.

Medians and spreads over runs are printed; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from hdrh.histogram import HdrHistogram

from bench.harness import REPO, proc_stats, worker_env
from pipeline.codec import AvroCodec
from pipeline.devbroker import DevBroker
from pipeline.procutil import die_with_parent, free_ports
from pipeline.sdk import OutboundMessage, TelexProducer
from pipeline.settings import Settings, load_settings
from pipeline.topic_reader import read_from_start
from pipeline.topics import TopicSpec, admin_client, apply_topics, catalogue

STAGES = ("ingest", "ratelimit", "scheduler", "dispatch", "reconcile", "status")
BASELINE_HOPS = 5  # message-requested → accepted → account → route → sender → dispatch-ready
SENDER = "55501"


@dataclass
class Rig:
    """The processes of one run, by name, and where the simulator logs submits."""

    settings: Settings
    submit_log: Path
    pids: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"a benchmark process exited with {proc.returncode}: "
                                 f"{proc.args!r}")

    def submits(self) -> list[tuple[int, str]]:
        """(arrival ms, text) of every submit_sm the simulator has logged so far."""
        out = []
        for line in self.submit_log.read_text().splitlines():
            at, _, text = line.partition(" ")
            if text:
                out.append((int(at), text))
        return out


def _limits(tmp: Path) -> str:
    path = tmp / "limits.json"
    huge = {"rate": 1_000_000, "burst": 1_000_000}
    path.write_text(json.dumps({"senders": {f"sms:{SENDER}": huge}, "account_default": huge,
                               "route_default": huge}))
    return str(path)


@contextmanager
def rig(bootstrap: str, tmp: Path, broker_pid: int | None) -> Iterator[Rig]:
    """Topics, simulator and stage workers for one run; everything stopped at the end."""
    settings = load_settings(kafka_bootstrap_servers=bootstrap,
                             topic_prefix=f"bp{uuid.uuid4().hex[:8]}.",
                             state_dir=str(tmp / uuid.uuid4().hex))
    apply_topics(admin_client(settings), catalogue(settings))
    [port] = free_ports(1)
    log = tmp / f"submits-{uuid.uuid4().hex[:6]}.log"
    log.touch()
    carriers = tmp / "carriers.json"
    carriers.write_text(json.dumps({
        "connectors": [{"name": "smsc", "type": "smpp", "host": "127.0.0.1", "port": port,
                        "system_id": "telex", "password": "secret", "window": 100}],
        "routes": [{"channel": "sms", "prefix": "", "connectors": ["smsc"]}]}))
    settings = settings.model_copy(update={"carriers_file": str(carriers),
                                           "limits_file": _limits(tmp)})
    r = Rig(settings, log)
    if broker_pid is not None:
        r.pids["broker (JVM)"] = broker_pid
    sim = subprocess.Popen(
        [sys.executable, "-m", "connectors.simulators.smsc", "--port", str(port),
         "--submit-log", str(log), "--outcome", "DELIVRD:1"],
        stdout=subprocess.PIPE, preexec_fn=die_with_parent())
    r.procs.append(sim)
    r.pids["smsc simulator"] = sim.pid
    assert sim.stdout is not None
    if b"listening" not in sim.stdout.readline():
        raise SystemExit("the SMSC simulator did not start")
    try:
        for stage in STAGES:
            proc = subprocess.Popen(
                # Unsupervised: the measured pid is the process doing the work.
                [sys.executable, "-m", "pipeline.cli.main", "worker", stage, "--no-supervise"],
                cwd=REPO,
                env=worker_env(settings), preexec_fn=die_with_parent())
            r.procs.append(proc)
            r.pids[stage] = proc.pid
        yield r
    finally:
        for proc in r.procs:
            proc.terminate()
        for proc in r.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _message(i: int, tag: str, intended_ms: int) -> OutboundMessage:
    return OutboundMessage(
        account_id=f"acct-{i % 20}", channel="sms", sender=SENDER,
        recipient=f"+1415{200 + i // 10_000 % 800:03d}{i % 10_000:04d}",
        body=f"b {tag} {i} {intended_ms}", idempotency_key=f"{tag}-{i}")


def _intended(text: str, tag: str) -> int | None:
    parts = text.split()
    if len(parts) == 4 and parts[0] == "b" and parts[1] == tag:
        return int(parts[3])
    return None


def offer(r: Rig, rate: float, seconds: float, tag: str, start: int = 0
          ) -> dict[str, int]:
    """Open loop: message i is due at t0 + i/rate whatever happened to earlier ones; sent in
    10 ms ticks (one acknowledged batch each). Returns message id → intended send time (ms)."""
    n = int(rate * seconds)
    sent: dict[str, int] = {}
    t0 = time.time()
    i = 0
    with TelexProducer(r.settings) as producer:
        while i < n:
            now = time.time()
            due = range(i, min(n, int((now - t0) * rate) + 1))
            if not due:
                time.sleep(min(0.01, t0 + i / rate - now))  # open-loop pacing to the next due
                continue
            batch = [_message(start + j, tag, int((t0 + j / rate) * 1000)) for j in due]
            for m, mid in zip(batch, producer.send_batch(batch), strict=True):
                sent[mid] = int(m.body.split()[3])
            i = due[-1] + 1
    return sent


def _lag(r: Rig) -> int:
    """Records not yet consumed by the dispatch group on dispatch-ready, plus upstream."""
    consumer = Consumer({**r.settings.kafka_config(), "group.id": r.settings.topic("dispatch"),
                         "enable.auto.commit": False})
    try:
        total = 0
        for stage, topic in (("ingest", "message-requested"), ("dispatch", "dispatch-ready")):
            name = r.settings.topic(topic)
            parts = consumer.list_topics(name, timeout=10).topics[name].partitions
            tps = [TopicPartition(name, p) for p in parts]
            group = Consumer({**r.settings.kafka_config(),
                              "group.id": r.settings.topic(stage), "enable.auto.commit": False})
            try:
                committed = group.committed(tps, timeout=10)
            finally:
                group.close()
            for tp in committed:
                end = consumer.get_watermark_offsets(TopicPartition(name, tp.partition),
                                                     timeout=10)[1]
                total += end - max(tp.offset, 0)
        return total
    finally:
        consumer.close()


def step(r: Rig, rate: float, seconds: float, tag: str) -> dict[str, float]:
    started = time.time()
    sent = offer(r, rate, seconds, tag)
    ended = started + seconds
    time.sleep(max(0.0, ended + 2 - time.time()))  # the 2 s grace the verdict allows
    r.alive()
    arrived = sum(1 for at, text in r.submits() if _intended(text, tag) is not None)
    backlog = _lag(r)
    ok = arrived >= 0.97 * len(sent) and backlog < rate
    return {"rate": rate, "offered": len(sent), "submitted_in_time": arrived,
            "backlog": backlog, "sustained": float(ok)}


def _drain(r: Rig, tag: str, expected: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for _, t in r.submits() if _intended(t, tag) is not None) < expected:
        r.alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"{tag}: backlog not drained in {timeout} s")
        time.sleep(0.5)  # pacing between reads of the simulator's log


def _percentiles(values: list[int]) -> dict[str, float]:
    hist = HdrHistogram(1, 3_600_000, 3)
    for v in values:
        hist.record_value(max(1, v))
    return {f"p{p:g}_ms": float(hist.get_value_at_percentile(p)) for p in (50, 99, 99.9)}


def latency(r: Rig, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    cpu_before = {name: proc_stats(pid)[0] for name, pid in r.pids.items()}
    sent = offer(r, rate, seconds, tag, start=10_000_000)
    _drain(r, tag, len(sent))
    submit = [at - i for at, text in r.submits() if (i := _intended(text, tag)) is not None]
    codec = AvroCodec.from_settings(r.settings)
    final: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while len(final) < len(sent) and time.monotonic() < deadline:
        for m in read_from_start(r.settings, r.settings.topic("delivery-status-latest"),
                                 timeout=60):
            mid = m.key().decode()
            if mid in sent:
                status = codec.decode(m.value())
                if status["status"] == "delivered":
                    final[mid] = status["recorded_at_ms"] - sent[mid]
        time.sleep(0.5)  # pacing between reads; the loop condition decides
    cpu = {name: (proc_stats(pid)[0] - cpu_before[name]) / (len(sent) / 1000)
           for name, pid in r.pids.items()}
    return {"rate": rate, "messages": len(sent),
            "accept_to_submit": _percentiles(submit),
            "accept_to_delivered": _percentiles(list(final.values())),
            "delivered": len(final),
            "cpu_s_per_1000": cpu,
            "peak_rss_mib": {n: proc_stats(p)[1] / 1024 for n, p in r.pids.items()}}


def baseline(bootstrap: str, n: int) -> dict[str, float]:
    """Drain rate of ``n`` preloaded requests through BASELINE_HOPS passthrough processes."""
    settings = load_settings(kafka_bootstrap_servers=bootstrap,
                             topic_prefix=f"bb{uuid.uuid4().hex[:8]}.")
    names = [settings.topic("message-requested")] + [
        settings.topic(f"hop-{i}") for i in range(1, BASELINE_HOPS + 1)]
    apply_topics(admin_client(settings), [
        TopicSpec(name, "stream", settings.partitions, 1, {"cleanup.policy": "delete"})
        for name in names])
    with TelexProducer(settings) as producer:
        producer.send_batch([_message(i, "base", 0) for i in range(n)])
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bench.passthrough", src, settings.topic(f"g{i}"), dst],
        cwd=REPO, env=worker_env(settings), preexec_fn=die_with_parent())
        for i, (src, dst) in enumerate(itertools.pairwise(names))]
    try:
        consumer = Consumer({**settings.kafka_config(), "group.id": uuid.uuid4().hex,
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        last = names[-1]
        parts = consumer.list_topics(last, timeout=10).topics.get(last)
        consumer.assign([TopicPartition(last, p, 0) for p in (parts.partitions if parts else
                                                               range(settings.partitions))])
        arrivals: list[float] = []
        deadline = time.monotonic() + 600
        while len(arrivals) < n and time.monotonic() < deadline:
            arrivals += [time.time() for m in consumer.consume(1000, 0.1) if m.error() is None]
        consumer.close()
        cpu = sum(proc_stats(p.pid)[0] for p in procs)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    if len(arrivals) < n:
        raise SystemExit(f"baseline: {len(arrivals)}/{n} records arrived")
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return {"msg_per_s": rate, "cpu_s_per_1000_all_hops": cpu / (n / 1000)}


def one_run(bootstrap: str, tmp: Path, broker_pid: int | None, args: argparse.Namespace
            ) -> dict[str, Any]:
    with rig(bootstrap, tmp, broker_pid) as r:
        warm = offer(r, 100, 2, "warm")
        _drain(r, "warm", len(warm), timeout=120)
        steps, rate, best = [], args.start_rate, 0.0
        while rate <= args.max_rate:
            s = step(r, rate, args.step_seconds, f"s{len(steps)}")
            steps.append(s)
            print(f"  step {rate:8.0f} msg/s: {s['submitted_in_time']:.0f}/{s['offered']:.0f} "
                  f"submitted in time, backlog {s['backlog']:.0f} → "
                  f"{'sustained' if s['sustained'] else 'not sustained'}", flush=True)
            if not s["sustained"]:
                break
            best = rate
            rate = round(rate * args.growth)
        _drain_all(r, steps)
        lat = latency(r, max(50.0, best / 2), args.step_seconds, "lat")
    base = baseline(bootstrap, args.baseline_messages)
    return {"max_sustained_msg_per_s": best, "steps": steps, "latency_at_half_max": lat,
            "baseline": base,
            "ratio_to_baseline": best / base["msg_per_s"] if base["msg_per_s"] else 0.0}


def _drain_all(r: Rig, steps: list[dict[str, float]]) -> None:
    for i, s in enumerate(steps):
        _drain(r, f"s{i}", int(s["offered"]), timeout=600)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):10.1f}  ({min(values):.1f}, {max(values):.1f})"


def summarise(results: list[dict[str, Any]]) -> None:
    print(f"\nwhole pipeline, {len(results)} runs: median (min, max)")
    rows = {
        "max sustained msg/s": [r["max_sustained_msg_per_s"] for r in results],
        "baseline chain msg/s": [r["baseline"]["msg_per_s"] for r in results],
        "ratio pipeline/baseline": [r["ratio_to_baseline"] for r in results],
    }
    for which in ("accept_to_submit", "accept_to_delivered"):
        for p in ("p50_ms", "p99_ms", "p99.9_ms"):
            rows[f"{which} {p} @½max"] = [r["latency_at_half_max"][which][p] for r in results]
    for label, values in rows.items():
        print(f"  {label:34} {_spread(values)}")
    print("  CPU s per 1,000 messages @½max, and peak RSS MiB, per process:")
    for name in results[0]["latency_at_half_max"]["cpu_s_per_1000"]:
        cpu = [r["latency_at_half_max"]["cpu_s_per_1000"][name] for r in results]
        rss = [r["latency_at_half_max"]["peak_rss_mib"][name] for r in results]
        print(f"    {name:18} cpu {_spread(cpu)}   rss {_spread(rss)}")
    base_cpu = [r["baseline"]["cpu_s_per_1000_all_hops"] for r in results]
    print(f"    {'baseline (5 hops)':18} cpu {_spread(base_cpu)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=10)
    parser.add_argument("--start-rate", type=float, default=200)
    parser.add_argument("--max-rate", type=float, default=20_000)
    parser.add_argument("--growth", type=float, default=1.5)
    parser.add_argument("--baseline-messages", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    results = []
    with TemporaryDirectory(prefix="telex-bench-pipeline-") as tmp:
        existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        broker = None if existing else DevBroker(Path(tmp) / "kafka", die_with_parent=True)
        bootstrap = existing or broker.start()  # type: ignore[union-attr]
        try:
            for i in range(args.runs):
                print(f"run {i + 1}/{args.runs}", flush=True)
                results.append(one_run(bootstrap, Path(tmp), broker.pid if broker else None,
                                       args))
        finally:
            if broker is not None:
                broker.stop()
    summarise(results)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "args": {k: str(v) for k, v in vars(args).items()}, "runs": results}, indent=1))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
