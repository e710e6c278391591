"""``telex api`` as a real process: keys made with ``telex api key create``, a POST answered,
and on SIGTERM the request in flight is finished (201, on the topic) before a clean exit 0."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from pipeline.settings import Settings
from tests.fixtures.telex import REPO, read_all
from tests.fixtures.waiting import until_sync, wait_for
from tests.pipeline.api.test_messages_api import message


def _telex(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def _rx_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the server has not read yet on the connection from ``client_port`` (Linux)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
                server_port, client_port):
            return int(fields[4].split(":")[1], 16)
    return None


def test_telex_api_serves_and_finishes_the_request_in_flight_on_sigterm(
        api_settings: Settings, tmp_path: Path) -> None:
    """A POST whose body is half sent when SIGTERM arrives is answered 201 and published; the
    process then exits 0."""
    env = {**os.environ, **api_settings.to_env(),
           "TELEX_API_KEYS_FILE": str(tmp_path / "keys.json")}
    key = json.loads(_telex(env, "api", "key", "create", "AC1", "--json"))
    assert key["secret"] not in (tmp_path / "keys.json").read_text()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", "api"], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{api_settings.api_port}"
        auth = (key["key_id"], key["secret"])

        def listening() -> bool:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                return httpx.get(f"{url}/openapi.json").status_code == 200
            except httpx.TransportError:
                return False

        until_sync(listening, 60, "telex api listening", interval_s=0.1)
        first = httpx.post(f"{url}/v1/accounts/AC1/messages", json=message(), auth=auth,
                           headers={"Idempotency-Key": "one"})
        assert first.status_code == 201, first.text

        body = json.dumps(message(Body="in flight")).encode()
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        head = (f"POST /v1/accounts/AC1/messages HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Basic {token}\r\nContent-Type: application/json\r\n"
                f"Idempotency-Key: two\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", api_settings.api_port)) as sock:
            sock.sendall(head + body[:10])
            client_port = sock.getsockname()[1]
            until_sync(lambda: _rx_queue(api_settings.api_port, client_port) == 0, 10,
                       "the server read the request's head")
            proc.send_signal(signal.SIGTERM)
            sock.sendall(body[10:])
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    records = wait_for(lambda: read_all(api_settings, "message-requested"),
                       until=lambda r: len(r) >= 2, timeout=30, what="both requests")
    assert any(b"in flight" in (r.value() or b"") for r in records)
    assert len(records) == 2
