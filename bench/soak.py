"""Soak: the whole pipeline at a steady open-loop rate for a long time; does memory stay flat?

    python -m bench.soak --minutes 60 --rate 150 [--sample-s 5] [--warmup-min 10] [--json soak.json]

On one broker (a fresh local one unless KAFKA_BOOTSTRAP_SERVERS is set), the rig of
:mod:`bench.rig` (one whole-topology worker, or with ``--stages-apart`` a process per stage;
the SMSC and HTTP channel simulators) and the load of :mod:`bench.load`:

1. offer ``--rate`` messages a second for ``--minutes`` (open loop: message i is due at
   t0 + i/rate, whatever happened to earlier ones);
2. meanwhile sample every process's resident memory every ``--sample-s`` seconds: VmRSS, and
   from ``/proc/PID/smaps_rollup`` its anonymous part (heap, arenas, caches) apart from the
   file-backed one (mapped libraries); and from each Telex worker process the figures of its
   memory probe (:mod:`pipeline.memprobe`, switched on for the soak): RocksDB block-cache usage,
   memtables and table readers, malloc in use / free / arenas, pymalloc blocks;
3. then wait until every message has a final status on ``delivery-status-latest`` and report
   any that did not get one.

**Warm-up** is the first ``--warmup-min`` minutes of the offer (10, or a third of a shorter
offer): long enough for every bounded structure that fills with traffic to reach its bound at
150 msg/s — the RocksDB block cache and memtables (their budget, see
``pipeline/runtime/store.py``), the SMPP client's id map (120 s), librdkafka's buffers. Per
process it prints the RSS at the end of the warm-up and at the end of the offer, the change in
%, and the least-squares slope of RSS against messages offered after the warm-up (MiB per 100k
messages); then the probe's figures at the same two moments. A single sample lands anywhere
in a worker's one-minute ``malloc_trim`` cycle (up to ~15 MiB freed but not yet returned), so
the table also compares the **median** RSS of the first and the last 10 minutes after the warm-up
(each window spans ten trim cycles): that change is the one to judge. Flat memory means a
median change within ±5 % and a slope near zero. ``--json`` writes the figures and every
sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.harness import proc_stats, write_figures
from bench.load import encoded
from bench.pipeline import Run
from bench.rig import Rig, _label, _tree, rig
from pipeline.codec import AvroCodec
from pipeline.dev.broker import DevBroker
from pipeline.dev.history import FINAL

TAG = "soak"


def rss_kib(pid: int) -> int | None:
    """Current resident set size of ``pid`` in KiB (None once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def anon_kib(pid: int) -> int | None:
    """Anonymous resident memory of ``pid`` in KiB (smaps_rollup), None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def probe_figures(probe_dir: Path | None, pid: int) -> dict[str, float]:
    """The latest memory-probe figures of ``pid`` (:mod:`pipeline.memprobe`), flattened to
    MiB (counts as they are); empty for a process without a probe."""
    if probe_dir is None:
        return {}
    try:
        raw = json.loads((probe_dir / f"{pid}.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    mib = 1 << 20
    out: dict[str, float] = {}
    rocks = raw.get("rocksdb") or {}
    if rocks:
        out["cache"] = rocks["cache"]["usage"] / mib
        out["pinned"] = rocks["cache"]["pinned"] / mib
        roles = rocks["cache"].get("roles", {})
        out["c_data"] = roles.get("DataBlock", 0) / mib
        out["c_filter"] = roles.get("FilterBlock", 0) / mib
        out["c_index"] = roles.get("IndexBlock", 0) / mib
        out["c_wbuf"] = roles.get("WriteBuffer", 0) / mib
        out["memtab"] = sum(s["memtables"] for s in rocks["stores"].values()) / mib
        out["readers"] = sum(s["table_readers"] for s in rocks["stores"].values()) / mib
        out["dbs"] = sum(s["open"] for s in rocks["stores"].values())
    malloc = raw.get("malloc") or {}
    if malloc:
        out["malloc_used"] = malloc["in_use"] / mib
        out["malloc_free"] = malloc["free"] / mib
        out["arenas"] = malloc["arenas"]
    python = raw.get("python") or {}
    out["pyblocks_k"] = python.get("pymalloc_blocks", 0) / 1000
    if "gc_objects" in python:
        out["gc_objs_k"] = python["gc_objects"] / 1000
    out["threads"] = python.get("threads", 0)
    if raw.get("tracemalloc_growth"):
        out["tracemalloc"] = raw["tracemalloc_growth"]  # type: ignore[assignment]
    return out


@dataclass
class Samples:
    """RSS samples: (seconds since start, messages offered by then, KiB per process), and
    CPU seconds, anonymous KiB and memory-probe figures per process at each sample."""

    rate: float
    probe_dir: Path | None = None
    started: float = field(default_factory=time.monotonic)
    rows: list[tuple[float, float, dict[str, int]]] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    anon: list[dict[str, int]] = field(default_factory=list)
    probes: list[dict[str, dict[str, float]]] = field(default_factory=list)

    def take(self, pids: dict[str, int], offered_until: float) -> None:
        t = time.monotonic() - self.started
        rss = {name: kib for name, pid in pids.items() if (kib := rss_kib(pid)) is not None}
        cpu = {}
        for name, pid in pids.items():
            try:
                cpu[name] = proc_stats(pid)[0]
            except FileNotFoundError:
                continue
        self.rows.append((t, self.rate * min(t, offered_until), rss))
        self.cpu.append(cpu)
        self.anon.append({name: kib for name, pid in pids.items()
                          if (kib := anon_kib(pid)) is not None})
        self.probes.append({name: figures for name, pid in pids.items()
                            if (figures := probe_figures(self.probe_dir, pid))})


def sample_until(samples: Samples, pids: dict[str, int], stop: threading.Event,
                 every_s: float, offered_until: float, print_every_s: float = 60) -> None:
    printed = 0.0
    while not stop.wait(every_s):  # the sampling period itself, not a readiness wait
        samples.take(pids, offered_until)
        if samples.rows[-1][0] - printed >= print_every_s:
            printed = samples.rows[-1][0]
            print_progress(samples)


def print_progress(samples: Samples) -> None:
    """One line: minutes in, then RSS (MiB) of each Telex process and its block cache."""
    t, _, rss = samples.rows[-1]
    probes = samples.probes[-1]
    parts = []
    for name, kib in rss.items():
        if name in probes:
            p = probes[name]
            cache = f" cache {p['cache']:.1f}" if "cache" in p else ""
            parts.append(f"{name.split(' ')[0]} {kib / 1024:.1f}{cache}")
    print(f"  [{t / 60:5.1f} min] " + "; ".join(parts), flush=True)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y against x (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


#: the windows whose median RSS the table compares (first and last after the warm-up).
MEDIAN_WINDOW_S = 600.0


def summarise(samples: Samples, warmup_s: float, offered_until: float) -> dict[str, Any]:
    """Per process: RSS (MiB) at warm-up end and offer end, change in %, MB per 100k msgs."""
    rows = [r for r in samples.rows if r[0] <= offered_until + 1e-9]
    after = [r for r in rows if r[0] >= warmup_s]
    out: dict[str, Any] = {}
    if not after:
        return out
    first, last = after[0], after[-1]
    cpu_first, cpu_last = samples.cpu[rows.index(first)], samples.cpu[len(rows) - 1]
    messages = (last[1] - first[1]) / 1000 or 1.0
    for name in first[2]:
        warm = first[2][name] / 1024
        end = last[2].get(name, 0) / 1024
        pts = [(msgs / 100_000, rss[name] / 1024) for _, msgs, rss in after if name in rss]
        window = min(MEDIAN_WINDOW_S, (last[0] - first[0]) / 3)
        early = [rss[name] / 1024 for t, _, rss in after
                 if name in rss and t < first[0] + window]
        late = [rss[name] / 1024 for t, _, rss in after
                if name in rss and t > last[0] - window]
        warm_med, end_med = statistics.median(early), statistics.median(late)
        out[name] = {"rss_warm_mib": round(warm, 1), "rss_end_mib": round(end, 1),
                     "rss_warm_median_mib": round(warm_med, 1),
                     "rss_end_median_mib": round(end_med, 1),
                     "change_median_pct": round((end_med - warm_med) / warm_med * 100, 1)
                     if warm_med else 0.0,
                     "change_pct": round((end - warm) / warm * 100, 1) if warm else 0.0,
                     "slope_mib_per_100k_msgs": round(slope(pts), 2),
                     "peak_mib": round(max(rss.get(name, 0) for _, _, rss in rows) / 1024, 1),
                     "cpu_s_per_1000_msgs": round(
                         (cpu_last.get(name, 0.0) - cpu_first.get(name, 0.0)) / messages, 3)}
        i_first, i_last = rows.index(first), len(rows) - 1
        anon = [samples.anon[i].get(name) for i in (i_first, i_last)]
        if None not in anon:
            out[name]["anon_warm_mib"] = round(anon[0] / 1024, 1)  # type: ignore[operator]
            out[name]["anon_end_mib"] = round(anon[1] / 1024, 1)  # type: ignore[operator]
        probes = [samples.probes[i].get(name) for i in (i_first, i_last)]
        if probes[0] and probes[1]:
            out[name]["probe_warm"] = {k: v for k, v in probes[0].items() if k != "tracemalloc"}
            out[name]["probe_end"] = probes[1]
    return out


def wait_final(r: Rig, ids: set[str], timeout_s: float) -> dict[str, str]:
    """Latest status per offered message id, read from ``delivery-status-latest`` until each
    is final or ``timeout_s`` passes."""
    codec = AvroCodec.from_settings(r.settings)
    topic = r.settings.topic("delivery-status-latest")
    consumer = Consumer({**r.settings.kafka_config(), "group.id": "soak-" + uuid.uuid4().hex,
                         "enable.auto.commit": False})
    latest: dict[str, str] = {}
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        pending = set(ids)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            r.alive()
            for msg in consumer.consume(5_000, 1.0):
                if msg.error() is not None or msg.value() is None:
                    continue
                mid = msg.key().decode()
                if mid in ids:
                    status = codec.decode(msg.value())["status"]
                    latest[mid] = status
                    if status in FINAL:
                        pending.discard(mid)
    finally:
        consumer.close()
    return latest


def processes(r: Rig, broker_pid: int | None) -> dict[str, int]:
    """Every process to sample, by label: each Telex process (a whole-topology worker's
    children too), the simulators and the broker."""
    out: dict[str, int] = dict(r.harness)
    for root_label, root in r.telex.items():
        for pid in _tree(root):
            label = _label(pid) or root_label
            out[label if label not in out else f"{label} {pid}"] = pid
    if broker_pid is not None:
        out["broker (JVM)"] = broker_pid
    return out


def warmup_seconds(args: argparse.Namespace) -> float:
    """The warm-up (see the module docstring): ``--warmup-min``, by default 10 minutes or a
    third of a shorter offer."""
    if args.warmup_min is not None:
        return float(args.warmup_min) * 60
    return min(600.0, args.minutes * 60 / 3)


def soak(bootstrap: str, tmp: Path, broker_pid: int | None, args: argparse.Namespace
         ) -> dict[str, Any]:
    seconds = args.minutes * 60
    shape = "stages-apart" if args.stages_apart else "workers"
    probe_dir = tmp / "memprobe"
    os.environ["TELEX_MEMORY_PROBE_DIR"] = str(probe_dir)  # the workers inherit it
    os.environ.setdefault("TELEX_MEMORY_PROBE_S", str(min(args.sample_s, 10)))
    with rig(bootstrap, tmp, shape, 0 if args.stages_apart else 1) as r:
        pids = processes(r, broker_pid)
        print("processes: " + ", ".join(f"{name} {pid}" for name, pid in pids.items()),
              flush=True)
        samples = Samples(args.rate, probe_dir)
        stop = threading.Event()
        sampler = threading.Thread(target=sample_until, daemon=True,
                                   args=(samples, pids, stop, args.sample_s, seconds))
        samples.take(pids, seconds)
        sampler.start()
        report = Run(r).offer(args.rate, seconds, TAG)
        sent = [key for key, _ in encoded(r.settings, TAG, int(args.rate * seconds))]
        sent = sent[:int(report["sent"])]
        offered_s = time.monotonic() - samples.started
        samples.take(pids, seconds)
        print(f"offered {len(sent)} messages in {offered_s:.0f} s; waiting for final "
              "statuses", flush=True)
        latest = wait_final(r, set(sent), args.drain_timeout)
        stop.set()
        sampler.join()
        r.alive()
    not_final = {mid: latest.get(mid, "none") for mid in sent
                 if latest.get(mid) not in FINAL}
    by_status: dict[str, int] = {}
    for status in latest.values():
        by_status[status] = by_status.get(status, 0) + 1
    return {"offered": len(sent), "offer_seconds": round(offered_s, 1),
            "final_by_status": by_status, "not_final": len(not_final),
            "not_final_examples": dict(list(not_final.items())[:20]),
            "warmup_s": warmup_seconds(args),
            "processes": summarise(samples, warmup_seconds(args), offered_s),
            "samples": [{"t_s": round(t, 1), "messages": round(m), "rss_kib": rss,
                         "anon_kib": anon, "probe": {
                             name: {k: v for k, v in p.items() if k != "tracemalloc"}
                             for name, p in probe.items()}}
                        for (t, m, rss), anon, probe in zip(
                            samples.rows, samples.anon, samples.probes, strict=True)]}


def print_table(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nsoak {args.minutes:g} min at {args.rate:g} msg/s: {result['offered']} offered; "
          f"final statuses {result['final_by_status']}; not final: {result['not_final']}")
    print(f"  warm-up: the first {result['warmup_s'] / 60:g} min; 'warm' is the first sample "
          "after it, 'end' the last of the offer")
    if result["not_final"]:
        print(f"  not final, e.g.: {result['not_final_examples']}")
    print(f"  {'process':18} {'RSS warm MiB':>12} {'RSS end MiB':>12} {'change':>8} "
          f"{'median 10-min windows':>24} {'MiB/100k msgs':>14} {'peak MiB':>9} "
          f"{'CPU s/1k':>9}")
    for name, p in result["processes"].items():
        medians = (f"{p['rss_warm_median_mib']:.1f} → {p['rss_end_median_mib']:.1f} "
                   f"({p['change_median_pct']:+.1f}%)")
        print(f"  {name:18} {p['rss_warm_mib']:12.1f} {p['rss_end_mib']:12.1f} "
              f"{p['change_pct']:7.1f}% {medians:>24} {p['slope_mib_per_100k_msgs']:14.2f} "
              f"{p['peak_mib']:9.1f} {p['cpu_s_per_1000_msgs']:9.3f}")
    print("\n  memory at warm → end (MiB unless a count): anonymous RSS; RocksDB block cache "
          "(memtables charged to it) and its data, filter, index and write-buffer parts, "
          "memtables, table readers, open DBs; malloc in use, free, arenas; pymalloc blocks (k); "
          "gc objects (k); threads")
    for name, p in result["processes"].items():
        parts = []
        if "anon_warm_mib" in p:
            parts.append(f"anon {p['anon_warm_mib']:.1f}→{p['anon_end_mib']:.1f}")
        warm, end = p.get("probe_warm"), p.get("probe_end")
        if warm and end:
            for key in ("cache", "c_data", "c_filter", "c_index", "c_wbuf", "memtab", "readers",
                        "dbs", "malloc_used", "malloc_free", "arenas", "pyblocks_k", "gc_objs_k",
                        "threads"):
                if key in warm and key in end:
                    parts.append(f"{key} {warm[key]:.1f}→{end[key]:.1f}")
        if parts:
            print(f"  {name:18} " + "; ".join(parts))
        for row in (end or {}).get("tracemalloc", [])[:10]:  # type: ignore[union-attr]
            print(f"      +{row['size_diff'] / 1024:8.0f} KiB {row['count_diff']:+8d} "
                  f"{row['where']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=150)
    parser.add_argument("--sample-s", type=float, default=5)
    parser.add_argument("--warmup-min", type=float, default=None,
                        help="minutes of the offer before memory is judged (default 10, or a "
                        "third of a shorter offer)")
    parser.add_argument("--drain-timeout", type=float, default=600,
                        help="seconds to wait for final statuses after the offer")
    parser.add_argument("--stages-apart", action="store_true",
                        help="one process per stage (default: one whole-topology worker)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    with TemporaryDirectory(prefix="telex-bench-soak-") as tmp:
        existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        broker = None if existing else DevBroker(Path(tmp) / "kafka", die_with_parent=True)
        bootstrap = existing or broker.start()  # type: ignore[union-attr]
        try:
            result = soak(bootstrap, Path(tmp), broker.pid if broker else None, args)
        finally:
            if broker is not None:
                broker.stop()
    print_table(result, args)
    write_figures(args, result)
    return 0 if result["not_final"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
