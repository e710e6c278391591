"""``telex trace``: one message's story across the topics, as a timeline.

Every topic keyed by message id is read on one partition only, the one the id hashes to
(murmur2, as every Telex producer partitions). Carrier receipts are keyed
``connector:carrier id``, so their partitions come from the carrier ids the dispatch journal and
the statuses name; a receipt matches by that key or by the message id it carries. Topics that do
not exist (yet) are skipped. The rate-limit hops (``rl-*``, keyed by bucket) are not read: the
deferrals on ``ratelimit-deferrals`` explain what the buckets did. Deadlines still pending
(receipt window, in doubt) live as timers in the status stage's store: its changelog's latest
entry for the message tells them.

:func:`describe` (pure) turns one record into a line; :func:`trace` does the reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from pipeline.codec import AvroCodec
from pipeline.errors import BrokerError
from pipeline.headers import (
    H_DUE,
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_MESSAGE_ID,
    H_REPLAY_COUNT,
    H_STAGE,
    H_TARGET,
    H_TIMER_DUE,
)
from pipeline.observability import redact_value
from pipeline.ops import offsets
from pipeline.ops.display import ms_to_text, redact
from pipeline.ops.dlq_decision import decode_value
from pipeline.ops.health import admin
from pipeline.ops.keyhash import partition_for
from pipeline.ops.topic_reader import read_ranges
from pipeline.records import receipt_key
from pipeline.runtime.deadletter import header_dict
from pipeline.runtime.delay import TIER_DELAYS_MS, tier_topic
from pipeline.runtime.registry import dead_letter_topics
from pipeline.runtime.runner import changelog_topic
from pipeline.runtime.store import decode_entry
from pipeline.settings import Settings
from pipeline.stages.status import stage as status_stage

_TIERS = tuple(tier_topic(i) for i in range(len(TIER_DELAYS_MS)))
_DLQS = (*dead_letter_topics(), "dlq-parked")
# Topics keyed by message id, in pipeline order: the order breaks timestamp ties.
KEYED_BY_ID = ("message-requested", "request-rejections",
               "ratelimit-deferrals", "dispatch-ready", "dispatch-journal", *_TIERS,
               "status-updates", "delivery-status", "callback-attempts", *_DLQS)
# Keyed by account (records.accepted_key): read once the account is known from the above.
KEYED_BY_ACCOUNT = ("message-accepted",)
RECEIPT_TOPICS = ("carrier-receipts", "receipts-unmatched")
_RANK = {t: i for i, t in enumerate((KEYED_BY_ID[0], *KEYED_BY_ACCOUNT, *KEYED_BY_ID[1:],
                                     *RECEIPT_TOPICS))}


@dataclass(frozen=True, slots=True)
class Event:
    """One record of the story."""

    at_ms: int
    topic: str  # short name
    partition: int
    offset: int
    what: str
    schema: str | None
    record: Mapping[str, Any] | None  # redacted

    def sort_key(self) -> tuple[int, int, int, int]:
        return (self.at_ms, _RANK.get(self.topic, len(_RANK)), self.partition, self.offset)

    def as_dict(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "time": ms_to_text(self.at_ms), "topic": self.topic,
                "partition": self.partition, "offset": self.offset, "what": self.what,
                "schema": self.schema, "record": self.record}


def _text(value: object) -> str:
    """Free text as it may be shown: phone numbers masked."""
    return str(redact_value("note", "" if value is None else str(value)))


def _error(record: Mapping[str, Any]) -> str:
    code, reason = record.get("error_code"), record.get("error_reason")
    if code is None and not reason:
        return ""
    return f": {code if code is not None else ''} {_text(reason or '')}".rstrip()


def describe(topic: str, schema: str | None, record: Mapping[str, Any] | None,
             headers: Mapping[str, str], decode_error: str | None = None) -> str:
    """What one record says happened to the message, in a line (addresses masked)."""
    if topic.startswith("dlq-"):
        replays = headers.get(H_REPLAY_COUNT)
        return (f"dead-lettered by {headers.get(H_STAGE, '?')}: "
                f"{headers.get(H_ERROR_CLASS, '?')}: {_text(headers.get(H_ERROR_MESSAGE))}"
                + (f" (after {replays} replay(s))" if replays else ""))
    if record is None:
        return f"undecodable record: {_text(decode_error)}"
    if topic in _TIERS:
        due = headers.get(H_DUE)
        what = (f"waiting in {topic} until {ms_to_text(int(due)) if due else '?'} "
                f"for {headers.get(H_TARGET, '?')}")
        if record.get("timer"):  # a status deadline waiting for its due time
            return what + f" ({record['timer']} deadline, attempt {record.get('attempt')})"
        attempt = record.get("attempt") or 0
        if schema == "message_accepted" and attempt:
            return what + f" (retry, attempt {attempt})"
        return what
    if schema == "message_requested":
        return f"requested: {record.get('channel')} for account {record.get('account_id')}"
    if schema == "message_accepted" and topic == "dispatch-ready":
        return f"released to dispatch, attempt {record.get('attempt', 0)}"
    if schema == "message_accepted":
        return (f"accepted: {record.get('segments')} segment(s) {record.get('encoding')}, "
                f"expires {ms_to_text(record.get('expires_at_ms'))}")
    if schema == "request_rejected":
        return "rejected" + _error(record)
    if schema == "callback_attempt":
        what = (f"callback {record.get('sequence')} ({record.get('status')}) to "
                f"{record.get('host')}, attempt {record.get('attempt')}: "
                f"{record.get('answer')} -> {record.get('verdict')}")
        due = record.get("next_attempt_at_ms")
        if due is not None:
            what += f", next attempt {ms_to_text(int(due))}"
        elif record.get("verdict") != "delivered":
            what += f" ({_text(record.get('reason'))})"
        return what
    if schema == "ratelimit_deferral":
        bucket = str(record.get("bucket", "?"))
        until = ms_to_text(record.get("expected_release_ms"))
        if bucket == "schedule":
            return f"scheduled until {until}"
        return (f"deferred by {bucket.split(':', 1)[0]} bucket until {until} "
                f"({_text(record.get('reason'))})")
    if schema == "dispatch_journal_entry":
        what = (f"{record.get('state')} via {record.get('connector')} "
                f"attempt {record.get('attempt')}")
        if record.get("carrier_message_id"):
            what += f", carrier id {record['carrier_message_id']}"
        if record.get("state") == "FAILED":
            what += _error(record) + (" (will retry)" if record.get("retryable") else " (final)")
        elif record.get("state") == "IN_DOUBT_RESOLVED":
            what += f": {_text(record.get('error_reason'))}"
        return what
    if schema == "carrier_receipt":
        return (f"receipt {record.get('status')} ({record.get('carrier_status')}) from "
                f"{record.get('connector')} for carrier id {record.get('carrier_message_id')}"
                + _error({"error_code": record.get("error_code"),
                          "error_reason": record.get("carrier_error")}))
    if record.get("timer"):  # a status-updates deadline
        due = headers.get(H_TIMER_DUE)
        if due:  # booked as a timer of the status stage until then
            return (f"deadline {record['timer']} booked for {ms_to_text(int(due))} "
                    f"(attempt {record.get('attempt')})")
        return f"deadline {record['timer']} due (attempt {record.get('attempt')})"
    if "status" in record:  # delivery_status and status_update
        what = f"status {record['status']}"
        if record.get("sequence") is not None:
            what += f" seq {record['sequence']}"
        if record.get("source"):
            what += f" from {record['source']}"
        if record.get("connector"):
            what += f" via {record['connector']}"
        return what + _error(record)
    return f"{schema} record"


def pending_deadlines(entry: bytes | None) -> list[str]:
    """The deadlines a status-store entry still holds, a line each (none for a tombstone)."""
    if entry is None:
        return []
    value, _expires = decode_entry(entry)
    return [f"pending deadline {update.get('timer')} due {ms_to_text(int(due))} "
            f"(attempt {update.get('attempt')}), held by the status stage"
            for due, update in sorted(value.get(status_stage.TIMERS_KEY) or [],
                                      key=lambda t: t[0])]


def _carrier_ids(events: list[tuple[Event, Mapping[str, Any] | None]]) -> set[tuple[str, str]]:
    """(connector, carrier id) pairs the message's records name."""
    out = set()
    for _event, record in events:
        if record and record.get("connector") and record.get("carrier_message_id"):
            out.add((str(record["connector"]), str(record["carrier_message_id"])))
    return out


