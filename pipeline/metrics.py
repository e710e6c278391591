"""Prometheus metrics shared by every stage, labelled by stage so one dashboard fits all."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

RECORDS = Counter(
    "telex_stage_records_total",
    "Records a stage finished, by outcome (accepted, duplicate, conflict, rejected, ...).",
    ["stage", "outcome"],
)
REJECTED = Counter(
    "telex_stage_rejected_total",
    "Messages a stage ended as failed, by user-facing error code.",
    ["stage", "code"],
)
DEAD_LETTERS = Counter(
    "telex_dead_letters_total",
    "Records routed to a dead-letter topic, by stage and error class.",
    ["stage", "error_class"],
)
RETRIES = Counter(
    "telex_retries_total", "Records sent to a retry topic, by stage and attempt.",
    ["stage", "attempt"],
)
PROCESSING_SECONDS = Histogram(
    "telex_stage_processing_seconds",
    "Time a stage spends deciding one record (excludes waiting for input).",
    ["stage"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
)
END_TO_END_SECONDS = Histogram(
    "telex_stage_event_age_seconds",
    "Age of a record (now minus its Kafka timestamp) when a stage finished it.",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
)
CONSUMER_LAG = Gauge(
    "telex_consumer_lag_records", "Records behind the partition end, per stage and partition.",
    ["stage", "topic", "partition"],
)
RATELIMIT_BACKLOG = Gauge(
    "telex_ratelimit_backlog_seconds",
    "How far ahead a bucket is booked: about the wait a new message would see.",
    ["dimension", "bucket"],
)
RATELIMIT_QUEUED_SEGMENTS = Gauge(
    "telex_ratelimit_queued_segments",
    "Segments booked ahead in a bucket: its queue depth.",
    ["dimension", "bucket"],
)
CONNECTOR_SUBMITS = Counter(
    "telex_connector_submits_total",
    "Submits per connector, by result: ok or the error kind (throttled, timeout, ...).",
    ["connector", "result"],
)
CONNECTOR_SUBMIT_SECONDS = Histogram(
    "telex_connector_submit_seconds",
    "Time from handing a message to a connector until the carrier answered.",
    ["connector"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
CONNECTOR_WINDOW_IN_USE = Gauge(
    "telex_connector_window_in_use", "Outstanding submits of a connector (its window).",
    ["connector"],
)
CONNECTOR_BREAKER_STATE = Gauge(
    "telex_connector_breaker_state",
    "Circuit breaker per connector: 0 closed, 1 half-open, 2 open.",
    ["connector"],
)
CALLBACK_ATTEMPTS = Counter(
    "telex_callback_attempts_total",
    "Status callback attempts, by answer class (2xx, 3xx, 4xx, 410, 5xx, timeout, connect, "
    "tls, protocol, refused) and verdict (delivered, retry, give_up, disable).",
    ["answer", "verdict"],
)
CALLBACK_SECONDS = Histogram(
    "telex_callback_attempt_seconds",
    "Duration of one callback attempt (resolve, connect, answer), by answer class.",
    ["answer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CALLBACK_IN_FLIGHT = Gauge(
    "telex_callback_in_flight", "Callback attempts in flight in this worker.")
CALLBACK_HOSTS = Gauge(
    "telex_callback_hosts",
    "Endpoint hosts this worker knows, by breaker state (closed, open, half_open, disabled).",
    ["state"],
)
CALLBACK_DEAD_LETTERED = Counter(
    "telex_callback_dead_lettered_total",
    "Callbacks given up and written to dlq-callbacks, by reason class.",
    ["reason"],
)
RUNTIME_BATCH_RECORDS = Histogram(
    "telex_runtime_batch_records", "Records per polled batch of a batch-runtime stage.",
    ["stage"], buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000),
)
RUNTIME_CHANGELOG_RECORDS = Counter(
    "telex_runtime_changelog_records_total",
    "Changelog records written at checkpoints (one per key changed since the last one).",
    ["stage"],
)
RUNTIME_VIEW_RECORDS = Counter(
    "telex_runtime_view_records_total",
    "Records of compacted view topics: produced (one per key changed in a checkpoint) or "
    "superseded (a later value of the same key came before the checkpoint).",
    ["stage", "outcome"],
)
RUNTIME_CHECKPOINT_SECONDS = Histogram(
    "telex_runtime_checkpoint_seconds",
    "Duration of a checkpoint: changelog, flush, commit, local state.",
    ["stage"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)
RUNTIME_RESTORED_KEYS = Counter(
    "telex_runtime_restored_records_total",
    "Changelog records replayed into stores on partition assignment.",
    ["stage", "store"],
)


class _RocksDBCollector:
    """RocksDB memory of this process's disk stores, read from RocksDB at each scrape
    (:func:`pipeline.runtime.store.rocksdb_memory`). The block cache is shared by every store of
    the process and the memtables are charged to it, so it is reported once, not per store."""

    def describe(self) -> list[Metric]:
        return []  # collected lazily: no store may be open at registration

    def collect(self) -> Iterator[Metric]:
        from pipeline.runtime.store import rocksdb_memory

        figures = rocksdb_memory()
        if not figures:
            return
        cache = figures["cache"]
        for name, help_text in (
                ("capacity", "Capacity of the process's one RocksDB block cache."),
                ("usage", "Bytes in the block cache: data, index and filter blocks, and the "
                 "memtables charged to it."),
                ("pinned", "Bytes of the block cache pinned by readers (not evictable)."),
                ("memtables_charged", "Memtable bytes charged to the block cache by the "
                 "write buffer manager.")):
            yield GaugeMetricFamily(f"telex_rocksdb_block_cache_{name}_bytes", help_text,
                                    value=cache[name])
        roles = GaugeMetricFamily(
            "telex_rocksdb_block_cache_role_bytes",
            "Block cache bytes by role (DataBlock, FilterBlock, IndexBlock, WriteBuffer: the "
            "memtables' charge, ...), from RocksDB's entry statistics (up to a minute old).",
            labels=["role"])
        for role, size in sorted(cache["roles"].items()):
            roles.add_metric([role], size)
        yield roles
        per_store = (
            ("open", "telex_rocksdb_open_stores", "Open partition stores (RocksDB databases)."),
            ("memtables", "telex_rocksdb_memtable_bytes",
             "rocksdb.cur-size-all-mem-tables summed over the store's partitions."),
            ("table_readers", "telex_rocksdb_table_readers_bytes",
             "rocksdb.estimate-table-readers-mem summed over the store's partitions (outside the "
             "block cache: index and filter blocks are cached)."))
        for key, metric, help_text in per_store:
            family = GaugeMetricFamily(metric, help_text, labels=["store"])
            for store, values in sorted(figures["stores"].items()):
                family.add_metric([store], values[key])
            yield family


REGISTRY.register(_RocksDBCollector())  # type: ignore[arg-type]
