"""Exit codes of the SRE commands, which scripts rely on, and the one place that maps errors
to them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from pipeline.errors import BrokerError, TopicError

OK = 0
PROBLEMS = 1  # found problems (dead letters pending, nothing traced) or a partial failure
USAGE = 2  # as argparse: wrong arguments, or a confirmation that could not be asked
UNREACHABLE = 3  # broker unreachable, or a topic that does not exist


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
