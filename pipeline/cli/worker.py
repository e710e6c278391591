"""``telex worker STAGE``: run one pipeline stage as a long-lived process."""

from __future__ import annotations

import argparse

import structlog

from pipeline.observability import configure_logging, start_metrics_server
from pipeline.settings import get_settings

STAGES = ("ingest",)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="run a pipeline stage worker")
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--exactly-once", action="store_true",
                        help="Kafka transactions instead of at-least-once + idempotent stages")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    log = structlog.get_logger("telex.worker")
    if settings.metrics_port:
        port = start_metrics_server(settings.metrics_port)
        log.info("metrics_listening", port=port)
    guarantee = "exactly-once" if args.exactly_once else "at-least-once"
    from pipeline.stages import ingest

    app = ingest.build_app(settings, guarantee=guarantee)
    log.info("worker_started", stage=args.stage, guarantee=guarantee,
             settings=settings.redacted())
    app.run()
    return 0
