"""CPU per message of each batch stage's Python, in process: no broker, memory stores.

    python -m bench.stagecpu [--messages 5000] [--runs 5] [--batch 1000] [--disk] [--no-gc]
                             [--profile] [--top 20]

Why: on a shared 2-core box wall-clock rates of the whole pipeline say little, and the broker
and librdkafka hide which of Telex's own lines cost. This drives each stage's ``process()``
exactly as the runner would (batches of ``Record``, stores keyed by (topic, partition)), with
the realistic mix of :mod:`bench.load` (1,000 skewed senders, 10 % multi-segment, 5 % UCS-2,
10 % WhatsApp), and times each stage with ``time.process_time`` (this process's CPU, not
wall-clock). One message's path: ingest → ratelimit (its three bucket steps) → dispatch
(not measured here: its records are synthesised, a ``sent`` announcement and a ``delivered``
receipt per message) → reconcile → status → pgsink (decode and rows only, no database).
``checkpoint`` is the runner's share that depends on the stores: encoding each dirty entry for
the changelog (``Store.changes``) and, with ``--disk``, writing it to RocksDB. The runner's
consume/produce calls are not included. Stores are in memory unless ``--disk``: then the
stores a stage declares ``disk`` (dedup, match, status) are RocksDB, as in production.

``--no-gc``: the cyclic garbage collector off during the runs. A collection runs in whichever
stage's allocation triggers it and traverses every live object (the stores included), so with
it on, a change in one stage moves the figures of others; off, each stage's own cost shows
(the total with it on is what a worker pays).

Each run uses new message ids (a fresh tag) and fresh stores, after one discarded warm-up run;
prints µs per message per stage as median (min, max) over runs. ``--profile`` adds one more
run under cProfile per stage and prints its top entries by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import statistics
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.load import limits, messages, senders_registry
from pipeline.codec import AvroCodec
from pipeline.observability import configure_logging
from pipeline.records import receipt_key, update_record
from pipeline.runtime.stage import Out, Record, Stage
from pipeline.runtime.store import DiskStore, MemoryStore, Store
from pipeline.senders import load_registry
from pipeline.settings import Settings, load_settings
from pipeline.stages import pgsink
from pipeline.stages.ingest.stage import build as build_ingest
from pipeline.stages.ratelimit.stage import build as build_ratelimit
from pipeline.stages.reconcile.stage import build as build_reconcile
from pipeline.stages.status.stage import build as build_status

PARTITIONS = 6
STAGES = ("ingest", "ratelimit", "reconcile", "status", "pgsink", "checkpoint")
CONNECTOR = "smpp-bench"


class _Sink(pgsink.StatusSink):
    """The status sink without its database: decoding and rows are Telex's CPU, the insert
    is PostgreSQL's and psycopg's."""

    def __init__(self, settings: Settings) -> None:  # no super(): no connection
        self._codec = AvroCodec.from_settings(settings)
        self._written = pgsink.RECORDS.labels(pgsink.STAGE, "written")
        self._latency = pgsink.PROCESSING_SECONDS.labels(pgsink.STAGE)

    def write(self, rows: list[tuple[object, ...]]) -> None:
        self._written.inc(len(rows))


class _Run:
    """One stage's stores and CPU seconds over a run."""

    def __init__(self, stage: Stage, settings: Settings, profiler: cProfile.Profile | None,
                 disk: Path | None = None) -> None:
        self.stage = stage
        self.settings = settings
        self.profiler = profiler
        self.cpu = 0.0
        self.stores: dict[tuple[str, int], Store] = {}
        for inp in stage.inputs:
            if inp.store is not None:
                ttl = None if inp.store.ttl_s is None else int(inp.store.ttl_s * 1000)
                for p in range(PARTITIONS):
                    self.stores[(settings.topic(inp.topic), p)] = (
                        DiskStore(inp.store.name, p, ttl, disk / f"{inp.store.name}-{p}")
                        if disk is not None and inp.store.disk
                        else MemoryStore(inp.store.name, p, ttl))

    def feed(self, outs: Sequence[Out], topic: str, batch: int) -> list[Out]:
        """Outputs of ``outs`` of catalogue topic ``topic``, consumed in batches."""
        full = self.settings.topic(topic)
        now_ms = int(time.time() * 1000)
        records = [Record(full, zlib.crc32(o.key.encode()) % PARTITIONS, i, o.key, o.value,
                          o.headers, o.timestamp_ms or now_ms)
                   for i, o in enumerate(outs) if o.topic == topic]
        result: list[Out] = []
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            now_ms = int(time.time() * 1000)
            if self.profiler:
                self.profiler.enable()
            t0 = time.process_time()
            result += self.stage.process(chunk, self.stores, now_ms)
            self.cpu += time.process_time() - t0
            if self.profiler:
                self.profiler.disable()
        return result

    def checkpoint(self) -> float:
        """CPU of the changelog encoding of every dirty key (the runner's checkpoint step)."""
        t0 = time.process_time()
        for store in self.stores.values():
            for _ in store.changes(0):
                pass
            store.checkpointed(None)
        return time.process_time() - t0

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


