"""The rate-limit verdict: release, defer, queue full, expired in queue."""

from typing import Any

from pipeline.codec import AvroCodec
from pipeline.errors import Code
from pipeline.gcra import Limit
from pipeline.runtime.stage import Record
from pipeline.runtime.store import MemoryStore
from pipeline.senders import DEMO_SENDERS
from pipeline.settings import Settings
from pipeline.stages.ratelimit.limits import ACCOUNT, ROUTE, SENDER, Limits, bucket_of
from pipeline.stages.ratelimit.stage import RateLimitStage, decide
from tests.fixtures.samples import sample

HOUR = 3_600_000


def test_idle_bucket_releases_now():
    """An idle bucket releases at once."""
    assert decide(None, 0, 1, Limit(1, 1), expires_at_ms=HOUR, queue_cap_ms=HOUR).kind == "release"


def test_booked_bucket_defers_to_its_slot():
    """A booked bucket defers the message to its reserved slot."""
    v = decide(5_000, 0, 1, Limit(1, 1), expires_at_ms=HOUR, queue_cap_ms=HOUR)
    assert v.kind == "defer" and v.reservation.release_at_ms == 5_000


def test_booked_beyond_cap_is_queue_full():
    """A bucket booked further ahead than the cap refuses the message with 21611."""
    v = decide(HOUR + 5_000, 0, 1, Limit(1, 1), expires_at_ms=10 * HOUR, queue_cap_ms=HOUR)
    assert (v.kind, v.code) == ("queue_full", Code.QUEUE_FULL)


def test_slot_after_validity_is_expired_in_queue():
    """A message whose slot comes after its validity ends fails with 30036 at once."""
    v = decide(60_000, 0, 1, Limit(1, 1), expires_at_ms=30_000, queue_cap_ms=HOUR)
    assert (v.kind, v.code) == ("expired", Code.EXPIRED)


def test_limits_by_sender_kind_and_overrides():
    """Senders default by kind; overrides and account/route defaults apply by bucket key."""
    limits = Limits.from_mapping({"senders": {"sms:55501": {"rate": 250, "burst": 20}},
                                  "accounts": {"acct-9": {"rate": 7}}}, DEMO_SENDERS)
    assert limits.for_bucket(SENDER, "sms:+14155550100") == Limit(1, 1)
    assert limits.for_bucket(SENDER, "sms:+18445550100") == Limit(3, 3)
    assert limits.for_bucket(SENDER, "sms:55501") == Limit(250, 20)
    assert limits.for_bucket(ACCOUNT, "acct-9") == Limit(7, 7)
    assert limits.for_bucket(ROUTE, "sms:+44") == limits.route_default


def test_bucket_keys():
    """Bucket keys: account id, channel:sender, channel:+calling code."""
    msg = {"account_id": "a1", "channel": "whatsapp", "sender": "whatsapp:+14155550199",
           "recipient": "whatsapp:+447911123456"}
    assert bucket_of(ACCOUNT, msg) == "a1"
    assert bucket_of(SENDER, msg) == "whatsapp:whatsapp:+14155550199"
    assert bucket_of(ROUTE, msg) == "whatsapp:+44"


def test_recently_queued_bucket_routes_due_messages_through_the_scheduler():
    """A message due now still goes through the scheduler while the bucket was recently
    queued, so the scheduler's pacing sees every release of the bucket."""
    v = decide(None, 10_000, 1, Limit(1, 1), expires_at_ms=HOUR, queue_cap_ms=HOUR,
               via_scheduler_until_ms=20_000)
    assert v.kind == "defer" and v.reservation.release_at_ms == 10_000
    later = decide(None, 20_000, 1, Limit(1, 1), expires_at_ms=HOUR, queue_cap_ms=HOUR,
                   via_scheduler_until_ms=20_000)
    assert later.kind == "release"


def _stage_at(now_s: float) -> tuple[RateLimitStage, AvroCodec, Settings, dict[str, Any]]:
    """A rate-limit stage on default limits whose clock reads ``now_s``, and a one-segment SMS
    from a demo long code valid for an hour."""
    codec = AvroCodec()
    settings = Settings()
    stage = RateLimitStage(settings, Limits.from_mapping({}, DEMO_SENDERS), codec,
                           clock=lambda: now_s)
    msg = sample("message_accepted", sender="+14155550100", channel="sms", segments=1,
                 expires_at_ms=int(now_s * 1000) + HOUR)
    return stage, codec, settings, msg


def test_direct_release_is_stamped_with_the_decision_time():
    """A message the sender bucket releases at once carries the time the slot was booked as
    its Kafka timestamp, the clock the scheduler stamps deferred releases with: produced later
    (after the rest of the batch), it would otherwise land closer to the deferred slots than
    the bucket allows."""
    decided_at = 1_800_000_000.25
    stage, codec, settings, msg = _stage_at(decided_at)
    topic = settings.topic("rl-sender")
    record = Record(topic, 0, 0, bucket_of(SENDER, msg),
                    codec.encode("message_accepted", msg), None, 0)
    store = MemoryStore("sender", 0, None)
    [out] = stage.process([record], {(topic, 0): store}, int(decided_at * 1000) + 40)
    assert out.topic == "dispatch-ready"
    assert out.timestamp_ms == int(decided_at * 1000)


def test_the_steps_of_a_worker_decode_a_message_once():
    """The same value bytes passing the three bucket steps are decoded once; an undecodable
    record is not remembered and still dead-letters."""
    now = 1_800_000_000.0
    stage, codec, settings, msg = _stage_at(now)
    value = codec.encode("message_accepted", msg)
    decoded = []
    real = codec.decode
    codec.decode = lambda data, expected=None: decoded.append(data) or real(data, expected)
    stores, outs = {}, []
    for dimension, topic in ((ACCOUNT, "message-accepted"), (ROUTE, "rl-route"),
                             (SENDER, "rl-sender")):
        full = settings.topic(topic)
        stores[(full, 0)] = MemoryStore(dimension, 0, None)
        outs += stage.process([Record(full, 0, 0, bucket_of(dimension, msg), bytes(value),
                                      None, 0)], stores, int(now * 1000))
    assert [o.topic for o in outs] == ["rl-route", "rl-sender", "dispatch-ready"]
    assert decoded == [value]
    bad = Record(settings.topic("rl-sender"), 0, 1, "k", b"\xc3\x01junk", None, 0)
    for _ in range(2):
        [dead] = stage.process([bad], stores, int(now * 1000))
        assert dead.topic == "dlq-ratelimit"
