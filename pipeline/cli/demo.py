"""``telex demo``: run the pipeline end to end on a local broker and print the outcome."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="run requests through the pipeline on a local broker")
    parser.add_argument("--count", type=int, default=2000, help="unique requests to send")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pipeline.dev.demo import run

    return run(count=args.count, timeout=args.timeout)
