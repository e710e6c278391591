"""``telex worker STAGE``: run one pipeline stage as a long-lived process."""

from __future__ import annotations

import argparse
import signal

import structlog

from pipeline.cli.supervise import EXIT_CONFIG
from pipeline.errors import ConfigError
from pipeline.observability import configure_logging, start_metrics_server
from pipeline.settings import Settings, get_settings

STAGES = ("ingest", "ratelimit", "scheduler", "dispatch", "reconcile", "status", "pgsink",
          "webhooks")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="run a pipeline stage worker")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--exactly-once", action="store_true",
                        help="Kafka transactions instead of at-least-once + idempotent stages")
    parser.add_argument("--no-supervise", action="store_true",
                        help="run the stage in this process; by default a supervisor restarts "
                        "it after an error exit (see pipeline/cli/supervise.py)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    if not args.no_supervise:
        from pipeline.cli.supervise import supervise

        argv = ["worker", args.stage, "--no-supervise"]
        return supervise(args.stage, argv + (["--exactly-once"] if args.exactly_once else []))
    try:
        return _run_stage(args, settings)
    except ConfigError as exc:
        structlog.get_logger("telex.worker").error("config_error", error=str(exc))
        return EXIT_CONFIG


def _run_stage(args: argparse.Namespace, settings: Settings) -> int:
    log = structlog.get_logger("telex.worker")
    if settings.metrics_port:
        port = start_metrics_server(settings.metrics_port)
        log.info("metrics_listening", port=port)
    guarantee = "exactly-once" if args.exactly_once else "at-least-once"
    log.info("worker_starting", stage=args.stage, guarantee=guarantee,
             settings=settings.redacted())
    if args.stage == "scheduler":
        return _run_scheduler(settings)
    if args.stage == "dispatch":
        return _run_dispatch(settings)
    if args.stage == "webhooks":
        from pipeline.stages import webhooks

        return webhooks.run(settings)
    if args.stage == "pgsink":
        from pipeline.stages import pgsink

        return pgsink.run(settings)
    from pipeline.stages import ingest, ratelimit, reconcile, status

    builders = {"ingest": ingest.build_app, "ratelimit": ratelimit.build_app,
                "reconcile": reconcile.build_app, "status": status.build_app}
    builders[args.stage](settings, guarantee=guarantee).run()
    return 0


def _run_dispatch(settings: Settings) -> int:
    import asyncio

    from pipeline.stages.dispatch import DispatchWorker
    from pipeline.topics import admin_client, apply_topics, catalogue

    apply_topics(admin_client(settings), catalogue(settings))
    dispatch = DispatchWorker(settings)
    signal.signal(signal.SIGTERM, lambda *_: dispatch.stop())
    signal.signal(signal.SIGINT, lambda *_: dispatch.stop())
    asyncio.run(dispatch.run())
    return 0


def _run_scheduler(settings: Settings) -> int:
    from pipeline.runtime.scheduler import Scheduler
    from pipeline.topics import admin_client, apply_topics, catalogue

    apply_topics(admin_client(settings), catalogue(settings))
    scheduler = Scheduler(settings)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    signal.signal(signal.SIGINT, lambda *_: scheduler.stop())
    scheduler.run()
    return 0
