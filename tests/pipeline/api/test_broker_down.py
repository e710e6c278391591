"""With the broker stopped, POST answers 503 + Retry-After, and the request is never published
later by surprise: once the broker is back, the topic holds the requests answered 201 only."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from pipeline.dev.broker import DevBroker
from pipeline.procutil import free_ports
from pipeline.sdk import message_id_for
from pipeline.settings import load_settings
from pipeline.topics import admin_client, apply_topics, catalogue
from tests.fixtures.telex import read_all
from tests.pipeline.api.conftest import ACCOUNT_A, Credentials, RunningApi
from tests.pipeline.api.test_messages_api import message, post


def test_broker_down_is_503_and_nothing_is_published_after_it_returns(
        devbroker_factory: Callable[..., DevBroker], database_url: str, tmp_path: Path,
        start_api: Callable[..., RunningApi], creds: dict[str, Credentials]) -> None:
    """201 before the stop; 503 (20503, Retry-After) while stopped; after the restart a new POST
    is 201 and the topic holds exactly the two 201s, not the 503's request, which GET does not
    show either."""
    broker = devbroker_factory()
    settings = load_settings(
        kafka_bootstrap_servers=broker.start(), topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        partitions=1, state_dir=str(tmp_path / "state"),
        database_url=SecretStr(database_url), pg_schema=f"t_{uuid.uuid4().hex[:10]}",
        # Long enough for the API's producer to start (its first idempotent PID) and, after the
        # restart, to reconnect (librdkafka's reconnect backoff reaches 10 s) on a loaded box:
        # those two POSTs must not 503 for want of time; the one while stopped still does.
        api_port=free_ports(1)[0], api_publish_timeout_s=20.0)
    apply_topics(admin_client(settings), catalogue(settings))
    api = start_api(settings)
    who = creds[ACCOUNT_A]

    before = post(api, who, message(Body="before"), key="before")
    broker.stop()
    during = post(api, who, message(Body="during"), key="during")
    broker.start()
    after = post(api, who, message(Body="after"), key="after")

    assert (before.status_code, during.status_code, after.status_code) == (201, 503, 201)
    assert during.json()["code"] == 20503 and int(during.headers["retry-after"]) >= 1
    bodies = [m.value() for m in read_all(settings, "message-requested")]
    assert len(bodies) == 2 and not any(b"during" in b for b in bodies)
    during_sid = message_id_for(ACCOUNT_A, "during")
    with api.client(who) as client:
        assert client.get(f"/v1/accounts/{ACCOUNT_A}/messages/{during_sid}").status_code == 404
