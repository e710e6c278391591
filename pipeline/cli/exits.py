"""Exit codes of the SRE commands, which scripts rely on, and the one place that maps errors
to them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from pipeline.errors import BrokerError, TopicError

OK = 0
# Found problems (dead letters pending, nothing traced), a partial failure, or a command that
# failed with a Telex error (its message on stderr).
PROBLEMS = 1
USAGE = 2  # as argparse: wrong arguments, or a confirmation that could not be asked
# The broker is unreachable or not running (`telex broker status`, as LSB's "not running"),
# or a topic does not exist: one meaning, whichever command says it.
UNREACHABLE = 3
# sysexits' EX_CONFIG: a worker's configuration is wrong; its supervisor does not restart it.
CONFIG = 78


def broker_errors(func: Callable[..., int]) -> Callable[..., int]:
    """Map BrokerError and TopicError to exit 3 with their message on stderr."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            return func(*args, **kwargs)
        except (BrokerError, TopicError) as exc:
            print(f"telex: error: {exc}", file=sys.stderr)
            return UNREACHABLE

    return run
