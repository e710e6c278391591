"""Client and broker knobs compared by cost per message: the ingest stage and a passthrough chain.

    python -m bench.clientknobs [--variants base,linger20,...] [--runs 3] [--messages 20000]
                                [--ingest-rate 0] [--chain-rate 1000] [--hops 4] [--json F]

Each variant is a set of producer knobs (the stages' and the feeding SDK producer's), consumer
knobs (the stages'), topic configs, broker ``server.properties`` entries and a partition count.
Variants that share broker properties share one broker (``pipeline.dev.broker``), started fresh
for them; runs alternate between variants so a noisy neighbour hurts them alike.

One run of a variant, for each of two workloads on fresh topics:
- ``ingest``: the ingest stage process (``bench.knobstage ingest``) fed unique valid requests;
- ``chain``: ``--hops`` passthrough stage processes in a row (``bench.knobstage hop``), each
  on the batch runtime, so a record crosses hops+1 produce→consume legs.
The processes start, a warm-up of 200 records goes through, then N records are fed at
``--*-rate`` msg/s (0 = as fast as the feeder can, a backlog drain) while a reader timestamps
each output as it arrives. Per run it reports:
- ``stage_cpu_us``: CPU µs per message of the stage processes (user+system, /proc), summed;
- ``broker_cpu_us``: CPU µs per message of the broker JVM over the same window;
- ``rec_per_produce``: records per Produce request over every producer (stages and feeder),
  from librdkafka statistics (the broker's JMX is not exposed);
- ``produce_req_per_msg``, ``fetch_req_per_msg`` (stage consumers; includes ~1 s of idle
  fetching either side of the window, as statistics arrive once a second);
- ``msg_per_s``: N / (last arrival - first send);
- ``p50_ms``/``p99_ms``: per-message send→arrival latency (end to end over all legs).
Judge by the CPU and request figures: on a shared 2-core box they are stable, wall clock is not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from hdrh.histogram import HdrHistogram

from bench.harness import REPO, proc_stats, worker_env
from bench.knobstage import StatsFile
from pipeline.codec import AvroCodec
from pipeline.dev.broker import DevBroker
from pipeline.sdk import OutboundMessage
from pipeline.settings import Settings, load_settings
from pipeline.topics import TopicSpec, admin_client, apply_topics, catalogue

WARMUP = 200
STATS_SETTLE_S = 1.3  # > the statistics interval: the files then hold post-window counts


@dataclass(frozen=True)
class Variant:
    producer: dict[str, Any] = field(default_factory=dict)
    consumer: dict[str, Any] = field(default_factory=dict)
    topic: dict[str, str] = field(default_factory=dict)
    broker: dict[str, str] = field(default_factory=dict)
    partitions: int = 6
    env: dict[str, str] = field(default_factory=dict)


# "base" is what the code does before this comparison: linger 5 ms, lz4 (topic codec
# "producer", the broker default), runtime consumer fetch.wait.max.ms 500 / fetch.min.bytes 1,
# librdkafka's batch.size, Kafka's default broker threads (3 network, 8 I/O), 6 partitions.
VARIANTS: dict[str, Variant] = {
    "base": Variant(),
    "linger0": Variant(producer={"linger.ms": 0}),
    "linger1": Variant(producer={"linger.ms": 1}),
    "linger2": Variant(producer={"linger.ms": 2}),
    "linger20": Variant(producer={"linger.ms": 20}),
    "linger50": Variant(producer={"linger.ms": 50}),
    "comp-none": Variant(producer={"compression.type": "none"}),
    "comp-zstd": Variant(producer={"compression.type": "zstd"}),
    "lz4-on-zstd-topic": Variant(topic={"compression.type": "zstd"}),
    "fetch-wait100": Variant(consumer={"fetch.wait.max.ms": 100}),
    "fetch-min16k-w10": Variant(consumer={"fetch.min.bytes": 16_384, "fetch.wait.max.ms": 10}),
    "fetch-min64k-w25": Variant(consumer={"fetch.min.bytes": 65_536, "fetch.wait.max.ms": 25}),
    "batch16k": Variant(producer={"batch.size": 16_384}),
    "batch256k": Variant(producer={"batch.size": 262_144}),
    "threads-1-2": Variant(broker={"num.network.threads": "1", "num.io.threads": "2"}),
    "threads-2-4": Variant(broker={"num.network.threads": "2", "num.io.threads": "4"}),
    "parts3": Variant(partitions=3),
    "parts12": Variant(partitions=12),
    "commit5s": Variant(env={"TELEX_COMMIT_INTERVAL_S": "5"}),
}


def _payloads(codec: AvroCodec, n: int, tag: str) -> list[tuple[str, bytes]]:
    """(message id, MessageRequested bytes) of unique valid requests, encoded before timing."""
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(n):
        req = OutboundMessage(account_id=f"acct-{i % 50}", channel="sms", sender="+14155550100",
                              recipient=f"+1415{200 + i // 10_000 % 800:03d}{i % 10_000:04d}",
                              body=f"Your code is {i:06d}", idempotency_key=f"{tag}-{i}"
                              ).to_request(now_ms)
        out.append((req["message_id"], codec.encode("message_requested", req)))
    return out


class _Reader:
    """Assigned to every partition of the output topic; timestamps each record by key."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = Consumer({**settings.kafka_config(), "group.id": "knobs-reader",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        parts = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self._consumer.consume(1, 0.5)
        self.topic = topic

    def collect(self, keys: set[str], timeout: float,
                on_first: Any = None) -> dict[str, float]:
        arrived: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(arrived) < len(keys) and time.monotonic() < deadline:
            for m in self._consumer.consume(1000, 0.05):
                if m.error() is None:
                    key = m.key().decode()
                    if key in keys and key not in arrived:
                        arrived[key] = time.time()
        if len(arrived) < len(keys):
            raise SystemExit(f"{self.topic}: {len(arrived)}/{len(keys)} records in {timeout}s")
        return arrived

    def close(self) -> None:
        self._consumer.close()


