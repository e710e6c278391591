"""End to end on the real broker: a message POSTed over HTTP goes through every stage to an
SMSC simulator (SMPP over loopback), its receipt comes back, the PostgreSQL sink records it,
and GET shows it delivered; a retried POST with the same key creates nothing new."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.simulators.smsc_model import Faults, SmscConfig
from connectors.simulators.threaded import ThreadedSmsc
from pipeline.settings import Settings
from tests.fixtures.telex import Worker, read_all
from tests.fixtures.waiting import wait_for
from tests.pipeline.api.conftest import ACCOUNT_A, Credentials, RunningApi
from tests.pipeline.api.test_messages_api import message, post
from tests.pipeline.stages.pipeline_helpers import ALL_STAGES, carriers_file, smpp


@pytest.fixture
def smsc() -> Iterator[ThreadedSmsc]:
    with ThreadedSmsc(SmscConfig(seed=7), Faults()) as server:
        yield server


def test_posted_message_is_delivered_and_get_shows_it(
        api_settings: Settings, start_api: Callable[[Settings], RunningApi],
        worker: Callable[[str, Settings], Worker], smsc: ThreadedSmsc, tmp_path: Path,
        creds: dict[str, Credentials]) -> None:
    """POST → 201 accepted; the SMSC receives it once; GET then shows delivered with one segment;
    the same POST again answers the same sid and the SMSC still has one submit."""
    settings = api_settings.model_copy(update={"carriers_file": carriers_file(
        tmp_path, [smpp("smsc-a", smsc.port)],
        [{"channel": "sms", "prefix": "", "connectors": ["smsc-a"]}])})
    workers = {s: worker(s, settings) for s in (*ALL_STAGES, "pgsink")}
    api = start_api(settings)
    who = creds[ACCOUNT_A]

    created = post(api, who, message(), key="e2e-1")
    assert (created.status_code, created.json()["status"]) == (201, "accepted")
    sid = created.json()["sid"]

    def current() -> dict[str, object]:
        for w in workers.values():
            w.assert_alive()
        with api.client(who) as client:
            return dict(client.get(f"/v1/accounts/{ACCOUNT_A}/messages/{sid}").json())

    final = wait_for(current, until=lambda m: m.get("status") == "delivered", timeout=180,
                     what="the message delivered, seen through GET", interval_s=0.5)
    assert (final["sid"], final["num_segments"], final["error_code"]) == (sid, 1, None)
    again = post(api, who, message(), key="e2e-1")
    assert (again.status_code, again.json()["sid"], again.json()["status"]) == (
        201, sid, "delivered")
    assert len(read_all(settings, "message-requested")) == 1
    assert len(smsc.submits) == 1
