"""The topic catalogue: every Telex topic, its partitions and its configuration, in one place.

Message-keyed topics share one partition count so that stages stay co-partitioned: the state a
stage keeps for a message id lives on the same partition number as the records about it.
State, journals and latest-status topics are compacted (the latest value per key is the truth);
streams, retry topics and dead letters are retained by time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pipeline.errors import TopicError
from pipeline.runtime.delay import TIER_DELAYS_MS, tier_topic
from pipeline.runtime.registry import changelogs, dead_letter_topics
from pipeline.settings import Settings

__all__ = [
    "COMPACTED",
    "DAY_MS",
    "STREAM",
    "ApplyReport",
    "TopicSpec",
    "admin_client",
    "apply_topics",
    "catalogue",
    "describe_configs",
    "find",
]

DAY_MS = 86_400_000

STREAM = "stream"
COMPACTED = "compacted"




@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What a topic must look like on the broker."""

    name: str
    kind: str
    partitions: int
    replication: int
    configs: dict[str, str] = field(default_factory=dict)
    description: str = ""


def _stream(retention_days: float) -> dict[str, str]:
    return {"cleanup.policy": "delete", "retention.ms": str(int(retention_days * DAY_MS))}


def _compacted() -> dict[str, str]:
    # min.compaction.lag keeps recent history readable for `telex trace`; delete.retention lets
    # tombstones reach every state consumer before they vanish.
    return {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": str(60 * 60 * 1000),
        "delete.retention.ms": str(DAY_MS),
    }


def _changelog() -> dict[str, str]:
    # Restores read the whole changelog: hourly segments let compaction keep it near one
    # record per live key; tombstones stay a day so a restore in progress still sees them.
    return {
        "cleanup.policy": "compact",
        "segment.ms": str(60 * 60 * 1000),
        "min.cleanable.dirty.ratio": "0.3",
        "delete.retention.ms": str(DAY_MS),
    }


# Every topic keeps the producers' codec (ADR 0004). The broker decompresses each batch to
# validate it and re-compresses it when the topic names another codec; "producer" (the Kafka
# default, pinned here so a cluster-wide compression.type cannot override it) stores batches as
# sent. Measured by bench.clientknobs (ingest, drained backlog): see ADR 0004 for the numbers.
_CODEC = {"compression.type": "producer"}


def catalogue(settings: Settings) -> list[TopicSpec]:
    """Every topic Telex needs, named with the configured prefix."""
    parts = settings.partitions
    rf = settings.replication_factor
    min_isr = str(max(1, min(2, rf - 1)))

    def spec(name: str, kind: str, configs: dict[str, str], description: str) -> TopicSpec:
        full = {**configs, "min.insync.replicas": min_isr, **_CODEC}
        return TopicSpec(settings.topic(name), kind, parts, rf, full, description)

    specs = [
        spec("message-requested", STREAM, _stream(7),
             "MessageRequested from the SDK / REST front door; key = message id"),
        spec("message-accepted", STREAM, _stream(7),
             "MessageAccepted: validated, de-duplicated; key = account id (the account "
             "rate-limit bucket's input)"),
        spec("request-rejections", STREAM, _stream(30),
             "RequestRejected: idempotency key reused with other content; key = message id"),
        spec("ratelimit-deferrals", STREAM, _stream(7),
             "RateLimitDeferral: why and until when a message waits; key = message id"),
        spec("rl-sender", STREAM, _stream(2),
             "MessageAccepted on its way through the sender bucket; key = channel:sender"),
        spec("rl-route", STREAM, _stream(2),
             "MessageAccepted on its way through the route bucket; key = channel:+country"),
        spec("dispatch-ready", STREAM, _stream(7),
             "MessageAccepted released by every rate limit, due now; key = message id"),
        spec("dispatch-journal", COMPACTED, _compacted(),
             "DispatchJournalEntry: ATTEMPTING / SUBMITTED / FAILED; key = message id"),
        spec("carrier-receipts", STREAM, _stream(7),
             "CarrierReceipt from SMPP deliver_sm and HTTP webhooks, and StatusUpdate 'sent' "
             "from dispatch announcing each submission; key = connector:carrier id"),
        spec("receipts-unmatched", STREAM, _stream(30),
             "CarrierReceipt that matched no journal entry within its TTL"),
        spec("status-updates", STREAM, _stream(7),
             "StatusUpdate (internal): what stages and receipts report, and deadlines; the "
             "status stage orders them into delivery-status; key = message id"),
        spec("delivery-status", STREAM, _stream(30),
             "DeliveryStatus history, every event in sequence order; key = message id"),
        spec("delivery-status-latest", COMPACTED, _compacted(),
             "DeliveryStatus, latest per message; key = message id"),
        spec("callback-attempts", STREAM, _stream(30),
             "CallbackAttempt: each status callback POSTed to a customer, its answer and "
             "verdict; key = message id"),
        spec("callback-endpoints", COMPACTED, _compacted(),
             "CallbackEndpoint: customer endpoint hosts disabled by the callbacks stage or "
             "enabled again by an operator, latest per host; key = host"),
        spec("dlq-parked", STREAM, _stream(30),
             "DeadLetterEnvelope of records that failed again after a replay"),
    ]
    specs += [
        spec(tier_topic(i), STREAM, _stream(max(2, 2 * delay / DAY_MS + 1)),
             f"Delayed records, actionable {delay} ms after they were written")
        for i, delay in enumerate(TIER_DELAYS_MS)
    ]
    specs += [
        spec(f"{stage}-{store}-changelog", COMPACTED, _changelog(),
             f"Changelog of the {stage} stage's {store} store: its latest entry per key")
        for stage, store in changelogs()
    ]
    specs += [
        spec(name, STREAM, _stream(30),
             f"DeadLetterEnvelope: records the {name.removeprefix('dlq-')} stage could not "
             "process")
        for name in dead_letter_topics()
    ]
    return specs


def find(settings: Settings, name: str) -> TopicSpec:
    """Catalogue entry by short or full name."""
    for spec in catalogue(settings):
        if name in (spec.name, spec.name.removeprefix(settings.topic_prefix)):
            return spec
    raise TopicError(f"unknown topic {name!r}: not in the Telex catalogue")


@dataclass(slots=True)
class ApplyReport:
    """What ``apply_topics`` did; a second run on an unchanged catalogue reports no changes."""

    created: list[str] = field(default_factory=list)
    updated: dict[str, dict[str, str]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


def apply_topics(
    admin: AdminClient, specs: Iterable[TopicSpec], timeout: float = 30.0
) -> ApplyReport:
    """Create missing topics and set drifted configs; idempotent.

    Partition counts are checked, never changed: adding partitions to a keyed topic moves keys to
    other partitions and breaks co-partitioned state, so drift is an error for a human to decide.
    """
    specs = list(specs)
    report = ApplyReport()
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise TopicError(f"cannot list topics: {exc}") from exc

    missing = [s for s in specs if s.name not in existing]
    already: set[str] = set()
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication, config=s.configs) for s in missing],
            operation_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout)
                report.created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise TopicError(f"cannot create topic {name}: {exc}") from exc
                already.add(name)  # created concurrently: check it like any existing topic
        _await_metadata(admin, report.created, timeout)
        if already:
            existing = admin.list_topics(timeout=timeout).topics

    present = [s for s in specs if s.name in existing or s.name in already]
    for s in present:
        have = len(existing[s.name].partitions)
        if have != s.partitions:
            raise TopicError(
                f"topic {s.name} has {have} partitions, the catalogue says {s.partitions}; "
                "changing it would move keys away from their state: migrate deliberately"
            )
    if present:
        current = describe_configs(admin, [s.name for s in present], timeout)
        for s in present:
            drift = {k: v for k, v in s.configs.items() if current[s.name].get(k) != v}
            if drift:
                _alter(admin, s.name, drift, timeout)
                report.updated[s.name] = drift
            else:
                report.unchanged.append(s.name)
    return report


def _await_metadata(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Return once every created topic shows in metadata with its leaders, so whoever runs
    next (a worker, a second apply) sees the catalogue in place."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        topics = admin.list_topics(timeout=timeout).topics
        pending = {
            n for n in pending
            if n not in topics or topics[n].error is not None
            or any(p.leader < 0 for p in topics[n].partitions.values())
        }
        if pending and time.monotonic() > deadline:
            raise TopicError(f"topics not visible after creation: {sorted(pending)}")
        if pending:
            time.sleep(0.05)  # metadata propagation; bounded by the deadline above


def describe_configs(
    admin: AdminClient, names: list[str], timeout: float = 30.0
) -> dict[str, dict[str, str]]:
    """Current configs of topics, as plain strings."""
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    out: dict[str, dict[str, str]] = {}
    for res, fut in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = fut.result(timeout)
        except KafkaException as exc:
            raise TopicError(f"cannot describe topic {res.name}: {exc}") from exc
        out[res.name] = {k: e.value for k, e in entries.items() if e.value is not None}
    return out


def _alter(admin: AdminClient, name: str, changes: dict[str, str], timeout: float) -> None:
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in changes.items()
    ]
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
    for fut in admin.incremental_alter_configs([res], request_timeout=timeout).values():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            raise TopicError(f"cannot update configs of {name}: {exc}") from exc
    # The change travels through the controller's metadata log: return once the broker
    # serves it, so the report never claims what a reader cannot see yet.
    deadline = time.monotonic() + timeout
    while True:
        now = describe_configs(admin, [name], timeout)[name]
        if all(now.get(k) == v for k, v in changes.items()):
            return
        if time.monotonic() > deadline:
            raise TopicError(f"configs of {name} not visible after update: {changes}")
        time.sleep(0.05)  # bounded by the deadline above
