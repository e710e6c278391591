"""``telex trace MESSAGE-ID``: what happened to one message, across every topic, in time order.

Exit codes (:mod:`pipeline.cli.exits`): 0 records found; 1 nothing found for the id; 2 usage;
3 broker unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import exits
from pipeline.ops.display import ms_to_text
from pipeline.ops.trace import trace
from pipeline.settings import get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "trace", help="one message's story across the topics",
        description="Every record about MESSAGE-ID (request, dedup verdict, rate-limit "
        "deferrals, delay hops, dispatch journal, receipts, statuses, dead letters), sorted by "
        "record time. Reads only the partitions the id hashes to. Exit 1 when nothing is found.")
    parser.add_argument("message_id", metavar="MESSAGE-ID")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds per broker request (default 10)")
    parser.set_defaults(func=_trace)


@exits.broker_errors
def _trace(args: argparse.Namespace) -> int:
    events = trace(get_settings(), args.message_id, timeout=args.timeout)
    if args.json:
        print(json.dumps({"message_id": args.message_id,
                          "events": [e.as_dict() for e in events]}, default=str))
    elif not events:
        print(f"nothing found for {args.message_id}", file=sys.stderr)
    else:
        print(f"message {args.message_id}: {len(events)} record{'s' if len(events) != 1 else ''}")
        for e in events:
            print(f"{ms_to_text(e.at_ms)}  {e.topic:20} {e.what}")
    return exits.OK if events else exits.PROBLEMS
