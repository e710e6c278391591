"""The ``database_url`` fixture and ``DevPostgres`` give tests a real, self-cleaning server."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pipeline.dev import postgres as devpostgres
from pipeline.dev.postgres import DevPostgres
from pipeline.errors import DatabaseError

# Stopping a cluster is fast; the budget only bounds a broken shutdown.
_EXIT_BUDGET_S = 30

_SERVE_UNTIL_KILLED = """
import sys
from pipeline.dev import postgres as devpostgres
from pipeline.dev.postgres import DevPostgres
cluster = DevPostgres()
cluster.start()
print(cluster.pid, cluster.data_dir.parent, flush=True)
sys.stdin.read()
"""


def _pids_in(data_dir: Path) -> set[int]:
    """Processes whose working directory is ``data_dir``: the postmaster and all its children."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd in (str(data_dir), f"{data_dir} (deleted)"):
            pids.add(int(proc.name))
    return pids


def test_fixture_serves_postgresql(database_url: str) -> None:
    """The fixture's URL reaches a PostgreSQL server."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT version()").fetchone()
    assert row is not None
    assert "PostgreSQL" in row[0]


def test_fixture_database_round_trips_rows(database_url: str) -> None:
    """Rows committed on one connection are read back on another."""
    with psycopg.connect(database_url) as conn:
        conn.execute("DROP TABLE IF EXISTS devpostgres_round_trip")
        conn.execute("CREATE TABLE devpostgres_round_trip (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO devpostgres_round_trip VALUES (1, 'hello'), (2, 'world')")
    try:
        with psycopg.connect(database_url) as conn:
            query = "SELECT id, body FROM devpostgres_round_trip ORDER BY id"
            rows = conn.execute(query).fetchall()
    finally:
        with psycopg.connect(database_url) as conn:
            conn.execute("DROP TABLE devpostgres_round_trip")
    assert rows == [(1, "hello"), (2, "world")]


def test_stop_leaves_no_server_process() -> None:
    """After stop() no process of the cluster is left and its files are gone."""
    cluster = DevPostgres()
    cluster.start()
    data_dir = cluster.data_dir
    running = _pids_in(data_dir)
    assert cluster.pid in running  # the probe does see a live cluster
    cluster.stop()
    assert not _pids_in(data_dir)
    assert not [pid for pid in running if Path(f"/proc/{pid}").exists()]
    assert not data_dir.parent.exists()


def test_killed_parent_takes_its_server_down() -> None:
    """A server whose starting process is SIGKILLed shuts itself down instead of lingering."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _SERVE_UNTIL_KILLED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    try:
        pid, tmp = parent.stdout.readline().split()
        server = os.pidfd_open(int(pid))
    finally:
        parent.kill()
        parent.communicate()
    try:
        # A pidfd becomes readable when the process exits: a wait with a deadline, not a sleep.
        exited, _, _ = select.select([server], [], [], _EXIT_BUDGET_S)
    finally:
        os.close(server)
        shutil.rmtree(tmp, ignore_errors=True)
    assert exited


def test_missing_binaries_raise_database_error(tmp_path: Path) -> None:
    """A bindir without the server binaries fails with an install hint."""
    with pytest.raises(DatabaseError, match=r"install it with: apt-get install -y postgresql"):
        DevPostgres(bindir=tmp_path).start()


def test_failed_start_quotes_server_log() -> None:
    """A server that refuses to start is reported with its own log lines."""
    cluster = DevPostgres(settings={"shared_buffers": "lots"})
    with pytest.raises(DatabaseError, match=r'invalid value for parameter "shared_buffers"'):
        cluster.start()


def test_start_retries_when_its_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port taken between choosing and binding it costs a retry, not a failed start."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        choose = devpostgres.free_ports
        monkeypatch.setattr(devpostgres, "free_ports",
                            lambda n: [p] if (p := next(ports, None)) else choose(n))
        with DevPostgres() as cluster:
            assert cluster.port != taken
