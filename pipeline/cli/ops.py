"""``telex lag`` and ``telex health``: what an SRE on call looks at first.

Exit codes as every SRE command (:mod:`pipeline.cli.exits`): 0 healthy; 1 unhealthy (a stage
has nobody consuming, or dead letters are waiting); 3 the broker cannot be reached. Customer
callback endpoints the callbacks stage has disabled are listed but leave Telex healthy: the
fault is the customer's, and its callbacks wait in ``dlq-callbacks``, which does count.
"""

from __future__ import annotations

import argparse
import json

from pipeline.cli.exits import OK, PROBLEMS, broker_errors
from pipeline.ops.health import consumer_lag, dead_letters, disabled_endpoints, stage_members
from pipeline.settings import get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lag = sub.add_parser("lag", help="consumer lag per stage and partition")
    lag.add_argument("--json", action="store_true", help="machine-readable output")
    lag.add_argument("--timeout", type=float, default=10.0, help="seconds per broker request")
    lag.set_defaults(func=_lag)
    health = sub.add_parser("health", help="broker reachable, stages consuming, dead letters")
    health.add_argument("--json", action="store_true", help="machine-readable output")
    health.add_argument("--timeout", type=float, default=10.0, help="seconds per broker request")
    health.set_defaults(func=_health)


@broker_errors
def _lag(args: argparse.Namespace) -> int:
    rows = consumer_lag(get_settings(), args.timeout)
    if args.json:
        print(json.dumps([{"stage": r.stage, "topic": r.topic, "partition": r.partition,
                           "committed": r.committed, "end": r.end, "lag": r.lag} for r in rows]))
        return 0
    print(f"{'STAGE':10} {'TOPIC':20} {'PART':>4} {'COMMITTED':>10} {'END':>10} {'LAG':>8}")
    for r in rows:
        committed = "-" if r.committed is None else str(r.committed)
        print(f"{r.stage:10} {r.topic:20} {r.partition:>4} {committed:>10} {r.end:>10} "
              f"{r.lag:>8}")
    return 0


@broker_errors
def _health(args: argparse.Namespace) -> int:
    settings = get_settings()
    members = stage_members(settings, args.timeout)
    dlq = dead_letters(settings, args.timeout)
    healthy = all(members.values()) and not any(dlq.values())
    disabled = disabled_endpoints(settings, args.timeout)
    report = {"broker": settings.kafka_bootstrap_servers, "reachable": True,
              "stages": members, "dead_letters": dlq,
              "callback_endpoints_disabled": {h: s.reason for h, s in disabled.items()},
              "healthy": healthy}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"broker {settings.kafka_bootstrap_servers}: reachable")
        for stage, n in members.items():
            print(f"  stage {stage:10} {'consuming' if n else 'NOT CONSUMING':14} "
                  f"({n} member{'s' if n != 1 else ''})")
        for topic, n in dlq.items():
            print(f"  {topic:16} {n:6} dead letter{'s' if n != 1 else ''}")
        for host, state in sorted(disabled.items()):
            print(f"  callback endpoint {host} disabled: {state.reason}")
        print("healthy" if healthy else "UNHEALTHY")
    return OK if healthy else PROBLEMS