def _feed(producer: Producer, topic: str, payloads: list[tuple[str, bytes]], rate: float,
          sent: dict[str, float]) -> None:
    """Produce ``payloads`` at ``rate`` msg/s (open loop; 0 = at once), noting send times."""
    start = time.time()
    i, n = 0, len(payloads)
    while i < n:
        due = n if rate <= 0 else min(n, int((time.time() - start) * rate) + 1)
        while i < due:
            key, value = payloads[i]
            sent[key] = time.time()
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.005)
            i += 1
        producer.poll(0)
        if i < n:
            time.sleep(0.0005)
    producer.flush(60)


def _stats_totals(files: list[Path], feeder: StatsFile) -> dict[str, float]:
    produce = fetch = tx = rx = 0.0
    summaries = [*feeder.latest.values()]
    for f in files:
        summaries += json.loads(f.read_text()).values() if f.exists() else []
    for s in summaries:
        produce += s["req"].get("Produce", 0)
        fetch += s["req"].get("Fetch", 0) if s["type"] == "consumer" else 0
        tx += s["txmsgs"]
        rx += s["rxmsgs"]
    return {"produce": produce, "fetch": fetch, "tx": tx, "rx": rx}


def one_run(broker: DevBroker, tmp: Path, variant: Variant, workload: str, n: int,
            rate: float, hops: int) -> dict[str, float]:
    prefix = f"knobs{uuid.uuid4().hex[:8]}."
    settings = load_settings(kafka_bootstrap_servers=broker.bootstrap, topic_prefix=prefix,
                             partitions=variant.partitions, state_dir=str(tmp / prefix),
                             **{k: v for k, v in _field_env(variant.env).items()})
    admin = admin_client(settings)
    if workload == "ingest":
        specs = [replace(s, configs={**s.configs, **variant.topic}) for s in catalogue(settings)]
        in_short, out_short = "message-requested", "message-accepted"
        cmds = [[sys.executable, "-m", "bench.knobstage", "ingest"]]
    elif workload == "produce":  # the feeder and the reader alone: the broker's own cost
        specs = [TopicSpec(settings.topic("hop0"), "stream", variant.partitions, 1,
                           {"cleanup.policy": "delete", **variant.topic})]
        in_short = out_short = "hop0"
        cmds = []
    else:
        specs = [TopicSpec(settings.topic(f"hop{i}"), "stream", variant.partitions, 1,
                           {"cleanup.policy": "delete", **variant.topic})
                 for i in range(hops + 1)]
        in_short, out_short = "hop0", f"hop{hops}"
        cmds = [[sys.executable, "-m", "bench.knobstage", "hop", f"hop-{i}", f"hop{i}",
                 f"hop{i + 1}"] for i in range(hops)]
    apply_topics(admin, specs)
    codec = AvroCodec.from_settings(settings)
    warm, payloads = _payloads(codec, WARMUP, prefix + "w"), _payloads(codec, n, prefix)
    knobs = json.dumps({"producer": variant.producer, "consumer": variant.consumer})
    stats_files = [tmp / f"{prefix}stats-{i}.json" for i in range(len(cmds))]
    reader = _Reader(settings, settings.topic(out_short))
    feeder_stats = StatsFile(None)
    feeder = Producer({**settings.producer_config(), **variant.producer,
                       "statistics.interval.ms": 1000, "stats_cb": feeder_stats.on_stats})
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, env={
        **worker_env(settings), **variant.env, "TELEX_BENCH_KNOBS": knobs,
        "TELEX_BENCH_STATS": str(sf)}) for cmd, sf in zip(cmds, stats_files, strict=True)]
    try:
        sent: dict[str, float] = {}
        _feed(feeder, settings.topic(in_short), warm, 0, sent)
        reader.collect({k for k, _ in warm}, timeout=120)
        time.sleep(STATS_SETTLE_S)
        feeder.poll(0)
        before = _stats_totals(stats_files, feeder_stats)
        cpu0 = [proc_stats(p.pid)[0] for p in procs]
        bcpu0 = proc_stats(broker.pid)[0]  # type: ignore[arg-type]
        sent.clear()
        t0 = time.time()
        feeding = threading.Thread(target=_feed, args=(feeder, settings.topic(in_short),
                                                        payloads, rate, sent))
        feeding.start()
        arrived = reader.collect({k for k, _ in payloads}, timeout=600)
        t1 = time.time()
        cpu1 = [proc_stats(p.pid)[0] for p in procs]
        bcpu1 = proc_stats(broker.pid)[0]  # type: ignore[arg-type]
        feeding.join()
        time.sleep(STATS_SETTLE_S)
        feeder.poll(0)
        after = _stats_totals(stats_files, feeder_stats)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        reader.close()
    hist = HdrHistogram(1, 600_000_000, 3)  # µs
    for key, at in arrived.items():
        hist.record_value(max(1, int((at - sent[key]) * 1e6)))
    d = {k: after[k] - before[k] for k in after}
    return {
        "stage_cpu_us": (sum(cpu1) - sum(cpu0)) / n * 1e6,
        "broker_cpu_us": (bcpu1 - bcpu0) / n * 1e6,
        "rec_per_produce": d["tx"] / d["produce"] if d["produce"] else float("nan"),
        "produce_req_per_msg": d["produce"] / n,
        "fetch_req_per_msg": d["fetch"] / n,
        "msg_per_s": n / (t1 - t0),
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
    }


