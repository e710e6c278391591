"""The processes of one whole-pipeline benchmark run: simulators, Telex workers, and their CPU.

Shapes (``--stages-apart`` or ``--workers N``):

* ``stages-apart``: one unsupervised ``telex worker STAGE`` process per stage, as deployed
  before the topology worker existed;
* ``workers N``: N ``telex worker`` processes, each given the whole stage set (batch stages,
  the scheduler among them, on threads; dispatch and webhooks as supervised children). Their
  webhook receivers listen on ports of their own; the HTTP channel simulator calls the first
  one's.

CPU is read from /proc for every process of each worker's tree (children found by parent pid)
and labelled by what it runs, so supervisors and service children are counted too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import CLK_TCK, REPO, worker_env
from bench.load import limits, senders_registry
from pipeline.procutil import die_with_parent, free_ports
from pipeline.settings import Settings, load_settings
from pipeline.topics import admin_client, apply_topics, catalogue

STAGES_APART = ("ingest", "ratelimit", "scheduler", "dispatch", "reconcile", "status",
                "webhooks")
WA_SECRET = "bench-app-secret"
WA_TOKEN = "bench-token"


@dataclass
class SubmitLog:
    """A carrier simulator's ``<wall ms> <text>`` log, read incrementally."""

    path: Path
    _offset: int = 0
    _partial: bytes = b""

    def new_lines(self) -> list[tuple[int, str]]:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        out = []
        for line in lines:
            at, _, text = line.partition(b" ")
            out.append((int(at), text.decode("utf-8", "replace")))
        return out


@dataclass
class Rig:
    """Processes of one run by role; ``telex`` are the pids whose trees are Telex's own."""

    settings: Settings
    shape: str
    logs: list[SubmitLog]
    telex: dict[str, int] = field(default_factory=dict)  # label → root pid
    harness: dict[str, int] = field(default_factory=dict)  # simulators
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"a benchmark process exited with {proc.returncode}: "
                                 f"{proc.args!r}")

    def arrivals(self) -> list[tuple[int, str]]:
        """(arrival ms, text) of every carrier submit logged since the last call."""
        return [line for log in self.logs for line in log.new_lines()]

    def telex_cpu(self) -> dict[str, float]:
        """CPU seconds so far of every Telex process, summed by label over the workers."""
        out: dict[str, float] = {}
        for root in self.telex.values():
            for pid in _tree(root):
                label, cpu = _label(pid), _cpu(pid)
                if label is not None and cpu is not None:
                    out[label] = out.get(label, 0.0) + cpu
        return out

    def harness_cpu(self) -> dict[str, float]:
        return {name: _cpu(pid) or 0.0 for name, pid in self.harness.items()}


def _cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def _label(pid: int) -> str | None:
    """What a Telex process runs: its stage, "topology", or "supervisor"."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    if "worker" not in argv:
        return None
    rest = [a for a in argv[argv.index("worker") + 1:] if a]
    stage = next((a for a in rest if not a.startswith("-")), None)
    if "--no-supervise" not in rest:
        return "supervisors"
    return stage or "topology (batch stages)"


def _wait_for_members(settings: Settings, workers: int, timeout: float = 120) -> None:
    """Until every group of the pipeline has ``workers`` members and is stable: the run
    measures the steady state, not the start-up rebalances (records in flight while a second
    worker joins are a correctness matter for the fault suite, not a figure)."""
    from confluent_kafka import ConsumerGroupState, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_config())
    groups = [settings.topic(s) for s in ("ingest", "ratelimit", "dispatch", "reconcile",
                                          "status")]
    deadline = time.monotonic() + timeout
    while True:
        try:
            described = [f.result() for f in admin.describe_consumer_groups(
                groups, request_timeout=10).values()]
        except KafkaException:  # the coordinator is still loading: ask again
            described = []
        if described and all(len(d.members) == workers and d.state == ConsumerGroupState.STABLE
               for d in described):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"consumer groups not stable with {workers} members in "
                             f"{timeout} s: " + ", ".join(
                                 f"{d.group_id} {len(d.members)} {d.state}" for d in described))
        time.sleep(0.5)  # pacing between group descriptions; the condition decides


def _start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child that dies with us; a simulator's stdout is piped (it says when it listens)."""
    return subprocess.Popen(cmd, cwd=REPO, env=env,
                            stdout=subprocess.PIPE if env is None else None,
                            preexec_fn=die_with_parent())


