"""The REST API as a real uvicorn server on loopback (in a thread of the test process, with
its own event loop), on the test's topics and its own PostgreSQL schema, with two accounts'
keys."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvloop
from pydantic import SecretStr

from pipeline.api.keys import ApiKey, KeyRing, new_key
from pipeline.api.server import ApiServer, make_server
from pipeline.procutil import free_ports
from pipeline.settings import Settings
from tests.fixtures.waiting import until_sync

ACCOUNT_A, ACCOUNT_B = "ACaaaa0001", "ACbbbb0002"


@dataclass(frozen=True)
class Credentials:
    account: str
    key_id: str
    secret: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.key_id, self.secret)


@pytest.fixture(scope="session")
def account_keys() -> tuple[list[ApiKey], dict[str, Credentials]]:
    """Keys of accounts A and B (made once: scrypt is slow on purpose)."""
    keys, creds = [], {}
    for account in (ACCOUNT_A, ACCOUNT_B):
        key, secret = new_key(account)
        keys.append(key)
        creds[account] = Credentials(account, key.key_id, secret)
    return keys, creds


@pytest.fixture
def creds(account_keys: tuple[list[ApiKey], dict[str, Credentials]]) -> dict[str, Credentials]:
    return account_keys[1]


@pytest.fixture
def api_settings(topics: Settings, database_url: str) -> Settings:
    """The test's topics, its own PostgreSQL schema, a free port."""
    return topics.model_copy(update={
        "database_url": SecretStr(database_url), "pg_schema": f"t_{uuid.uuid4().hex[:10]}",
        "api_port": free_ports(1)[0], "api_rate": 1000.0, "api_burst": 1000.0,
        # A cold producer's first publish waits for its idempotent PID, seconds on a fresh,
        # loaded test broker: the default wait answered a test's first POST 503 in CI.
        "api_publish_timeout_s": 30.0})


class RunningApi:
    """A started ApiServer in a thread; ``stop()`` stops it as SIGTERM would."""

    def __init__(self, server: ApiServer, settings: Settings) -> None:
        self.server, self.settings = server, settings
        self.url = f"http://127.0.0.1:{settings.api_port}"
        self._thread = threading.Thread(target=self._run, daemon=True, name="api-server")
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            uvloop.run(self.server.serve())  # the loop `telex api` runs on
        except BaseException as exc:  # reported by start()/stop(), not lost in the thread
            self.error = exc

    def start(self) -> RunningApi:
        self._thread.start()
        until_sync(lambda: self.server.started or not self._thread.is_alive(), 60,
                   "the API listening")
        if self.error is not None or not self.server.started:
            raise AssertionError(f"the API did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(60)
        assert not self._thread.is_alive(), "the API did not stop"

    def client(self, creds: Credentials | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=creds.auth if creds else None, timeout=30)


@pytest.fixture
def start_api(account_keys: tuple[list[ApiKey], dict[str, Credentials]]
              ) -> Iterator[Callable[[Settings], RunningApi]]:
    """Start API servers on given settings; all stopped at the end of the test."""
    started: list[RunningApi] = []

    def start(settings: Settings) -> RunningApi:
        api = RunningApi(make_server(settings, KeyRing(account_keys[0])), settings).start()
        started.append(api)
        return api

    yield start
    for api in started:
        if api.server.started and not api.server.should_exit:
            api.stop()


@pytest.fixture
def api(api_settings: Settings, start_api: Callable[[Settings], RunningApi]) -> RunningApi:
    """The API on the test's topics and schema."""
    return start_api(api_settings)
