"""A real Apache Kafka broker for dev and tests: jars from Maven Central, one KRaft node.

There is no Docker engine or Kafka tarball to rely on, but Java and Maven are: Maven resolves
``kafka_2.13`` and its runtime dependencies into a cache once, and a JVM runs ``kafka.Kafka`` as a
combined broker+controller on 127.0.0.1. Used by ``telex broker`` and the pytest Kafka fixture.
Linux only (``/proc`` and ``prctl`` are used to track and reap the JVM).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pipeline.errors import BrokerError
from pipeline.procutil import die_with_parent, listen_ports

__all__ = [
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "DevBroker",
    "default_cache_dir",
    "default_state_dir",
    "ensure_jars",
]

KAFKA_VERSION = "4.4.0"
LOG4J_VERSION = "2.25.4"
# kafka_2.13 4.4.0 resolves slf4j-api 1.7.36, whose binding is log4j-slf4j-impl; the SLF4J 2
# binding (log4j-slf4j2-impl) would be ignored and the broker would log nothing.
# ensure_jars() checks this against the resolved slf4j-api, so a version bump cannot go silent.
_SLF4J_BINDING = "log4j-slf4j-impl"
# kafka-tools-api 4.4.0 is not published on Maven Central although kafka_2.13 4.4.0 declares
# it; no broker jar references org.apache.kafka.tools.api (checked by scanning every resolved
# jar), so it is excluded rather than left to fail resolution.
_EXCLUDED = ("kafka-tools-api",)
_DEPENDENCY_PLUGIN = "3.8.1"  # pinned so the result does not depend on Maven's default

_MVN_TIMEOUT_S = 900.0
_FORMAT_TIMEOUT_S = 60.0  # a short-lived JVM; seconds in practice
_STOP_KILL_WAIT_S = 10.0
_POLL_S = 0.1
_LOG_TAIL_LINES = 30
_STATE_FILE = "broker.json"

log = structlog.get_logger(__name__)


def _cache_root() -> Path:
    env = os.environ.get("TELEX_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "telex"


def default_cache_dir() -> Path:
    """Jar cache: ``$TELEX_CACHE_DIR/kafka-<ver>``, else ``~/.cache/telex/kafka-<ver>``."""
    return _cache_root() / f"kafka-{KAFKA_VERSION}"


def default_state_dir() -> Path:
    """Where ``telex broker`` keeps its state: ``$TELEX_BROKER_STATE_DIR`` or the cache."""
    env = os.environ.get("TELEX_BROKER_STATE_DIR")
    return Path(env) if env else _cache_root() / "broker"


# --- jars ---------------------------------------------------------------------------------


def _dependency(artifact: str, version: str, group: str = "org.apache.logging.log4j") -> str:
    exclusions = ""
    if artifact == "kafka_2.13":
        exclusions = "<exclusions>" + "".join(
            f"<exclusion><groupId>org.apache.kafka</groupId><artifactId>{a}</artifactId>"
            "</exclusion>"
            for a in _EXCLUDED
        ) + "</exclusions>"
    return (
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version>{exclusions}</dependency>\n"
    )


def _pom() -> str:
    deps = _dependency("kafka_2.13", KAFKA_VERSION, group="org.apache.kafka") + "".join(
        _dependency(a, LOG4J_VERSION) for a in (_SLF4J_BINDING, "log4j-core", "log4j-api")
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>dev.telex</groupId><artifactId>telex-devbroker</artifactId>"
        f"<version>{KAFKA_VERSION}</version><packaging>pom</packaging>\n"
        f"  <dependencies>\n{deps}  </dependencies>\n"
        "  <build><plugins><plugin><groupId>org.apache.maven.plugins</groupId>"
        "<artifactId>maven-dependency-plugin</artifactId>"
        f"<version>{_DEPENDENCY_PLUGIN}</version></plugin></plugins></build>\n"
        "</project>\n"
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise jar fetching between processes (parallel test workers share the cache)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _first_error(log_text: str) -> str:
    """The first ERROR record with its exception chain: usually the cause, while the log's
    tail is often only the shutdown that followed it."""
    lines = log_text.splitlines()
    start = next((i for i, line in enumerate(lines) if " ERROR " in line), None)
    if start is None:
        return ""
    chain = [lines[start]]
    for line in lines[start + 1:]:
        if line.startswith("["):  # the next log record
            break
        if line.strip() and not line.lstrip().startswith(("at ", "...")):
            chain.append("  " + line.strip())
    return "first error: " + "\n".join(chain[:12]) + "\n"


def _check_slf4j_binding(libs: Path) -> None:
    apis = sorted(p.name for p in libs.glob("slf4j-api-*.jar"))
    if not apis:
        raise BrokerError(f"no slf4j-api jar among the resolved Kafka jars in {libs}")
    wants_v2 = apis[0].startswith("slf4j-api-2.")
    if wants_v2 != (_SLF4J_BINDING == "log4j-slf4j2-impl"):
        raise BrokerError(
            f"{apis[0]} does not match the log4j binding {_SLF4J_BINDING}; the broker would "
            "log nothing. Update _SLF4J_BINDING in pipeline/dev/broker.py."
        )


def ensure_jars(cache_dir: Path | None = None) -> Path:
    """Resolve the broker's jars into ``<cache>/libs`` with Maven, once; return that folder.

    A marker holding the pom's digest says the folder is complete, so later calls (and other
    processes) skip Maven entirely; a changed pom or an interrupted copy re-resolves from scratch.
    """
    cache = cache_dir or default_cache_dir()
    libs, marker, pom = cache / "libs", cache / "jars.complete", _pom()
    digest = hashlib.sha256(pom.encode()).hexdigest()

    def complete() -> bool:
        return libs.is_dir() and marker.is_file() and marker.read_text().strip() == digest

    if complete():
        return libs
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / ".lock"):
        if complete():  # another process fetched them while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) is not on PATH; it is needed to fetch the Kafka jars")
        marker.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        (cache / "pom.xml").write_text(pom)
        cmd = [mvn, "-q", "-B", "-f", str(cache / "pom.xml"), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={libs}"]
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=_MVN_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            out = exc.output.decode() if isinstance(exc.output, bytes) else exc.output or ""
            raise BrokerError(f"mvn timed out after {_MVN_TIMEOUT_S:.0f}s:\n{_tail(out)}") from exc
        if done.returncode != 0:
            raise BrokerError(
                f"mvn failed (exit {done.returncode}) fetching Kafka {KAFKA_VERSION} jars "
                f"into {libs}:\n{_tail(done.stdout)}"
            )
        _check_slf4j_binding(libs)
        marker.write_text(digest + "\n")
        log.info("devbroker.jars_fetched", libs=str(libs), jars=len(list(libs.glob("*.jar"))),
                 seconds=round(time.monotonic() - started, 1))
    return libs


# --- processes ----------------------------------------------------------------------------


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home, "bin", "java")) if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise BrokerError("java is not on PATH (or JAVA_HOME); Kafka needs Java 17+")
    return java


def _cluster_id() -> str:
    while True:  # an id starting with '-' would be parsed by the tool as an option
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _is_broker_pid(pid: int, props: Path) -> bool:
    """True if ``pid`` is a live (not zombie) JVM running ``kafka.Kafka`` on ``props``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"kafka.Kafka" in args and str(props).encode() in args


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


