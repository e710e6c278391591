"""The HTTP channel simulator's own behaviour: auth, validation, rate cap, command line."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from connectors.simulators.http_channel import HttpChannelConfig, HttpChannelSimulator
from pipeline.procutil import die_with_parent, free_ports
from tests.fixtures.waiting import until_sync

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
TEXT = {"messaging_product": "whatsapp", "to": "15550001", "type": "text", "text": {"body": "x"}}


def post(url: str, body: Any, token: str = "test-token") -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("path", "body", "token", "status", "code"),
    [("/v21.0/1/messages", TEXT, "wrong", 401, 190),
     ("/v21.0/1/other", TEXT, "test-token", 404, 100),
     ("/v21.0/1/messages", b"{", "test-token", 400, 100),
     ("/v21.0/1/messages", {**TEXT, "type": "sticker"}, "test-token", 400, 100)],
)
def test_refusals_carry_graph_api_errors(path: str, body: Any, token: str, status: int,
                                         code: int) -> None:
    """Bad token, unknown path, invalid JSON, unsupported type: Graph-style error bodies."""
    with HttpChannelSimulator() as sim:
        got_status, reply = post(sim.base_url + path, body, token)
    assert (got_status, reply["error"]["code"]) == (status, code)
    assert not [s for s in sim.sends if s.http_status == 200]


def test_rate_cap_answers_429() -> None:
    """Above max_requests_per_s (burst of 100 ms), requests get 429 with code 130429."""
    with HttpChannelSimulator(HttpChannelConfig(max_requests_per_s=10)) as sim:
        statuses = [post(sim.base_url + "/v21.0/1/messages", TEXT)[0] for _ in range(5)]
    assert statuses[0] == 200 and 429 in statuses


def test_held_requests_are_answered_only_after_release() -> None:
    """While held, a send request waits unanswered and unrecorded (counted in ``held``); on
    release it is answered 200 and recorded as received."""
    with HttpChannelSimulator() as sim, ThreadPoolExecutor(1) as pool:
        sim.hold()
        reply = pool.submit(post, sim.base_url + "/v21.0/1/messages", TEXT)
        until_sync(lambda: sim.held >= 1, 5, "the request to reach the gate", interval_s=0.01)
        assert not reply.done() and not sim.sends
        sim.release()
        status, body = reply.result(timeout=5)
    assert status == 200 and body["messages"][0]["id"].startswith("wamid.")
    assert sim.held == 0 and [s.http_status for s in sim.sends] == [200]


def test_command_line_simulator() -> None:
    """``python -m connectors.simulators.http_channel`` answers a send on its port."""
    [port] = free_ports(1)
    cmd = [sys.executable, "-m", "connectors.simulators.http_channel", "--port", str(port)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                          preexec_fn=die_with_parent()) as proc:
        try:
            assert proc.stdout is not None and "listening" in proc.stdout.readline()
            status, reply = post(f"http://127.0.0.1:{port}/v21.0/1/messages", TEXT)
        finally:
            proc.terminate()
            proc.wait(10)
    assert status == 200 and reply["messages"][0]["id"].startswith("wamid.")
