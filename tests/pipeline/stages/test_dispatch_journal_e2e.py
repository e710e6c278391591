"""The dispatch journal on the real broker: entries past retention leave the dispatch process's
RocksDB store; a duplicate release within retention is still skipped; a worker killed between
ATTEMPTING and SUBMITTED leaves entries its successor restores and resolves."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rocksdict import AccessType, Options, Rdict

from connectors.simulators.smsc_model import Faults, SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.codec import AvroCodec
from pipeline.settings import Settings
from tests.fixtures.samples import sample
from tests.fixtures.telex import Worker, produce, read_all
from tests.fixtures.waiting import until_sync, wait_for
from tests.pipeline.stages.test_dispatch_e2e import carriers, statuses

CODEC = AvroCodec()
HOUR_MS = 3_600_000


@pytest.fixture
def smsc() -> Iterator[ThreadedSmsc]:
    with ThreadedSmsc(SmscConfig(seed=11)) as server:
        yield server


def on_disk(settings: Settings) -> set[str] | None:
    """Message ids in the dispatch process's journal stores, read through a read-only RocksDB
    view of its state directory (None while a store is being written under our feet)."""
    root = Path(settings.state_dir) / settings.topic("dispatch") / "journal"
    ids: set[str] = set()
    for path in sorted(root.glob("*")) if root.exists() else ():
        try:
            db = Rdict(str(path), options=Options(raw_mode=True),
                       access_type=AccessType.read_only())
        except Exception:  # a file compacted away between listing and opening: try again
            return None
        try:
            it = db.iter()
            it.seek(b"d")
            while it.valid() and it.key().startswith(b"d"):
                ids.add(it.key()[1:].decode())
                it.next()
            del it
        finally:
            db.close()
    return ids


def accepted(message_id: str, now: int, **overrides: object) -> tuple[str, bytes]:
    record = sample("message_accepted", message_id=message_id, sender="55501",
                    accepted_at_ms=now, expires_at_ms=now + 600_000, **overrides)
    return message_id, CODEC.encode("message_accepted", record)


def submitted(message_id: str, at_ms: int) -> tuple[str, bytes]:
    entry = sample("dispatch_journal_entry", message_id=message_id, state="SUBMITTED",
                   attempt=0, connector="smsc-a", retryable=False, error_code=None,
                   carrier_message_id="c-" + message_id[-6:], at_ms=at_ms)
    return message_id, CODEC.encode("dispatch_journal_entry", entry)


def test_entries_past_retention_leave_the_dispatch_store(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """An entry the dispatch process wrote is on its disk, then swept once its retention
    (here 30 s after the entry's time) has passed; the journal topic still holds it."""
    settings = carriers(topics, tmp_path, smsc).model_copy(update={"journal_retention_s": 30})
    mid = "TX" + "7" * 32
    produce(settings, "dispatch-ready", [accepted(mid, int(time.time() * 1000))])
    worker("dispatch", settings)
    assert statuses(settings, 1)[mid]["status"] == "sent"
    until_sync(lambda: mid in (on_disk(settings) or ()), 30, "the entry on disk",
               interval_s=0.2)
    until_sync(lambda: on_disk(settings) == set(), 120, "the entry swept from disk",
               interval_s=0.2)
    journal = [CODEC.decode(m.value()) for m in read_all(settings, "dispatch-journal")]
    assert [e["state"] for e in journal] == ["ATTEMPTING", "SUBMITTED"]


def test_duplicate_within_retention_is_skipped_and_older_entries_are_not_restored(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
    smsc: ThreadedSmsc,
):
    """Restored from the journal topic with a 1 h retention: a release of a message submitted
    a minute ago is skipped; an entry two hours old is not restored (nor kept on disk), and a
    release of that message counts as a first attempt."""
    settings = carriers(topics, tmp_path, smsc).model_copy(
        update={"journal_retention_s": 3600})
    now = int(time.time() * 1000)
    recent, old, old_unreleased = "TX" + "1" * 32, "TX" + "2" * 32, "TX" + "3" * 32
    produce(settings, "dispatch-journal", [submitted(recent, now - 60_000),
                                           submitted(old, now - 2 * HOUR_MS),
                                           submitted(old_unreleased, now - 2 * HOUR_MS)])
    worker("dispatch", settings)
    produce(settings, "dispatch-ready", [accepted(recent, now), accepted(old, now)])
    until_sync(lambda: any(CODEC.decode(m.value())["message_id"] == old
                           and CODEC.decode(m.value())["state"] == "SUBMITTED"
                           and CODEC.decode(m.value())["at_ms"] >= now
                           for m in read_all(settings, "dispatch-journal")), 60,
               "the old message submitted again", interval_s=0.2)
    # The recent copy was answered from the journal: its status announced again, not resent.
    assert statuses(settings, 2)[recent]["status"] == "sent"
    assert len(smsc.submits) == 1  # the old message; the recent duplicate was skipped
    until_sync(lambda: (on_disk(settings) or set()) >= {recent, old}, 30, "entries on disk",
               interval_s=0.2)
    assert old_unreleased not in (on_disk(settings) or set())
    states = [(CODEC.decode(m.value())["message_id"], CODEC.decode(m.value())["state"])
              for m in read_all(settings, "dispatch-journal")]
    assert states.count((recent, "ATTEMPTING")) == 0


def test_a_worker_killed_between_attempting_and_submitted_resolves_its_in_doubt_entries(
    topics: Settings, worker: Callable[[str, Settings], Worker], tmp_path: Path,
):
    """Regression guard for dispatch on the batch runtime: SIGKILLed while the SMSC holds every
    submit_sm unanswered (ATTEMPTING acknowledged, no result), the next worker restores the
    journal from the topic, resolves each entry in doubt (SMS: resend) and submits it again;
    the batch was never committed, so it is read again rather than lost."""
    with ThreadedSmsc(SmscConfig(seed=5), Faults(no_response_rate=1.0)) as smsc:
        settings = carriers(topics, tmp_path, smsc)
        path = Path(settings.carriers_file or "")
        config = json.loads(path.read_text())
        config["connectors"][0]["response_timeout_s"] = 300  # held past the kill
        path.write_text(json.dumps(config))
        now = int(time.time() * 1000)
        ids = ["TX" + str(i) * 32 for i in range(1, 6)]
        produce(settings, "dispatch-ready", [accepted(mid, now) for mid in ids])
        first = worker("dispatch", settings)

        def held() -> list[str]:
            """Message ids journaled ATTEMPTING, once the SMSC holds a submit of each (a batch
            blocks on its held submits, so nothing else is attempted before the kill)."""
            attempting = [CODEC.decode(m.value())["message_id"]
                          for m in read_all(settings, "dispatch-journal")]
            return attempting if 0 < len(attempting) == len(smsc.submits) else []

        in_doubt = set(wait_for(held, until=bool, timeout=60,
                                what="submits held, each behind its ATTEMPTING entry",
                                interval_s=0.2))
        first.kill()
        smsc.faults.no_response_rate = 0.0
        worker("dispatch", settings)
        final = statuses(settings, len(ids))
        journal: dict[str, list[str]] = {}
        for m in read_all(settings, "dispatch-journal"):
            entry = CODEC.decode(m.value())
            journal.setdefault(entry["message_id"], []).append(entry["state"])
    assert {mid: s["status"] for mid, s in final.items()} == dict.fromkeys(ids, "sent")
    resolved = ["ATTEMPTING", "IN_DOUBT_RESOLVED", "ATTEMPTING", "SUBMITTED"]
    assert journal == {mid: resolved if mid in in_doubt else ["ATTEMPTING", "SUBMITTED"]
                       for mid in ids}
    assert len(smsc.submits) == len(ids) + len(in_doubt)  # every held submit sent once more
