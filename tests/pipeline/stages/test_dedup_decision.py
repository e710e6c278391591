"""Dedup verdicts by idempotency key."""

from pipeline.stages.ingest.dedup import Seen, Verdict, decide

WINDOW = 86_400_000


def test_first_request_is_new():
    """Nothing remembered: the request is new."""
    assert decide(None, "h1", 1000, WINDOW) is Verdict.NEW


def test_identical_repeat_is_duplicate():
    """Same key, same content, inside the window: absorbed as a duplicate."""
    assert decide(Seen("h1", 1000, "accepted"), "h1", 2000, WINDOW) is Verdict.DUPLICATE


def test_different_content_is_conflict():
    """Same key, other content: a conflict, whatever the original's outcome."""
    assert decide(Seen("h1", 1000, "accepted"), "h2", 2000, WINDOW) is Verdict.CONFLICT
    assert decide(Seen("h1", 1000, "rejected"), "h2", 2000, WINDOW) is Verdict.CONFLICT


def test_entry_older_than_window_counts_as_absent():
    """After the window a key is free again, even if the store still holds it."""
    seen = Seen("h1", 1000, "accepted")
    assert decide(seen, "h2", 1000 + WINDOW, WINDOW) is Verdict.NEW
    assert decide(seen, "h1", 1000 + WINDOW - 1, WINDOW) is Verdict.DUPLICATE


def test_repeat_with_earlier_timestamp_is_still_deduplicated():
    """Out-of-order producer clocks do not reopen a key."""
    assert decide(Seen("h1", 5000, "accepted"), "h1", 1000, WINDOW) is Verdict.DUPLICATE


def test_state_round_trip():
    """What is stored reads back as the same entry."""
    seen = Seen("h1", 1000, "rejected")
    assert Seen.from_state(seen.to_state()) == seen
    assert Seen.from_state(None) is None
