"""Pure translations of the API: form bodies, channels, the SDK request, the resource."""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.api.messages import channel_of, form_fields, outbound, resource, text_is_storable
from pipeline.api.models import MessageCreate


def test_form_fields_repeat_media_url_into_a_list() -> None:
    """MediaUrl=a&MediaUrl=b gives a list; other fields stay single values."""
    assert form_fields(b"To=%2B1&MediaUrl=a&MediaUrl=b&Body=hi+there") == {
        "To": "+1", "MediaUrl": ["a", "b"], "Body": "hi there"}


def test_channel_follows_the_to_prefix() -> None:
    """whatsapp: and messenger: prefixes name their channel; anything else is SMS."""
    assert [channel_of(t) for t in ("whatsapp:+1", "messenger:123", "+1")] == [
        "whatsapp", "messenger", "sms"]


def test_outbound_maps_twilio_fields_and_reads_naive_send_at_as_utc() -> None:
    """MessagingServiceSid stands in for From; SendAt without offset is UTC."""
    create = MessageCreate.model_validate({
        "To": "+14155552671", "MessagingServiceSid": "MG" + "a" * 32, "Body": "b",
        "SendAt": "2030-01-01T00:00:00", "ValidityPeriod": 60})
    out = outbound("AC1", create, "k")
    assert (out.sender, out.channel, out.validity_period_s, out.idempotency_key) == (
        "MG" + "a" * 32, "sms", 60, "k")
    assert out.send_at_ms == int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)


def test_resource_status_is_accepted_or_scheduled_until_the_read_model_has_one() -> None:
    """No status row: accepted (scheduled with SendAt); with one: the read model's."""
    now = datetime(2030, 1, 1, tzinfo=UTC)
    row = {"message_id": "TX" + "0" * 32, "account_id": "AC1", "recipient": "+1",
           "sender": "+2", "segments": 1, "date_created": now, "media_urls": []}
    assert resource(row).status == "accepted"
    assert resource({**row, "send_at": now}).status == "scheduled"
    assert resource({**row, "status": "delivered", "updated_at": now}).status == "delivered"


def test_text_with_nul_or_lone_surrogates_is_not_storable() -> None:
    """PostgreSQL and Avro refuse both; plain text and None pass."""
    assert text_is_storable("ok", None)
    assert not text_is_storable("a\x00b")
    assert not text_is_storable("\ud800")
