"""Status callbacks benchmark: drained-backlog throughput, and one endpoint's latency while
others hang or fail (issue 14).

    python -m bench.callbacks [--runs 3] [--parts throughput,isolation] [--callbacks 30000]
                              [--events-per-message 3] [--host-concurrency 256]
                              [--account-concurrency 1024] [--host-rate 100000]
                              [--rate 200] [--seconds 30] [--window-s 600]
                              [--side-by-side]
                              [--json PATH]

Why: the callbacks stage is where customers' endpoints meet the pipeline. What it costs per
callback, and whether one bad endpoint delays the others, are its two questions; a unit test
can answer neither. Each run, on one broker (a fresh local one unless KAFKA_BOOTSTRAP_SERVERS is
set), every part on topics of its own with a fresh ``telex worker callbacks --no-supervise``
process, and the customer endpoints in one process of their own
(:mod:`bench.callback_endpoints`: raw asyncio HTTP/1.1, 1 signature in 100 verified with the
reference ``standardwebhooks`` library):

1. **Throughput.** ``--callbacks`` DeliveryStatus records (``--events-per-message`` per
   message, sequences 1, 2, …, as the status stage writes them) preloaded into
   ``delivery-status``, headed ``telex.callback.url`` → one healthy endpoint (204 at once). The
   worker (caps raised to ``--host-concurrency``/``--account-concurrency`` and the host rate to
   ``--host-rate``, so they do not throttle) drains them. Rate = distinct callbacks between
   the first and the last arrival / that interval (start-up excluded); CPU µs per callback
   of the worker, the endpoint process and the broker, from /proc, between the first arrival
   the driver sees and the last.
   **Baseline** in the same run, to the same endpoint process: as many callbacks POSTed from
   the driver the way an attempt does (the stage's body, signing and ``CallbackSender``, at
   most ``--host-concurrency`` at once): the HTTP side alone, without Kafka, the store and the
   runner; its CPU from ``time.process_time``.
2. **Isolation.** An open-loop offer of ``--rate`` events/s (one event per message) for
   ``--seconds`` to the healthy endpoint (127.0.0.1): (a) alone, (b) while a hanging endpoint
   (127.0.0.2: reads, never answers) and a failing one (127.0.0.3: 500) each get the same
   rate, each endpoint its own account. The worker runs the production defaults (caps,
   breaker, 10 s attempt timeout). Latency = arrival at the endpoint minus the event's intended
   produce time (a stalled driver cannot hide latency); p50/p99/max from HdrHistogram, and p99
   per ``--window-s`` of the offer. Also the worker's CPU (% of one core) from the offer's
   start to the last healthy arrival, its RSS at the start and the end, and how many requests
   the hanging and failing endpoints saw. ``--side-by-side`` runs (a) and (b) at the same
   time, each with its own worker and endpoints, so that over a long run (the issue's hour:
   ``--seconds 3600``) the box's noise falls on both alike.

Medians and spreads over runs are printed; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from hdrh.histogram import HdrHistogram

from bench.harness import REPO, local_broker, proc_stats, worker_env, write_figures
from bench.rig import SubmitLog
from pipeline.codec import AvroCodec
from pipeline.headers import H_CALLBACK_URL
from pipeline.procutil import die_with_parent
from pipeline.producing import produce_waiting
from pipeline.settings import Settings, load_settings
from pipeline.stages.callbacks.body import callback_body
from pipeline.stages.callbacks.sender import (
    CallbackSender,
    DeliveryError,
    SystemResolver,
    resolve_target,
)
from pipeline.stages.callbacks.signing import (
    SecretBook,
    generate_secret,
    signed_headers,
    webhook_id,
)
from pipeline.topics import admin_client, apply_topics, catalogue
from tests.fixtures.samples import sample
from tests.fixtures.telex import produce

STATUSES = ("accepted", "sent", "delivered", "read")  # events of one message, in order
ADDRESSES = {"ok": "127.0.0.1", "hang": "127.0.0.2", "fail": "127.0.0.3"}
TICK_S = 0.005  # the offer's pacing: events due are produced every 5 ms
POLL_S = 0.02  # pacing between reads of the endpoints' logs

CODEC = AvroCodec()


@dataclass
class Endpoints:
    """The endpoint process: its pid, each behaviour's callback URL and arrival log."""

    proc: subprocess.Popen[bytes]
    urls: dict[str, str]
    logs: dict[str, SubmitLog]