def _guarded_run(broker: DevBroker, tmp: Path, variant: Variant, workload: str,
                 args: argparse.Namespace, rate: float) -> dict[str, float]:
    """One run; if the broker died under it (a shared box), restart it and run again once."""
    for attempt in (1, 2):
        if not broker.is_running():
            print(f"broker not running: restarting (log {broker.log_path})", flush=True)
            broker.restart()
        try:
            return one_run(broker, tmp, variant, workload, args.messages, rate, args.hops)
        except SystemExit:
            if attempt == 2 or broker.is_running():
                raise
    raise AssertionError("unreachable")


def _field_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings overrides (field name → value) of a variant's TELEX_* environment."""
    by_alias = {f.validation_alias: name for name, f in Settings.model_fields.items()}
    return {by_alias[k]: v for k, v in env.items()}


def _line(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.4g} ({min(values):.3g}-{max(values):.3g})"


METRICS = ("stage_cpu_us", "broker_cpu_us", "rec_per_produce", "produce_req_per_msg",
           "fetch_req_per_msg", "msg_per_s", "p50_ms", "p99_ms")


def print_table(results: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    for workload in ("ingest", "chain", "produce"):
        rows = {v: w[workload] for v, w in results.items() if w.get(workload)}
        if not rows:
            continue
        print(f"\n{workload}: median (min-max) over runs")
        print(f"  {'variant':18}" + "".join(f"{m:>24}" for m in METRICS))
        for name, runs in rows.items():
            print(f"  {name:18}" + "".join(f"{_line([r[m] for r in runs]):>24}"
                                           for m in METRICS))


def fit(results: dict[str, dict[str, list[dict[str, float]]]], workload: str) -> None:
    """Broker CPU per message against requests per message, pooled over every run of every
    variant: the slope is the broker's cost of one request, whatever knob caused it. On a box
    whose load moves batch sizes run to run, this is steadier than any one variant's median."""
    runs = [r for w in results.values() for r in w.get(workload, [])]
    if len(runs) < 3:
        return
    if len({r["produce_req_per_msg"] for r in runs}) < 2:
        return
    for x_name in ("produce_req_per_msg", "requests_per_msg"):
        xs = [r["produce_req_per_msg"] + (r["fetch_req_per_msg"] if x_name != "produce_req_per_msg"
                                          else 0) for r in runs]
        ys = [r["broker_cpu_us"] for r in runs]
        slope, intercept = statistics.linear_regression(xs, ys)
        corr = statistics.correlation(xs, ys)
        print(f"{workload}: broker_cpu_us/msg = {intercept:.0f} + {slope:.0f} x {x_name} "
              f"(r={corr:.2f}, {len(runs)} runs)")
    xs = [r["produce_req_per_msg"] for r in runs]
    ys = [r["stage_cpu_us"] for r in runs]
    if len(set(ys)) < 2:  # the produce workload has no stage processes
        return
    slope, intercept = statistics.linear_regression(xs, ys)
    print(f"{workload}: stage_cpu_us/msg = {intercept:.0f} + {slope:.0f} x produce_req_per_msg "
          f"(r={statistics.correlation(xs, ys):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--ingest-rate", type=float, default=0,
                        help="msg/s fed to ingest; 0 = backlog drain (default)")
    parser.add_argument("--chain-rate", type=float, default=1000,
                        help="msg/s fed to the chain; 0 = backlog drain (default 1000)")
    parser.add_argument("--hops", type=int, default=4)
    parser.add_argument("--workloads", default="ingest,chain",
                        help="ingest, chain, produce (feeder and reader only: broker cost)")
    parser.add_argument("--produce-rate", type=float, default=0)
    parser.add_argument("--warmup-runs", type=int, default=1,
                        help="discarded runs on each fresh broker (JIT warm-up; default 1)")
    parser.add_argument("--workdir", type=Path, help="where brokers keep data (default /tmp)")
    parser.add_argument("--json", type=Path, help="also write every run to this file")
    parser.add_argument("--fit", type=Path,
                        help="only print the request-cost fit of a --json file of earlier runs")
    args = parser.parse_args()
    if args.fit:
        earlier = json.loads(args.fit.read_text())
        print_table(earlier)
        for w in ("ingest", "chain", "produce"):
            fit(earlier, w)
        return 0
    names = args.variants.split(",")
    workloads = args.workloads.split(",")
    rates = {"ingest": args.ingest_rate, "chain": args.chain_rate,
             "produce": args.produce_rate}
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        v: {w: [] for w in workloads} for v in names}
    groups: dict[str, list[str]] = {}
    for v in names:
        groups.setdefault(json.dumps(VARIANTS[v].broker, sort_keys=True), []).append(v)
    for broker_conf, members in groups.items():
        with TemporaryDirectory(prefix="telex-knobs-", dir=args.workdir) as tmpdir:
            tmp = Path(tmpdir)
            broker = DevBroker(tmp / "kafka", die_with_parent=True,
                               config=json.loads(broker_conf))
            broker.start()
            try:
                # A fresh JVM spends its first minute compiling: one discarded run per broker,
                # or the first variant measured on it pays for the JIT.
                for _ in range(args.warmup_runs):
                    for w in workloads:
                        _guarded_run(broker, tmp, VARIANTS[members[0]], w, args, rates[w])
                for run in range(args.runs):
                    for v in members:
                        for w in workloads:
                            r = _guarded_run(broker, tmp, VARIANTS[v], w, args, rates[w])
                            results[v][w].append(r)
                            print(f"run {run + 1} {v:20} {w:6} " + " ".join(
                                f"{k}={r[k]:.4g}" for k in METRICS), flush=True)
            finally:
                broker.stop()
    print(f"\n{args.messages} messages per run; ingest rate {args.ingest_rate or 'drain'}, "
          f"chain rate {args.chain_rate or 'drain'} msg/s over {args.hops} hops")
    print_table(results)
    for w in workloads:
        fit(results, w)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