_LOG4J2 = """\
status = warn
# Kafka logs its own shutdown from a JVM shutdown hook: log4j must not stop before it.
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class DevBroker:
    """One single-node KRaft Kafka JVM on 127.0.0.1, with its data in ``data_dir``.

    Ports are fixed at construction, so :meth:`restart` (after :meth:`stop` or :meth:`kill`)
    brings the same cluster back at the same address and clients reconnect. With
    ``state_dir`` the broker records itself there so another process can stop or query it
    (:meth:`from_state`). ``die_with_parent`` ties the JVM to this process (pytest fixtures):
    the kernel kills it if we die, and an ``atexit`` hook stops it cleanly if we exit.
    ``config`` overrides or adds ``server.properties`` entries (benchmarks compare broker
    settings with it).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        log_dir: Path | None = None,
        *,
        die_with_parent: bool = False,
        state_dir: Path | None = None,
        cache_dir: Path | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="telex-kafka-")).resolve()
        free = iter(listen_ports(2) if port is None or controller_port is None else ())
        self.port = port or next(free)
        self.controller_port = controller_port or next(free)
        self.heap = heap
        self.log_dir = Path(log_dir or self.data_dir / "logs").resolve()
        self.log_path = self.log_dir / "broker.log"
        self.die_with_parent = die_with_parent
        self.state_dir = state_dir
        self.cache_dir = cache_dir
        self.config = dict(config or {})
        self.pid: int | None = None
        self.timings: dict[str, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _props(self) -> Path:
        return self.data_dir / "server.properties"

    # -- lifecycle --

    def start(self, timeout: float = 90) -> str:
        """Start (formatting storage on first use) and return the bootstrap address once ready.

        ``timeout`` bounds the JVM's readiness; fetching jars and formatting have own limits.
        On failure the JVM is stopped and BrokerError quotes the end of the broker log.
        """
        if self.is_running():
            return self.bootstrap
        began = time.monotonic()
        libs = ensure_jars(self.cache_dir)
        jars_done = time.monotonic()
        java, classpath = _java(), f"{libs}/*"
        self._write_config()
        formatted = not (self.data_dir / "kraft" / "meta.properties").exists()
        if formatted:
            self._format(java, classpath)
        self._launch(java, classpath)
        try:
            self._await_ready(time.monotonic() + timeout, timeout)
        except BaseException:
            self.stop(timeout=_STOP_KILL_WAIT_S)
            raise
        now = time.monotonic()
        self.timings = {"jars_s": round(jars_done - began, 2), "start_s": round(now - jars_done, 2)}
        log.info("devbroker.ready", bootstrap=self.bootstrap, version=KAFKA_VERSION,
                 pid=self.pid, formatted=formatted, **self.timings)
        self._write_state()
        return self.bootstrap

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (Kafka shuts down cleanly), SIGKILL after ``timeout``; wait for the exit."""
        if self.is_running():
            self._signal(signal.SIGTERM)
            if not self._wait_exit(timeout):
                log.warning("devbroker.stop_timeout", pid=self.pid, timeout=timeout)
                self._signal(signal.SIGKILL)
                if not self._wait_exit(_STOP_KILL_WAIT_S):
                    raise BrokerError(f"Kafka broker pid {self.pid} survived SIGKILL")
        self._forget()

    def kill(self) -> None:
        """SIGKILL without a clean shutdown, as a crash would; for fault-injection tests."""
        if self.is_running():
            self._signal(signal.SIGKILL)
            if not self._wait_exit(_STOP_KILL_WAIT_S):
                raise BrokerError(f"Kafka broker pid {self.pid} survived SIGKILL")
        self._forget()

    def restart(self, timeout: float = 90) -> str:
        """Stop if running, then start on the same data dir and ports."""
        self.stop()
        return self.start(timeout)

    def is_running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _is_broker_pid(self.pid, self._props)

    def close(self) -> None:
        """Stop, and delete the data dir if this object created it."""
        self.stop()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- state shared with other processes --

    @classmethod
    def from_state(cls, state_dir: Path | None = None) -> DevBroker | None:
        """The broker recorded in ``state_dir`` (running or not), or None if none was."""
        state_dir = state_dir or default_state_dir()
        try:
            state: dict[str, Any] = json.loads((state_dir / _STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BrokerError(f"unreadable broker state in {state_dir}: {exc}") from exc
        broker = cls(Path(state["data_dir"]), state["port"], state["controller_port"],
                     state.get("heap", "512m"), Path(state["log_path"]).parent,
                     state_dir=state_dir)
        broker.pid = state.get("pid")
        return broker

    def _write_state(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"pid": self.pid, "port": self.port, "controller_port": self.controller_port,
                 "data_dir": str(self.data_dir), "log_path": str(self.log_path),
                 "heap": self.heap, "version": KAFKA_VERSION}
        tmp = self.state_dir / f".{_STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_dir / _STATE_FILE)

    # -- internals --

    def _write_config(self) -> None:
        kraft = self.data_dir / "kraft"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            # Never 0.0.0.0 or an empty host: the broker would advertise the machine's name.
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(kraft),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            # Defaults of 3 replicas / min ISR 2 leave a single node unable to serve them.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # 50 partitions per internal topic by default: fewer make the first group faster.
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.num.partitions": "5",
            "group.initial.rebalance.delay.ms": "0",
            # The cleaner's 128 MiB default buffer would take a quarter of a 512 MiB heap.
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.cleaner.backoff.ms": "1000",  # compaction tests see results in seconds
            # After a SIGKILL the restarted node cannot re-register until the controller
            # expires its old session (9 s by default); fault tests restart often. Heartbeats
            # go to the controller in the same JVM, so 4 missed ones are a generous margin.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            # Kafka's defaults, kept on purpose (ADR 0004): 1 network / 2 I/O threads did not
            # lower broker CPU per message on a 2-core box (bench.clientknobs chain at
            # 1,000 msg/s: 644 vs 580 µs); idle threads cost nothing.
            "num.network.threads": "3",
            "num.io.threads": "8",
            **self.config,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._props.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)

    def _jvm(self, java: str, classpath: str, heap: str) -> list[str]:
        return [java, f"-Xmx{heap}", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.log_dir}", "-cp", classpath]

    def _format(self, java: str, classpath: str) -> None:
        cmd = [*self._jvm(java, classpath, "256m"), "kafka.tools.StorageTool", "format",
               "-t", _cluster_id(), "-c", str(self._props)]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, check=False,
                                  timeout=_FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} timed out") from exc
        if done.returncode != 0:
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} failed "
                              f"(exit {done.returncode}):\n{_tail(done.stdout)}")

    def _launch(self, java: str, classpath: str) -> None:
        cmd = [*self._jvm(java, classpath, self.heap), "kafka.Kafka", str(self._props)]
        preexec = self._preexec()
        # The log file, not a pipe: nobody would read a pipe and the JVM would block on it.
        with self.log_path.open("ab") as out:
            out.write(f"\n=== telex devbroker start {time.strftime('%FT%T%z')} ===\n".encode())
            out.flush()
            self._log_offset = out.tell()
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=preexec)
        self.pid = self._proc.pid
        if self.die_with_parent:
            atexit.register(self.stop)

    def _preexec(self) -> Callable[[], None] | None:
        if not self.die_with_parent:
            return None
        try:
            return die_with_parent(signal.SIGKILL)
        except AttributeError:  # no prctl (not Linux): the atexit hook still applies
            return None

    def _await_ready(self, deadline: float, timeout: float) -> None:
        """Ready = the listener accepts (it opens only once the broker is up), then metadata."""
        while not _port_open(self.port):
            self._check_progress(deadline, timeout, "the listener to open")
            time.sleep(_POLL_S)
        # log_level 0: probe failures are expected while waiting and reported by us, not rdkafka.
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while True:
            self._check_progress(deadline, timeout, "a metadata response")
            try:
                metadata = admin.list_topics(timeout=max(min(2.0, deadline - time.monotonic()),
                                                         0.1))
            except KafkaException:
                continue
            if metadata.brokers:
                return

    def _check_progress(self, deadline: float, timeout: float, waiting_for: str) -> None:
        code = self._proc.poll() if self._proc else None
        if code is not None:
            problem = f"Kafka broker exited with code {code} while starting"
        elif time.monotonic() >= deadline:
            problem = f"Kafka broker not ready within {timeout:.0f}s (waiting for {waiting_for})"
        else:
            return
        raise BrokerError(f"{problem}; {self._log_excerpt()}")

    def _log_excerpt(self) -> str:
        """First ERROR line of this run (usually the cause) and the last lines of the log."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"broker log {self.log_path} unreadable: {exc}"
        return f"{_first_error(text)}last lines of {self.log_path}:\n{_tail(text)}"

    def _signal(self, sig: signal.Signals) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    def _forget(self) -> None:
        """Drop the process handle; keep data, ports and the state file for a later start."""
        was_running = self.pid is not None
        self._proc, self.pid = None, None
        atexit.unregister(self.stop)
        if was_running:
            self._write_state()
