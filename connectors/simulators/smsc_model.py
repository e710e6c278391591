"""What the SMSC simulator is configured with, decides, and records; no I/O here.

Configuration is frozen (it describes the server); :class:`Faults` is mutable on purpose, so a
test can switch a fault on in the middle of a run ("now drop the bind") without a restart.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from connectors.smpp.encoding import Concat
from connectors.smpp.pdu import Status

_INTERMEDIATE = frozenset({"ENROUTE", "ACCEPTD"})  # not a final message state


class IdFormat(StrEnum):
    HEX = "hex"
    DECIMAL = "decimal"


class ReceiptForm(StrEnum):
    TEXT = "text"  # id/stat only in the short_message text
    TLV = "tlv"  # receipted_message_id + message_state TLVs, and the text
    NONE = "none"  # no receipts at all


@dataclass(frozen=True, slots=True)
class SmscConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: the kernel picks a free port; read it back from ``SmscSimulator.port``
    accounts: Mapping[str, str] = field(default_factory=lambda: {"telex": "secret"})
    id_format: IdFormat = IdFormat.HEX
    id_width: int = 10  # hex ids are zero-padded upper case, as several SMSCs write them
    receipt_ids_other_form: bool = False  # receipts name the id in decimal if hex, and vice versa
    receipt_form: ReceiptForm = ReceiptForm.TEXT
    receipt_delay_s: float = 0.0
    receipt_retry_s: float = 1.0  # redelivery after a deliver_sm_resp that is not ESME_ROK
    outcomes: Mapping[str, float] = field(default_factory=lambda: {"DELIVRD": 1.0})
    latency_s: float = 0.0  # before each submit_sm_resp; responses overlap, like a real SMSC
    max_submits_per_s: float | None = None  # excess answered ESME_RTHROTTLED
    seed: int | None = None
    # The receipt outcome as a function of (seed, destination) instead of the next draw: a
    # handset gets the same outcome whatever order submits arrive in (exact demo counts).
    outcome_by_recipient: bool = False
    # Append "<wall ms> <text>" per submit_sm here (line-buffered), so a benchmark running the
    # simulator as its own process measures latency where the carrier receives the message.
    submit_log: str | None = None
    # Keep only the last N submit and receipt records (None: all, as tests read them). A
    # simulator process runs bounded: records are ~1 KB each, so a soak at a few hundred
    # messages per second would otherwise grow by hundreds of MB an hour.
    keep_records: int | None = None


@dataclass(slots=True)
class Faults:
    """Injected failures, checked on every submit_sm in this order."""

    reject_destinations: set[str] = field(default_factory=set)  # answered ``reject_status``
    reject_rate: float = 0.0
    reject_status: int = Status.ESME_RINVDSTADR
    throttle_rate: float = 0.0  # answered ESME_RTHROTTLED
    no_response_rate: float = 0.0  # recorded, never answered
    drop_after_submits: int | None = None  # abort the connection at the n-th submit (one shot)
    duplicate_receipt_rate: float = 0.0
    ignore_enquire_link: bool = False  # a hung SMSC: TCP up, nothing answered
    # Receipt chaos, decided per accepted submit_sm that asked for a receipt (see ReceiptPlan).
    early_receipt_rate: float = 0.0  # receipt(s) on the wire before the submit_sm_resp
    unknown_receipt_rate: float = 0.0  # one more receipt, for an id never issued
    lost_receipt_rate: float = 0.0  # no receipt at all (overrides early/duplicate/out of order)
    out_of_order_rate: float = 0.0  # final stat first, then ``intermediate_stat``
    intermediate_stat: str = "ENROUTE"  # or ACCEPTD


@dataclass(frozen=True, slots=True)
class ReceiptPlan:
    """What the simulator decided to send as receipts for one accepted submit_sm.

    Enough for a test to know each message's expected final state without reading the wire:
    ``stat`` when ``lost`` is False, else no receipt at all. ``stats`` is the wire order of the
    receipts for ``message_id`` (the final stat, maybe its duplicate, maybe an intermediate stat
    after it); ``unknown_id`` names an extra receipt for an id no submit_sm_resp ever carried.
    """

    message_id: str  # as issued in submit_sm_resp
    stat: str  # the final stat
    stats: tuple[str, ...]  # receipts for message_id in the order sent; () when lost
    early: bool = False  # sent before the submit_sm_resp
    duplicate: bool = False
    lost: bool = False
    out_of_order: bool = False
    unknown_id: str | None = None  # as written in the extra receipt


@dataclass(frozen=True, slots=True)
class SubmitRecord:
    """One submit_sm as received; ``status`` None when it was never answered."""

    at: float  # time.monotonic(), for rates
    system_id: str
    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    registered_delivery: int
    validity_period: str
    short_message: bytes
    text: str  # payload after any UDH, decoded per data_coding
    concat: Concat | None
    status: int | None
    message_id: str | None
    receipts: ReceiptPlan | None = None  # None: no receipt asked for (or receipts are off)


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    at: float
    system_id: str
    message_id: str  # as the receipt names it (maybe in the other form)
    stat: str
    duplicate: bool
    early: bool = False  # written before the submit's submit_sm_resp
    unknown: bool = False  # for an id never issued


class IdAllocator:
    """Message ids in the configured form; the same number can be written in the other."""

    def __init__(self, fmt: IdFormat, width: int, start: int) -> None:
        self._fmt, self._width, self._next = fmt, width, start

    def allocate(self) -> tuple[int, str]:
        n, self._next = self._next, self._next + 1
        return n, self.render(n, other=False)

    def render(self, n: int, *, other: bool) -> str:
        hex_form = (self._fmt is IdFormat.HEX) != other
        return format(n, f"0{self._width}X") if hex_form else str(n)


class TokenBucket:
    """Admission at ``rate`` per second with a 100 ms burst."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate / 10)
        self._tokens = self.capacity
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Decider:
    """The fault and outcome decisions, from one seeded random source."""

    def __init__(self, config: SmscConfig, faults: Faults) -> None:
        self.config, self.faults = config, faults
        self._rng = random.Random(config.seed)
        self._bucket = TokenBucket(config.max_submits_per_s) if config.max_submits_per_s else None
        self.submits = 0

    def submit_status(self, destination: str) -> int | None:
        """command_status for the next submit_sm; None means "do not answer"."""
        f = self.faults
        if destination in f.reject_destinations or self._chance(f.reject_rate):
            return f.reject_status
        if self._chance(f.throttle_rate) or (self._bucket and not self._bucket.take()):
            return Status.ESME_RTHROTTLED
        if self._chance(f.no_response_rate):
            return None
        return Status.ESME_ROK

    def should_drop(self) -> bool:
        self.submits += 1
        f = self.faults
        if f.drop_after_submits is not None and self.submits >= f.drop_after_submits:
            f.drop_after_submits = None
            return True
        return False

    def outcome(self, recipient: str | None = None) -> str:
        stats, weights = zip(*self.config.outcomes.items(), strict=True)
        rng = (random.Random(f"{self.config.seed}:{recipient}")
               if self.config.outcome_by_recipient and recipient is not None else self._rng)
        return rng.choices(stats, weights)[0]

    def duplicate(self) -> bool:
        return self._chance(self.faults.duplicate_receipt_rate)

    def receipt_chaos(self, stat: str) -> tuple[bool, bool, bool, bool, bool]:
        """(duplicate, lost, early, out_of_order, unknown) for one submit's receipts.

        Each rate is drawn on its own, in this order, and only when it is above zero, so a seed
        gives the same run as before these faults existed while they are all off. Out of order
        needs a final stat to put first, so it never applies to an intermediate outcome.
        """
        f = self.faults
        duplicate = self.duplicate()
        lost = self._chance(f.lost_receipt_rate)
        early = self._chance(f.early_receipt_rate)
        out_of_order = self._chance(f.out_of_order_rate) and stat not in _INTERMEDIATE
        unknown = self._chance(f.unknown_receipt_rate)
        if lost:
            duplicate = early = out_of_order = False  # nothing of it is sent
        return duplicate, lost, early, out_of_order, unknown

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate
