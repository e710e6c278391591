"""``telex broker``: run the Maven-assembled dev Kafka broker in the background.

``start`` returns once the broker answers and leaves the JVM running detached; ``stop`` and
``status`` find it again through the state file in ``--state-dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import exits
from pipeline.dev.broker import KAFKA_VERSION, DevBroker, default_state_dir, ensure_jars
from pipeline.observability import configure_logging


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("broker", help=f"local Kafka {KAFKA_VERSION} for dev and tests")
    actions = group.add_subparsers(dest="broker_action", required=True, metavar="ACTION")

    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir", type=Path, default=None,
        help="where the broker's state file lives (env TELEX_BROKER_STATE_DIR, "
        "default ~/.cache/telex/broker)",
    )

    start = actions.add_parser("start", parents=[state],
                               help="start detached; print the bootstrap address when ready")
    start.add_argument("--port", type=int, default=None,
                       help="client port (default: the previous run's, else a free one)")
    start.add_argument("--controller-port", type=int, default=None)
    start.add_argument("--data-dir", type=Path, default=None,
                       help="topic data (default: <state-dir>/data, kept across restarts)")
    start.add_argument("--heap", default="512m", help="JVM -Xmx (default 512m)")
    start.add_argument("--timeout", type=float, default=90.0,
                       help="seconds to wait for readiness (default 90)")
    start.set_defaults(func=_start)

    stop = actions.add_parser("stop", parents=[state], help="stop the broker (SIGTERM, then KILL)")
    stop.add_argument("--timeout", type=float, default=20.0,
                      help="seconds before SIGKILL (default 20)")
    stop.set_defaults(func=_stop)

    status = actions.add_parser("status", parents=[state],
                                help=f"exit 0 if running, {exits.UNREACHABLE} if not")
    status.set_defaults(func=_status)

    fetch = actions.add_parser("fetch", help="only download the broker's jars (CI pre-caching)")
    fetch.add_argument("--cache-dir", type=Path, default=None,
                       help="jar cache (env TELEX_CACHE_DIR, default ~/.cache/telex)")
    fetch.set_defaults(func=_fetch)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _start(args: argparse.Namespace) -> int:
    configure_logging(stream=sys.stderr)  # stdout carries only the bootstrap address
    state_dir = _state_dir(args)
    previous = DevBroker.from_state(state_dir)
    if previous is not None and previous.is_running():
        print(f"already running (pid {previous.pid})", file=sys.stderr)
        print(previous.bootstrap)
        return 0
    # Reuse the previous run's address, so clients configured for it keep working.
    broker = DevBroker(
        data_dir=args.data_dir or (previous.data_dir if previous else state_dir / "data"),
        port=args.port or (previous.port if previous else None),
        controller_port=args.controller_port or (previous.controller_port if previous else None),
        heap=args.heap,
        state_dir=state_dir,
    )
    bootstrap = broker.start(timeout=args.timeout)
    print(f"kafka {KAFKA_VERSION} ready at {bootstrap} (pid {broker.pid}; "
          f"jars {broker.timings['jars_s']:.1f}s, start {broker.timings['start_s']:.1f}s); "
          f"log {broker.log_path}", file=sys.stderr)
    print(bootstrap)
    return 0


def _stop(args: argparse.Namespace) -> int:
    configure_logging(stream=sys.stderr)
    broker = DevBroker.from_state(_state_dir(args))
    if broker is None or not broker.is_running():
        if broker is not None:
            broker.stop()  # clears a stale pid from the state file
        print("not running", file=sys.stderr)
        return 0
    pid = broker.pid
    broker.stop(timeout=args.timeout)
    print(f"stopped (pid {pid})", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    broker = DevBroker.from_state(_state_dir(args))
    if broker is None or not broker.is_running():
        print("not running")
        return exits.UNREACHABLE
    print(f"running at {broker.bootstrap} (pid {broker.pid}); data {broker.data_dir}; "
          f"log {broker.log_path}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    configure_logging(stream=sys.stderr)
    cache = Path(args.cache_dir) / f"kafka-{KAFKA_VERSION}" if args.cache_dir else None
    print(ensure_jars(cache))
    return 0
