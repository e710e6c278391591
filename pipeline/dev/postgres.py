"""A private PostgreSQL cluster assembled from the distribution's binaries, for dev and tests.

Tests need a real server and Docker is not always there, so we ``initdb`` into a temporary
directory and run the ``postgres`` server as our direct child. Not via ``pg_ctl``: it daemonises,
and then a parent-death signal could not stop the server when a test run is killed.

The cluster keeps ``fsync`` and ``synchronous_commit`` at their defaults (on): durability tests
crash processes and must observe exactly what a production server would have kept.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import sql

from pipeline.errors import DatabaseError
from pipeline.procutil import die_with_parent, free_ports

__all__ = ["DevPostgres", "find_bindir"]

_INSTALL_HINT = "install it with: apt-get install -y postgresql"
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_LOG_TAIL_LINES = 20
# Between readiness probes we block on the server's exit for this long, so a server that dies
# during start is noticed at once and a starting one is not hammered with connection attempts.
_POLL_S = 0.05
# Fast shutdown of an idle test cluster takes well under a second; the budget only bounds a
# wedged server so that a session's teardown cannot hang.
_STOP_TIMEOUT_S = 30.0
# The free port is chosen before the server binds it; another process may take it in between.
_PORT_ATTEMPTS = 3
_PORT_TAKEN = "could not bind"

# Sized for a test suite, not for load. fsync, synchronous_commit and full_page_writes are left
# alone on purpose (see the module docstring).
_SETTINGS: Mapping[str, str] = {
    "shared_buffers": "16MB",
    "logging_collector": "off",
}


def find_bindir() -> Path:
    """Directory of the newest server binaries: Debian's versioned dirs, then pg_config."""
    found = [initdb.parent for initdb in _DEBIAN_ROOT.glob("*/bin/initdb")]
    if found:
        return max(found, key=lambda bindir: _version_key(bindir.parent.name))
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    raise DatabaseError(
        f"PostgreSQL server binaries (initdb, postgres) not found in {_DEBIAN_ROOT}/*/bin "
        f"nor via pg_config --bindir; {_INSTALL_HINT}"
    )


class DevPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust authentication.

    ``start()`` creates the cluster, the server and the database and returns the URL; ``stop()``
    shuts it down and deletes every file. Also a context manager.
    """

    def __init__(
        self,
        bindir: Path | str | None = None,
        *,
        database: str = "telex",
        settings: Mapping[str, str] | None = None,
        bind_to_parent: bool = True,
    ) -> None:
        self.database = database
        self._bindir = Path(bindir) if bindir is not None else None
        self._settings = {**_SETTINGS, **(settings or {})}
        self._bind_to_parent = bind_to_parent
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0

    @property
    def bindir(self) -> Path:
        """Where the server binaries are taken from (found on first use unless given)."""
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    @property
    def data_dir(self) -> Path:
        return self._started_tmp() / "data"

    @property
    def port(self) -> int:
        self._started_tmp()
        return self._port

    @property
    def pid(self) -> int:
        """Process id of the postmaster."""
        if self._proc is None:
            raise DatabaseError("the dev PostgreSQL cluster is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def major_version(self) -> str:
        return (self.data_dir / "PG_VERSION").read_text().strip()

    @property
    def description(self) -> str:
        """Where tests ran, for a log line: 'debian cluster 15 at 127.0.0.1:PORT'."""
        kind = "debian cluster" if self.bindir.is_relative_to(_DEBIAN_ROOT) else "cluster"
        return f"{kind} {self.major_version} at 127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> str:
        """Create the cluster, start the server, create the database; return the database URL.

        All steps share one deadline so that a broken machine fails a session in bounded time.
        """
        if self._tmp is not None:
            raise DatabaseError("the dev PostgreSQL cluster is already started")
        deadline = time.monotonic() + timeout
        bindir = self.bindir
        missing = [name for name in ("initdb", "postgres") if not (bindir / name).is_file()]
        if missing:
            raise DatabaseError(
                f"PostgreSQL server binaries {', '.join(missing)} not found in {bindir}; "
                f"{_INSTALL_HINT}"
            )
        as_user = _as_server_user()
        self._tmp = Path(tempfile.mkdtemp(prefix="telex-pg-"))
        try:
            (self._tmp / "sock").mkdir()
            if as_user:
                for path in (self._tmp, self._tmp / "sock"):
                    os.chown(path, as_user["user"], as_user["group"])
            self._initdb(as_user, deadline)
            self._launch(as_user, deadline)
            self._create_database(deadline)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Shut the server down and delete its files; safe to call twice.

        SIGINT is PostgreSQL's fast shutdown, the very signal ``pg_ctl stop -m fast`` sends; we
        send it ourselves because we are the parent and must reap the process. Past the budget
        the postmaster and its children are killed.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            children = _children(proc.pid)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for pid in [proc.pid, *children]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _started_tmp(self) -> Path:
        if self._tmp is None:
            raise DatabaseError("the dev PostgreSQL cluster is not started")
        return self._tmp

    def _initdb(self, as_user: dict[str, Any], deadline: float) -> None:
        # --no-sync only skips flushing initdb's own files; the server still fsyncs every commit.
        cmd = [
            str(self.bindir / "initdb"),
            f"--pgdata={self.data_dir}",
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        try:
            subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=True,
                cwd=self._tmp,
                env=_server_env(),
                timeout=max(deadline - time.monotonic(), 0.1),
                **as_user,
            )
        except subprocess.CalledProcessError as exc:
            raise DatabaseError(f"initdb failed:\n{_tail(exc.stdout + exc.stderr)}") from exc
        except subprocess.TimeoutExpired as exc:
            raise DatabaseError("initdb did not finish before the start deadline") from exc

    def _launch(self, as_user: dict[str, Any], deadline: float) -> None:
        log_path = self._started_tmp() / "server.log"
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self._port = free_ports(1)[0]
            settings = {
                **self._settings,
                "listen_addresses": "127.0.0.1",
                "port": str(self._port),
                "unix_socket_directories": str(self._started_tmp() / "sock"),
            }
            options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
            log_start = log_path.stat().st_size if log_path.exists() else 0
            with log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [str(self.bindir / "postgres"), "-D", str(self.data_dir), *options],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._tmp,
                    env=_server_env(),
                    preexec_fn=die_with_parent(signal.SIGINT) if self._bind_to_parent else None,
                    **as_user,
                )
            if self._wait_ready(deadline, log_path):
                return
            log = log_path.read_bytes()[log_start:].decode(errors="replace")
            if _PORT_TAKEN not in log or attempt == _PORT_ATTEMPTS:
                raise DatabaseError(
                    f"PostgreSQL exited with status {self._proc.returncode} during start; "
                    f"server log tail:\n{_tail(log)}"
                )
            self._proc = None

    def _wait_ready(self, deadline: float, log_path: Path) -> bool:
        """Poll until a connection succeeds; False if the server exited first."""
        assert self._proc is not None
        while True:
            try:
                with psycopg.connect(**self._conninfo("postgres", deadline)):
                    return True
            except psycopg.OperationalError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise DatabaseError(
                    f"PostgreSQL did not accept connections before the start deadline "
                    f"({last_error}); server log tail:\n"
                    f"{_tail(log_path.read_text(errors='replace'))}"
                )
            try:
                self._proc.wait(timeout=_POLL_S)
            except subprocess.TimeoutExpired:
                continue
            return False

    def _create_database(self, deadline: float) -> None:
        with psycopg.connect(**self._conninfo("postgres", deadline), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _conninfo(self, dbname: str, deadline: float) -> dict[str, Any]:
        # Through our private socket directory: on TCP, a process that took our port between
        # choosing and binding it could answer in the server's place. libpq reads a
        # connect_timeout below 2 as 2 seconds.
        return {
            "host": str(self._started_tmp() / "sock"),
            "port": self._port,
            "user": "postgres",
            "dbname": dbname,
            "connect_timeout": max(min(int(deadline - time.monotonic()), 5), 2),
        }


def _as_server_user() -> dict[str, Any]:
    """``subprocess`` arguments that drop root to the ``postgres`` user; PostgreSQL refuses root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise DatabaseError(
            f"PostgreSQL refuses to run as root and there is no 'postgres' user; {_INSTALL_HINT}"
        ) from exc
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _server_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) of the caller must not redirect our private cluster.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-_LOG_TAIL_LINES:])
