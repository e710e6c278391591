"""The one frozen settings object, read from environment variables.

Every Kafka client in Telex (confluent-kafka producers, consumers and admin clients) gets its
connection options from :meth:`Settings.kafka_config`, so SASL/TLS is configured in one place.
Secrets are ``SecretStr``: they never appear in ``repr``, logs or ``telex`` output.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigError

__all__ = [
    "Settings",
    "get_settings",
    "load_settings",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class Settings(BaseSettings):
    """Telex configuration. Field docs name the environment variable and the default."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="KAFKA_BOOTSTRAP_SERVERS: comma-separated host:port list.",
    )
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL",
        description="KAFKA_SECURITY_PROTOCOL: PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL.",
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None, validation_alias="KAFKA_SASL_MECHANISM",
        description="KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.",
    )
    kafka_sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    kafka_ssl_ca_location: str | None = Field(None, validation_alias="KAFKA_SSL_CA_LOCATION")
    kafka_ssl_certificate_location: str | None = Field(
        None, validation_alias="KAFKA_SSL_CERTIFICATE_LOCATION"
    )
    kafka_ssl_key_location: str | None = Field(None, validation_alias="KAFKA_SSL_KEY_LOCATION")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, validation_alias="KAFKA_SSL_KEY_PASSWORD"
    )
    schema_registry_url: str | None = Field(
        None, validation_alias="SCHEMA_REGISTRY_URL",
        description="SCHEMA_REGISTRY_URL: use the Confluent wire format instead of "
        "Avro single-object encoding.",
    )
    database_url: SecretStr | None = Field(
        None, validation_alias="DATABASE_URL",
        description="DATABASE_URL: PostgreSQL URL for the status sink (may hold a password).",
    )
    topic_prefix: str = Field(
        "telex.", validation_alias="TELEX_TOPIC_PREFIX",
        description="TELEX_TOPIC_PREFIX: prefix of every topic name (default 'telex.').",
    )
    partitions: int = Field(
        6, ge=1, le=1024, validation_alias="TELEX_PARTITIONS",
        description="TELEX_PARTITIONS: partitions of every message-keyed topic (co-partitioned).",
    )
    replication_factor: int = Field(
        1, ge=1, le=10, validation_alias="TELEX_REPLICATION_FACTOR",
        description="TELEX_REPLICATION_FACTOR: 1 on the local broker, 3 in production.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, validation_alias="TELEX_METRICS_PORT",
        description="TELEX_METRICS_PORT: Prometheus endpoint port of a worker; 0 disables it.",
    )
    webhook_port: int = Field(
        8088, ge=0, le=65535, validation_alias="TELEX_WEBHOOK_PORT",
        description="TELEX_WEBHOOK_PORT: port of the status-webhook receiver (8088; 0 picks a "
        "free one).",
    )
    webhook_host: str = Field(
        "127.0.0.1", validation_alias="TELEX_WEBHOOK_HOST",
        description="TELEX_WEBHOOK_HOST: address the status-webhook receiver listens on.",
    )
    webhook_verify_token: SecretStr | None = Field(
        None, validation_alias="TELEX_WEBHOOK_VERIFY_TOKEN",
        description="TELEX_WEBHOOK_VERIFY_TOKEN: token Meta's GET subscription check must "
        "present; unset refuses every check (403).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="TELEX_LOG_LEVEL"
    )
    state_dir: str = Field(
        "state", validation_alias="TELEX_STATE_DIR",
        description="TELEX_STATE_DIR: local RocksDB state of stage workers (rebuilt from "
        "changelogs when lost).",
    )
    commit_interval_s: float = Field(
        1.0, gt=0, le=60, validation_alias="TELEX_COMMIT_INTERVAL_S",
        description="TELEX_COMMIT_INTERVAL_S: checkpoint period of stage workers (1 s). Outputs "
        "are produced as each batch is decided; a checkpoint flushes them with the stores' "
        "changelog records and commits the input offsets, so it bounds the records a crash "
        "replays, not the latency.",
    )
    checkpoint_records: int = Field(
        50_000, ge=1, validation_alias="TELEX_CHECKPOINT_RECORDS",
        description="TELEX_CHECKPOINT_RECORDS: checkpoint early after this many input records "
        "(50,000), so a burst never replays more than that after a crash.",
    )
    punctuate_interval_s: float = Field(
        1.0, gt=0, le=60, validation_alias="TELEX_PUNCTUATE_INTERVAL_S",
        description="TELEX_PUNCTUATE_INTERVAL_S: how often a stage worker fires its stores' due "
        "timers (1 s), idle or not: a timer fires at most this late (plus a busy batch).",
    )
    batch_max: int = Field(
        2_000, ge=1, le=100_000, validation_alias="TELEX_BATCH_MAX",
        description="TELEX_BATCH_MAX: most records a stage takes in one poll (2,000).",
    )
    flush_timeout_s: float = Field(
        30, gt=0, validation_alias="TELEX_FLUSH_TIMEOUT_S",
        description="TELEX_FLUSH_TIMEOUT_S: how long a checkpoint waits for the broker to "
        "acknowledge outputs and changelog records before the worker stops (30 s).",
    )
    senders_file: str | None = Field(
        None, validation_alias="TELEX_SENDERS_FILE",
        description="TELEX_SENDERS_FILE: JSON list of registered senders; the demo registry "
        "when unset.",
    )
    limits_file: str | None = Field(
        None, validation_alias="TELEX_LIMITS_FILE",
        description="TELEX_LIMITS_FILE: JSON rate limits (per sender, account, route); "
        "built-in defaults when unset.",
    )
    carriers_file: str | None = Field(
        None, validation_alias="TELEX_CARRIERS_FILE",
        description="TELEX_CARRIERS_FILE: JSON connectors and routes for the dispatch stage.",
    )
    dispatch_batch: int = Field(
        200, ge=1, le=10_000, validation_alias="TELEX_DISPATCH_BATCH",
        description="TELEX_DISPATCH_BATCH: records a dispatch worker journals and submits "
        "together; bounds the duplicates a crash can cause.",
    )
    retry_schedule_s: tuple[int, ...] = Field(  # default: dispatch_decision.RETRY_SCHEDULE_S
        (5, 30, 120, 600, 1800), validation_alias="TELEX_RETRY_SCHEDULE_S",
        description="TELEX_RETRY_SCHEDULE_S: JSON list of dispatch retry delays in seconds "
        "(exponential, with jitter); after the last one a retryable failure is final.",
    )
    dedup_window_s: int = Field(
        86_400, ge=60, validation_alias="TELEX_DEDUP_WINDOW_S",
        description="TELEX_DEDUP_WINDOW_S: how long an idempotency key is remembered (24 h).",
    )
    journal_retention_s: float | None = Field(
        None, gt=0, validation_alias="TELEX_JOURNAL_RETENTION_S",
        description="TELEX_JOURNAL_RETENTION_S: how long dispatch keeps a journal entry in its "
        "local store after the entry was written; unset: the longest window that can bring a "
        "copy of the message back (dedup window, validity, retries: see "
        "pipeline.stages.dispatch.journal). The journal topic keeps every entry regardless.",
    )
    pg_schema: str = Field(
        "telex", pattern=r"^[a-z_][a-z0-9_]{0,62}$", validation_alias="TELEX_PG_SCHEMA",
        description="TELEX_PG_SCHEMA: PostgreSQL schema the status sink writes its tables to.",
    )
    receipt_window_s: float = Field(
        172_800, gt=0, validation_alias="TELEX_RECEIPT_WINDOW_S",
        description="TELEX_RECEIPT_WINDOW_S: how long a sent message waits for its delivery "
        "receipt before it ends undelivered with 30008 (48 h; carriers retry for up to the "
        "validity period).",
    )
    in_doubt_window_s: float = Field(
        900, gt=0, validation_alias="TELEX_IN_DOUBT_WINDOW_S",
        description="TELEX_IN_DOUBT_WINDOW_S: how long a WhatsApp attempt left in doubt by a "
        "dispatch crash waits for a receipt naming it before it fails with 30008 (15 min).",
    )
    receipt_match_ttl_s: float = Field(
        30, gt=0, validation_alias="TELEX_RECEIPT_MATCH_TTL_S",
        description="TELEX_RECEIPT_MATCH_TTL_S: how long a receipt waits for dispatch to "
        "announce its carrier id before it is matched by message id or goes to "
        "receipts-unmatched.",
    )
    receipt_resends: int = Field(
        1, ge=0, le=5, validation_alias="TELEX_RECEIPT_RESENDS",
        description="TELEX_RECEIPT_RESENDS: resends through another route after a receipt "
        "with a resendable failure (30003, 30008, 30017) on SMS; 0 disables them.",
    )
    callback_secrets_file: str | None = Field(
        None, validation_alias="TELEX_CALLBACK_SECRETS_FILE",
        description="TELEX_CALLBACK_SECRETS_FILE: JSON of account -> 1 or 2 whsec_ signing "
        "secrets (newest first; '*' for every other account). Without it the callbacks stage "
        "does not start.",
    )
    callback_timeout_s: float = Field(
        10.0, gt=0, le=60, validation_alias="TELEX_CALLBACK_TIMEOUT_S",
        description="TELEX_CALLBACK_TIMEOUT_S: one callback attempt's budget (connect, send, "
        "answer), 10 s.",
    )
    callback_retry_ceilings_s: str = Field(
        "60,300,1800,7200,18000,28800,28800", validation_alias="TELEX_CALLBACK_RETRY_CEILINGS_S",
        description="TELEX_CALLBACK_RETRY_CEILINGS_S: ceilings of the waits between attempts "
        "(full jitter under each); attempts = entries + 1. Default: 8 attempts, ~24 h at worst.",
    )
    callback_host_concurrency: int = Field(
        16, ge=1, le=1000, validation_alias="TELEX_CALLBACK_HOST_CONCURRENCY",
        description="TELEX_CALLBACK_HOST_CONCURRENCY: attempts in flight to one endpoint host "
        "across all callbacks workers together (each holds its partitions' share).",
    )
    callback_account_concurrency: int = Field(
        64, ge=1, le=10_000, validation_alias="TELEX_CALLBACK_ACCOUNT_CONCURRENCY",
        description="TELEX_CALLBACK_ACCOUNT_CONCURRENCY: attempts in flight for one account "
        "across all callbacks workers together.",
    )
    callback_host_rate: float = Field(
        500.0, gt=0, validation_alias="TELEX_CALLBACK_HOST_RATE",
        description="TELEX_CALLBACK_HOST_RATE: callbacks per second to one endpoint host "
        "across all callbacks workers together (each holds its partitions' share).",
    )
    callback_breaker_failures: int = Field(
        5, ge=1, le=1000, validation_alias="TELEX_CALLBACK_BREAKER_FAILURES",
        description="TELEX_CALLBACK_BREAKER_FAILURES: consecutive failed attempts (no answer, "
        "408/429/5xx) that open a host's circuit breaker.",
    )
    callback_disable_after_s: float = Field(
        86_400.0, gt=0, validation_alias="TELEX_CALLBACK_DISABLE_AFTER_S",
        description="TELEX_CALLBACK_DISABLE_AFTER_S: a host failing without one success for "
        "this long is disabled (its callbacks dead-lettered) until a worker restarts.",
    )
    callback_allow_http: bool = Field(
        False, validation_alias="TELEX_CALLBACK_ALLOW_HTTP",
        description="TELEX_CALLBACK_ALLOW_HTTP: accept http:// status callback URLs (default "
        "false: https only); for local use, plain HTTP exposes every callback on the way.",
    )
    callback_allow_networks: str = Field(
        "", validation_alias="TELEX_CALLBACK_ALLOW_NETWORKS",
        description="TELEX_CALLBACK_ALLOW_NETWORKS: comma-separated CIDR networks the callback "
        "SSRF guard lets through although they are internal (e.g. 127.0.0.0/8 for the demo); "
        "empty by default. Parsed by callback_networks().",
    )

    api_host: str = Field(
        "127.0.0.1", validation_alias="TELEX_API_HOST",
        description="TELEX_API_HOST: address the REST API (`telex api`) listens on.",
    )
    api_port: int = Field(
        8080, ge=0, le=65535, validation_alias="TELEX_API_PORT",
        description="TELEX_API_PORT: port of the REST API (8080; 0 picks a free one).",
    )
    api_keys_file: str | None = Field(
        None, validation_alias="TELEX_API_KEYS_FILE",
        description="TELEX_API_KEYS_FILE: JSON file of API keys (key id, account, scrypt hash "
        "and salt of the secret), written by `telex api key create`; unset refuses every "
        "request (401).",
    )
    api_rate: float = Field(
        100.0, gt=0, validation_alias="TELEX_API_RATE",
        description="TELEX_API_RATE: requests per second one account may make to one API "
        "process (100); past it and the burst, 429 with Retry-After.",
    )
    api_burst: float = Field(
        200.0, ge=1, validation_alias="TELEX_API_BURST",
        description="TELEX_API_BURST: requests an idle account may make at once (200).",
    )
    api_max_body_bytes: int = Field(
        65_536, ge=1024, le=10_485_760, validation_alias="TELEX_API_MAX_BODY_BYTES",
        description="TELEX_API_MAX_BODY_BYTES: largest request body accepted (64 KiB; a "
        "4,096-character body with 10 media URLs fits many times over); larger is 413.",
    )
    api_publish_timeout_s: float = Field(
        5.0, gt=0, le=60, validation_alias="TELEX_API_PUBLISH_TIMEOUT_S",
        description="TELEX_API_PUBLISH_TIMEOUT_S: how long a POST waits for Kafka's "
        "acknowledgement (5 s) before answering 503. It is librdkafka's message.timeout.ms: "
        "once it passes the producer has dropped the request, so a 503 is never followed "
        "by a publish.",
    )
    api_db_connections: int = Field(
        4, ge=1, le=64, validation_alias="TELEX_API_DB_CONNECTIONS",
        description="TELEX_API_DB_CONNECTIONS: PostgreSQL connections of one API process (4).",
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name at least one host:port")
        return value.strip()

    @field_validator("callback_allow_networks")
    @classmethod
    def _callback_networks_parse(cls, value: str) -> str:
        _parse_networks(value)  # raises ConfigError naming the variable
        return value

    def callback_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """TELEX_CALLBACK_ALLOW_NETWORKS parsed: the callback SSRF guard's allow-list."""
        return _parse_networks(self.callback_allow_networks)

    def kafka_config(self) -> dict[str, str]:
        """librdkafka connection options shared by every client (no client-specific tuning)."""
        conf: dict[str, str] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        optional = {
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": _reveal(self.kafka_sasl_password),
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
            "ssl.key.password": _reveal(self.kafka_ssl_key_password),
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        return conf

    def producer_config(self) -> dict[str, str | int | bool]:
        """Producer options: idempotent, acks=all, batched (never one round trip per record).

        The partitioner is murmur2, as every Java client uses:
        a key must land on the same partition whichever Telex process writes it, or a bucket
        gets two owners and one message's records lose their order.
        """
        return {
            **self.kafka_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2",
        }

    def consumer_config(self, group: str) -> dict[str, str | int | bool]:
        """Options of a stage's own consumer (manual commits, earliest, quick failover).

        A 10 s session (instead of 45 s) lets the group move a killed worker's partitions to a
        live one within seconds; heartbeats every 2 s keep healthy members well inside it.
        """
        return {
            **self.kafka_config(),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 20,
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
        }

    def runtime_producer_config(self) -> dict[str, str | int | bool]:
        """The batch runtime's producer: delivery reports for failures only (a checkpoint
        checks them all; success needs no Python call per record).

        Linger 1 ms, not 5 (ADR 0004): a runtime stage already produces a whole polled batch
        at once, so its batches come from the fetch, not from lingering; and linger is paid on
        every hop of accept->submit (~5), whose p50 budget is 10 ms. Measured by
        ``bench.clientknobs`` (4-hop chain, 1,000 msg/s): linger 20/50 cut produce requests per
        message from 1.16 (linger 5) to 0.79/0.35 but add 15-45 ms per hop; linger 1 costs 1.93.
        Full batches (a backlog) form regardless of linger.
        """
        return {**self.producer_config(), "delivery.report.only.error": True,
                "linger.ms": 1}

    def runtime_consumer_config(self, group: str) -> dict[str, str | int | bool]:
        """The batch runtime's consumer: cooperative rebalancing (only moved partitions pause
        and restore) and long idle fetches (a fetch returns as soon as a record arrives, so a
        longer wait only saves an idle consumer's requests, never adds latency)."""
        # fetch.min.bytes stays 1 (ADR 0004): 16 KiB with a 10 ms wait cut fetch requests per
        # message from 0.70 to 0.27 in bench.clientknobs, but below ~6,000 msg/s every fetch
        # then waits the full 10 ms, on every hop of a 10 ms budget.
        return {
            **self.consumer_config(group),
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 500,
        }

    def topic(self, name: str) -> str:
        """Full topic name of catalogue entry ``name``."""
        return f"{self.topic_prefix}{name}"

    def to_env(self) -> dict[str, str]:
        """These settings as the environment variables a child process (a stage worker) reads
        back into equal settings. Secrets are included: this is for a child's environment,
        never for printing."""
        env: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None or not isinstance(field.validation_alias, str):
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, tuple):
                value = json.dumps(list(value))
            env[field.validation_alias] = str(value)
        return env

    def redacted(self) -> dict[str, object]:
        """Settings as a dict safe to print or log (secrets masked)."""
        return {
            k: ("***" if isinstance(v, SecretStr) else v)
            for k, v in self.model_dump().items()
        }


def _parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs; strict (no host bits set), since each one widens what Telex may
    reach: 10.0.0.1/8 is more likely a typo than a wish to open 10.0.0.0/8."""
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError as exc:
            raise ConfigError(f"TELEX_CALLBACK_ALLOW_NETWORKS: {part!r} is not a CIDR network "
                              f"({exc})") from exc
    return tuple(networks)


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus ``overrides``), raising ConfigError if invalid."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"invalid Telex settings: {exc}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
