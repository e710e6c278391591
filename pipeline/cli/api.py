"""``telex api``: the REST front door (pipeline/api), and its keys.

``telex api`` serves until SIGTERM (finishing requests in flight, then flushing the producer);
``telex api key create ACCOUNT`` adds a key to TELEX_API_KEYS_FILE and prints its id and
secret once; ``telex api key revoke KEY_ID`` removes one. Rotation: create a second key, move
clients to it, revoke the first, restart the API processes (they read the file at start).
"""

from __future__ import annotations

import argparse
import json
import sys

import uvloop

from pipeline.api.keys import new_key, read_keys, write_keys
from pipeline.cli.exits import OK, PROBLEMS
from pipeline.errors import ConfigError
from pipeline.observability import configure_logging
from pipeline.settings import get_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("api", help="serve the REST API; manage its keys")
    parser.set_defaults(func=_serve)
    actions = parser.add_subparsers(dest="action", required=False, metavar="ACTION")
    key = actions.add_parser("key", help="API keys of TELEX_API_KEYS_FILE")
    key_actions = key.add_subparsers(dest="key_action", required=True, metavar="ACTION")
    create = key_actions.add_parser("create", help="add a key for ACCOUNT; prints its secret")
    create.add_argument("account", metavar="ACCOUNT")
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(func=_create)
    revoke = key_actions.add_parser("revoke", help="remove a key")
    revoke.add_argument("key_id", metavar="KEY_ID")
    revoke.set_defaults(func=_revoke)


def _serve(args: argparse.Namespace) -> int:
    from pipeline.api.server import serve

    settings = get_settings()
    configure_logging(settings.log_level)
    uvloop.run(serve(settings))
    return OK


def _keys_file() -> str:
    path = get_settings().api_keys_file
    if path is None:
        raise ConfigError("set TELEX_API_KEYS_FILE to the keys file to manage")
    return path


def _create(args: argparse.Namespace) -> int:
    path = _keys_file()
    key, secret = new_key(args.account)
    write_keys(path, [*read_keys(path), key])
    if args.json:
        print(json.dumps({"key_id": key.key_id, "account_id": key.account_id,
                          "secret": secret}))
    else:
        print(f"key id:  {key.key_id}\nsecret:  {secret}\n(the secret is shown only now)")
    return OK


def _revoke(args: argparse.Namespace) -> int:
    path = _keys_file()
    keys = read_keys(path)
    kept = [k for k in keys if k.key_id != args.key_id]
    if len(kept) == len(keys):
        print(f"telex: no key {args.key_id} in {path}", file=sys.stderr)
        return PROBLEMS
    write_keys(path, kept)
    return OK
