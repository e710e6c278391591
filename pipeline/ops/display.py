"""How the SRE tools show records: the log redaction rules applied to whole decoded records,
and times as UTC text or compact ages."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.observability import redact_value


def redact(value: Any, key: str = "") -> Any:
    """A decoded record as it may be shown: bodies and addresses masked, phone numbers in free
    text masked, secrets hidden (the log redaction rules, applied recursively)."""
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) if not _is_content(str(k)) else redact_value(str(k), v)
                for k, v in value.items()}
    if isinstance(value, bytes):  # e.g. a record carried inside another: never shown raw
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple):
        if _is_content(key):
            return redact_value(key, value)
        return [redact(v, key) for v in value]
    return redact_value(key, value)


def _is_content(key: str) -> bool:
    return redact_value(key, "x") != "x"


def ms_to_text(ms: int | None) -> str:
    """Epoch milliseconds as UTC ISO 8601 with milliseconds ('-' for none)."""
    if ms is None or ms < 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def age_text(ms: int | None, now_ms: int) -> str:
    """How long ago, compactly: '42s', '7m', '3h', '2d'."""
    if ms is None:
        return "-"
    seconds = max(0, now_ms - ms) // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
