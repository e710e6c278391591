"""Structured JSON logs with redaction, and the Prometheus endpoint of a worker.

Logs carry message ids, never what a message says or whom it goes to: phone numbers and bodies
are personal data. Redaction is a structlog processor, so it applies to every logger at once,
including fields added by code written later.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import structlog
from prometheus_client import start_http_server

__all__ = [
    "configure_logging",
    "redact",
    "redact_value",
    "start_metrics_server",
]

# Keys whose values are message content or addresses: replaced entirely.
_CONTENT_KEYS = frozenset({"body", "text", "media_urls", "recipient", "sender", "to", "from",
                           "from_", "phone", "phone_number", "msisdn", "destination"})
# Keys whose values are credentials.
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|api_?key|authorization|credential", re.I)
# E.164 numbers ("+" then digits, maybe spaced) anywhere in free text, e.g. an exception
# message. Bare digit runs are left alone: they are mostly offsets and timestamps.
# A space only inside digit groups ("+44 7911 123456"), so "+14155550100 (1/s)" masks the
# number and keeps the rate.
_PHONE = re.compile(r"\+\d(?:[\d().-]| (?=\d)){5,}\d")


def _mask_phone(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return f"<phone …{digits[-2:]}>"


def redact_value(key: str, value: Any) -> Any:
    """Redacted form of one log field."""
    if _SECRET_KEYS.search(key):
        return "***"
    if key in _CONTENT_KEYS:
        if isinstance(value, str):
            return f"<redacted {len(value)} chars>"
        return "<redacted>"
    if isinstance(value, str):
        return _PHONE.sub(_mask_phone, value)
    return value


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask content, addresses and secrets in every field."""
    for key in list(event_dict):
        event_dict[key] = redact_value(key, event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Configure structlog for JSON lines on ``stream`` (stderr by default). Idempotent."""
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> int:
    """Serve Prometheus metrics on ``addr:port``; returns the bound port (0 picks a free one)."""
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_port)
