"""Child-process helpers shared by the dev servers (Kafka, PostgreSQL) and the test workers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` after which the child receives ``sig`` when its parent dies.

    Without it a killed pytest leaves servers behind holding ports and temp dirs. Linux sends the
    signal when the *thread* that spawned the child exits, so spawn from a long-lived thread (the
    main thread, for session fixtures). The kernel clears the setting when credentials change;
    ``subprocess`` applies ``user=`` before ``preexec_fn``, so arming it here is late enough.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def arm() -> None:
        if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return arm


def free_ports(count: int) -> list[int]:
    """Ports the kernel calls free now on 127.0.0.1; all held together so they differ."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


_M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas of this process at ``arenas`` (``mallopt(M_ARENA_MAX)``) unless
    ``MALLOC_ARENA_MAX`` is set in the environment (an operator's choice wins). Call it before
    the process starts threads: the cap applies to arenas created afterwards. Returns whether
    the cap was set (False also where mallopt is missing, e.g. musl)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, int(arenas)))
