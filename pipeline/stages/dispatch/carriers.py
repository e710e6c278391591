"""Carrier configuration: which connectors exist and how messages route to them.

``TELEX_CARRIERS_FILE`` (JSON):

    {"connectors": [
       {"name": "smsc-a", "type": "smpp", "host": "127.0.0.1", "port": 2775,
        "system_id": "telex", "password": "secret", "window": 10, "response_timeout_s": 10,
        "breaker": {"failure_threshold": 5, "base_cooldown_ms": 5000}},
       {"name": "smsc-b", "type": "smpp", "host": "127.0.0.1", "port": 2776,
        "system_id": "telex", "password": "secret"},
       {"name": "wa", "type": "whatsapp", "base_url": "https://graph.facebook.com",
        "phone_number_id": "1234567890", "access_token": "EAAG…", "app_secret": "…",
        "window": 64, "timeout_s": 10, "trust_env": true}],
     "routes": [{"channel": "sms", "prefix": "+1", "connectors": ["smsc-a", "smsc-b"]},
                {"channel": "whatsapp", "prefix": "", "connectors": ["wa"]}]}

Per type, the required keys are: smpp ``host``, ``port``, ``system_id``, ``password``;
whatsapp ``base_url``, ``phone_number_id``, ``access_token``. ``type`` defaults to "smpp".
Unknown keys are refused, so a misspelt option fails at start-up rather than being ignored.
``breaker`` (any type, optional) overrides
:class:`~pipeline.breaker.CircuitBreaker` defaults (dispatch's: late results ignored while
open, a lost trial given up after ``trial_timeout_ms``).

Passwords, tokens and secrets stay in this file (or a secret mount), never in logs: connector
configs hide them from ``repr``, and no error raised here quotes a value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.base import Connector
from connectors.http_channel.client import WhatsAppClient, WhatsAppConfig
from connectors.smpp.client import SmppClient, SmppConfig
from pipeline.breaker import CircuitBreaker
from pipeline.configfile import read_json
from pipeline.errors import ConfigError
from pipeline.stages.dispatch.routing import RouteTable

__all__ = ["Carriers"]


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("a non-empty string")
    return value


def _secret(value: object) -> str:
    if not isinstance(value, str):  # may be empty (e.g. an app secret not used)
        raise TypeError("a string")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("a number")
    return float(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


# Per connector type: config class, and key → (converter, required). Keys become the config's
# keyword arguments; optional keys left out keep the config class's defaults.
_Fields = Mapping[str, tuple[Callable[[object], Any], bool]]
_TYPES: Mapping[str, tuple[type, _Fields]] = {
    "smpp": (SmppConfig, {
        "host": (_string, True), "port": (_int, True), "system_id": (_string, True),
        "password": (_secret, True), "system_type": (_secret, False), "window": (_int, False),
        "response_timeout_s": (_number, False), "bind_timeout_s": (_number, False),
        "enquire_link_s": (_number, False), "reconnect_initial_s": (_number, False),
        "reconnect_max_s": (_number, False),
    }),
    "whatsapp": (WhatsAppConfig, {
        "base_url": (_string, True), "phone_number_id": (_string, True),
        "access_token": (_string, True), "app_secret": (_secret, False),
        "api_version": (_string, False), "window": (_int, False), "timeout_s": (_number, False),
        "trust_env": (_flag, False),
    }),
}
_COMMON = {"name", "type", "breaker"}
_BREAKER_KEYS = {"failure_threshold", "base_cooldown_ms", "max_cooldown_ms", "half_open_trials",
                 "trial_timeout_ms"}


def _connector_config(name: str, raw: Mapping[str, Any]) -> SmppConfig | WhatsAppConfig:
    """The typed config of connector ``name``; ConfigError names the key, never its value."""
    kind = raw.get("type", "smpp")
    if kind not in _TYPES:
        raise ConfigError(f"connector {name}: unknown type {kind!r} (known: {sorted(_TYPES)})")
    config_class, fields = _TYPES[kind]
    unknown = set(raw) - set(fields) - _COMMON
    if unknown:
        raise ConfigError(f"connector {name} ({kind}): unknown keys {sorted(unknown)}")
    missing = sorted(k for k, (_, required) in fields.items() if required and k not in raw)
    if missing:
        raise ConfigError(f"connector {name} ({kind}): missing {missing}")
    kwargs: dict[str, Any] = {"name": name}
    for key, (convert, _) in fields.items():
        if key in raw:
            try:
                kwargs[key] = convert(raw[key])
            except TypeError as exc:
                raise ConfigError(f"connector {name} ({kind}): {key!r} must be {exc}") from None
    if kwargs.get("window", 1) < 1:
        raise ConfigError(f"connector {name} ({kind}): 'window' must be at least 1")
    config: SmppConfig | WhatsAppConfig = config_class(**kwargs)
    return config


def _breaker(name: str, raw: object) -> CircuitBreaker:
    if raw is None:
        return CircuitBreaker()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"connector {name}: 'breaker' must be an object")
    unknown = set(raw) - _BREAKER_KEYS
    if unknown:
        raise ConfigError(f"connector {name}: breaker has unknown keys {sorted(unknown)}")
    try:
        return CircuitBreaker(**{k: _int(v) for k, v in raw.items()})
    except TypeError as exc:
        raise ConfigError(f"connector {name}: breaker settings must be {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"connector {name}: breaker: {exc}") from None


@dataclass(frozen=True)
class Carriers:
    connectors: Mapping[str, Mapping[str, Any]]
    routes: RouteTable

    def __post_init__(self) -> None:
        for name, raw in self.connectors.items():  # fail at start-up, not at first use
            _connector_config(name, raw)
            _breaker(name, raw.get("breaker"))
        for route in self.routes.routes:
            unknown = set(route.connectors) - set(self.connectors)
            if unknown:
                raise ConfigError(f"route {route} names unknown connectors {sorted(unknown)}")

    @classmethod
    def from_file(cls, path: str | Path) -> Carriers:
        data = read_json(path, "carriers file")
        if not isinstance(data, Mapping):
            raise ConfigError(f"carriers file {path}: expected an object")
        raw = data.get("connectors", [])
        if not isinstance(raw, list) or not all(isinstance(c, Mapping) for c in raw):
            raise ConfigError(f"carriers file {path}: 'connectors' must be a list of objects")
        connectors: dict[str, Mapping[str, Any]] = {}
        for i, item in enumerate(raw):
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"carriers file {path}: connector #{i} needs a 'name'")
            if name in connectors:
                raise ConfigError(f"carriers file {path}: connector {name} defined twice")
            connectors[name] = item
        return cls(connectors, RouteTable.from_mapping(data.get("routes", [])))

    def build(self, name: str) -> Connector:
        """A connector instance (not started) for ``name``."""
        config = _connector_config(name, self._raw(name))
        if isinstance(config, WhatsAppConfig):
            return WhatsAppClient(config)
        return SmppClient(config)

    def breaker(self, name: str) -> CircuitBreaker:
        """A fresh circuit breaker for ``name``: its ``breaker`` settings, else the defaults."""
        return _breaker(name, self._raw(name).get("breaker"))

    def _raw(self, name: str) -> Mapping[str, Any]:
        try:
            return self.connectors[name]
        except KeyError:
            raise ConfigError(f"no connector named {name!r}") from None
