"""The sender registry: which sender addresses may send on which channel, for which accounts.

A sender's kind decides its default carrier rate limit (long code ~1 segment/s, toll-free 3,
short code 100, ...), so the registry is shared by validation and rate limiting. It is loaded
from a JSON file (``TELEX_SENDERS_FILE``); without one, the demo registry below is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.configfile import read_json
from pipeline.errors import ConfigError

__all__ = [
    "DEMO_SENDERS",
    "Sender",
    "SenderKind",
    "SenderRegistry",
    "load_registry",
]


class SenderKind(StrEnum):
    LONG_CODE = "long_code"
    TOLL_FREE = "toll_free"
    SHORT_CODE = "short_code"
    ALPHANUMERIC = "alphanumeric"
    WHATSAPP = "whatsapp"
    MESSENGER = "messenger"


@dataclass(frozen=True, slots=True)
class Sender:
    address: str
    channel: str
    kind: SenderKind
    accounts: frozenset[str] | None = None  # None: any account may use it

    def allows(self, account_id: str) -> bool:
        return self.accounts is None or account_id in self.accounts


class SenderRegistry:
    """Lookup of registered senders by (channel, address)."""

    def __init__(self, senders: Iterable[Sender]) -> None:
        self._by_key = {(s.channel, s.address): s for s in senders}

    def get(self, channel: str, address: str) -> Sender | None:
        return self._by_key.get((channel, address))

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_key.values())

    @classmethod
    def from_mapping(cls, data: Iterable[Mapping[str, object]]) -> SenderRegistry:
        senders = []
        for i, item in enumerate(data):
            try:
                accounts = item.get("accounts")
                senders.append(Sender(
                    address=str(item["address"]), channel=str(item["channel"]),
                    kind=SenderKind(str(item["kind"])),
                    accounts=None if accounts is None else frozenset(map(str, accounts)),  # type: ignore[call-overload]
                ))
            except (KeyError, ValueError, TypeError) as exc:
                raise ConfigError(f"sender registry entry {i} is invalid: {exc!r}") from exc
        return cls(senders)

    @classmethod
    def from_file(cls, path: str | Path) -> SenderRegistry:
        return cls.from_mapping(read_json(path, "sender registry"))


DEMO_SENDERS = SenderRegistry([
    Sender("+14155550100", "sms", SenderKind.LONG_CODE),
    Sender("+14155550101", "sms", SenderKind.LONG_CODE),
    Sender("+18445550100", "sms", SenderKind.TOLL_FREE),
    Sender("55501", "sms", SenderKind.SHORT_CODE),
    Sender("TELEX", "sms", SenderKind.ALPHANUMERIC),
    Sender("whatsapp:+14155550199", "whatsapp", SenderKind.WHATSAPP),
    Sender("messenger:1000000001", "messenger", SenderKind.MESSENGER),
])


def load_registry(path: str | None) -> SenderRegistry:
    return DEMO_SENDERS if not path else SenderRegistry.from_file(path)
