"""``telex worker [STAGE]``: run one stage, or (no STAGE) the whole topology, as workers.

``telex worker STAGE`` runs one stage of :mod:`pipeline.runtime.registry` (for operators who
deploy stages apart). ``telex worker`` runs every stage in one worker, as a Kafka Streams
instance runs its whole topology: the batch stages on threads of this process, each for the
partitions its group gives this process (the delay-tier scheduler among them); the service
stages (webhooks) and the batch stages marked ``own_process`` (dispatch) as supervised children
running ``telex worker STAGE``, each started only when its settings are present. More
``telex worker`` processes, on this machine or others, share the partitions.

Why dispatch is a child although it is a batch stage: it holds the carrier sessions, whose
asyncio loop must read submit responses and answer deliver_sm/enquire_link while batches are
decided. Threads of one process share the GIL, and one 2,000-record ingest batch is ~0.34 s of
Python (169 µs per message, ADR 0003): on a thread beside the other stages, every submit in
flight would wait that long for its response to be read, and an SMPP window (20 to 50) would stay
full. As a process it also gets the second core of a 2-core box and can be restarted alone.

By default a supervisor restarts the worker after an error exit (see
:mod:`pipeline.cli.supervise`); ``--no-supervise`` runs it in this process.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading

import structlog

from pipeline import memprobe
from pipeline.cli import exits
from pipeline.errors import ConfigError
from pipeline.observability import configure_logging, start_metrics_server
from pipeline.procutil import die_with_parent, limit_malloc_arenas, trim_malloc_every
from pipeline.runtime import registry
from pipeline.settings import Settings, get_settings

log = structlog.get_logger("telex.worker")

# glibc gives each thread that contends for malloc an arena of its own, up to 8 per core: the
# whole-topology worker (stage threads, librdkafka's and RocksDB's threads) and dispatch used all
# 16 on the 2-core soak box, holding 15-17 MiB free-but-unreturned at 10 minutes of bench.soak at
# 150 msg/s; with 2 arenas, 7.6 and 5.6 MiB (ADR 0003, amendment 2026-11-29). It still creeps (both
# ~+7 MiB over the next 40 minutes, malloc's in-use memory flat): fragmentation, not a leak.
# MALLOC_ARENA_MAX in the environment overrides this.
_MALLOC_ARENAS = 2
# What creeps after that is free memory glibc keeps (malloc_trim(0) gave back 20.1 MiB of the
# worker's and 10.9 of dispatch's at the end of a 50-minute soak, below their RSS after warm-up):
# each worker process returns it every minute. A trim walks 2 arenas: milliseconds a minute.
_MALLOC_TRIM_INTERVAL_S = 60.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="run a pipeline stage, or every stage (no STAGE)")
    parser.add_argument("stage", nargs="?", choices=registry.NAMES,
                        help="one stage; without it, the whole topology")
    parser.add_argument("--no-supervise", action="store_true",
                        help="run in this process; by default a supervisor restarts it after "
                        "an error exit (see pipeline/cli/supervise.py)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    limit_malloc_arenas(_MALLOC_ARENAS)  # before any thread starts
    settings = get_settings()
    configure_logging(settings.log_level)
    name = args.stage or "topology"
    if not args.no_supervise:
        from pipeline.cli.supervise import supervise

        return supervise(name, ["worker", *([args.stage] if args.stage else []),
                                "--no-supervise"])
    memprobe.start_from_env()  # off unless TELEX_MEMORY_PROBE_DIR is set (soaks)
    trim_malloc_every(_MALLOC_TRIM_INTERVAL_S)
    try:
        if settings.metrics_port:
            log.info("metrics_listening", port=start_metrics_server(settings.metrics_port))
        log.info("worker_starting", stage=name, settings=settings.redacted())
        if args.stage:
            return run_stage(registry.spec(args.stage), settings)
        return run_topology(settings)
    except ConfigError as exc:
        log.error("config_error", error=str(exc))
        return exits.CONFIG


def run_stage(spec: registry.StageSpec, settings: Settings) -> int:
    """One stage in this process until SIGTERM/SIGINT."""
    if spec.kind == "service":
        return int(spec.load()(settings))
    runner = _runner(spec, settings)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    runner.run()
    return 0


def _runner(spec: registry.StageSpec, settings: Settings):  # type: ignore[no-untyped-def]
    from pipeline.runtime.runner import StageRunner
    from pipeline.topics import admin_client, apply_topics, catalogue

    apply_topics(admin_client(settings), catalogue(settings))
    return StageRunner(settings, spec.load()(settings))


def run_topology(settings: Settings) -> int:
    """Every batch stage on a thread of this process; every service stage (and batch stage of
    its own process) whose settings are present as a supervised child. Stops everything when
    one batch stage fails, so the supervisor restarts the whole worker (each stage resumes from
    its last checkpoint)."""
    wanted = [s for s in registry.STAGES if s.needs is None or getattr(settings, s.needs)]
    batch = [s for s in wanted if s.kind == "batch" and not s.own_process]
    services = [s for s in wanted if s.kind == "service" or s.own_process]
    runners = [_runner(s, settings) for s in batch]
    children = [subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "worker", s.name],
                                 preexec_fn=die_with_parent()) for s in services]
    failed: list[str] = []  # why the topology stopped, when it was not asked to
    done = threading.Event()

    def stop(*_: object) -> None:
        done.set()
        for r in runners:
            r.stop()

    def guarded(runner) -> None:  # type: ignore[no-untyped-def]
        try:
            runner.run()
        except BaseException as exc:
            failed.append(f"{runner.stage.name}: {exc!r}")
            log.error("stage_failed", stage=runner.stage.name, error=repr(exc))
            stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = [threading.Thread(target=guarded, args=(r,), name=r.stage.name, daemon=True)
               for r in runners]
    for t in threads:
        t.start()
    log.info("topology_running", threads=[s.name for s in batch],
             children=[s.name for s in services])
    while not done.wait(1.0):
        for s, child in zip(services, children, strict=True):
            if child.poll() is not None:  # its own supervisor gave up: stop everything
                log.error("service_exited", stage=s.name, code=child.returncode)
                failed.append(f"{s.name} exited with {child.returncode}")
                stop()
    for t in threads:
        t.join()
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        child.wait()
    if failed:
        log.error("topology_failed", reasons=failed)
    return 1 if failed else 0
