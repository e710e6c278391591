"""Commit failures that mean "the group moved on without this member", not data loss.

When the broker is away longer than ``session.timeout.ms`` the coordinator expires the member;
its next commit fails with one of these. The records since the last commit are re-read by
whoever owns the partitions now, which at-least-once stages absorb (journal, sequence
numbers, dedup), so the right reaction is to log, drop the commit and let the consumer rejoin.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

LOST_MEMBERSHIP = frozenset({
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError._ASSIGNMENT_LOST, KafkaError._NO_OFFSET,
})


def is_lost_membership(exc: KafkaException) -> bool:
    """True when a failed commit only says this member no longer owns the partitions."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() in LOST_MEMBERSHIP
