"""``telex callbacks``: customer callback endpoints the callbacks stage has disabled.

``list`` shows them (as ``telex health`` does); ``enable HOST`` lets callbacks to the host go
again once the customer has fixed it: every callbacks worker follows ``callback-endpoints``
and starts the host afresh (breaker closed). Callbacks given up while it was disabled are in
``dlq-callbacks``: ``telex dlq replay --topic dlq-callbacks`` sends them again.
"""

from __future__ import annotations

import argparse
import json
import time

from confluent_kafka import Producer

from pipeline.cli.exits import OK, PROBLEMS, broker_errors
from pipeline.codec import AvroCodec
from pipeline.ops.health import disabled_endpoints
from pipeline.settings import get_settings
from pipeline.stages.callbacks import endpoints


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("callbacks", help="disabled customer callback endpoints")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="endpoint hosts disabled now, and why")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--timeout", type=float, default=10.0, help="seconds to read the topic")
    listing.set_defaults(func=_list)
    enable = actions.add_parser("enable", help="send callbacks to a disabled host again")
    enable.add_argument("host", metavar="HOST", help="the host, as telex callbacks list shows it")
    enable.add_argument("--reason", default="enabled by an operator",
                        help="a note kept with the record")
    enable.add_argument("--timeout", type=float, default=10.0, help="seconds to read the topic")
    enable.set_defaults(func=_enable)


@broker_errors
def _list(args: argparse.Namespace) -> int:
    disabled = disabled_endpoints(get_settings(), args.timeout)
    if args.json:
        print(json.dumps([{"host": s.host, "reason": s.reason,
                           "disabled_at_ms": s.changed_at_ms} for s in disabled.values()]))
        return OK
    if not disabled:
        print("no callback endpoint is disabled")
    for state in sorted(disabled.values(), key=lambda s: s.changed_at_ms):
        print(f"{state.host}  disabled {_ago(state.changed_at_ms)} ago: {state.reason}")
    return OK


@broker_errors
def _enable(args: argparse.Namespace) -> int:
    settings = get_settings()
    host = args.host.strip().lower()
    if host not in disabled_endpoints(settings, args.timeout):
        print(f"telex: {host} is not disabled (telex callbacks list shows those that are)")
        return PROBLEMS
    producer = Producer(settings.producer_config())
    value = endpoints.encode(AvroCodec.from_settings(settings), endpoints.EndpointState(
        host, endpoints.ENABLED, args.reason, int(time.time() * 1000), "operator"))
    producer.produce(settings.topic(endpoints.TOPIC), value, host.encode())
    if producer.flush(args.timeout):
        print(f"telex: the broker did not acknowledge within {args.timeout} s; nothing changed")
        return PROBLEMS
    print(f"{host} enabled: callbacks workers send to it again; those given up meanwhile are "
          "in dlq-callbacks (telex dlq replay --topic dlq-callbacks)")
    return OK


def _ago(at_ms: int) -> str:
    seconds = max(0, int(time.time() - at_ms / 1000))
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
