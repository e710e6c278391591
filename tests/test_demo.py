"""The README's first command, in a short version: the demo runs every stage end to end."""

import os
import re
import subprocess
import sys

from tests.fixtures.telex import REPO


def test_demo_sends_every_valid_request_and_fails_the_rest(kafka_bootstrap: str):
    """`telex demo --count 200`: exit 0; 196 sent, 4 failed (unregistered sender), 4 conflicts."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    run = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "demo", "--count", "200",
                          "--timeout", "150"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = dict(re.findall(r"^  (sent|failed|conflicts|dead-letter)\s+(\d+)", run.stdout, re.M))
    assert counts == {"sent": "196", "failed": "4", "conflicts": "4", "dead-letter": "0"}, (
        run.stdout)
