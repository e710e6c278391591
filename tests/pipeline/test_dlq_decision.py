"""Dead-letter decisions without Kafka: parsing, filters, times, cursors, replays, redaction."""

from __future__ import annotations

import json

import pytest

from pipeline.codec import AvroCodec
from pipeline.headers import H_REPLAY_BY, H_REPLAY_COUNT, H_REPLAY_FROM_OFFSET, H_REPLAY_FROM_TOPIC
from pipeline.ops.display import age_text, ms_to_text, redact
from pipeline.ops.dlq_decision import (
    DeadLetter,
    Filter,
    Outcome,
    TopicSummary,
    already_submitted,
    cursor_after,
    describe,
    park_headers,
    parse_time,
    plan_replay,
    read_from,
    replay_headers,
    retained_before,
)
from pipeline.runtime.deadletter import Provenance, dead_letter_headers

CODEC = AvroCodec()
PARKED = "p.dlq-parked"
EXISTING = {"p.dispatch-ready", "p.message-requested", PARKED}
ACCEPTED = {
    "message_id": "TX01", "account_id": "acct-1", "idempotency_key": "k", "channel": "sms",
    "sender": "+14155550100", "recipient": "+14155550123", "body": "Your code is 123456",
    "media_urls": [], "status_callback_url": None, "validity_period_s": None,
    "send_at_ms": None, "requested_at_ms": 1, "trace_id": None, "client": None,
    "metadata": {}, "accepted_at_ms": 1, "expires_at_ms": 10**13, "encoding": "GSM7",
    "segments": 1, "content_hash": "h", "attempt": 0,
}


def dead(value: bytes | None = None, *, error: Exception | None = None, offset: int = 0,
         ts: int = 1_000, extra: list[tuple[str, bytes]] | None = None,
         topic: str = "p.dlq-dispatch", message_id: str | None = "TX01") -> DeadLetter:
    value = CODEC.encode("message_accepted", ACCEPTED) if value is None else value
    headers = dead_letter_headers(extra, Provenance("p.dispatch-ready", 2, 17, 900), "dispatch",
                                  error or LookupError("no route for sms recipient "
                                                       "'+14155550123'"), ts, message_id)
    return DeadLetter.parse(topic, 0, offset, ts, b"TX01", value, headers, CODEC)


def test_dead_letter_exposes_provenance_and_decoded_value():
    """Headers and the decoded record are read once into plain properties."""
    dl = dead()
    assert (dl.stage, dl.error_class, dl.original_topic) == (
        "dispatch", "LookupError", "p.dispatch-ready")
    assert (dl.message_id, dl.account_id, dl.failure_count, dl.replay_count) == (
        "TX01", "acct-1", 1, 0)
    assert dl.schema == "message_accepted" and dl.decode_error is None


def test_undecodable_value_keeps_its_error_and_message_id_falls_back_to_the_record():
    """Bytes the codec refuses are kept with the reason; without the header the message id
    comes from the decoded record."""
    bad = dead(b"\x00not avro")
    assert bad.record is None and "UnknownSchemaError" in (bad.decode_error or "")
    assert dead(message_id=None).message_id == "TX01"
    assert dead(b"\x00x", message_id=None).message_id is None


@pytest.mark.parametrize(("flt", "expected"), [
    (Filter(), True),
    (Filter(stage="dispatch"), True),
    (Filter(stage="ingest"), False),
    (Filter(error="lookuperror"), True),
    (Filter(error="no route"), True),
    (Filter(error="timeout"), False),
    (Filter(account="acct-1"), True),
    (Filter(account="acct-2"), False),
    (Filter(message_id="TX01"), True),
    (Filter(message_id="TX02"), False),
    (Filter(since_ms=1_000, until_ms=1_001), True),
    (Filter(since_ms=1_001), False),
    (Filter(until_ms=1_000), False),
])
def test_filter_matches_each_field(flt: Filter, expected: bool):
    """Each filter field narrows on its own; unset fields match everything."""
    assert flt.matches(dead()) is expected


