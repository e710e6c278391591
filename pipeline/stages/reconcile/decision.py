"""Receipt reconciliation decisions (pure): matching carrier receipts to Telex messages.

Carrier receipts name only the carrier's id; dispatch announces each submission (a StatusUpdate
``sent`` with the carrier id) on the same topic under the same key, ``connector:carrier id``, so
the reconciler sees both in one ordered stream per key and keeps, per key, the submission and any
receipt that came first. Per record:

* a **submission** is remembered and passed on (it is the message's ``sent``: dispatch writes it
  here only, so on ``status-updates`` a ``sent`` always precedes the receipts matched to it);
  receipts waiting for it are matched now;
* a **receipt** with a known submission becomes a StatusUpdate for its message; otherwise it waits
  (bounded by ``ttl_ms``) — early receipts are normal: an SMSC may report before its
  submit_sm_resp is read, and dispatch announces submissions once per batch;
* a **TTL deadline** (the reconciler books one when a receipt starts waiting) releases what has
  waited ``ttl_ms``: a receipt the connector could name the message of (an HTTP channel echoes our
  id) becomes a StatusUpdate without the submission (the in-doubt case: dispatch never learnt the
  carrier id); any other goes to ``receipts-unmatched`` — and stays remembered, so a
  submission announced later still (dispatch stalled past the TTL) matches it then.

Duplicates pass through: the status model absorbs them, with the whole history in view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.records import update_record

_MAPPED = frozenset({"sent", "delivered", "undelivered", "failed", "read"})


@dataclass(frozen=True, slots=True)
class Match:
    """What one record leads to."""

    outcome: str  # submission | matched | waiting | unmapped | released | unmatched | idle
    state: dict[str, Any] | None
    updates: list[dict[str, Any]] = field(default_factory=list)  # StatusUpdate records
    unmatched: list[dict[str, Any]] = field(default_factory=list)  # CarrierReceipt records
    deadline_ms: int | None = None  # book a TTL deadline for this key at this time


def status_update(receipt: Mapping[str, Any], submission: Mapping[str, Any] | None
                  ) -> dict[str, Any] | None:
    """The StatusUpdate a receipt stands for, or None when its status is not mapped."""
    if receipt["status"] not in _MAPPED:
        return None
    sub = submission or {}
    message_id = sub.get("message_id") or receipt.get("message_id")
    if not message_id:
        raise ValueError("a receipt needs its submission or a message id to become a status")
    return update_record(
        message_id, "receipt", receipt.get("done_at_ms") or receipt["received_at_ms"],
        status=receipt["status"], attempt=sub.get("attempt"),
        account_id=sub.get("account_id"), channel=sub.get("channel"),
        error_code=receipt.get("error_code"), error_reason=receipt.get("carrier_error"),
        carrier_message_id=receipt["carrier_message_id"], connector=receipt["connector"],
        carrier_status=receipt.get("carrier_status"), trace_id=sub.get("trace_id"))


def on_submission(state: Mapping[str, Any] | None, submission: Mapping[str, Any]) -> Match:
    """Remember which message a carrier id belongs to; match receipts that came first."""
    kept = {k: submission.get(k) for k in (
        "message_id", "attempt", "account_id", "channel", "connector", "trace_id")}
    waited = [p["receipt"] for p in (state or {}).get("pending") or []]
    waited += list((state or {}).get("expired") or [])  # gave up on, but a late match is a match
    updates = [dict(submission)]  # the "sent" itself, so it always precedes its receipts
    updates += [u for u in (status_update(r, kept) for r in waited) if u is not None]
    return Match("submission", {"submission": kept, "pending": []}, updates)


def on_receipt(state: Mapping[str, Any] | None, receipt: Mapping[str, Any], now_ms: int,
               ttl_ms: int) -> Match:
    """Match a receipt, or keep it waiting for its submission."""
    submission = (state or {}).get("submission")
    if submission is not None:
        update = status_update(receipt, submission)
        if update is None:
            return Match("unmapped", dict(state or {}))
        return Match("matched", dict(state or {}), [update])
    pending = list((state or {}).get("pending") or [])
    first = not pending
    pending.append({"since_ms": now_ms, "receipt": dict(receipt)})
    return Match("waiting", {**(state or {}), "submission": None, "pending": pending},
                 deadline_ms=now_ms + ttl_ms if first else None)


def on_deadline(state: Mapping[str, Any] | None, now_ms: int, ttl_ms: int) -> Match:
    """Release receipts that waited ``ttl_ms`` for a submission that never came."""
    pending = list((state or {}).get("pending") or [])
    if (state or {}).get("submission") is not None or not pending:
        return Match("idle", dict(state) if state is not None else None)
    due = [p for p in pending if p["since_ms"] + ttl_ms <= now_ms]
    rest = [p for p in pending if p["since_ms"] + ttl_ms > now_ms]
    updates: list[dict[str, Any]] = []
    unmatched: list[dict[str, Any]] = []
    for p in due:
        receipt = p["receipt"]
        if receipt.get("message_id"):
            update = status_update(receipt, None)
            if update is not None:
                updates.append(update)
        else:
            unmatched.append(receipt)
    deadline = min(p["since_ms"] for p in rest) + ttl_ms if rest else None
    expired = list((state or {}).get("expired") or []) + unmatched
    new_state = ({"submission": None, "pending": rest, "expired": expired}
                 if rest or expired else None)
    return Match("released" if updates else "unmatched" if unmatched else "idle", new_state,
                 updates, unmatched, deadline)