class _Reader:
    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.client = admin(settings, timeout)
        self.meta = self.client.list_topics(timeout=timeout).topics
        self.codec = AvroCodec.from_settings(settings)

    def partitions(self, short: str, keys: set[str]) -> list[tuple[str, int]]:
        topic = self.settings.topic(short)
        if topic not in self.meta:  # not created (yet): nothing to tell from it
            return []
        count = len(self.meta[topic].partitions)
        return [(topic, p) for p in sorted({partition_for(k, count) for k in keys})]

    def read(self, tps: list[tuple[str, int]]) -> list[Message]:
        ranges = offsets.log_offsets(self.client, tps, self.timeout)
        try:
            return read_ranges(self.settings, ranges, timeout=max(self.timeout, 30.0))
        except TimeoutError as exc:
            raise BrokerError(str(exc)) from None

    def deadlines(self, message_id: str) -> list[Event]:
        """Pending deadlines from the latest status-store changelog entry of the message."""
        short = changelog_topic(self.settings, status_stage.STAGE, status_stage.STORE
                                ).removeprefix(self.settings.topic_prefix)
        latest = None
        for msg in self.read(self.partitions(short, {message_id})):
            if (msg.key() or b"").decode("utf-8", "replace") == message_id:
                latest = msg
        if latest is None:
            return []
        return [Event(latest.timestamp()[1], short, latest.partition(), latest.offset(), what,
                      None, None) for what in pending_deadlines(latest.value())]

    def event(self, msg: Message) -> tuple[Event, Mapping[str, Any] | None, Mapping[str, str]]:
        short = msg.topic().removeprefix(self.settings.topic_prefix)
        headers = header_dict(msg.headers())
        schema, record, error = decode_value(self.codec, msg.value())
        what = describe(short, schema, record, headers, error)
        event = Event(msg.timestamp()[1], short, msg.partition(), msg.offset(), what, schema,
                      redact(record) if record is not None else None)
        return event, record, headers


