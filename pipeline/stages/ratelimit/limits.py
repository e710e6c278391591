"""Rate limits from configuration: per sender, per account, per carrier route.

Each limit is a rate in message segments per second and a burst in segments. Senders default by
kind (carriers cap a US long code at about 1 segment/s, toll-free at 3, a short code at 100 or
more); accounts and routes have one default each; any bucket can be overridden. The file named
by ``TELEX_LIMITS_FILE`` is JSON:

    {"sender_kinds": {"long_code": {"rate": 1, "burst": 1}},
     "senders": {"sms:+14155550100": {"rate": 5, "burst": 5}},
     "account_default": {"rate": 500, "burst": 500}, "accounts": {"acct-1": {...}},
     "route_default": {"rate": 1000, "burst": 1000}, "routes": {"sms:+1": {...}},
     "queue_hours": 10}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from pipeline.configfile import read_json
from pipeline.errors import ConfigError
from pipeline.gcra import Limit
from pipeline.records import accepted_key
from pipeline.senders import SenderKind, SenderRegistry

ACCOUNT = "account"
SENDER = "sender"
ROUTE = "route"
DIMENSIONS = (ACCOUNT, SENDER, ROUTE)

SENDER_KIND_DEFAULTS: dict[str, Limit] = {
    SenderKind.LONG_CODE: Limit(1, 1),
    SenderKind.TOLL_FREE: Limit(3, 3),
    SenderKind.SHORT_CODE: Limit(100, 100),
    SenderKind.ALPHANUMERIC: Limit(10, 10),
    SenderKind.WHATSAPP: Limit(80, 80),
    SenderKind.MESSENGER: Limit(40, 40),
}
ACCOUNT_DEFAULT = Limit(500, 500)
ROUTE_DEFAULT = Limit(1000, 1000)


@dataclass(frozen=True)
class Limits:
    """Every configured limit; ``for_bucket`` answers for any bucket key."""

    senders: SenderRegistry
    sender_kinds: Mapping[str, Limit] = field(default_factory=lambda: dict(SENDER_KIND_DEFAULTS))
    sender_overrides: Mapping[str, Limit] = field(default_factory=dict)
    account_default: Limit = ACCOUNT_DEFAULT
    accounts: Mapping[str, Limit] = field(default_factory=dict)
    route_default: Limit = ROUTE_DEFAULT
    routes: Mapping[str, Limit] = field(default_factory=dict)
    queue_hours: float = 10.0  # Twilio queues about 10 hours of a sender's capacity

    def for_bucket(self, dimension: str, bucket: str) -> Limit:
        if dimension == ACCOUNT:
            return self.accounts.get(bucket, self.account_default)
        if dimension == ROUTE:
            return self.routes.get(bucket, self.route_default)
        override = self.sender_overrides.get(bucket)
        if override is not None:
            return override
        channel, _, address = bucket.partition(":")
        known = self.senders.get(channel, address)
        kind = known.kind if known else SenderKind.LONG_CODE  # the strictest sensible default
        return self.sender_kinds.get(kind, SENDER_KIND_DEFAULTS[SenderKind.LONG_CODE])

    def queue_cap_ms(self, limit: Limit) -> float:
        """How far ahead a bucket may be booked before new messages are refused (21611)."""
        return self.queue_hours * 3_600_000

    @classmethod
    def from_file(cls, path: str | Path, senders: SenderRegistry) -> Limits:
        data = read_json(path, "limits file")
        try:
            return cls.from_mapping(data, senders)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"cannot read limits file {path}: {exc}") from exc

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], senders: SenderRegistry) -> Limits:
        def lim(d: Mapping[str, Any]) -> Limit:
            return Limit(float(d["rate"]), float(d.get("burst", d["rate"])))

        def many(key: str) -> dict[str, Limit]:
            return {k: lim(v) for k, v in data.get(key, {}).items()}

        defaults = cls(senders)
        return cls(
            senders=senders,
            sender_kinds={**SENDER_KIND_DEFAULTS, **many("sender_kinds")},
            sender_overrides=many("senders"),
            account_default=lim(data["account_default"]) if "account_default" in data
            else defaults.account_default,
            accounts=many("accounts"),
            route_default=lim(data["route_default"]) if "route_default" in data
            else defaults.route_default,
            routes=many("routes"),
            queue_hours=float(data.get("queue_hours", defaults.queue_hours)),
        )


def load_limits(path: str | None, senders: SenderRegistry) -> Limits:
    return Limits(senders) if not path else Limits.from_file(path, senders)


def bucket_of(dimension: str, message: Mapping[str, Any]) -> str:
    """The bucket key of a MessageAccepted in ``dimension`` (also its record key there)."""
    if dimension == ACCOUNT:
        return accepted_key(message)  # the account bucket reads message-accepted straight
    if dimension == SENDER:
        return f"{message['channel']}:{message['sender']}"
    return f"{message['channel']}:+{_country_code(str(message['recipient']))}"


def _country_code(recipient: str) -> str:
    """Calling code of an E.164 address ('whatsapp:+44…' too); '0' when there is none."""
    _, plus, digits = recipient.rpartition("+")
    if not plus:
        return "0"
    for size in (1, 2, 3):
        prefix = digits[:size]
        if prefix.isdigit() and int(prefix) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return prefix
    return "0"
