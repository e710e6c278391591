"""The README's first command, in a short version: the demo runs every stage end to end."""

import os
import re
import subprocess
import sys

from tests.fixtures.telex import REPO


def test_demo_brings_every_valid_request_to_a_final_status(kafka_bootstrap: str):
    """`telex demo --count 200` (180 SMS, 20 WhatsApp): exit 0; every message ends in a final
    status (none left at sent), SMS by delivery receipts and WhatsApp by status webhooks; the
    4 requests from an unregistered sender fail; 4 conflicts; nothing dead-lettered."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    run = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "demo", "--count", "200",
                          "--timeout", "150"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = {k: int(v) for k, v in re.findall(
        r"^  (delivered|undelivered|read|sent|failed|conflicts|dead-letter)\s+(\d+)",
        run.stdout, re.M)}
    final = sum(counts.get(k, 0) for k in ("delivered", "undelivered", "read", "failed"))
    assert final == 200 and counts.get("sent", 0) == 0, run.stdout
    assert counts["delivered"] >= 160 and counts["read"] >= 10, run.stdout  # SMS; WhatsApp
    assert 4 <= counts["failed"] <= 10, run.stdout
    assert (counts["conflicts"], counts["dead-letter"]) == (4, 0), run.stdout
