"""The README's first command, in a short version: the demo runs every stage end to end."""

import os
import re
import subprocess
import sys

from tests.fixtures.telex import REPO


def test_demo_brings_every_valid_request_to_a_final_status(kafka_bootstrap: str):
    """`telex demo --count 200` (180 SMS, 20 WhatsApp): exit 0 and exact final counts, since
    the simulators draw each outcome from (seed, recipient), not from the order of arrival.
    SMS: 4 requests from an unregistered sender fail (21606); the SMSC's receipts deliver 168
    and leave 8 undelivered (EXPIRED, or UNDELIV resent once to the same handset). WhatsApp:
    18 read, 1 delivered, 1 failed, by status webhooks. None left at sent; 4 conflicts;
    nothing dead-lettered; every status change of acct-1's messages called back."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    run = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "demo", "--count", "200",
                          "--timeout", "150"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = {k: int(v) for k, v in re.findall(
        r"^  (delivered|undelivered|read|sent|failed|conflicts|dead-letter)\s+(\d+)",
        run.stdout, re.M)}
    assert counts == {"delivered": 168 + 1, "undelivered": 8, "read": 18, "failed": 4 + 1,
                      "conflicts": 4, "dead-letter": 0}, run.stdout
    # acct-1's messages (a fifth) asked for status callbacks: one per status change arrived,
    # every signature verified by the reference Standard Webhooks library.
    called = re.search(r"status callbacks to acct-1's endpoint: (\d+) of (\d+) status changes, "
                       r"(\d+) with a bad signature", run.stdout)
    assert called is not None, run.stdout
    assert called[1] == called[2] and int(called[2]) > 0 and called[3] == "0", run.stdout
