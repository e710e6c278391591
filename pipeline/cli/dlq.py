"""``telex dlq list|show|replay|purge``: dead letters for the SRE on call.

Design and cursors: :mod:`pipeline.ops.dlq`. Tables by default, ``--json`` for scripts. Exit codes
(:mod:`pipeline.cli.exits`): 0 ok; 1 dead letters pending (``list``), a replay that could not
replay everything, or a declined purge; 2 usage (including a purge that cannot ask for
confirmation); 3 broker unreachable or unknown topic. Bodies and phone numbers are redacted
unless ``--unredacted``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import Any

from pipeline.cli import exits
from pipeline.ops import dlq
from pipeline.ops.display import age_text, ms_to_text
from pipeline.ops.dlq_decision import (
    DeadLetter,
    Filter,
    Outcome,
    describe,
    parse_time,
)
from pipeline.settings import get_settings

_LABELS = {Outcome.REPLAY: "replayed", Outcome.ALREADY_SUBMITTED: "skipped, already submitted",
           Outcome.PARK: "parked", Outcome.FILTERED: "filtered out",
           Outcome.NO_TARGET: "no destination", "failed": "failed (not acknowledged)"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "dlq", help="dead letters: list, show, replay, purge",
        description="Dead letters of every stage (dlq-<stage>) and dlq-parked. Exit codes: 0 "
        "ok; 1 dead letters pending (list), a partial replay or a declined purge; 2 usage; "
        "3 broker unreachable or unknown topic. Output is redacted (bodies, numbers).")
    actions = group.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--topic", action="append", metavar="TOPIC",
                        help=f"dead-letter topic (repeatable; default all): "
                        f"{', '.join(dlq.DLQ_TOPICS)}")
    common.add_argument("--all", action="store_true",
                        help="include records already marked handled (and, for replay, "
                        "already replayed)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--timeout", type=float, default=10.0,
                        help="seconds per broker request (default 10)")

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--stage", help="stage that dead-lettered the record")
    filters.add_argument("--error", help="error class, or a substring of the error message")
    filters.add_argument("--account", help="account id of the decoded record")
    filters.add_argument("--message-id", help="message id (header, or the decoded record's)")
    filters.add_argument("--since", type=_time, metavar="WHEN",
                         help="dead-lettered at or after WHEN: 15m, 2h, 1d (ago), epoch ms "
                         "or ISO 8601")
    filters.add_argument("--until", type=_time, metavar="WHEN", help="dead-lettered before WHEN")

    listing = actions.add_parser(
        "list", parents=[common], help="pending dead letters per topic, stage and error class",
        description="Counts per dead-letter topic, stage and error class, with ages. "
        "Exit 1 when any dead letter is pending, 0 when none is.")
    listing.set_defaults(func=_list)

    show = actions.add_parser("show", parents=[common, filters],
                              help="decoded dead letters with their provenance")
    show.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    show.add_argument("--unredacted", action="store_true",
                      help="show bodies, numbers and raw bytes (personal data!)")
    show.set_defaults(func=_show)

    replay = actions.add_parser(
        "replay", parents=[common, filters], help="re-publish dead letters",
        description="Re-publish dead letters to their original topic (or --to), skipping "
        "messages dispatch already submitted and parking records that failed again after a "
        "replay. Resumable: a replay cursor moves as records are acknowledged. Exit 1 when "
        "some record could not be replayed.")
    replay.add_argument("--to", metavar="STAGE-TOPIC",
                        help="destination topic (catalogue name) instead of the original")
    replay.add_argument("--dry-run", action="store_true",
                        help="report what would happen; produce and commit nothing")
    replay.add_argument("--rate", type=_positive, metavar="N", help="at most N records/s")
    replay.add_argument("--by", default=os.environ.get("USER") or _user(),
                        help="who replays, for the telex.replay.by header (default $USER)")
    replay.add_argument("-v", "--verbose", action="store_true", help="one line per record")
    replay.set_defaults(func=_replay)

    purge = actions.add_parser(
        "purge", parents=[common, filters], help="mark dead letters handled",
        description="Move the handled cursor past pending dead letters (matching the "
        "filters, up to the first one that does not). Asks for confirmation; --yes to skip.")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(func=_purge)


def _time(text: str) -> int:
    try:
        return parse_time(text, time.time_ns() // 1_000_000)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(stage=args.stage, error=args.error, account=args.account,
                  message_id=args.message_id, since_ms=args.since, until_ms=args.until)


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False,
                      default=lambda o: o.hex() if isinstance(o, bytes) else str(o))


# --- list ----------------------------------------------------------------------------------


@exits.broker_errors
def _list(args: argparse.Namespace) -> int:
    settings = get_settings()
    summaries = dlq.summarise(settings, args.topic, everything=args.all, timeout=args.timeout)
    pending = sum(s.pending.count for s in summaries)
    if args.json:
        print(_dump({"topics": [s.as_dict() for s in summaries], "pending": pending,
                     "include_handled": args.all}))
        return exits.PROBLEMS if pending else exits.OK
    now = time.time_ns() // 1_000_000
    print(f"{'TOPIC':16} {'PENDING':>8} {'REPLAYED':>9} {'HANDLED':>8} {'OLDEST':>7} "
          f"{'NEWEST':>7}")
    for s in summaries:
        print(f"{s.topic:16} {s.pending.count:>8} {s.replayed:>9} {s.handled:>8} "
              f"{age_text(s.pending.oldest_ms, now):>7} {age_text(s.pending.newest_ms, now):>7}")
    rows = [(s.topic, stage, error, g) for s in summaries
            for (stage, error), g in sorted(s.groups.items())]
    if rows:
        print(f"\n{'TOPIC':16} {'STAGE':10} {'ERROR CLASS':28} {'COUNT':>6} {'OLDEST':>7} "
              f"{'NEWEST':>7}")
        for topic, stage, error, g in rows:
            print(f"{topic:16} {stage:10} {error:28} {g.count:>6} "
                  f"{age_text(g.oldest_ms, now):>7} {age_text(g.newest_ms, now):>7}")
    scope = "retained" if args.all else "pending (handled ones hidden; --all shows them)"
    print(f"\n{pending} dead letter{'s' if pending != 1 else ''} {scope}")
    return exits.PROBLEMS if pending else exits.OK


# --- show ----------------------------------------------------------------------------------


@exits.broker_errors
def _show(args: argparse.Namespace) -> int:
    settings = get_settings()
    found = dlq.select(settings, args.topic, _filter(args), everything=args.all,
                       timeout=args.timeout)
    shown = found[:max(0, args.limit)]
    redacted = not args.unredacted
    views = [describe(dl, settings.topic_prefix, redacted=redacted) for dl in shown]
    if args.json:
        print(_dump({"records": views, "matching": len(found), "shown": len(shown)}))
        return exits.OK
    for dl, view in zip(shown, views, strict=True):
        _print_record(dl, view)
    print(f"{len(shown)} shown of {len(found)} matching"
          + ("" if redacted else " (UNREDACTED)"))
    return exits.OK


def _print_record(dl: DeadLetter, view: dict[str, Any]) -> None:
    print(f"{view['topic']}[{view['partition']}]@{view['offset']}  "
          f"{ms_to_text(dl.timestamp_ms)}  {view['stage']}  "
          f"{view['error_class']}: {view['error_message']}")
    print(f"  message   {view['message_id'] or '-'}  account {view['account_id'] or '-'}  "
          f"failures {view['failure_count']}  replays {view['replay_count']}")
    print(f"  original  {view['original']}  first failure {ms_to_text(dl.first_failure_ms)}")
    print(f"  key       {view['key']}")
    if "decode_error" in view:
        print(f"  value     undecodable ({view['value_bytes']}): {view['decode_error']}")
    else:
        print(f"  value     {view['schema']} {_dump(view['value'])}")
    for k, v in view["headers"].items():
        print(f"  header    {k}={v}")
    print()


# --- replay --------------------------------------------------------------------------------


@exits.broker_errors
def _replay(args: argparse.Namespace) -> int:
    settings = get_settings()
    progress = _progress if sys.stderr.isatty() and not args.json else None
    report = dlq.replay(settings, args.topic, _filter(args), to=args.to, everything=args.all,
                        dry_run=args.dry_run, rate=args.rate, by=args.by, progress=progress,
                        timeout=args.timeout)
    if progress is not None and not args.dry_run:
        print(file=sys.stderr)
    prefix = settings.topic_prefix
    if args.json:
        print(_dump({
            "dry_run": report.dry_run, "interrupted": report.interrupted,
            "counts": {str(k): v for k, v in report.counts.items()},
            "records": [{"topic": dl.topic.removeprefix(prefix), "partition": dl.partition,
                         "offset": dl.offset, "message_id": dl.message_id,
                         "outcome": str(plan.outcome), "reason": plan.reason,
                         "target": plan.target} for dl, plan in report.plans],
            "cursor": {f"{t.removeprefix(prefix)}[{p}]": o
                       for (t, p), o in report.cursor.items()},
            "errors": report.errors}))
        return exits.OK if report.complete else exits.PROBLEMS
    if args.verbose or args.dry_run:
        for dl, plan in report.plans:
            if plan.outcome is not Outcome.FILTERED or args.verbose:
                print(f"{dl.topic.removeprefix(prefix)}[{dl.partition}]@{dl.offset}  "
                      f"{dl.message_id or '-':34}  {plan.outcome:18} {plan.reason}")
    head = "dry run, nothing produced and no cursor moved; would be:" if report.dry_run \
        else "interrupted; run again to resume:" if report.interrupted else "summary:"
    print(head)
    for outcome in (Outcome.REPLAY, Outcome.ALREADY_SUBMITTED, Outcome.PARK, Outcome.FILTERED,
                    Outcome.NO_TARGET, "failed"):
        if outcome in (Outcome.NO_TARGET, "failed") and not report.counts[outcome]:
            continue
        print(f"  {_LABELS[outcome]:28} {report.counts[outcome]:>6}")
    for error in report.errors:
        print(f"  error: {error}")
    if not report.dry_run:
        print(f"replay cursor moved on {len(report.cursor)} partition"
              f"{'s' if len(report.cursor) != 1 else ''}")
    return exits.OK if report.complete else exits.PROBLEMS


def _progress(done: int, total: int) -> None:
    print(f"\rreplaying {done}/{total}", end="", file=sys.stderr, flush=True)


# --- purge ---------------------------------------------------------------------------------


@exits.broker_errors
def _purge(args: argparse.Namespace) -> int:
    settings = get_settings()
    plan = dlq.plan_purge(settings, args.topic, _filter(args), timeout=args.timeout)
    total = sum(plan.marked.values())
    per_topic = ", ".join(f"{t} {n}" for t, n in plan.marked.items() if n) or "none"
    result: dict[str, Any] = {"marked": {t: n for t, n in plan.marked.items() if n},
                              "left": plan.left, "confirmed": False}
    if total == 0:
        _say(args, result, f"nothing to mark handled ({plan.left} pending stay)")
        return exits.OK
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"telex: error: refusing to mark {total} dead letters handled without "
                  "confirmation: stdin is not a terminal; pass --yes", file=sys.stderr)
            return exits.USAGE
        print(f"will mark {total} dead letters handled ({per_topic}); {plan.left} pending "
              "stay (filtered out, or behind one that is)", file=sys.stderr)
        answer = input("mark them handled? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            _say(args, result, "aborted, nothing marked")
            return exits.PROBLEMS
    dlq.commit_purge(settings, plan, timeout=args.timeout)
    result["confirmed"] = True
    _say(args, result, f"marked {total} dead letters handled ({per_topic}); "
         f"{plan.left} pending stay")
    return exits.OK


def _say(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(_dump(result) if args.json else text)
