"""API keys: a key id and a secret per key, several keys per account (rotation), secrets
stored only as scrypt hashes with a per-key salt.

A request presents ``key_id:secret`` with HTTP Basic, as Twilio's API keys do. Checking a secret
against its scrypt hash costs ~50 ms of CPU on purpose, too much per request: the first
successful check of a key caches an HMAC of the secret under a key that lives only in this
process's memory, and later requests compare against that (one HMAC-SHA256 and a constant-time
compare). Unknown key ids pay the same scrypt as known ones, so timing does not tell which key
ids exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

__all__ = ["ApiKey", "KeyRing", "new_key", "parse_basic", "read_keys", "write_keys"]

# scrypt work factor: 2^14 * 8 * 128 B = 16 MiB and ~50 ms per check (the interactive-login
# parameters of the scrypt paper); stored with each key so they can be raised later.
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as the keys file holds it: never the secret itself."""

    key_id: str
    account_id: str
    salt: bytes
    digest: bytes
    n: int = _N
    r: int = _R
    p: int = _P

    def to_json(self) -> dict[str, object]:
        return {"key_id": self.key_id, "account_id": self.account_id, "salt": self.salt.hex(),
                "digest": self.digest.hex(), "n": self.n, "r": self.r, "p": self.p}

    def matches(self, secret: str) -> bool:
        """The slow, authoritative check (constant-time compare of scrypt digests)."""
        return hmac.compare_digest(_scrypt(secret, self.salt, self.n, self.r, self.p),
                                   self.digest)


def _scrypt(secret: str, salt: bytes, n: int = _N, r: int = _R, p: int = _P) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024,
                          dklen=_DKLEN)


def new_key(account_id: str) -> tuple[ApiKey, str]:
    """A fresh key for ``account_id`` and its secret (shown once, never stored)."""
    secret = secrets.token_urlsafe(32)
    salt = os.urandom(16)
    key = ApiKey("SK" + secrets.token_hex(16), account_id, salt, _scrypt(secret, salt))
    return key, secret


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``(key_id, secret)`` from an ``Authorization: Basic`` header, or None."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    key_id, sep, secret = decoded.partition(":")
    return (key_id, secret) if sep and key_id and secret else None


class KeyRing:
    """The keys of every account; answers which account a presented key belongs to."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = {k.key_id: k for k in keys}
        self._session = os.urandom(32)  # HMAC key of the verified-secret cache; never leaves
        self._verified: dict[str, bytes] = {}
        self._decoy = ApiKey("", "", os.urandom(16), os.urandom(_DKLEN))

    @classmethod
    def from_file(cls, path: str | Path | None) -> KeyRing:
        """Keys from the JSON file ``{"keys": [...]}``; no file means no key (every request 401)."""
        if path is None:
            return cls(())
        try:
            data = json.loads(Path(path).read_text())
            keys = [ApiKey(k["key_id"], k["account_id"], bytes.fromhex(k["salt"]),
                           bytes.fromhex(k["digest"]), int(k.get("n", _N)),
                           int(k.get("r", _R)), int(k.get("p", _P)))
                    for k in data["keys"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"TELEX_API_KEYS_FILE {path}: {exc}") from exc
        return cls(keys)

    def account_of(self, key_id: str, secret: str) -> str | None:
        """The account of a valid key id + secret; None for anything else."""
        key = self._keys.get(key_id)
        mac = hmac.new(self._session, secret.encode(errors="surrogatepass"),
                       hashlib.sha256).digest()
        cached = self._verified.get(key_id)
        if key is not None and cached is not None:
            return key.account_id if hmac.compare_digest(mac, cached) else None
        if key is None:
            self._decoy.matches(secret)  # same cost as a real check: key ids stay secret
            return None
        if not key.matches(secret):
            return None
        self._verified[key_id] = mac
        return key.account_id


def write_keys(path: str | Path, keys: Iterable[ApiKey]) -> None:
    """Write the keys file (owner-readable only)."""
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"keys": [k.to_json() for k in keys]}, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(target)


def read_keys(path: str | Path) -> list[ApiKey]:
    """The keys in ``path`` (empty if it does not exist yet)."""
    if not Path(path).exists():
        return []
    return list(KeyRing.from_file(path)._keys.values())