def _dispatched(codec: AvroCodec, ready: Sequence[Out], now_ms: int) -> list[Out]:
    """What dispatch and the carrier give reconcile per message: the ``sent`` announcement
    (with the message for a resend, as dispatch writes it for SMS) and a delivery receipt."""
    outs: list[Out] = []
    for i, o in enumerate(ready):
        msg = codec.decode(o.value, expected="message_accepted")
        cid = f"c{now_ms}-{i}"
        key = receipt_key(CONNECTOR, cid)
        sent = update_record(
            msg["message_id"], "dispatch", now_ms, status="sent", attempt=0,
            account_id=msg["account_id"], channel=msg["channel"], carrier_message_id=cid,
            connector=CONNECTOR, segments=msg["segments"], trace_id=msg.get("trace_id"),
            resend_message=o.value if msg["channel"] == "sms" else None)
        receipt = {"connector": CONNECTOR, "carrier_message_id": cid, "carrier_status": "DELIVRD",
                   "status": "delivered", "error_code": None, "carrier_error": None,
                   "done_at_ms": now_ms + 5, "received_at_ms": now_ms + 6, "message_id": None,
                   "raw": None}
        outs.append(Out("carrier-receipts", key, codec.encode("status_update", sent)))
        outs.append(Out("carrier-receipts", key, codec.encode("carrier_receipt", receipt)))
    return outs


def one_run(settings: Settings, tag: str, count: int, batch: int, profile: bool = False,
            disk: Path | None = None) -> tuple[dict[str, float], dict[str, cProfile.Profile]]:
    """µs per message of each stage for ``count`` new messages (and profiles if asked);
    ``disk``: a fresh directory for RocksDB stores."""
    profs = {s: cProfile.Profile() for s in STAGES} if profile else {}
    codec = AvroCodec.from_settings(settings)
    now_ms = int(time.time() * 1000)
    requested = []
    for m in messages(tag, count):
        req = m.to_request(now_ms)
        requested.append(Out("message-requested", req["message_id"],
                             codec.encode("message_requested", req)))

    runs = {
        "ingest": _Run(build_ingest(settings), settings, profs.get("ingest"), disk),
        "ratelimit": _Run(build_ratelimit(settings), settings, profs.get("ratelimit"), disk),
        "reconcile": _Run(build_reconcile(settings), settings, profs.get("reconcile"), disk),
        "status": _Run(build_status(settings), settings, profs.get("status"), disk),
        "pgsink": _Run(_Sink(settings), settings, profs.get("pgsink"), disk),
    }
    ingested = runs["ingest"].feed(requested, "message-requested", batch)
    rl = runs["ratelimit"]
    routed = rl.feed(ingested, "message-accepted", batch)
    routed = rl.feed(routed, "rl-route", batch)
    ready = rl.feed(routed, "rl-sender", batch)
    matched = runs["reconcile"].feed(_dispatched(codec, ready, now_ms), "carrier-receipts",
                                     batch)
    statuses = runs["status"].feed(
        [o for o in ingested if o.topic == "status-updates"] + matched, "status-updates", batch)
    runs["pgsink"].feed(statuses, "delivery-status", batch)
    if len(ready) != count:
        raise SystemExit(f"{len(ready)} of {count} messages reached dispatch-ready")
    dead = [o for o in ingested + matched + statuses if o.topic.startswith("dlq-")]
    if dead:
        raise SystemExit(f"{len(dead)} records dead-lettered, e.g. {dead[0].headers}")

    prof = profs.get("checkpoint")
    if prof:
        prof.enable()
    checkpoint = sum(r.checkpoint() for r in runs.values())
    if prof:
        prof.disable()
    for r in runs.values():
        r.close()
    micros = {name: r.cpu / count * 1e6 for name, r in runs.items()}
    micros["checkpoint"] = checkpoint / count * 1e6
    micros["total"] = sum(micros.values())
    return micros, profs


def _settings(tmp: Path) -> Settings:
    senders = tmp / "senders.json"
    senders.write_text(json.dumps(senders_registry()))
    lims = tmp / "limits.json"
    lims.write_text(json.dumps(limits()))
    return load_settings(senders_file=str(senders), limits_file=str(lims))


def _print(title: str, results: list[dict[str, float]]) -> None:
    print(f"\n{title} ({len(results)} runs: median (min, max), CPU µs per message)")
    for metric in results[0]:
        values = [r[metric] for r in results]
        print(f"  {metric:12} {statistics.median(values):9.1f}  "
              f"({min(values):.1f}, {max(values):.1f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1000, help="records per process() call")
    ap.add_argument("--disk", action="store_true",
                    help="RocksDB for the stores production keeps on disk")
    ap.add_argument("--no-gc", action="store_true",
                    help="cyclic GC off during the runs (per-stage attribution)")
    ap.add_argument("--profile", action="store_true", help="cProfile top entries per stage")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", type=Path, help="write every run's figures here")
    a = ap.parse_args(argv)
    configure_logging("WARNING")
    if a.no_gc:
        gc.disable()
    with TemporaryDirectory(prefix="stagecpu") as tmp:
        settings = _settings(Path(tmp))
        load_registry(settings.senders_file)  # fail early on a bad registry
        def disk(run: str) -> Path | None:
            return Path(tmp) / run if a.disk else None

        one_run(settings, "warmup", min(a.messages, 1000), a.batch, disk=disk("warmup"))
        results = [one_run(settings, f"run{i}", a.messages, a.batch, disk=disk(f"run{i}"))[0]
                   for i in range(a.runs)]
        stores = "RocksDB stores where production has them" if a.disk else "memory stores"
        stores += ", GC off" if a.no_gc else ""
        _print(f"batch stages, {a.messages} messages, batches of {a.batch}, {stores}", results)
        if a.json:
            a.json.write_text(json.dumps(results, indent=1))
        if a.profile:
            _, profs = one_run(settings, "profile", a.messages, a.batch, profile=True,
                               disk=disk("profile"))
            for name, prof in profs.items():
                print(f"\n--- {name}: top {a.top} by own time ---")
                pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(a.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
