"""``telex topics apply|list``: make the broker match the topic catalogue, and show it."""

from __future__ import annotations

import argparse
import json

from pipeline.settings import get_settings
from pipeline.topics import admin_client, apply_topics, catalogue, describe_configs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("topics", help="create and inspect Telex topics")
    cmds = group.add_subparsers(dest="command", required=True)
    apply = cmds.add_parser("apply", help="create missing topics, update drifted configs")
    apply.add_argument("--json", action="store_true", help="machine-readable output")
    apply.set_defaults(func=_apply)
    lst = cmds.add_parser("list", help="show catalogue topics and their live configs")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=_list)


def _apply(args: argparse.Namespace) -> int:
    settings = get_settings()
    report = apply_topics(admin_client(settings), catalogue(settings))
    if args.json:
        print(json.dumps({"created": report.created, "updated": report.updated,
                          "unchanged": report.unchanged}))
    else:
        for name in report.created:
            print(f"created  {name}")
        for name, drift in report.updated.items():
            print(f"updated  {name}  {drift}")
        print(f"{len(report.created)} created, {len(report.updated)} updated, "
              f"{len(report.unchanged)} unchanged")
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = get_settings()
    admin = admin_client(settings)
    specs = catalogue(settings)
    live = admin.list_topics(timeout=30).topics
    present = [s.name for s in specs if s.name in live]
    configs = describe_configs(admin, present) if present else {}
    rows = []
    for s in specs:
        cfg = configs.get(s.name, {})
        rows.append({
            "name": s.name, "kind": s.kind, "exists": s.name in live,
            "partitions": len(live[s.name].partitions) if s.name in live else None,
            "cleanup.policy": cfg.get("cleanup.policy"), "retention.ms": cfg.get("retention.ms"),
            "min.insync.replicas": cfg.get("min.insync.replicas"), "description": s.description,
        })
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'TOPIC':40} {'KIND':10} {'PARTS':>5} {'CLEANUP':8} {'RETENTION':>12}  DESCRIPTION")
    for r in rows:
        parts = r["partitions"] if r["exists"] else "-"
        print(f"{r['name']:40} {r['kind']:10} {parts!s:>5} {r['cleanup.policy'] or 'missing':8} "
              f"{r['retention.ms'] or '':>12}  {r['description']}")
    return 0 if all(r["exists"] for r in rows) else 3
