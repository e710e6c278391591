"""POST and GET over HTTP on the real broker and PostgreSQL: publish only after Kafka's
acknowledgement, idempotency, ingest's rules and codes, the read model, paging."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from pipeline.codec import AvroCodec
from pipeline.sdk import message_id_for
from pipeline.settings import Settings
from pipeline.stages.pgsink import StatusSink
from tests.fixtures.samples import sample
from tests.fixtures.telex import read_all
from tests.pipeline.api.conftest import ACCOUNT_A, Credentials, RunningApi

CODEC = AvroCodec()
TO = "+14155552671"


def message(**fields: Any) -> dict[str, Any]:
    return {"To": TO, "From": "+14155550100", "Body": "Your code is 424242", **fields}


def post(api: RunningApi, who: Credentials, body: dict[str, Any], key: str | None = None,
         account: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    with api.client(who) as client:
        return client.post(f"/v1/accounts/{account or who.account}/messages", json=body,
                           headers=headers)


def requested(settings: Settings) -> list[dict[str, Any]]:
    return [CODEC.decode(m.value(), expected="message_requested")
            for m in read_all(settings, "message-requested")]


def test_post_answers_201_with_the_resource_once_the_request_is_on_the_topic(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """201 with sid, normalised To, segments and status accepted; the topic holds the request."""
    answer = post(api, creds[ACCOUNT_A], message(), key="order-1")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["sid"].startswith("TX") and body["account_sid"] == ACCOUNT_A
    assert (body["to"], body["status"], body["num_segments"]) == (TO, "accepted", 1)
    on_topic = requested(api.settings)
    assert [(r["message_id"], r["recipient"], r["body"]) for r in on_topic] == [
        (body["sid"], TO, "Your code is 424242")]


def test_form_encoded_post_takes_repeated_media_urls(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """Twilio's form encoding: MediaUrl repeated becomes the list of media URLs."""
    who = creds[ACCOUNT_A]
    with api.client(who) as client:
        answer = client.post(f"/v1/accounts/{who.account}/messages", content=(
            "To=%2B14155552671&From=%2B14155550100&MediaUrl=https%3A%2F%2Fa.example%2F1.png"
            "&MediaUrl=https%3A%2F%2Fa.example%2F2.png&ValidityPeriod=600"),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["media_urls"] == ["https://a.example/1.png", "https://a.example/2.png"]
    assert answer.json()["validity_period"] == 600


def test_same_key_and_body_gives_the_same_resource_and_publishes_once(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """A retried POST answers the same sid and adds no record to the topic."""
    first = post(api, creds[ACCOUNT_A], message(), key="retry-me")
    again = post(api, creds[ACCOUNT_A], message(), key="retry-me")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["sid"] == first.json()["sid"]
    assert again.json()["date_created"] == first.json()["date_created"]
    assert len(requested(api.settings)) == 1


def test_same_key_with_another_body_is_422_with_code_21656(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """The key is bound to its first request's content; nothing more is published."""
    assert post(api, creds[ACCOUNT_A], message(), key="k").status_code == 201
    other = post(api, creds[ACCOUNT_A], message(Body="something else"), key="k")
    assert other.status_code == 422
    assert other.json()["code"] == 21656
    assert other.json()["more_info"].endswith("/21656")
    assert len(requested(api.settings)) == 1


def test_ingest_rules_answer_400_with_ingest_codes(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """Invalid To, a landline, an unregistered From, no content, validity out of range: ingest's
    codes, nothing sent."""
    cases = {21211: message(To="+1415"), 21614: message(To="+442072193000"),
             21606: message(From="+14155559999"),
             21619: message(Body=None), 21624: message(ValidityPeriod=0)}
    got = {code: post(api, creds[ACCOUNT_A], body) for code, body in cases.items()}
    assert {code: (a.status_code, a.json()["code"]) for code, a in got.items()} == {
        code: (400, code) for code in cases}
    assert requested(api.settings) == []


def test_malformed_bodies_answer_400_and_wrong_content_type_415(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """Unknown field, missing From, broken JSON: 400 (20001); text/plain: 415."""
    who = creds[ACCOUNT_A]
    bad = [post(api, who, message(Color="red")), post(api, who, {"To": TO, "Body": "x"})]
    with api.client(who) as client:
        bad.append(client.post(f"/v1/accounts/{who.account}/messages", content=b"{",
                               headers={"Content-Type": "application/json"}))
        plain = client.post(f"/v1/accounts/{who.account}/messages", content=b"To=1",
                            headers={"Content-Type": "text/plain"})
    assert [(a.status_code, a.json()["code"]) for a in bad] == [(400, 20001)] * 3
    assert (plain.status_code, plain.json()["code"]) == (415, 20001)


def test_get_shows_the_accepted_resource_then_the_read_models_status(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """Right after POST: status accepted; once the sink wrote a delivered status: delivered."""
    who = creds[ACCOUNT_A]
    sid = post(api, who, message(), key="g").json()["sid"]
    with api.client(who) as client:
        before = client.get(f"/v1/accounts/{who.account}/messages/{sid}")
        sink = StatusSink(api.settings)
        try:
            sink.write([_status_row(sid, "delivered", 3)])
        finally:
            sink.close()
        after = client.get(f"/v1/accounts/{who.account}/messages/{sid}")
    assert (before.status_code, before.json()["status"]) == (200, "accepted")
    assert (after.status_code, after.json()["status"]) == (200, "delivered")
    assert after.json()["to"] == TO and after.json()["price"] is None


def test_failed_status_carries_error_code_and_message(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """A failed message shows the pipeline's error code and reason."""
    who = creds[ACCOUNT_A]
    sid = post(api, who, message(), key="f").json()["sid"]
    sink = StatusSink(api.settings)
    try:
        sink.write([_status_row(sid, "undelivered", 4, error_code=30003,
                                error_reason="Unreachable destination handset")])
    finally:
        sink.close()
    with api.client(who) as client:
        got = client.get(f"/v1/accounts/{who.account}/messages/{sid}").json()
    assert (got["status"], got["error_code"], got["error_message"]) == (
        "undelivered", 30003, "Unreachable destination handset")


def test_list_filters_by_status_and_to_and_pages_with_a_cursor(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """5 messages, 2 to another number: pages of 2 walk all 5 once; filters select."""
    who = creds[ACCOUNT_A]
    sids = [post(api, who, message(To=TO if i < 3 else "+14155552672", Body=f"m{i}"),
                 key=f"l{i}").json()["sid"] for i in range(5)]
    sink = StatusSink(api.settings)
    try:
        sink.write([_status_row(sids[0], "delivered", 3)])
    finally:
        sink.close()
    seen: list[str] = []
    with api.client(who) as client:
        uri: str | None = f"/v1/accounts/{who.account}/messages?PageSize=2"
        while uri:
            page = client.get(uri).json()
            seen += [m["sid"] for m in page["messages"]]
            uri = page["next_page_uri"]
        to_second = client.get(f"/v1/accounts/{who.account}/messages",
                               params={"to": "+14155552672"}).json()["messages"]
        delivered = client.get(f"/v1/accounts/{who.account}/messages",
                               params={"status": "delivered"}).json()["messages"]
        future = client.get(f"/v1/accounts/{who.account}/messages",
                            params={"date_sent_after": "2999-01-01T00:00:00Z"}).json()
    assert sorted(seen) == sorted(sids) and len(seen) == 5
    assert {m["sid"] for m in to_second} == set(sids[3:])
    assert [m["sid"] for m in delivered] == [sids[0]]
    assert future["messages"] == []


def test_openapi_json_is_served_as_committed(api: RunningApi) -> None:
    """GET /openapi.json answers the committed docs/openapi.json byte for byte, no key needed."""
    from tests.pipeline.api.test_openapi import COMMITTED

    with api.client() as client:
        served = client.get("/openapi.json")
    assert served.status_code == 200 and served.content == COMMITTED.read_bytes()


def _status_row(sid: str, status: str, sequence: int, **extra: Any) -> tuple[Any, ...]:
    from pipeline.stages.pgsink import row

    return row(sample("delivery_status", message_id=sid, account_id=ACCOUNT_A, status=status,
                      effective_status=status, sequence=sequence, **extra))


def test_a_message_from_another_schema_is_not_visible(
        api: RunningApi, creds: dict[str, Credentials], database_url: str) -> None:
    """A sid that exists nowhere in the API's table is 404, even when the sink knows it."""
    sid = "TX" + uuid.uuid4().hex
    sink = StatusSink(api.settings)
    try:
        sink.write([_status_row(sid, "delivered", 1)])
    finally:
        sink.close()
    with psycopg.connect(database_url) as db:
        assert db.execute(f"SELECT count(*) FROM {api.settings.pg_schema}.message_status "
                          "WHERE message_id = %s", [sid]).fetchone() == (1,)
    with api.client(creds[ACCOUNT_A]) as client:
        got = client.get(f"/v1/accounts/{ACCOUNT_A}/messages/{sid}")
    assert (got.status_code, got.json()["code"]) == (404, 20404)


def test_concurrent_posts_with_one_key_publish_once_and_conflicts_lose(
        api: RunningApi, creds: dict[str, Credentials]) -> None:
    """20 POSTs at once with one key (10 with one body, 10 with another) and 20 with their own
    keys: the grouped reserve gives one sid for the shared key, one body wins and the other
    gets 422, and the topic holds 21 requests."""
    import asyncio

    import httpx

    who = creds[ACCOUNT_A]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.url, auth=who.auth, timeout=30) as client:
            path = f"/v1/accounts/{ACCOUNT_A}/messages"
            shared = [client.post(path, json=message(Body=f"body {i % 2}"),
                                  headers={"Idempotency-Key": "shared"}) for i in range(20)]
            own = [client.post(path, json=message(Body=f"own {i}"),
                               headers={"Idempotency-Key": f"own-{i}"}) for i in range(20)]
            return list(await asyncio.gather(*shared, *own))

    answers = asyncio.run(burst())
    shared, own = answers[:20], answers[20:]
    winners = {a.json()["body"] for a in shared if a.status_code == 201}
    assert len(winners) == 1 and {a.json()["sid"] for a in shared if a.status_code == 201} == {
        message_id_for(ACCOUNT_A, "shared")}
    assert sorted(a.status_code for a in shared) == [201] * 10 + [422] * 10
    assert [a.status_code for a in own] == [201] * 20
    assert len(requested(api.settings)) == 21
