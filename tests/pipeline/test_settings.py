"""Settings: environment, librdkafka translation, secrets."""

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import load_settings


def test_reads_environment(monkeypatch: pytest.MonkeyPatch):
    """Environment variables set the fields they document."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "10.1.2.3:9093")
    monkeypatch.setenv("TELEX_PARTITIONS", "12")
    s = load_settings()
    assert s.kafka_bootstrap_servers == "10.1.2.3:9093"
    assert s.partitions == 12


def test_sasl_tls_options_reach_librdkafka():
    """SASL/TLS settings become librdkafka options; unset ones are omitted."""
    s = load_settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="telex", kafka_sasl_password="s3cret",
        kafka_ssl_ca_location="/etc/ca.pem",
    )
    conf = s.kafka_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert "ssl.key.password" not in conf


def test_secrets_never_printed():
    """repr and redacted() never show a secret."""
    s = load_settings(kafka_sasl_password="s3cret", database_url="postgresql://u:pw@h/db")
    assert "s3cret" not in repr(s) and "pw@" not in repr(s)
    assert "s3cret" not in str(s.redacted()) and "pw@" not in str(s.redacted())


def test_producer_is_idempotent_with_acks_all():
    """Every Telex producer uses idempotence and acks=all."""
    conf = load_settings().producer_config()
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"


def test_invalid_value_is_a_config_error():
    """A bad value is reported as ConfigError naming the field."""
    with pytest.raises(ConfigError, match="partitions"):
        load_settings(partitions=0)


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch):
    """A worker started with to_env() reads back equal settings (lists and secrets included)."""
    original = load_settings(kafka_bootstrap_servers="10.0.0.1:9093", topic_prefix="t1.",
                             partitions=3, retry_schedule_s=(1, 2), kafka_sasl_password="pw",
                             commit_interval_s=0.5)
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    assert load_settings() == original


def test_runtime_clients_keep_the_producer_guarantees():
    """The batch runtime's tuned producer is still idempotent with acks=all and murmur2, and
    its consumer still commits manually."""
    s = load_settings()
    producer = s.runtime_producer_config()
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert producer["partitioner"] == "murmur2"
    assert s.runtime_consumer_config("g")["enable.auto.commit"] is False


def test_callback_allow_networks_are_parsed(monkeypatch: pytest.MonkeyPatch):
    """TELEX_CALLBACK_ALLOW_NETWORKS becomes the SSRF guard's allow-list (blanks ignored);
    unset, the list is empty and http:// callbacks are refused."""
    monkeypatch.setenv("TELEX_CALLBACK_ALLOW_NETWORKS", "127.0.0.0/8, ::1/128,")
    s = load_settings()
    assert [str(n) for n in s.callback_networks()] == ["127.0.0.0/8", "::1/128"]
    monkeypatch.delenv("TELEX_CALLBACK_ALLOW_NETWORKS")
    assert load_settings().callback_networks() == ()
    assert load_settings().callback_allow_http is False


@pytest.mark.parametrize("value", ["localhost", "10.0.0.1/8", "10.0.0.0/33"])
def test_invalid_callback_network_is_a_config_error(value: str):
    """A value that is not a CIDR network (host bits set included) is a ConfigError naming the
    variable."""
    with pytest.raises(ConfigError, match="TELEX_CALLBACK_ALLOW_NETWORKS"):
        load_settings(callback_allow_networks=value)
