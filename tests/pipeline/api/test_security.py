"""Security over HTTP: keys (401), account isolation on every route (404, nothing published),
the per-account rate limit (429 + Retry-After), the body size limit (413), and access logs
without phone numbers or bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from pipeline.settings import Settings
from tests.fixtures.telex import read_all
from tests.pipeline.api.conftest import ACCOUNT_A, ACCOUNT_B, Credentials, RunningApi
from tests.pipeline.api.test_messages_api import TO, message, post

ROUTES = ("create", "list", "get")


def call(client: httpx.Client, route: str, account: str, sid: str) -> httpx.Response:
    base = f"/v1/accounts/{account}/messages"
    if route == "create":
        return client.post(base, json=message(Body="isolation"), headers={"Idempotency-Key": "i"})
    if route == "list":
        return client.get(base)
    return client.get(f"{base}/{sid}")


@pytest.mark.parametrize("route", ROUTES)
def test_a_key_of_account_b_gets_404_on_account_a(
        api: RunningApi, creds: dict[str, Credentials], route: str) -> None:
    """B's valid key on A's path: 404 (20404), as for a resource that does not exist; B's POST
    publishes nothing, and B never sees A's message."""
    sid = post(api, creds[ACCOUNT_A], message(), key="a-1").json()["sid"]
    with api.client(creds[ACCOUNT_B]) as client:
        answer = call(client, route, ACCOUNT_A, sid)
        own_list = client.get(f"/v1/accounts/{ACCOUNT_B}/messages").json()
        own_get = client.get(f"/v1/accounts/{ACCOUNT_B}/messages/{sid}")
    assert (answer.status_code, answer.json()["code"]) == (404, 20404)
    assert own_list["messages"] == [] and own_get.status_code == 404
    assert len(read_all(api.settings, "message-requested")) == 1


@pytest.mark.parametrize("route", ROUTES)
def test_missing_or_wrong_credentials_are_401_on_every_route(
        api: RunningApi, creds: dict[str, Credentials], route: str) -> None:
    """No key, a wrong secret, an unknown key id: 401 (20003) with a Basic challenge."""
    a = creds[ACCOUNT_A]
    answers = []
    for auth in (None, (a.key_id, "wrong"), ("SKunknown", a.secret)):
        with httpx.Client(base_url=api.url, auth=auth) as client:
            answers.append(call(client, route, ACCOUNT_A, "TX" + "0" * 32))
    assert [(r.status_code, r.json()["code"]) for r in answers] == [(401, 20003)] * 3
    assert all(r.headers["www-authenticate"] == 'Basic realm="telex"' for r in answers)


def test_rate_limit_answers_429_with_retry_after(
        api_settings: Settings, start_api: Callable[[Settings], RunningApi],
        creds: dict[str, Credentials]) -> None:
    """Burst 3 at 0.5/s: three answered, the fourth 429 (20429) with Retry-After ≥ 1; the other
    account is not limited by it."""
    api = start_api(api_settings.model_copy(update={"api_rate": 0.5, "api_burst": 3.0}))
    with api.client(creds[ACCOUNT_A]) as client:
        answers = [client.get(f"/v1/accounts/{ACCOUNT_A}/messages") for _ in range(4)]
    with api.client(creds[ACCOUNT_B]) as client:
        other = client.get(f"/v1/accounts/{ACCOUNT_B}/messages")
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].json()["code"] == 20429 and int(answers[3].headers["retry-after"]) >= 1
    assert other.status_code == 200


def test_a_body_over_the_limit_is_413_and_not_published(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """A body past TELEX_API_MAX_BODY_BYTES: 413, whether it declares its length or streams."""
    limit = api.settings.api_max_body_bytes
    big = message(Body="x" * (limit + 1))
    with api.client(creds[ACCOUNT_A]) as client:
        declared = client.post(f"/v1/accounts/{ACCOUNT_A}/messages", json=big)
        streamed = client.post(f"/v1/accounts/{ACCOUNT_A}/messages",
                               content=iter([b'{"Body": "', b"x" * (limit + 1), b'"}']),
                               headers={"Content-Type": "application/json"})
    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert read_all(api.settings, "message-requested") == []


def test_access_log_names_route_status_and_account_but_no_number_or_body(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """One JSON access entry per request, with the route template; never To, From, Body, or the
    query string (to=...)."""
    with capture_logs() as logs:
        post(api, creds[ACCOUNT_A], message(), key="log-1")
        with api.client(creds[ACCOUNT_A]) as client:
            client.get(f"/v1/accounts/{ACCOUNT_A}/messages", params={"to": TO})
    access: list[dict[str, Any]] = [e for e in logs if e["event"] == "request"]
    assert [(e["method"], e["route"], e["status"], e["account"]) for e in access] == [
        ("POST", "/v1/accounts/{account}/messages", 201, ACCOUNT_A),
        ("GET", "/v1/accounts/{account}/messages", 200, ACCOUNT_A)]
    text = repr(logs)
    assert TO not in text and "14155552671" not in text and "424242" not in text
    assert "+14155550100" not in text
