"""Whole-pipeline benchmark: maximum sustained rate, latency, CPU per message per process,
Kafka records per message, and a plain passthrough chain measured in the same run.

    python -m bench.pipeline [--runs 3] [--workers 1,2] [--stages-apart] [--step-seconds 10]
                             [--start-rate 300] [--growth 1.5] [--json bench-pipeline.json]

Each run, on one broker (a fresh local one unless KAFKA_BOOTSTRAP_SERVERS is set), once per
shape (``--workers 1,2``: one, then two whole-topology ``telex worker`` processes; plus
``--stages-apart``: one process per stage), each shape on topics of its own (see bench.rig):

1. **Load** (:mod:`bench.load`): 1,000 senders with Zipf-like shares over 10 accounts, 10 %
   multi-segment and 5 % UCS-2 SMS to an SMSC simulator, 10 % WhatsApp to the HTTP channel
   simulator whose status webhooks come back through the receiver stage. Rate limits far above
   the offered load (the benchmark measures the machinery, not the limiter). The generator is a
   process of its own, open loop, stamping each request's *intended* send time.
2. **Rate search.** A step is sustained when the carriers received at least 97 % of its
   messages within 2 s of the step's end and the consumer lag then is under one second of load.
   The rate grows by ``--growth`` until a step is not sustained.
3. **At half the maximum**: accept→carrier-submit (arrival at the simulator minus intended
   time) and accept→final status (``delivery-status-latest``) percentiles; CPU per message of
   every process (Telex's, the broker, the load generator and the simulators apart).
4. **Kafka records per message**: the end offsets of every topic with the shape's prefix
   (changelogs and journal included) summed, divided by the messages offered to it.
5. **Baseline**: the same 5 hops (message-requested → 5 topics) through plain confluent-kafka
   consume→produce processes (``bench.passthrough``); its drain rate of preloaded requests.

Medians and spreads over runs are printed; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from hdrh.histogram import HdrHistogram

from bench import load
from bench.harness import REPO, local_broker, proc_stats, worker_env, write_figures
from bench.rig import Rig, rig
from pipeline.codec import AvroCodec
from pipeline.procutil import die_with_parent
from pipeline.sdk import TelexProducer, message_id_for
from pipeline.settings import Settings, load_settings
from pipeline.topics import TopicSpec, admin_client, apply_topics

BASELINE_HOPS = 5  # message-requested → accepted → account → route → sender → dispatch-ready
FINAL = ("delivered", "read", "undelivered", "failed")


class Run:
    """One shape's rig plus what its carriers have received so far, by step tag."""

    def __init__(self, r: Rig) -> None:
        self.r = r
        self.arrived: dict[str, dict[int, int]] = {}  # tag → i → first arrival (ms)
        self.offered = 0

    def collect(self) -> None:
        for at, text in self.r.arrivals():
            parts = text.split(" ", 3)
            if len(parts) >= 3 and parts[0] == "b" and parts[2].isdigit():
                self.arrived.setdefault(parts[1], {}).setdefault(int(parts[2]), at)

    def count(self, tag: str) -> int:
        self.collect()
        return len(self.arrived.get(tag, {}))

    def offer(self, rate: float, seconds: float, tag: str) -> dict[str, float]:
        """Run the load generator process for one step; returns its report."""
        report = self.r.settings.state_dir + f"-{tag}.json"
        subprocess.run([sys.executable, "-m", "bench.load", "--rate", str(rate), "--seconds",
                        str(seconds), "--tag", tag, "--report", report], cwd=REPO,
                       env=worker_env(self.r.settings), check=True,
                       preexec_fn=die_with_parent())
        out: dict[str, float] = json.loads(Path(report).read_text())
        self.offered += int(out["sent"])
        return out

    def drain(self, tag: str, expected: int, timeout: float = 300) -> int:
        """Waits until ``expected`` messages of ``tag`` reached the carriers; returns how many
        never did within ``timeout`` (dead-lettered or lost: reported, never hidden)."""
        deadline = time.monotonic() + timeout
        while self.count(tag) < expected:
            self.r.alive()
            if time.monotonic() > deadline:
                print(f"  ! {tag}: {self.count(tag)}/{expected} reached the carriers in "
                      f"{timeout} s", flush=True)
                return expected - self.count(tag)
            time.sleep(0.5)  # pacing between reads of the simulators' logs
        return 0


