"""Route table and failover across connectors' breakers (the breaker itself: test_breaker)."""

import json

import pytest

from connectors.base import ErrorKind
from pipeline.breaker import CircuitBreaker
from pipeline.errors import ConfigError, TelexError
from pipeline.stages.dispatch.routing import (
    NoRouteError,
    Route,
    RouteTable,
    choose,
    counts_against_health,
)

TABLE = RouteTable([
    Route("sms", "", ("smsc-b",)),
    Route("sms", "+44", ("smsc-a", "smsc-b")),
    Route("sms", "+4477", ("smsc-c", "smsc-a")),
    Route("whatsapp", "+44", ("whatsapp",)),
])


def _breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, base_cooldown_ms=1_000, max_cooldown_ms=4_000)


def _trip(breaker: CircuitBreaker, now_ms: int) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(now_ms)


def test_longest_prefix_wins():
    """The most specific matching prefix decides the connectors."""
    assert TABLE.candidates("sms", "+447700900123") == ("smsc-c", "smsc-a")
    assert TABLE.candidates("sms", "+442071234567") == ("smsc-a", "smsc-b")


def test_empty_prefix_matches_any_destination():
    """A route with prefix '' catches destinations no other route covers."""
    assert TABLE.candidates("sms", "+15551234567") == ("smsc-b",)


def test_channel_scheme_is_stripped_before_matching():
    """'whatsapp:+44…' matches the whatsapp route for +44."""
    assert TABLE.candidates("whatsapp", "whatsapp:+447700900123") == ("whatsapp",)


def test_no_route_raises_no_route_error():
    """A channel and destination without a route raise NoRouteError, a TelexError."""
    with pytest.raises(NoRouteError) as caught:
        TABLE.candidates("whatsapp", "whatsapp:+15551234567")
    assert isinstance(caught.value, TelexError)
    with pytest.raises(NoRouteError):
        TABLE.candidates("messenger", "messenger:12345")


def test_from_mapping_builds_table():
    """A list of dicts builds the same table; prefix defaults to ''."""
    table = RouteTable.from_mapping([
        {"channel": "sms", "connectors": ["smsc-b"]},
        {"channel": "sms", "prefix": "+1", "connectors": ["smsc-a", "smsc-b"]},
    ])
    assert table.candidates("sms", "+15551234567") == ("smsc-a", "smsc-b")
    assert table.candidates("sms", "+33612345678") == ("smsc-b",)


@pytest.mark.parametrize("raw", [
    [{"channel": "fax", "prefix": "+1", "connectors": ["a"]}],
    [{"channel": "sms", "prefix": "44", "connectors": ["a"]}],
    [{"channel": "sms", "prefix": "+1", "connectors": []}],
    [{"channel": "sms", "prefix": "+1", "connectors": "smsc-a"}],
    [{"channel": "sms", "prefix": "+1", "connectors": ["a", "a"]}],
    [{"channel": "sms", "prefix": "+1", "connectors": ["a"], "weight": 2}],
    [{"channel": "sms", "connectors": ["a"]},
     {"channel": "sms", "prefix": "", "connectors": ["b"]}],
    ["sms"],
    {"channel": "sms"},
])
def test_bad_config_raises_config_error(raw):
    """Invalid channels, prefixes, connector lists, keys or duplicates are ConfigError."""
    with pytest.raises(ConfigError):
        RouteTable.from_mapping(raw)


def test_from_file_reads_json(tmp_path):
    """A JSON file with {"routes": [...]} loads."""
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": [{"channel": "sms", "connectors": ["smsc-a"]}]}))
    assert RouteTable.from_file(path).candidates("sms", "+15551234567") == ("smsc-a",)


def test_from_file_bad_json_is_config_error(tmp_path):
    """Unreadable or malformed files are ConfigError, naming the file."""
    path = tmp_path / "routes.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"routes\.json"):
        RouteTable.from_file(path)
    with pytest.raises(ConfigError):
        RouteTable.from_file(tmp_path / "missing.json")


def test_health_failures_are_connector_kinds_only():
    """Timeouts, lost connections, server errors and throttling count; refusals do not."""
    for kind in (ErrorKind.TIMEOUT, ErrorKind.CONNECTION_LOST, ErrorKind.SERVER_ERROR,
                 ErrorKind.THROTTLED, ErrorKind.QUEUE_FULL):
        assert counts_against_health(kind)
    for kind in (ErrorKind.INVALID_DESTINATION, ErrorKind.REJECTED_CONTENT,
                 ErrorKind.OUTSIDE_WINDOW, ErrorKind.REJECTED, ErrorKind.EXPIRED,
                 ErrorKind.UNREACHABLE):
        assert not counts_against_health(kind)


def test_choose_prefers_first_healthy_candidate():
    """With every breaker closed the primary is chosen."""
    breakers = {"smsc-a": _breaker(), "smsc-b": _breaker()}
    assert choose(("smsc-a", "smsc-b"), breakers, 0) == "smsc-a"


def test_failover_to_next_and_back_after_recovery():
    """While the primary is open the next candidate is used; after recovery the primary again."""
    breakers = {"smsc-a": _breaker(), "smsc-b": _breaker()}
    candidates = ("smsc-a", "smsc-b")
    _trip(breakers["smsc-a"], 0)
    assert choose(candidates, breakers, 500) == "smsc-b"
    assert choose(candidates, breakers, 1_000) == "smsc-a"  # the half-open trial
    assert choose(candidates, breakers, 1_001) == "smsc-b"  # trial still in flight
    breakers["smsc-a"].record_success(1_002)
    assert choose(candidates, breakers, 1_003) == "smsc-a"


def test_choose_returns_none_when_all_open():
    """No candidate allowed: None, so the caller retries later."""
    breakers = {"smsc-a": _breaker(), "smsc-b": _breaker()}
    for breaker in breakers.values():
        _trip(breaker, 0)
    assert choose(("smsc-a", "smsc-b"), breakers, 10) is None


def test_candidate_without_breaker_counts_as_healthy():
    """A connector with no breaker yet is allowed."""
    breakers = {"smsc-a": _breaker()}
    _trip(breakers["smsc-a"], 0)
    assert choose(("smsc-a", "smsc-b"), breakers, 10) == "smsc-b"
