"""API keys: scrypt-hashed secrets, several keys per account, the keys file, Basic parsing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from pipeline.api.keys import KeyRing, new_key, parse_basic, read_keys, write_keys


def test_a_key_authenticates_as_its_account_and_only_with_its_secret() -> None:
    """Right secret: the account (twice: the cached path agrees); wrong secret: None."""
    key, secret = new_key("AC1")
    ring = KeyRing([key])
    assert ring.account_of(key.key_id, secret) == "AC1"
    assert ring.account_of(key.key_id, secret) == "AC1"
    assert ring.account_of(key.key_id, secret + "x") is None
    assert ring.account_of("SKnope", secret) is None


def test_rotation_two_keys_of_one_account_both_work() -> None:
    """An account with an old and a new key: both authenticate until one is removed."""
    (old, s_old), (new, s_new) = new_key("AC1"), new_key("AC1")
    assert {KeyRing([old, new]).account_of(k.key_id, s)
            for k, s in ((old, s_old), (new, s_new))} == {"AC1"}
    assert KeyRing([new]).account_of(old.key_id, s_old) is None


def test_keys_file_holds_no_secret_and_round_trips(tmp_path: Path) -> None:
    """The file stores salt and scrypt digest, never the secret; read back it verifies."""
    key, secret = new_key("AC1")
    path = tmp_path / "keys.json"
    write_keys(path, [key])
    assert secret not in path.read_text()
    assert json.loads(path.read_text())["keys"][0]["account_id"] == "AC1"
    assert path.stat().st_mode & 0o077 == 0
    assert KeyRing(read_keys(path)).account_of(key.key_id, secret) == "AC1"


def test_parse_basic_takes_key_id_and_secret_and_refuses_the_rest() -> None:
    """Basic base64(id:secret) parses; other schemes, bad base64 and empty parts do not."""
    def basic(raw: bytes) -> str:
        return "Basic " + base64.b64encode(raw).decode()

    assert parse_basic(basic(b"SK1:s:e:c")) == ("SK1", "s:e:c")
    assert [parse_basic(h) for h in (None, "Bearer x", "Basic !!", basic(b"SK1"),
                                     basic(b":s"), basic(b"SK1:"))] == [None] * 6