def _lag(settings: Settings) -> int:
    """Records not yet consumed by ingest on message-requested and dispatch on dispatch-ready."""
    consumer = Consumer({**settings.kafka_config(), "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    try:
        total = 0
        for stage, topic in (("ingest", "message-requested"), ("dispatch", "dispatch-ready")):
            name = settings.topic(topic)
            parts = consumer.list_topics(name, timeout=10).topics[name].partitions
            group = Consumer({**settings.kafka_config(), "group.id": settings.topic(stage),
                              "enable.auto.commit": False})
            try:
                committed = group.committed([TopicPartition(name, p) for p in parts],
                                            timeout=10)
            finally:
                group.close()
            for tp in committed:
                end = consumer.get_watermark_offsets(TopicPartition(name, tp.partition),
                                                     timeout=10)[1]
                total += end - max(tp.offset, 0)
        return total
    finally:
        consumer.close()


def step(run: Run, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    sims0 = run.r.harness_cpu()
    report = run.offer(rate, seconds, tag)
    time.sleep(max(0.0, report["t0"] + seconds + 2 - time.time()))  # the verdict's 2 s grace
    run.r.alive()
    arrived = run.count(tag)
    backlog = _lag(run.r.settings)
    ok = arrived >= 0.97 * report["sent"] and backlog < rate
    per = 1e6 / max(1, report["sent"])
    harness = {k: (v - sims0[k]) * per for k, v in run.r.harness_cpu().items()}
    harness["load generator"] = report["cpu_s"] * per
    return {"rate": rate, "offered": report["sent"], "submitted_in_time": arrived,
            "backlog": backlog, "sustained": float(ok), "harness_cpu_us_per_msg": harness}


def _percentiles(values: list[int]) -> dict[str, float]:
    hist = HdrHistogram(1, 3_600_000, 3)
    for v in values:
        hist.record_value(max(1, v))
    return {f"p{p:g}_ms": float(hist.get_value_at_percentile(p)) for p in (50, 99, 99.9)}


def _finals(settings: Settings, wanted: dict[str, int], timeout: float = 120
            ) -> dict[str, int]:
    """message id → recorded time of its final status, read incrementally until all are in."""
    codec = AvroCodec.from_settings(settings)
    name = settings.topic("delivery-status-latest")
    consumer = Consumer({**settings.kafka_config(), "group.id": uuid.uuid4().hex,
                         "enable.auto.commit": False})
    out: dict[str, int] = {}
    try:
        parts = consumer.list_topics(name, timeout=10).topics[name].partitions
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in parts])
        deadline = time.monotonic() + timeout
        while len(out) < len(wanted) and time.monotonic() < deadline:
            for m in consumer.consume(5000, 0.5):
                if m.error() is None and m.value() is not None:
                    mid = m.key().decode()
                    if mid in wanted:
                        status = codec.decode(m.value())
                        if status["status"] in FINAL:
                            out[mid] = status["recorded_at_ms"]
    finally:
        consumer.close()
    return out


def latency(run: Run, rate: float, seconds: float, broker_pid: int | None) -> dict[str, Any]:
    """Latency and CPU per message at ``rate``; CPU counted until every final status is in."""
    tag = "lat"
    telex0, harness0 = run.r.telex_cpu(), run.r.harness_cpu()
    broker0 = proc_stats(broker_pid)[0] if broker_pid else 0.0
    report = run.offer(rate, seconds, tag)
    n = int(report["sent"])
    missing = run.drain(tag, n, timeout=120)
    due = {i: int((report["t0"] + i / rate) * 1000) for i in range(n)}
    submit = [at - due[i] for i, at in run.arrived[tag].items()]
    ids = {message_id_for(m.account_id, m.idempotency_key or ""): i
           for i, m in enumerate(load.messages(tag, n))}
    finals = _finals(run.r.settings, ids)
    telex1, harness1 = run.r.telex_cpu(), run.r.harness_cpu()
    per = 1e6 / n
    cpu = {k: (v - telex0.get(k, 0.0)) * per for k, v in telex1.items()}
    harness = {k: (v - harness0[k]) * per for k, v in harness1.items()}
    harness["load generator"] = report["cpu_s"] * per
    out: dict[str, Any] = {
        "rate": rate, "messages": n, "never_reached_carriers": missing,
        "accept_to_submit": _percentiles(submit),
        "accept_to_final": _percentiles([at - due[ids[mid]] for mid, at in finals.items()]),
        "finals": len(finals),
        "cpu_us_per_msg": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "telex_cpu_us_per_msg": sum(cpu.values()),
        "harness_cpu_us_per_msg": harness,
    }
    if broker_pid:
        out["broker_cpu_us_per_msg"] = (proc_stats(broker_pid)[0] - broker0) * per
    return out


def records_per_message(settings: Settings, messages: int) -> dict[str, Any]:
    """Sum of end offsets of every topic with the run's prefix, per offered message."""
    consumer = Consumer({**settings.kafka_config(), "group.id": uuid.uuid4().hex})
    try:
        by_topic: dict[str, int] = {}
        for name, meta in consumer.list_topics(timeout=10).topics.items():
            if name.startswith(settings.topic_prefix):
                by_topic[name.removeprefix(settings.topic_prefix)] = sum(
                    consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                    for p in meta.partitions)
    finally:
        consumer.close()
    nonzero = {k: v / messages for k, v in sorted(by_topic.items(), key=lambda kv: -kv[1]) if v}
    return {"total": sum(by_topic.values()) / messages, "by_topic": nonzero}


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
        producer.send_batch(list(load.messages("base", n)))
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
    return {"msg_per_s": rate, "cpu_us_per_msg_all_hops": cpu / n * 1e6}


def one_shape(bootstrap: str, tmp: Path, broker_pid: int | None, shape: str, workers: int,
              args: argparse.Namespace) -> dict[str, Any]:
    with rig(bootstrap, tmp, "stages-apart" if workers == 0 else "workers", workers) as r:
        run = Run(r)
        warm = run.offer(200, 3, "warm")
        run.drain("warm", int(warm["sent"]), timeout=180)
        steps, rate, best = [], args.start_rate, 0.0
        while rate <= args.max_rate:
            s = step(run, rate, args.step_seconds, f"s{len(steps)}")
            steps.append(s)
            print(f"  [{shape}] step {rate:7.0f} msg/s: {s['submitted_in_time']:.0f}/"
                  f"{s['offered']:.0f} at the carriers in time, backlog {s['backlog']:.0f} → "
                  f"{'sustained' if s['sustained'] else 'not sustained'}", flush=True)
            if not s["sustained"]:
                break
            best = rate
            rate = round(rate * args.growth)
        missing = sum(run.drain(f"s{i}", int(s["offered"]), timeout=120)
                      for i, s in enumerate(steps))
        lat = latency(run, max(50.0, best / 2), args.step_seconds, broker_pid)
        time.sleep(2 * r.settings.commit_interval_s)  # the last checkpoint's changelog records
        records = records_per_message(r.settings, run.offered)
    fastest = max(steps, key=lambda s: s["rate"] * s["sustained"])
    return {"shape": shape, "max_sustained_msg_per_s": best, "steps": steps,
            "never_reached_carriers": missing + lat["never_reached_carriers"],
            "harness_at_fastest_step": {"rate": fastest["rate"],
                                        **fastest["harness_cpu_us_per_msg"]},
            "at_half_max": lat, "kafka_records_per_msg": records}


def shapes(args: argparse.Namespace) -> list[tuple[str, int]]:
    out = [(f"{w} worker{'s' if w > 1 else ''}", w) for w in args.workers]
    return out + ([("stages-apart", 0)] if args.stages_apart else [])


def _spread(values: list[float], fmt: str = ".1f") -> str:
    return (f"{statistics.median(values):{fmt}} ({min(values):{fmt}}, {max(values):{fmt}})")


def summarise(results: list[dict[str, Any]]) -> None:
    print(f"\nwhole pipeline, {len(results)} runs: median (min, max)")
    base = [r["baseline"]["msg_per_s"] for r in results]
    print(f"  baseline chain ({BASELINE_HOPS} hops) msg/s: {_spread(base, '.0f')}; CPU µs/msg "
          f"all hops {_spread([r['baseline']['cpu_us_per_msg_all_hops'] for r in results])}")
    for name in results[0]["shapes"]:
        got = [r["shapes"][name] for r in results]
        half = [g["at_half_max"] for g in got]
        print(f"\n  {name}")
        rows = {
            "max sustained msg/s": ([g["max_sustained_msg_per_s"] for g in got], ".0f"),
            "ratio to baseline": ([g["max_sustained_msg_per_s"] / r["baseline"]["msg_per_s"]
                                   for g, r in zip(got, results, strict=True)], ".3f"),
            "never reached the carriers": ([g["never_reached_carriers"] for g in got], ".0f"),
            "Kafka records per message": ([g["kafka_records_per_msg"]["total"] for g in got],
                                          ".1f"),
            "Telex CPU µs/msg (all processes)": ([h["telex_cpu_us_per_msg"] for h in half],
                                                 ".0f"),
            "broker CPU µs/msg": ([h.get("broker_cpu_us_per_msg", 0.0) for h in half], ".0f"),
        }
        for p in ("p50_ms", "p99_ms", "p99.9_ms"):
            rows[f"accept→submit {p} @½max"] = ([h["accept_to_submit"][p] for h in half], ".0f")
        for p in ("p50_ms", "p99_ms"):
            rows[f"accept→final {p} @½max"] = ([h["accept_to_final"][p] for h in half], ".0f")
        for label, (values, fmt) in rows.items():
            print(f"    {label:34} {_spread(values, fmt)}")
        print("    CPU µs per message @½max, per process:")
        for proc in half[0]["cpu_us_per_msg"]:
            print(f"      {proc:26} {_spread([h['cpu_us_per_msg'].get(proc, 0) for h in half])}")
        print("    harness (not Telex) CPU µs per message @½max:")
        for proc in half[0]["harness_cpu_us_per_msg"]:
            print(f"      {proc:26} "
                  f"{_spread([h['harness_cpu_us_per_msg'][proc] for h in half])}")
        print("    harness CPU µs per message at the fastest sustained step (rate, µs/msg):")
        for proc in got[0]["harness_at_fastest_step"]:
            values = [g["harness_at_fastest_step"][proc] for g in got]
            print(f"      {proc:26} {_spread(values)}")
        share = [sum(v for k, v in g["harness_at_fastest_step"].items() if k != "rate")
                 * 10_000 / 1e6 / (os.cpu_count() or 1) for g in got]
        print(f"      {'share of the box @10k/s':26} {_spread(share, '.2f')}")
        top = sorted(got[0]["kafka_records_per_msg"]["by_topic"].items(),
                     key=lambda kv: -kv[1])[:12]
        print("    records per message by topic (run 1): "
              + ", ".join(f"{k} {v:.2f}" for k, v in top))
    names = list(results[0]["shapes"])
    if "1 worker" in names and "2 workers" in names:
        ratio = [r["shapes"]["2 workers"]["at_half_max"]["telex_cpu_us_per_msg"]
                 / r["shapes"]["1 worker"]["at_half_max"]["telex_cpu_us_per_msg"]
                 for r in results]
        print(f"\n  Telex CPU per message, 2 workers / 1 worker: {_spread(ratio, '.2f')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", default="1,2",
                        help="whole-topology worker counts to measure, e.g. 1 or 1,2 ('' none)")
    parser.add_argument("--stages-apart", action="store_true",
                        help="also measure one process per stage")
    parser.add_argument("--step-seconds", type=float, default=10)
    parser.add_argument("--start-rate", type=float, default=300)
    parser.add_argument("--max-rate", type=float, default=20_000)
    parser.add_argument("--growth", type=float, default=1.5)
    parser.add_argument("--baseline-messages", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",") if w]
    results = []
    with local_broker("telex-bench-pipeline-") as (bootstrap, tmp, broker_pid):
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", flush=True)
            got = {name: one_shape(bootstrap, tmp, broker_pid, name, workers, args)
                   for name, workers in shapes(args)}
            results.append({"shapes": got, "baseline": baseline(bootstrap,
                                                                args.baseline_messages)})
    summarise(results)
    write_figures(args, {"runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
