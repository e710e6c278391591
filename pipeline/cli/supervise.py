"""Restart a stage process that died, so a broker outage does not take the pipeline down.

A stage whose consumer-group session expired while the broker was away (longer than
``session.timeout.ms``) fails its next commit: Quix Streams raises from the checkpoint and its
application stops; upstream's answer is to crash and let an orchestrator restart the process
(quixio/quix-streams#381, #1082). Restarting is safe for every Telex stage: each recovers its
state from its changelog or journal and repeats at most what it had not committed
(at-least-once, absorbed downstream). So ``telex worker STAGE`` runs the stage in a child
process and starts it again when it exits with an error, with backoff; a crash loop
(:data:`MAX_QUICK_FAILURES` failures, each within :data:`HEALTHY_AFTER_S` of its start) and a
configuration error (exit :data:`pipeline.cli.exits.CONFIG`) end the supervisor too, so they
stay visible.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import structlog

from pipeline.cli import exits
from pipeline.procutil import die_with_parent

MAX_QUICK_FAILURES = 5
HEALTHY_AFTER_S = 60.0
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

log = structlog.get_logger("telex.supervise")


def supervise(stage: str, child_argv: Sequence[str], *,
              command: Sequence[str] = (sys.executable, "-m", "pipeline.cli.main"),
              backoff_s: Sequence[float] = BACKOFF_S) -> int:
    """Run ``<command> <child_argv>`` (the stage, unsupervised) until told to stop; returns
    the exit code for the supervisor itself."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    quick_failures = 0
    while not stopping:
        started = time.monotonic()
        # SIGKILL of the supervisor takes the stage with it (a killed worker is a killed stage).
        child = subprocess.Popen([*command, *child_argv], preexec_fn=die_with_parent())
        if stopping:  # the signal came while it was being started
            child.terminate()
        code = child.wait()
        ran = time.monotonic() - started
        if stopping or code == 0:
            return 0 if stopping else code
        if code == exits.CONFIG:
            log.error("worker_config_error", stage=stage)
            return code
        quick_failures = quick_failures + 1 if ran < HEALTHY_AFTER_S else 1
        if quick_failures >= MAX_QUICK_FAILURES:
            log.error("worker_crash_loop", stage=stage, exit_code=code,
                      failures=quick_failures)
            return 1
        pause = backoff_s[min(quick_failures - 1, len(backoff_s) - 1)]
        log.warning("worker_restarting", stage=stage, exit_code=code, ran_s=round(ran, 1),
                    backoff_s=pause)
        deadline = time.monotonic() + pause
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)  # backoff, interruptible by SIGTERM
    return 0
