"""Disabled callback endpoints, shared by every callbacks worker and kept across restarts.

A host is disabled when it answers 410 Gone or fails for ``TELEX_CALLBACK_DISABLE_AFTER_S``
without a success. The worker that sees it happen writes a CallbackEndpoint record to the
compacted topic ``callback-endpoints`` (key = host); every worker follows that topic, so the
others stop sending to the host too and a restarted worker does not spend another day
re-learning it. An operator enables the host again with ``telex callbacks enable HOST``, which
writes an ``enabled`` record the workers follow in turn. ``telex health`` and
``telex callbacks list`` read the same topic.
"""

from __future__ import annotations

import collections
import threading
import uuid
from dataclasses import dataclass

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from pipeline.codec import AvroCodec
from pipeline.settings import Settings

__all__ = ["DISABLED", "ENABLED", "TOPIC", "EndpointFollower", "EndpointState", "decode",
           "encode"]

TOPIC = "callback-endpoints"
SCHEMA = "callback_endpoint"
DISABLED, ENABLED = "disabled", "enabled"
#: how long the follower's poll waits for a record before it looks at its stop flag.
POLL_S = 0.5

log = structlog.get_logger("telex.callbacks")


@dataclass(frozen=True, slots=True)
class EndpointState:
    """One CallbackEndpoint record: a host's state, why, when and set by whom."""

    host: str
    state: str  # DISABLED or ENABLED
    reason: str
    changed_at_ms: int
    changed_by: str  # "callbacks" or "operator"


def encode(codec: AvroCodec, state: EndpointState) -> bytes:
    return codec.encode(SCHEMA, {"host": state.host, "state": state.state,
                                 "reason": state.reason, "changed_at_ms": state.changed_at_ms,
                                 "changed_by": state.changed_by})


def decode(codec: AvroCodec, value: bytes) -> EndpointState:
    fields = codec.decode(value, expected=SCHEMA)
    return EndpointState(fields["host"], fields["state"], fields["reason"],
                         int(fields["changed_at_ms"]), fields["changed_by"])


class EndpointFollower:
    """Reads ``callback-endpoints`` from its beginning and then as it grows, on a thread of its
    own (no group: every worker reads every partition). :meth:`changes` hands what was read to
    the stage's thread; it is drained on every wake, so it holds at most what arrived since."""

    def __init__(self, settings: Settings, codec: AvroCodec) -> None:
        self._settings = settings
        self._codec = codec
        self._changes: collections.deque[EndpointState] = collections.deque()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="callback-endpoints",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until every record written before the follower started has been read (so a
        starting worker knows the disabled hosts before it sends anything); False on timeout."""
        return self._caught_up.wait(timeout_s)

    def pending(self) -> bool:
        return bool(self._changes)

    def changes(self) -> list[EndpointState]:
        out = []
        while self._changes:
            out.append(self._changes.popleft())
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        topic = self._settings.topic(TOPIC)
        consumer = Consumer({**self._settings.kafka_config(),
                             "group.id": "callback-endpoints-" + uuid.uuid4().hex,
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "enable.partition.eof": True})
        try:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            behind = set(meta.partitions)
            if not behind:
                self._caught_up.set()
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in behind])
            while not self._stop.is_set():
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("callback_endpoints_read_error", error=str(err))
                    elif behind:
                        behind.discard(msg.partition())
                        if not behind:
                            self._caught_up.set()
                    continue
                if msg.value() is None:
                    continue  # a tombstone: nothing to apply
                try:
                    self._changes.append(decode(self._codec, msg.value()))
                except Exception as exc:  # one bad record must not stop the follower
                    log.warning("callback_endpoints_bad_record", offset=msg.offset(),
                                partition=msg.partition(), error=repr(exc))
        except Exception as exc:
            log.error("callback_endpoints_follower_stopped", error=repr(exc))
        finally:
            consumer.close()
