"""The Maven-assembled dev broker: lifecycle, failure reporting, durability, CLI. Real JVMs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.dev import broker as devbroker
from pipeline.dev.broker import DevBroker, ensure_jars
from pipeline.errors import BrokerError
from tests.fixtures.waiting import until_sync

Factory = Callable[..., DevBroker]


def _jvms_using(path: Path) -> list[int]:
    """Live java processes whose command line names ``path`` (zombies have none)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"java") and any(str(path).encode() in a for a in args):
            pids.append(int(proc.name))
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _produce_one(bootstrap: str, topic: str, value: bytes) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value)
    assert producer.flush(30) == 0


def _consume_one(bootstrap: str, topic: str, timeout: float = 30) -> bytes | None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg.value()
    finally:
        consumer.close()
    return None


def test_session_kafka_serves_metadata(kafka_bootstrap: str) -> None:
    """The session broker, whichever source it came from, answers a metadata request."""
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=30)
    assert metadata.brokers


def test_stop_leaves_no_jvm(devbroker_factory: Factory) -> None:
    """After stop() the JVM has exited and no java process names the data dir."""
    broker = devbroker_factory()
    broker.start()
    pid = broker.pid
    assert pid is not None and _pid_alive(pid)
    broker.stop()
    assert not _pid_alive(pid)
    assert _jvms_using(broker.data_dir) == []
    assert not broker.is_running()


def test_kill_leaves_no_jvm(devbroker_factory: Factory) -> None:
    """kill() (SIGKILL, as in a crash) also leaves no JVM behind."""
    broker = devbroker_factory()
    broker.start()
    broker.kill()
    assert _jvms_using(broker.data_dir) == []


def test_port_in_use_raises_broker_error_quoting_log(devbroker_factory: Factory) -> None:
    """A broker that cannot bind its port fails start() with the log's reason in the error."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = devbroker_factory(port=squatter.getsockname()[1])
        with pytest.raises(BrokerError, match="exited with code") as failure:
            broker.start(timeout=60)
    assert "Address already in use" in str(failure.value)
    assert str(broker.log_path) in str(failure.value)


def test_failed_start_leaves_no_jvm(devbroker_factory: Factory) -> None:
    """When readiness times out, start() stops the JVM it launched before raising."""
    broker = devbroker_factory()
    with pytest.raises(BrokerError, match="not ready within"):
        broker.start(timeout=0.5)
    assert _jvms_using(broker.data_dir) == []


def test_restart_keeps_topic_data(devbroker_factory: Factory) -> None:
    """stop() then restart() serves the same records at the same address."""
    broker = devbroker_factory()
    bootstrap = broker.start()
    _produce_one(bootstrap, "durable", b"kept")
    broker.stop()
    assert broker.restart() == bootstrap
    assert _consume_one(bootstrap, "durable") == b"kept"


def test_restart_after_kill_recovers_acked_records(devbroker_factory: Factory) -> None:
    """Records acked before a SIGKILL are readable after restart (log recovery works)."""
    broker = devbroker_factory()
    bootstrap = broker.start()
    _produce_one(bootstrap, "crashy", b"acked")
    broker.kill()
    broker.restart()
    assert _consume_one(bootstrap, "crashy") == b"acked"


def test_jvm_dies_with_killed_parent(tmp_path: Path) -> None:
    """With die_with_parent, SIGKILL of the owning process takes the JVM with it."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom pipeline.dev.broker import DevBroker\n"
        f"b = DevBroker(data_dir=Path({str(tmp_path)!r}), die_with_parent=True)\n"
        "b.start()\nprint('PID', b.pid, flush=True)\nsys.stdin.read()\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdin is not None and owner.stdout is not None
    jvm = None
    try:
        for line in owner.stdout:  # ends at EOF if the owner fails to start the broker
            if line.startswith("PID "):
                jvm = int(line.split()[1])
                break
        assert jvm is not None, "owner process did not start a broker"
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        until_sync(lambda: not _pid_alive(jvm), 10, "the orphaned JVM to die", interval_s=0.05)
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait(10)
        owner.stdin.close()
        owner.stdout.close()
        if jvm is not None and _pid_alive(jvm):
            os.kill(jvm, signal.SIGKILL)


def test_cached_jars_need_no_maven(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once fetched, ensure_jars() returns the cache without running mvn (here: off PATH)."""
    libs = ensure_jars()
    monkeypatch.setenv("PATH", "")
    assert ensure_jars() == libs
    assert any(libs.glob("kafka_2.13-*.jar"))


def test_maven_failure_quotes_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unresolvable version fails with BrokerError carrying Maven's own message."""
    monkeypatch.setattr(devbroker, "KAFKA_VERSION", "0.0.0-no-such-version")
    with pytest.raises(BrokerError, match=r"mvn failed \(exit 1\)") as failure:
        ensure_jars(tmp_path)
    assert "0.0.0-no-such-version" in str(failure.value).split("\n", 1)[1]


def _telex(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.main", "broker", *args,
                           "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=180, check=False)


def test_cli_status_without_broker_exits_3(tmp_path: Path) -> None:
    """`telex broker status` exits 3 when no broker was started from that state dir."""
    assert _telex("status", state_dir=tmp_path).returncode == 3


def test_cli_start_status_stop(tmp_path: Path) -> None:
    """`telex broker start` leaves a detached broker that `status` sees and `stop` ends."""
    try:
        started = _telex("start", state_dir=tmp_path)
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap.startswith("127.0.0.1:")
        assert AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).brokers
        assert _telex("status", state_dir=tmp_path).returncode == 0
        pid = DevBroker.from_state(tmp_path).pid  # type: ignore[union-attr]
        assert _telex("stop", state_dir=tmp_path).returncode == 0
        assert _telex("status", state_dir=tmp_path).returncode == 3
        assert pid is not None and not _pid_alive(pid)
    finally:
        leftover = DevBroker.from_state(tmp_path)
        if leftover is not None:
            leftover.stop()


def test_config_overrides_server_properties(tmp_path: Path) -> None:
    """config= entries replace the built-in ones and add new ones in server.properties."""
    broker = DevBroker(data_dir=tmp_path, port=1, controller_port=2,
                       config={"num.io.threads": "7", "message.max.bytes": "2000000"})
    broker._write_config()
    lines = (tmp_path / "server.properties").read_text().splitlines()
    assert "num.io.threads=7" in lines and "message.max.bytes=2000000" in lines
    assert sum(line.startswith("num.io.threads=") for line in lines) == 1