def test_parse_time_reads_relative_epoch_and_iso_forms():
    """'2h' is two hours before now; digits are epoch ms; ISO without offset is UTC."""
    now = 1_700_000_000_000
    assert parse_time("2h", now) == now - 7_200_000
    assert parse_time("90s", now) == now - 90_000
    assert parse_time("1700000000123", now) == 1_700_000_000_123
    assert parse_time("2023-11-14T22:13:20Z", now) == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20", now) == 1_700_000_000_000
    assert parse_time("2023-11-14T23:13:20+01:00", now) == 1_700_000_000_000
    with pytest.raises(ValueError, match="cannot read time"):
        parse_time("yesterday", now)


def test_reading_starts_after_both_cursors_unless_everything():
    """Replay starts past the later of the handled and replay cursors; --all at log start."""
    assert read_from(5, None) == 5
    assert read_from(5, 8) == 8
    assert read_from(5, 8, 12) == 12
    assert read_from(5, 8, 3) == 8
    assert read_from(5, 8, 12, everything=True) == 5
    assert read_from(10, 3) == 10  # handled records already deleted by retention


def test_cursor_stops_at_the_first_record_not_acted_on():
    """A leading run of handled records moves the cursor; a gap stops it; all → the end."""
    assert cursor_after([3, 4, 5], {3, 4, 5}, 6) == 6
    assert cursor_after([3, 4, 5], {3, 5}, 6) == 4
    assert cursor_after([3, 4, 5], set(), 6) == 3
    assert cursor_after([3, 5], {3, 5}, 7) == 7  # gaps (transaction markers) are stepped over
    assert cursor_after([], set(), 9) == 9


def test_retained_before_counts_handled_records_still_on_the_broker():
    """Offsets from log start up to the cursor (capped at the log end) are counted; none without a
    cursor or with one below log start."""
    assert retained_before(5, 20, None) == 0
    assert retained_before(5, 20, 12) == 7
    assert retained_before(5, 20, 3) == 0
    assert retained_before(5, 20, 30) == 15


def test_summary_counts_by_stage_error_class_and_age():
    """Counts per (stage, error class) with oldest and newest dead-letter times."""
    summary = TopicSummary("dlq-dispatch")
    summary.add(dead(ts=1_000), replayed=True)
    summary.add(dead(ts=3_000, error=TimeoutError("slow")), replayed=False)
    summary.add(dead(ts=2_000), replayed=False)
    out = summary.as_dict()
    assert (out["pending"], out["replayed"], out["oldest_ms"], out["newest_ms"]) == (
        3, 1, 1_000, 3_000)
    assert out["by_stage"] == {"dispatch": 3}
    assert out["by_error_class"] == {"LookupError": 2, "TimeoutError": 1}
    assert out["groups"][0] == {"stage": "dispatch", "error_class": "LookupError", "count": 2,
                                "oldest_ms": 1_000, "newest_ms": 2_000}


@pytest.mark.parametrize(("entry", "skip"), [
    (None, False),
    ({"state": "SUBMITTED", "attempt": 0}, True),
    ({"state": "ATTEMPTING", "attempt": 1}, True),
    ({"state": "IN_DOUBT_RESOLVED", "attempt": 1, "retryable": True}, True),
    ({"state": "FAILED", "attempt": 2, "retryable": False}, True),
    ({"state": "FAILED", "attempt": 2, "retryable": True}, False),
])
def test_journal_states_that_may_have_reached_the_carrier_block_a_replay(entry, skip):
    """SUBMITTED, ATTEMPTING, in doubt or failed for good: the carrier may have it."""
    assert (already_submitted(entry) is not None) is skip


def plan(dl: DeadLetter, flt: Filter | None = None, journal=None, to: str | None = None,
         existing=EXISTING):  # type: ignore[no-untyped-def]
    return plan_replay(dl, flt or Filter(), journal, to_topic=to, parked_topic=PARKED,
                       existing=existing)


def test_replay_goes_to_the_original_topic_or_the_one_asked_for():
    """A dead letter is planned for REPLAY to its original topic, or to the topic asked for."""
    assert plan(dead()).outcome is Outcome.REPLAY
    assert plan(dead()).target == "p.dispatch-ready"
    assert plan(dead(), to="p.message-requested").target == "p.message-requested"


def test_replay_leaves_out_filtered_and_already_submitted_records():
    """A dead letter the filter excludes is FILTERED; one whose journal says SUBMITTED is
    ALREADY_SUBMITTED, with the state in the reason."""
    assert plan(dead(), Filter(stage="ingest")).outcome is Outcome.FILTERED
    skipped = plan(dead(), journal={"state": "SUBMITTED", "attempt": 0})
    assert skipped.outcome is Outcome.ALREADY_SUBMITTED and "SUBMITTED" in skipped.reason


def test_a_record_back_after_a_replay_is_parked_unless_replayed_from_parked():
    """A replay count header means it failed again: parked, never replayed again by itself;
    from dlq-parked (named explicitly) it is replayed."""
    back = dead(extra=[(H_REPLAY_COUNT, b"1")])
    assert back.replay_count == 1
    parked = plan(back)
    assert (parked.outcome, parked.target) == (Outcome.PARK, PARKED)
    from_parked = dead(extra=[(H_REPLAY_COUNT, b"1")], topic=PARKED)
    assert plan(from_parked).outcome is Outcome.REPLAY


def test_replay_without_a_destination_is_reported_not_guessed():
    """No original-topic header, or a destination the broker lacks: NO_TARGET."""
    bare = DeadLetter.parse("p.dlq-dispatch", 0, 0, 1, b"k", b"v", [], CODEC)
    assert plan(bare).outcome is Outcome.NO_TARGET
    assert plan(dead(), existing={PARKED}).outcome is Outcome.NO_TARGET


def test_replay_headers_keep_provenance_and_count_replays():
    """Original headers stay; replay headers are replaced, not stacked; the count goes up."""
    once = dict(replay_headers(dead(), at_ms=5, by="sre"))
    assert once[H_REPLAY_FROM_TOPIC] == b"p.dlq-dispatch" and once[H_REPLAY_BY] == b"sre"
    assert once[H_REPLAY_COUNT] == b"1" and once[H_REPLAY_FROM_OFFSET] == b"0"
    assert once["telex.dlq.original_topic"] == b"p.dispatch-ready"
    again = replay_headers(dead(extra=[(H_REPLAY_COUNT, b"1"), (H_REPLAY_BY, b"x")]),
                           at_ms=6, by="sre")
    assert [k for k, _ in again].count(H_REPLAY_COUNT) == 1
    assert dict(again)[H_REPLAY_COUNT] == b"2"
    parked = dict(park_headers(dead(extra=[(H_REPLAY_COUNT, b"1")]), at_ms=7, by="sre"))
    assert parked["telex.parked.from_topic"] == b"p.dlq-dispatch"
    assert parked[H_REPLAY_COUNT] == b"1"


def test_describe_redacts_body_numbers_and_raw_bytes_by_default():
    """Body and addresses masked, numbers in free text masked, raw bytes cut to 16."""
    shown = json.dumps(describe(dead(), "p.", redacted=True), ensure_ascii=False)
    assert "123456" not in shown and "14155550123" not in shown and "14155550100" not in shown
    assert "<redacted 19 chars>" in shown and "<phone …23>" in shown
    full = json.dumps(describe(dead(), "p.", redacted=False))
    assert "Your code is 123456" in full and "+14155550123" in full
    nested = describe(dead(), "p.", redacted=True)
    assert nested["value"]["metadata"] == {}
    assert redact({"resend_message": b"\xc3\x01+14155550123", "n": [b"ab"]}) == {
        "resend_message": "<14 bytes>", "n": ["<2 bytes>"]}
    raw = b"\xc3\x01" + b"\x00" * 8 + b"+14155550123 secret body"
    view = describe(dead(raw), "p.", redacted=True)
    assert view["value_bytes"].startswith(f"{len(raw)} bytes: c301") and "…" in \
        view["value_bytes"]
    assert b"secret".hex() not in view["value_bytes"]
    assert b"secret".hex() in describe(dead(raw), "p.", redacted=False)["value_bytes"]


def test_times_are_shown_as_utc_text_and_compact_ages():
    """Times show as ISO UTC with milliseconds ('-' for none or negative); ages in the largest whole
    unit (42s, 7m, 3h, 2d), '-' for none and 0s for a future time."""
    assert ms_to_text(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert ms_to_text(None) == ms_to_text(-1) == "-"
    now = 10 * 86_400_000
    assert [age_text(now - d, now) for d in (42_000, 7 * 60_000, 3 * 3_600_000,
                                             2 * 86_400_000)] == ["42s", "7m", "3h", "2d"]
    assert age_text(None, now) == "-" and age_text(now + 5_000, now) == "0s"