def trace(settings: Settings, message_id: str, *, timeout: float = 10.0) -> list[Event]:
    """Every record about ``message_id`` on the Telex topics, in time order."""
    reader = _Reader(settings, timeout)
    tps = [tp for short in KEYED_BY_ID for tp in reader.partitions(short, {message_id})]
    found: list[tuple[Event, Mapping[str, Any] | None]] = []
    for msg in reader.read(tps):
        event, record, headers = reader.event(msg)
        key = (msg.key() or b"").decode("utf-8", "replace")
        if message_id in (key, headers.get(H_MESSAGE_ID), (record or {}).get("message_id")):
            found.append((event, record))
    accounts = {str(r["account_id"]) for _, r in found if r and r.get("account_id")}
    account_tps = [tp for short in KEYED_BY_ACCOUNT for tp in reader.partitions(short, accounts)]
    for msg in reader.read(account_tps) if accounts else []:
        event, record, _ = reader.event(msg)
        if (record or {}).get("message_id") == message_id:
            found.append((event, record))
    carriers = _carrier_ids(found)
    keys = {receipt_key(c, i) for c, i in carriers}
    receipt_tps = [tp for short in RECEIPT_TOPICS for tp in reader.partitions(short, keys)]
    for msg in reader.read(receipt_tps) if keys else []:
        event, record, _ = reader.event(msg)
        key = (msg.key() or b"").decode("utf-8", "replace")
        pair = (str((record or {}).get("connector")),
                str((record or {}).get("carrier_message_id")))
        if key in keys or pair in carriers or (record or {}).get("message_id") == message_id:
            found.append((event, record))
    found += [(event, None) for event in reader.deadlines(message_id)]
    return sorted((e for e, _ in found), key=Event.sort_key)
