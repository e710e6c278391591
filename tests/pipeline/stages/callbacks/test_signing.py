"""Standard Webhooks signing, checked by the reference ``standardwebhooks`` library."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from pipeline.errors import ConfigError
from pipeline.stages.callbacks.signing import (
    NoSecretError,
    SecretBook,
    SigningSecret,
    generate_secret,
    signed_headers,
    webhook_id,
)

BODY = b'{"MessageSid":"m-1","MessageStatus":"delivered","Text":"caf\xc3\xa9"}'


def test_the_reference_library_verifies_a_signed_callback() -> None:
    """Headers from ``signed_headers`` verify with the spec's reference implementation."""
    secret = generate_secret()
    headers = signed_headers([SigningSecret(secret)], webhook_id("m-1", 3), int(time.time()),
                             BODY)
    assert Webhook(secret).verify(BODY, headers)["MessageStatus"] == "delivered"


def test_a_changed_body_fails_verification() -> None:
    """The signature covers the exact bytes sent."""
    secret = generate_secret()
    headers = signed_headers([SigningSecret(secret)], "msg_m-1_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"delivered", b"failed"), headers)


def test_during_rotation_either_secret_verifies() -> None:
    """Two secrets sign twice: a receiver holding the old or the new one verifies."""
    new, old = generate_secret(), generate_secret()
    headers = signed_headers([SigningSecret(new), SigningSecret(old)], "msg_m-1_1",
                             int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_webhook_id_is_stable_per_event() -> None:
    """Retries of one event share the id; the next event of the message has another."""
    assert webhook_id("m-1", 2) == webhook_id("m-1", 2) != webhook_id("m-1", 3)


def test_secrets_never_print() -> None:
    """repr and errors name the account, never the key."""
    text = generate_secret()
    assert text[6:] not in repr(SigningSecret(text))
    with pytest.raises(ConfigError) as err:
        SecretBook.from_mapping({"acct-1": ["whsec_" + "QUJD"]})  # 3 bytes: too short
    assert "acct-1" in str(err.value) and "QUJD" not in str(err.value)


def test_book_answers_per_account_then_default() -> None:
    """An account's own secrets win; others take ``*``; with neither there is no callback."""
    own, default = generate_secret(), generate_secret()
    book = SecretBook.from_mapping({"acct-1": own, "*": [default]})
    assert book.for_account("acct-1") == (SigningSecret(own),)
    assert book.for_account("acct-2") == (SigningSecret(default),)
    with pytest.raises(NoSecretError):
        SecretBook.from_mapping({"acct-1": own}).for_account("acct-2")


@pytest.mark.parametrize("value", [[], ["a", "b", "c"], "not-a-secret", ["whsec_%%%"]])
def test_book_refuses_bad_entries(value: object) -> None:
    """Zero or three secrets, a missing prefix, bad base64: a ConfigError at load."""
    with pytest.raises(ConfigError):
        SecretBook.from_mapping({"acct-1": value})
