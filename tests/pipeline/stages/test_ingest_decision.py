"""Ingest's decision: what the status stage learns from a request (pure)."""

from __future__ import annotations

from pipeline.errors import Code
from pipeline.senders import DEMO_SENDERS
from pipeline.stages.ingest.stage import decide
from tests.fixtures.samples import T0_MS, sample

URL = "https://client.example/telex/status"


def _request(**overrides: object) -> dict:
    """The sample request from a demo sender to a valid number."""
    return {**sample("message_requested"), "sender": "+14155550100",
            "recipient": "+14155550123", **overrides}


def _update(req: dict) -> dict:
    decision = decide(req, None, senders=DEMO_SENDERS, window_ms=60_000, event_ms=T0_MS,
                      now_ms=T0_MS)
    return next(e.record for e in decision.emits if e.topic == "status-updates")


def test_the_first_status_update_carries_the_callback_url() -> None:
    """Accepted: the status stage learns the URL it heads the message's events with."""
    update = _update(_request())
    assert (update["status"], update["status_callback_url"]) == ("accepted", URL)


def test_a_rejection_for_another_reason_still_carries_the_url() -> None:
    """The customer hears about a request that failed validation."""
    update = _update(_request(recipient="not a number"))
    assert update["status"] == "failed" and update["status_callback_url"] == URL


def test_a_bad_callback_url_is_never_called() -> None:
    """Failed with 21627: the URL is the problem, so it rides nowhere."""
    update = _update(_request(status_callback_url="ftp://x"))
    assert update["error_code"] == Code.INVALID_CALLBACK_URL
    assert update["status_callback_url"] is None


def test_no_url_means_none() -> None:
    """A message without a callback URL gets no callback."""
    update = _update(_request(status_callback_url=None))
    assert update["status_callback_url"] is None
