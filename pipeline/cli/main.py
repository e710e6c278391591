"""Entry point of the ``telex`` command: one sub-command group per module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.cli import api, broker, callbacks, demo, dlq, exits, ops, topics, trace, worker
from pipeline.errors import TelexError

# Each command-group module exposes ``register(subparsers)`` and sets ``func`` on its parsers;
# ``func(args) -> int`` returns the process exit code.
_GROUPS = (broker, topics, worker, demo, ops, dlq, trace, callbacks, api)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telex", description="Telex delivery pipeline tools")
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TelexError as exc:
        print(f"telex: error: {exc}", file=sys.stderr)
        return exits.PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
