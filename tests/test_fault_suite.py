"""The fault-injection suite (``bench/faults.py``): its checker on hand-made histories, and the
suite in its CI size as a user runs it (one command, its own broker, every stage a process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.faults import FAULT_KINDS, STAGES, check
from connectors.simulators.smsc_model import ReceiptPlan, SubmitRecord
from tests.fixtures.telex import REPO

# ~75 s of load, up to ~150 s to settle on a loaded machine, broker and worker start-ups (a
# broker restart alone took 20 s on a busy 2-core runner): more than the suite-wide 300 s.
_RUN_TIMEOUT_S = 540


@pytest.mark.timeout(_RUN_TIMEOUT_S + 30)
def test_short_fault_suite_loses_no_accepted_message(tmp_path: Path) -> None:
    """Every stage SIGKILLed once, the broker SIGKILLed and paused, a worker paused, binds
    dropped: no accepted message lost, every duplicate explained, no status regression."""
    out = tmp_path / "faults.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--short", "--json", str(out)], cwd=REPO,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_RUN_TIMEOUT_S,
        check=False)
    story = f"exit {done.returncode}\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
    assert out.exists(), story
    results = json.loads(out.read_text())
    counts = results["counts"]
    assert counts["lost"] == 0, (counts["lost_ids"][:20], story)
    assert set(results["faults_by_kind"]) == set(FAULT_KINDS), story
    killed = {f["target"] for f in results["faults"] if f["kind"] == "kill_stage"}
    assert killed == set(STAGES), story
    assert counts["unexplained"] == 0, (counts["unexplained_samples"][:5], story)
    assert counts["regressions"] == 0, (counts["regression_samples"][:5], story)
    assert done.returncode == 0, story


def _submit(recipient: str, carrier_id: str | None, stat: str = "DELIVRD") -> SubmitRecord:
    plan = ReceiptPlan(carrier_id, stat, (stat,)) if carrier_id else None
    return SubmitRecord(at=0.0, system_id="telex", source_addr="55501",
                        destination_addr=recipient, esm_class=0, data_coding=0,
                        registered_delivery=1, validity_period="", short_message=b"x", text="x",
                        concat=None, status=0 if carrier_id else None, message_id=carrier_id,
                        receipts=plan)


def _entry(state: str, at_ms: int, carrier_id: str | None = None, *,
           retryable: bool = False) -> dict[str, object]:
    return {"state": state, "attempt": 0, "at_ms": at_ms, "carrier_message_id": carrier_id,
            "retryable": retryable, "error_code": None}


def _delivered(carrier_id: str) -> list[dict[str, object]]:
    return [{"sequence": 1, "status": "accepted", "effective_status": "accepted",
             "attempt": None, "error_reason": None},
            {"sequence": 2, "status": "sent", "effective_status": "sent", "attempt": 0,
             "error_reason": None, "carrier_message_id": carrier_id},
            {"sequence": 3, "status": "delivered", "effective_status": "delivered",
             "attempt": 0, "error_reason": None, "carrier_message_id": carrier_id}]


def _check(journal: list[dict[str, object]], carrier_ids: list[str],
           history: list[dict[str, object]] | None = None) -> dict[str, object]:
    events = {"TXm": history if history is not None else _delivered(carrier_ids[-1])}
    return check({"TXm": "14152000001"}, events, events, {"TXm": journal},
                 [_submit("14152000001", c) for c in carrier_ids],
                 {c: {"delivered"} for c in carrier_ids})


def test_checker_counts_an_accepted_message_without_final_status_as_lost() -> None:
    """Accepted and only ever 'sent': lost, whatever else went right."""
    result = _check([_entry("ATTEMPTING", 1), _entry("SUBMITTED", 2, "a1")], ["a1"],
                    history=_delivered("a1")[:2])
    assert (result["lost"], result["lost_ids"]) == (1, ["TXm"])


def test_checker_explains_one_duplicate_per_crash_left_in_doubt() -> None:
    """Two crashes, each leaving the attempt in doubt: two resends, both explained."""
    journal = [_entry("ATTEMPTING", 1), _entry("IN_DOUBT_RESOLVED", 5, retryable=True),
               _entry("ATTEMPTING", 5), _entry("IN_DOUBT_RESOLVED", 9, retryable=True),
               _entry("ATTEMPTING", 9), _entry("SUBMITTED", 10, "a3")]
    result = _check(journal, ["a1", "a2", "a3"])
    assert (result["duplicates"], result["unexplained"], result["lost"]) == (1, 0, 0)


def test_checker_does_not_let_a_batch_explain_its_own_resend() -> None:
    """Regression: one dispatch batch held the message twice, took its own ATTEMPTING for a
    dead worker's and resent it (IN_DOUBT_RESOLVED stamped with the batch's own time)."""
    journal = [_entry("ATTEMPTING", 7), _entry("IN_DOUBT_RESOLVED", 7, retryable=True),
               _entry("ATTEMPTING", 7), _entry("SUBMITTED", 8, "a1"),
               _entry("SUBMITTED", 8, "a2")]
    result = _check(journal, ["a1", "a2"])
    assert (result["duplicates"], result["unexplained"]) == (1, 1)


def test_checker_flags_a_proven_delivery_that_did_not_end_delivered() -> None:
    """The announced submit's DELIVRD receipt reached Kafka, yet the message ended undelivered."""
    history = [*_delivered("a1")[:2],
               {"sequence": 3, "status": "undelivered", "effective_status": "undelivered",
                "attempt": 0, "error_reason": "no receipt", "carrier_message_id": "a1"}]
    result = _check([_entry("ATTEMPTING", 1), _entry("SUBMITTED", 2, "a1")], ["a1"], history)
    assert (result["wrong_final"], result["lost"]) == (1, 0)
