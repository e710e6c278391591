"""Every Kafka record header Telex writes or reads, in one place: the names are a contract
between stages, the SRE tools and whoever reads the topics, so they live apart from the code
that sets them. Values are UTF-8 text unless said otherwise."""

from __future__ import annotations

__all__ = [
    "H_DEADLINE",
    "H_DLQ",
    "H_DUE",
    "H_ERROR_CLASS",
    "H_ERROR_MESSAGE",
    "H_FAILURE_COUNT",
    "H_FIRST_FAILURE",
    "H_MESSAGE_ID",
    "H_ORIGINAL_OFFSET",
    "H_ORIGINAL_PARTITION",
    "H_ORIGINAL_TIMESTAMP",
    "H_ORIGINAL_TOPIC",
    "H_PACE",
    "H_PARKED",
    "H_REPLAY",
    "H_REPLAY_AT",
    "H_REPLAY_BY",
    "H_REPLAY_COUNT",
    "H_REPLAY_FROM_OFFSET",
    "H_REPLAY_FROM_PARTITION",
    "H_REPLAY_FROM_TOPIC",
    "H_RESEND_AVOID",
    "H_SOURCE_OFFSET",
    "H_STAGE",
    "H_TARGET",
    "H_TIMER_DUE",
]

# -- the stage runtime --
# On a changelog record: the input offset the store's state reflects (restore skips records
# of a checkpoint that never committed).
H_SOURCE_OFFSET = "telex.changelog.source_offset"

# -- delay tiers (pipeline/runtime/delay.py) --
H_DUE = "telex.delay.due_ms"  # when the record is due (epoch ms)
H_TARGET = "telex.delay.target"  # catalogue short name it is released to
H_PACE = "telex.delay.pace"  # "<ms per segment>:<segments>:<bucket>" for rate-limited records

# -- dead letters (pipeline/runtime/deadletter.py): provenance of a record a stage refused --
H_DLQ = "telex.dlq."
H_ORIGINAL_TOPIC = H_DLQ + "original_topic"
H_ORIGINAL_PARTITION = H_DLQ + "original_partition"
H_ORIGINAL_OFFSET = H_DLQ + "original_offset"
H_ORIGINAL_TIMESTAMP = H_DLQ + "original_timestamp_ms"
H_STAGE = H_DLQ + "stage"
H_ERROR_CLASS = H_DLQ + "error_class"
H_ERROR_MESSAGE = H_DLQ + "error_message"  # redacted, bounded
H_FIRST_FAILURE = H_DLQ + "first_failure_ms"
H_FAILURE_COUNT = H_DLQ + "failure_count"
H_MESSAGE_ID = H_DLQ + "message_id"  # for records keyed by something else (buckets)

# -- replay and parking of dead letters (`telex dlq`) --
H_REPLAY = "telex.replay."
H_REPLAY_FROM_TOPIC = H_REPLAY + "from_topic"
H_REPLAY_FROM_PARTITION = H_REPLAY + "from_partition"
H_REPLAY_FROM_OFFSET = H_REPLAY + "from_offset"
H_REPLAY_AT = H_REPLAY + "at_ms"
H_REPLAY_BY = H_REPLAY + "by"
H_REPLAY_COUNT = H_REPLAY + "count"
H_PARKED = "telex.parked."  # prefix of the headers `replay` adds when it parks a record

# -- statuses --
H_RESEND_AVOID = "telex.resend.avoid"  # on a resend to dispatch-ready: the connector to avoid
# On a deadline (a StatusUpdate with ``timer``) written straight to status-updates: its due time
# (epoch ms). The status stage keeps it as a timer in the message's entry until then.
H_TIMER_DUE = "telex.timer.due_ms"
# On every delivery-status event of a message that has a status callback URL: the URL, so the
# callbacks stage needs no second input to learn it (docs/adr/0005-status-callbacks.md).
H_CALLBACK_URL = "telex.callback.url"
# Read only: reconcile deadlines still in flight in the delay tiers from before deadlines
# became store timers.
H_DEADLINE = "telex.reconcile.deadline"
