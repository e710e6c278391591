"""The README's first command, in a short version: the demo runs every stage end to end."""

import os
import re
import subprocess
import sys

from tests.fixtures.telex import REPO


def test_demo_brings_every_valid_request_to_a_final_status(kafka_bootstrap: str):
    """`telex demo --count 200`: exit 0; the 196 valid messages end delivered or undelivered
    (receipts: 96 % DELIVRD), 4 failed (unregistered sender), 4 conflicts, nothing
    dead-lettered."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    run = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "demo", "--count", "200",
                          "--timeout", "150"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = {k: int(v) for k, v in re.findall(
        r"^  (delivered|undelivered|sent|failed|conflicts|dead-letter)\s+(\d+)", run.stdout,
        re.M)}
    assert counts.get("sent", 0) == 0, run.stdout  # every message reached a final status
    assert counts["delivered"] + counts.get("undelivered", 0) == 196, run.stdout
    assert counts["delivered"] >= 180, run.stdout
    assert (counts["failed"], counts["conflicts"], counts["dead-letter"]) == (4, 4, 0), (
        run.stdout)
