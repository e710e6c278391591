"""Carrier configuration: which connectors exist and how messages route to them.

``TELEX_CARRIERS_FILE`` (JSON):

    {"connectors": [{"name": "smsc-a", "type": "smpp", "host": "127.0.0.1", "port": 2775,
                     "system_id": "telex", "password": "secret", "window": 10}],
     "routes": [{"channel": "sms", "prefix": "+1", "connectors": ["smsc-a", "smsc-b"]}]}

Passwords stay in this file (or a secret mount), never in logs: connector configs hide them from
``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.base import Connector
from connectors.smpp.client import SmppClient, SmppConfig
from pipeline.errors import ConfigError
from pipeline.routing import RouteTable


@dataclass(frozen=True)
class Carriers:
    connectors: Mapping[str, Mapping[str, Any]]
    routes: RouteTable

    @classmethod
    def from_file(cls, path: str | Path) -> Carriers:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read carriers file {path}: {exc}") from exc
        connectors = {str(c["name"]): c for c in data.get("connectors", [])}
        routes = RouteTable.from_mapping(data.get("routes", []))
        for route in routes.routes:
            unknown = set(route.connectors) - set(connectors)
            if unknown:
                raise ConfigError(f"route {route} names unknown connectors {sorted(unknown)}")
        return cls(connectors, routes)

    def build(self, name: str) -> Connector:
        """A connector instance (not started) for ``name``."""
        cfg = self.connectors[name]
        if cfg.get("type", "smpp") != "smpp":
            raise ConfigError(f"connector {name}: type {cfg.get('type')!r} is not supported yet")
        return SmppClient(SmppConfig(
            host=str(cfg["host"]), port=int(cfg["port"]), system_id=str(cfg["system_id"]),
            password=str(cfg["password"]), name=name, window=int(cfg.get("window", 10)),
            response_timeout_s=float(cfg.get("response_timeout_s", 10.0)),
        ))