@contextmanager
def endpoints(run: Path, settings: Settings, behaviours: list[str]) -> Iterator[Endpoints]:
    cmd = [sys.executable, "-m", "bench.callback_endpoints", "--log-dir", str(run),
           "--secrets-file", str(settings.callback_secrets_file)]
    for b in behaviours:
        cmd += ["--endpoint", f"{b}@{ADDRESSES[b]}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, preexec_fn=die_with_parent())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("listening "):
            raise SystemExit("the callback endpoints did not start")
        where = dict(part.split("=", 1) for part in line.split()[1:])
        yield Endpoints(proc, {b: f"http://{where[b]}/cb" for b in behaviours},
                        {b: SubmitLog(run / f"{b}.log") for b in behaviours})
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """``telex worker callbacks``, unsupervised: the measured pid does the work."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "worker", "callbacks",
                             "--no-supervise"], cwd=REPO, env=worker_env(settings),
                            preexec_fn=die_with_parent())
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        raise SystemExit(f"a benchmark process exited with {proc.returncode}: {proc.args!r}")


def _settings(bootstrap: str, run: Path, **callbacks: Any) -> Settings:
    """Fresh topics (own prefix) and a ``*`` signing secret; HTTP to 127/8 allowed."""
    secrets = run / "callback-secrets.json"
    secrets.write_text(json.dumps({"*": [generate_secret()]}))
    settings = load_settings(
        kafka_bootstrap_servers=bootstrap, topic_prefix=f"cb{run.name}.",
        state_dir=str(run / "state"), callback_secrets_file=str(secrets),
        callback_allow_http=True, callback_allow_networks="127.0.0.0/8", **callbacks)
    apply_topics(admin_client(settings), catalogue(settings))
    return settings


def event(mid: str, seq: int, account: str, at_ms: int) -> bytes:
    """Event ``seq`` (1-based) of message ``mid``, as the status stage writes it."""
    status = STATUSES[seq - 1]
    return CODEC.encode("delivery_status", sample(
        "delivery_status", message_id=mid, account_id=account, status=status,
        effective_status=status, sequence=seq, event_time_ms=at_ms, recorded_at_ms=at_ms,
        source="receipt" if seq > 2 else "dispatch"))


def _arrivals(log: SubmitLog, into: dict[str, int]) -> tuple[int, int]:
    """First arrival (µs) of each webhook-id into ``into``; (repeats, failed signatures)."""
    repeats = failed = 0
    for at, text in log.new_lines():
        wid, _, check = text.partition(" ")
        failed += check == "X"
        if wid in into:
            repeats += 1
        else:
            into[wid] = at
    return repeats, failed


def _verified(path: Path, prefix: bytes) -> int:
    """Requests whose webhook-id starts with ``prefix`` and whose signature was verified."""
    return sum(line.endswith(b" v") and line.split(b" ", 2)[1].startswith(prefix)
               for line in path.read_bytes().splitlines())


async def _sender_alone(settings: Settings, url: str, n: int, concurrency: int) -> int:
    """``n`` callbacks POSTed the way the stage's attempts do (body, signature, the stage's
    sender and its connection pool), at most ``concurrency`` at once; returns the failures."""
    secrets = SecretBook.from_file(str(settings.callback_secrets_file)).for_account("acct-1")
    target = await resolve_target(url, resolver=SystemResolver(), allow_http=True,
                                  allowed=settings.callback_networks())
    now_ms = int(time.time() * 1000)
    events = [CODEC.decode(event(f"b{i:07d}", 1, "acct-1", now_ms)) for i in range(n)]
    gate = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(e: dict[str, Any]) -> None:
        nonlocal failed
        async with gate:
            body = callback_body(e)
            headers = signed_headers(secrets, webhook_id(e["message_id"], 1), int(time.time()),
                                     body)
            headers["content-type"] = "application/json"
            try:
                answer = await sender.post(target, body, headers, settings.callback_timeout_s)
                failed += answer.status != 204
            except DeliveryError:
                failed += 1

    async with CallbackSender(connections_per_origin=concurrency) as sender:
        await asyncio.gather(*(one(e) for e in events))
    return failed


def sender_baseline(settings: Settings, ep: Endpoints, n: int, concurrency: int
                    ) -> dict[str, float]:
    """The HTTP side alone, from this process: what the stage would reach without Kafka, its
    store and its runner (CPU from ``time.process_time``: this process is otherwise idle)."""
    cpu0, ep0, wall0 = time.process_time(), proc_stats(ep.proc.pid)[0], time.perf_counter()
    failed = asyncio.run(_sender_alone(settings, ep.urls["ok"], n, concurrency))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"baseline_callbacks_per_s": n / wall, "baseline_cpu_us_per_callback": cpu / n * 1e6,
            "baseline_endpoint_cpu_us_per_callback": (proc_stats(ep.proc.pid)[0] - ep0) / n * 1e6,
            "baseline_failures": float(failed)}


def throughput(bootstrap: str, run: Path, broker_pid: int | None,
               args: argparse.Namespace) -> dict[str, float]:
    """Part 1: a preloaded backlog drained to one healthy endpoint."""
    per = args.events_per_message
    messages = args.callbacks // per
    total = messages * per
    settings = _settings(bootstrap, run, callback_host_concurrency=args.host_concurrency,
                         callback_account_concurrency=args.account_concurrency,
                         callback_host_rate=args.host_rate)
    now_ms = int(time.time() * 1000)
    with endpoints(run, settings, ["ok"]) as ep:
        records = [(f"m{m:07d}", event(f"m{m:07d}", s, "acct-1", now_ms))
                   for m in range(messages) for s in range(1, per + 1)]
        produce(settings, "delivery-status", records,
                headers=[(H_CALLBACK_URL, ep.urls["ok"].encode())])
        seen: dict[str, int] = {}
        repeats = failed = 0
        cpu0: dict[str, float] = {}
        counted0 = 0
        with worker(settings) as proc:
            pids = {"worker": proc.pid, "endpoint": ep.proc.pid}
            if broker_pid:
                pids["broker"] = broker_pid
            deadline = time.monotonic() + 600
            while len(seen) < total:
                _alive(proc)
                _alive(ep.proc)
                if time.monotonic() > deadline:
                    raise SystemExit(f"{len(seen)}/{total} callbacks arrived in 600 s")
                time.sleep(POLL_S)
                r, f = _arrivals(ep.logs["ok"], seen)
                repeats, failed = repeats + r, failed + f
                if seen and not cpu0:
                    cpu0 = {k: proc_stats(p)[0] for k, p in pids.items()}
                    counted0 = len(seen)
            cpu1 = {k: proc_stats(p)[0] for k, p in pids.items()}
        baseline = sender_baseline(settings, ep, total, args.host_concurrency)
    if failed:
        raise SystemExit(f"{failed} callbacks failed signature verification")
    times = sorted(seen.values())
    out = {"callbacks_per_s": (total - 1) / ((times[-1] - times[0]) / 1e6)}
    drained = max(1, total - counted0)
    for k in cpu1:
        out[f"{k}_cpu_us_per_callback"] = (cpu1[k] - cpu0[k]) / drained * 1e6
    out["repeated_deliveries"] = float(repeats)
    out["signatures_verified"] = float(_verified(ep.logs["ok"].path, b"msg_m"))
    out.update(baseline)
    out["ratio_to_baseline"] = out["callbacks_per_s"] / baseline["baseline_callbacks_per_s"]
    return out


def _rss_mib(pid: int) -> float:
    """Resident memory of a live process now (VmRSS), MiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def isolation(bootstrap: str, run: Path, faulty: bool, args: argparse.Namespace
              ) -> dict[str, float]:
    """Part 2: the healthy endpoint's latency under an open-loop offer, (b) with bad ones.

    The offer is produced as it falls due (nothing precomputed: an hour at 200/s per endpoint
    is 2 million events), and arrivals go straight into histograms: one for the whole offer and
    one per ``--window-s`` of intended produce time, so an hour shows whether latency drifts
    as the bad endpoints' backlog grows."""
    behaviours = ["ok", "hang", "fail"] if faulty else ["ok"]
    settings = _settings(bootstrap, run)  # production caps, breaker and timeout
    n = int(args.rate * args.seconds)
    windows = max(1, int(args.seconds // args.window_s))
    with endpoints(run, settings, behaviours) as ep, worker(settings) as proc:
        # Warm-up: the worker has joined its group, restored and connected once it arrives.
        warm = event("okwarmup", 1, "acct-ok", int(time.time() * 1000))
        produce(settings, "delivery-status", [("okwarmup", warm)],
                headers=[(H_CALLBACK_URL, ep.urls["ok"].encode())])
        deadline = time.monotonic() + 120
        while not any(wid == "msg_okwarmup_1" for _, wid in _ids(ep.logs["ok"])):
            _alive(proc)
            if time.monotonic() > deadline:
                raise SystemExit("the warm-up callback did not arrive in 120 s")
            time.sleep(POLL_S)
        t0 = time.time() + 1.0
        hist = HdrHistogram(1, 3_600_000_000, 3)  # µs
        per_window = [HdrHistogram(1, 3_600_000_000, 3) for _ in range(windows)]
        arrived = bytearray(n)
        counts = {"repeats": 0, "failed": 0}

        def collect() -> None:
            for at, text in ep.logs["ok"].new_lines():
                wid, _, check = text.partition(" ")
                counts["failed"] += check == "X"
                if not wid.startswith("msg_ok") or wid == "msg_okwarmup_1":
                    continue
                i = int(wid[6:].split("_")[0])
                if arrived[i]:
                    counts["repeats"] += 1
                    continue
                arrived[i] = 1
                late = max(1, at - int((t0 + i / args.rate) * 1e6))
                hist.record_value(late)
                per_window[min(windows - 1, int(i / args.rate // args.window_s))].record_value(
                    late)

        headers = {b: [(H_CALLBACK_URL, ep.urls[b].encode())] for b in behaviours}
        producer = Producer(settings.producer_config())
        topic = settings.topic("delivery-status")
        time.sleep(max(0.0, t0 - time.time()))
        cpu0, wall0 = proc_stats(proc.pid)[0], time.monotonic()
        rss = [_rss_mib(proc.pid)]
        next_sample = wall0 + args.window_s
        i = 0
        while i < n:
            now = time.time()
            while i < n and t0 + i / args.rate <= now:
                at_ms = int((t0 + i / args.rate) * 1000)
                for b in behaviours:
                    mid = f"{b}{i:07d}"
                    produce_waiting(producer, topic, key=mid, headers=headers[b],
                                    value=event(mid, 1, f"acct-{b}", at_ms))
                i += 1
            producer.poll(0)
            collect()
            if time.monotonic() >= next_sample:
                _alive(proc)
                rss.append(_rss_mib(proc.pid))
                next_sample += args.window_s
            time.sleep(TICK_S)
        if producer.flush(30):
            raise SystemExit("offered events left unacknowledged")
        deadline = time.monotonic() + 120
        while sum(arrived) < n and time.monotonic() < deadline:
            _alive(proc)
            collect()
            time.sleep(POLL_S)
        cpu1, wall1 = proc_stats(proc.pid)[0], time.monotonic()
        rss.append(_rss_mib(proc.pid))
        time.sleep(0.1)  # the endpoints' logs are flushed every 20 ms
        collect()
        others = {b: sum(1 for _ in ep.logs[b].new_lines()) for b in behaviours if b != "ok"}
    if counts["failed"]:
        raise SystemExit(f"{counts['failed']} callbacks failed signature verification")
    out = {f"healthy_{p}_ms": hist.get_value_at_percentile(q) / 1000
           for p, q in (("p50", 50), ("p99", 99))}
    out["healthy_max_ms"] = hist.get_max_value() / 1000
    out["healthy_missing"] = float(n - sum(arrived))
    out["healthy_repeats"] = float(counts["repeats"])
    out["worker_cpu_pct"] = (cpu1 - cpu0) / (wall1 - wall0) * 100
    out["worker_rss_first_mib"], out["worker_rss_last_mib"] = rss[0], rss[-1]
    for b, count in others.items():
        out[f"{b}_endpoint_requests"] = float(count)
    if windows > 1:
        for w, h in enumerate(per_window):
            out[f"healthy_p99_ms_window{w + 1}"] = h.get_value_at_percentile(99) / 1000
    return out


def _ids(log: SubmitLog) -> Iterator[tuple[int, str]]:
    """(arrival µs, webhook-id) of each request logged since the last read."""
    for at, text in log.new_lines():
        yield at, text.partition(" ")[0]


def one_run(bootstrap: str, tmp: Path, broker_pid: int | None, args: argparse.Namespace
            ) -> dict[str, Any]:
    def part() -> Path:
        run = tmp / uuid.uuid4().hex[:8]
        run.mkdir()
        return run

    out: dict[str, Any] = {}
    if "throughput" in args.parts:
        out["throughput"] = throughput(bootstrap, part(), broker_pid, args)
    if "isolation" in args.parts:
        if args.side_by_side:
            # Both at once on one broker: the box's noise (tests, the broker's own work) falls
            # on both alike, which matters over an hour.
            alone_dir, faulty_dir = part(), part()
            with ThreadPoolExecutor(2) as pool:
                alone = pool.submit(isolation, bootstrap, alone_dir, False, args)
                faulty = pool.submit(isolation, bootstrap, faulty_dir, True, args)
                out["isolation"] = {"alone": alone.result(), "faulty": faulty.result()}
        else:
            out["isolation"] = {"alone": isolation(bootstrap, part(), False, args),
                                "faulty": isolation(bootstrap, part(), True, args)}
    return out


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}, {max(values):{fmt}})"


def summarise(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nstatus callbacks, {len(results)} runs: median (min, max)")
    if "throughput" in results[0]:
        _print_throughput(results, args)
    if "isolation" in results[0]:
        _print_isolation(results, args)


def _print_throughput(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    per = args.events_per_message
    print(f"  throughput: {args.callbacks // per * per:,} callbacks ({args.callbacks // per:,} "
          f"messages x {per}) preloaded, one worker, one endpoint, caps "
          f"{args.host_concurrency}/host {args.account_concurrency}/account, "
          f"{args.host_rate:,.0f}/s per host")
    got = [r["throughput"] for r in results]
    for metric in got[0]:
        fmt = ",.0f" if metric.endswith("callbacks_per_s") else ".1f"
        fmt = ".3f" if metric.startswith("ratio") else fmt
        print(f"    {metric:38} {_spread([g[metric] for g in got], fmt)}")


def _print_isolation(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"  isolation: {args.rate:g} events/s per endpoint for {args.seconds:g} s, "
          f"production defaults")
    print(f"    {'':30} {'(a) healthy alone':>26}   {'(b) + hanging + failing':>26}")
    alone = [r["isolation"]["alone"] for r in results]
    faulty = [r["isolation"]["faulty"] for r in results]
    for metric in faulty[0]:
        a = _spread([g[metric] for g in alone], ".1f") if metric in alone[0] else "-"
        b = _spread([g[metric] for g in faulty], ".1f")
        print(f"    {metric:30} {a:>26}   {b:>26}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parts", default="throughput,isolation",
                    help="which parts to run, comma-separated")
    ap.add_argument("--callbacks", type=int, default=30_000, help="backlog of part 1")
    ap.add_argument("--events-per-message", type=int, default=3, choices=range(1, 5))
    ap.add_argument("--host-concurrency", type=int, default=256, help="part 1's host cap")
    ap.add_argument("--host-rate", type=float, default=100_000.0,
                    help="part 1's host rate (callbacks/s): above what one worker reaches")
    ap.add_argument("--account-concurrency", type=int, default=1024,
                    help="part 1's account cap")
    ap.add_argument("--rate", type=float, default=200, help="part 2: events/s per endpoint")
    ap.add_argument("--seconds", type=float, default=30, help="part 2: offer duration")
    ap.add_argument("--window-s", type=float, default=600,
                    help="part 2: p99 and worker RSS per window of this length")
    ap.add_argument("--side-by-side", action="store_true",
                    help="part 2: run (a) and (b) at the same time, each its own worker")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    if not args.parts or set(args.parts) - {"throughput", "isolation"}:
        ap.error("--parts: throughput, isolation or both")
    results = []
    with local_broker("telex-bench-callbacks-") as (bootstrap, tmp, broker_pid):
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", flush=True)
            results.append(one_run(bootstrap, tmp, broker_pid, args))
    summarise(results, args)
    write_figures(args, {"runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
