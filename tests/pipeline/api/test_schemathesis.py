"""Property-based tests of the running API from its own OpenAPI document (schemathesis): no
server error, and every answer's status, content type and body match the document.

Cases are drawn from each operation's hypothesis strategy inside the test (schemathesis'
pytest fixture loader does not run under pytest 9), on the real broker and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline.settings import Settings
from tests.pipeline.api.conftest import ACCOUNT_A, Credentials, RunningApi

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          content_type_conformance, response_schema_conformance]
VALID = {"To": "+14155552671", "From": "+14155550100", "Body": "property test"}
OK = {"POST /v1/accounts/{account}/messages": 201, "GET /v1/accounts/{account}/messages": 200,
      "GET /v1/accounts/{account}/messages/{sid}": 200}
OPERATIONS = ("POST /v1/accounts/{account}/messages", "GET /v1/accounts/{account}/messages",
              "GET /v1/accounts/{account}/messages/{sid}")  # /openapi.json: test_openapi.py


@pytest.mark.parametrize("label", OPERATIONS)
def test_api_answers_match_the_document_and_never_5xx(
        label: str, api_settings: Settings, start_api: Callable[[Settings], RunningApi],
        creds: dict[str, Credentials]) -> None:
    """Generated requests with account A's key on account A's path (as a client's would be):
    every answer documented, JSON where documented, and no 5xx."""
    api = start_api(api_settings.model_copy(update={"api_rate": 1e6, "api_burst": 1e6}))
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = {op.ok().label: op.ok() for op in schema.get_all_operations()}
    assert set(OPERATIONS) <= set(operations)
    with api.client(creds[ACCOUNT_A]) as client:  # something for GETs to find
        sid = client.post(f"/v1/accounts/{ACCOUNT_A}/messages", json=VALID).json()["sid"]
    operation = operations[label]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))
    calls: list[int] = []

    @given(case=cases, realistic=st.booleans())
    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def check(case: schemathesis.Case, realistic: bool) -> None:
        if case.path_parameters and "account" in case.path_parameters:
            case.path_parameters["account"] = ACCOUNT_A
        if realistic:  # random strings are never phone numbers: reach the 201 and 200 paths too
            if isinstance(case.body, dict):
                case.body = dict(VALID)
            if case.path_parameters and "sid" in case.path_parameters:
                case.path_parameters["sid"] = sid
        response = case.call_and_validate(base_url=api.url, auth=creds[ACCOUNT_A].auth,
                                          checks=CHECKS)
        calls.append(response.status_code)

    check()
    # The success path once for certain, whatever was drawn: a realistic request, validated.
    payload = {"body": dict(VALID), "media_type": "application/json"} if label.startswith(
        "POST") else {}
    known = operation.Case(path_parameters={"account": ACCOUNT_A, "sid": sid}
                           if "{sid}" in label else {"account": ACCOUNT_A}, **payload)
    check.hypothesis.inner_test(known, True)
    assert calls and all(status < 500 for status in calls)
    assert OK[label] in calls, f"no {OK[label]} among {sorted(set(calls))}"
