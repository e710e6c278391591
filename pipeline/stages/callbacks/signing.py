"""Standard Webhooks signatures on status callbacks (https://www.standardwebhooks.com).

Each callback carries ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``: HMAC-SHA256
over ``{id}.{timestamp}.{body}`` with the account's secret, base64, as ``v1,<sig>``. Customers
verify with any Standard Webhooks library (the tests use the reference ``standardwebhooks``).

- **The id is stable across retries** (message id and status sequence): a receiver that saw it
  drops the repeat. The timestamp is the attempt's, so each retry is signed afresh and stays
  inside the receivers' five-minute tolerance.
- **Rotation**: an account has at most two secrets, the new one first. During the overlap each
  callback is signed with both (space-separated signatures, which the spec allows), so a
  receiver holding either verifies it; dropping the old one from the file ends the overlap.
- **Secrets never leave this module in the clear**: :class:`SigningSecret` prints redacted, and
  the secrets file's errors name the account and the problem, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.configfile import read_json
from pipeline.errors import ConfigError, TelexError

__all__ = [
    "DEFAULT_ACCOUNT",
    "MAX_SECRETS",
    "NoSecretError",
    "SecretBook",
    "SigningSecret",
    "generate_secret",
    "sign",
    "signed_headers",
    "webhook_id",
]

PREFIX = "whsec_"
#: the spec's bounds on the key behind ``whsec_`` (24 to 64 random bytes).
MIN_KEY, MAX_KEY = 24, 64
#: current and previous: an overlap needs two, and more would mean a rotation never finished.
MAX_SECRETS = 2
#: the secrets file's entry used for an account without its own.
DEFAULT_ACCOUNT = "*"


class NoSecretError(TelexError):
    """No signing secret is configured for the account (nor a default)."""


class SigningSecret:
    """One ``whsec_…`` key; compares and prints without revealing it."""

    __slots__ = ("_key",)

    def __init__(self, text: str) -> None:
        if not text.startswith(PREFIX):
            raise ValueError(f"a signing secret starts with {PREFIX!r}")
        try:
            key = base64.b64decode(text[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a signing secret is base64 after its prefix") from None
        if not MIN_KEY <= len(key) <= MAX_KEY:
            raise ValueError(f"a signing secret holds {MIN_KEY} to {MAX_KEY} bytes, "
                             f"this one {len(key)}")
        self._key = key

    def mac(self, content: bytes) -> bytes:
        return hmac.new(self._key, content, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "SigningSecret('whsec_**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SigningSecret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._key).digest())


def generate_secret(size: int = 32) -> str:
    """A new ``whsec_`` secret for an account (``size`` random bytes)."""
    if not MIN_KEY <= size <= MAX_KEY:
        raise ValueError(f"size must be {MIN_KEY} to {MAX_KEY} bytes")
    return PREFIX + base64.b64encode(_random.token_bytes(size)).decode()


def webhook_id(message_id: str, sequence: int) -> str:
    """The callback's ``webhook-id``: one per status event, the same on every retry."""
    return f"msg_{message_id}_{sequence}"


def sign(secrets: Sequence[SigningSecret], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per secret, space-separated."""
    if not secrets:
        raise NoSecretError("nothing to sign with")
    content = b"%s.%d.%s" % (msg_id.encode(), timestamp_s, body)
    return " ".join("v1," + base64.b64encode(s.mac(content)).decode() for s in secrets)


def signed_headers(secrets: Sequence[SigningSecret], msg_id: str, timestamp_s: int,
                   body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp_s),
            "webhook-signature": sign(secrets, msg_id, timestamp_s, body)}


class SecretBook:
    """Signing secrets per account, newest first; ``*`` is the default for the others.

    File (``TELEX_CALLBACK_SECRETS_FILE``), JSON: ``{"acct-1": ["whsec_new", "whsec_old"],
    "*": ["whsec_…"]}``. Accounts without a secret and without a default get no callback: an
    unsigned one could not be told from a forgery.
    """

    def __init__(self, secrets: Mapping[str, Sequence[SigningSecret]]) -> None:
        self._secrets = {a: tuple(s) for a, s in secrets.items()}

    def for_account(self, account_id: str) -> tuple[SigningSecret, ...]:
        found = self._secrets.get(account_id) or self._secrets.get(DEFAULT_ACCOUNT)
        if not found:
            raise NoSecretError(f"no signing secret for account {account_id!r} and no "
                                f"default ({DEFAULT_ACCOUNT!r}) in the callback secrets file")
        return found

    @classmethod
    def from_mapping(cls, raw: object, source: str = "callback secrets") -> SecretBook:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected an object of account → list of secrets")
        book: dict[str, tuple[SigningSecret, ...]] = {}
        for account, values in raw.items():
            if isinstance(values, str):
                values = [values]
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_SECRETS:
                raise ConfigError(f"{source}: account {account!r} needs 1 to {MAX_SECRETS} "
                                  "secrets (new first, then the one being retired)")
            try:
                book[str(account)] = tuple(SigningSecret(str(v)) for v in values)
            except ValueError as exc:  # the message never includes the value
                raise ConfigError(f"{source}: account {account!r}: {exc}") from None
        return cls(book)

    @classmethod
    def from_file(cls, path: str | Path) -> SecretBook:
        return cls.from_mapping(read_json(path, "callback secrets file"),
                                f"callback secrets file {path}")
