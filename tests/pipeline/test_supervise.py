"""The worker supervisor with real child processes: restart after an error exit, stop on a
configuration error or a crash loop, forward SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.cli.exits import CONFIG as EXIT_CONFIG
from pipeline.cli.supervise import MAX_QUICK_FAILURES, supervise
from tests.fixtures.waiting import until_sync

FAST = (0.05,)


def child(tmp_path: Path, exits: list[int]) -> list[str]:
    """A child that appends a line to ``runs`` and exits with the next code of ``exits``."""
    runs = tmp_path / "runs"
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        runs = Path({str(runs)!r})
        n = len(runs.read_text().splitlines()) if runs.exists() else 0
        with runs.open("a") as f:
            f.write("run\\n")
        sys.exit({exits!r}[min(n, {len(exits) - 1})])
    """)
    return [sys.executable, "-c", code]


def runs(tmp_path: Path) -> int:
    return len((tmp_path / "runs").read_text().splitlines())


def test_restarts_after_error_exits_until_a_clean_exit(tmp_path: Path) -> None:
    """A child exiting 1, 1, then 0 runs three times and the supervisor returns 0."""
    assert supervise("t", [], command=child(tmp_path, [1, 1, 0]), backoff_s=FAST) == 0
    assert runs(tmp_path) == 3


def test_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    """A child exiting with the configuration-error code runs once and the supervisor returns it."""
    assert supervise("t", [], command=child(tmp_path, [EXIT_CONFIG]), backoff_s=FAST) == (
        EXIT_CONFIG)
    assert runs(tmp_path) == 1


def test_a_crash_loop_ends_the_supervisor(tmp_path: Path) -> None:
    """A child that always exits 1 runs MAX_QUICK_FAILURES times, then the supervisor returns 1."""
    assert supervise("t", [], command=child(tmp_path, [1]), backoff_s=FAST) == 1
    assert runs(tmp_path) == MAX_QUICK_FAILURES


def test_sigterm_is_forwarded_and_ends_both(tmp_path: Path) -> None:
    """`telex worker` as a process: SIGTERM to the supervisor stops the stage and both exit 0;
    the child is the one that got the signal (it would otherwise run for 60 s)."""
    script = textwrap.dedent(f"""
        import sys
        from pipeline.cli.supervise import supervise
        sys.exit(supervise("t", [], command=[sys.executable, "-c",
            "import signal, sys, time; from pathlib import Path; "
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
            "Path({str(tmp_path / 'up')!r}).touch(); time.sleep(60)"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    marker = tmp_path / "up"
    # The supervisor exiting ends the wait at once, as the child starting does.
    until_sync(lambda: marker.exists() or proc.poll() is not None, 30,
               "the child's marker file (child never started)", interval_s=0.05)
    assert marker.exists(), "child never started"
    proc.send_signal(signal.SIGTERM)
    # Not forwarded, the child would sleep on for 60 s and this wait would time out.
    assert proc.wait(20) == 0