def _listening(proc: subprocess.Popen[bytes], what: str) -> None:
    assert proc.stdout is not None
    if b"listening" not in proc.stdout.readline():
        raise SystemExit(f"the {what} did not start")


@contextmanager
def rig(bootstrap: str, tmp: Path, shape: str, workers: int = 1) -> Iterator[Rig]:
    """Topics, simulators and Telex workers for one run; everything stopped at the end."""
    run = tmp / uuid.uuid4().hex[:8]
    run.mkdir()
    settings = load_settings(kafka_bootstrap_servers=bootstrap,
                             topic_prefix=f"bp{run.name}.", state_dir=str(run / "state"))
    apply_topics(admin_client(settings), catalogue(settings))
    smsc_port, wa_port, *hook_ports = free_ports(2 + max(1, workers))
    (run / "senders.json").write_text(json.dumps(senders_registry()))
    (run / "limits.json").write_text(json.dumps(limits()))
    (run / "carriers.json").write_text(json.dumps({
        "connectors": [{"name": "smsc", "type": "smpp", "host": "127.0.0.1", "port": smsc_port,
                        "system_id": "telex", "password": "secret", "window": 100},
                       {"name": "wa", "type": "whatsapp",
                        "base_url": f"http://127.0.0.1:{wa_port}", "phone_number_id": "1099",
                        "access_token": WA_TOKEN, "app_secret": WA_SECRET,
                        "trust_env": False}],
        "routes": [{"channel": "sms", "prefix": "", "connectors": ["smsc"]},
                   {"channel": "whatsapp", "prefix": "", "connectors": ["wa"]}]}))
    settings = settings.model_copy(update={
        "carriers_file": str(run / "carriers.json"), "limits_file": str(run / "limits.json"),
        "senders_file": str(run / "senders.json"), "webhook_port": hook_ports[0]})
    logs = [SubmitLog(run / "smsc.log"), SubmitLog(run / "wa.log")]
    for log in logs:
        log.path.touch()
    r = Rig(settings, shape, logs)
    try:
        smsc = _start([sys.executable, "-m", "connectors.simulators.smsc", "--port",
                       str(smsc_port), "--submit-log", str(logs[0].path), "--outcome",
                       "DELIVRD:1"])
        r.procs.append(smsc)
        r.harness["smsc simulator"] = smsc.pid
        _listening(smsc, "SMSC simulator")
        channel = _start([sys.executable, "-m", "connectors.simulators.http_channel",
                          "--port", str(wa_port), "--access-token", WA_TOKEN,
                          "--app-secret", WA_SECRET, "--submit-log", str(logs[1].path),
                          "--callback-url", f"http://127.0.0.1:{hook_ports[0]}/webhooks/wa",
                          "--outcome", "read:1", "--webhook-batch", "50"])
        r.procs.append(channel)
        r.harness["http channel simulator"] = channel.pid
        _listening(channel, "HTTP channel simulator")
        main = [sys.executable, "-m", "pipeline.cli.main", "worker"]
        if shape == "stages-apart":
            for stage in STAGES_APART:  # unsupervised: the measured pid does the work
                proc = _start([*main, stage, "--no-supervise"], worker_env(settings))
                r.procs.append(proc)
                r.telex[stage] = proc.pid
        else:
            for w in range(workers):
                own = settings.model_copy(update={"webhook_port": hook_ports[w],
                                                  "state_dir": str(run / f"state-{w}")})
                proc = _start([*main, "--no-supervise"], worker_env(own))
                r.procs.append(proc)
                r.telex[f"worker {w + 1}"] = proc.pid
        if workers:
            _wait_for_members(settings, workers)
        yield r
    finally:
        for proc in r.procs:
            proc.terminate()
        for proc in r.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
