"""Child-process helpers shared by the dev servers (Kafka, PostgreSQL) and the test workers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import threading
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


def listen_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """Free ports on 127.0.0.1 below the kernel's ephemeral range, all held together so they
    differ: for a server that must come back on its port after a crash (the dev broker). A port
    from the ephemeral range can be taken, while the server is down, as the local port of any
    outgoing connection on the machine; a restart then fails with "Address already in use"."""
    low = _ephemeral_low()
    rng = rng or random.Random()
    chosen: list[int] = []
    with contextlib.ExitStack() as stack:
        for _ in range(count * 50):
            if len(chosen) == count:
                break
            port = rng.randrange(max(1024, low // 3), low)
            if port in chosen:
                continue
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen.append(port)
    if len(chosen) < count:
        return free_ports(count)  # nothing free below the range: the kernel's choice
    return chosen


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


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


def malloc_trim() -> bool:
    """Give glibc's free-but-held heap memory back to the kernel (``malloc_trim(0)``, which also
    releases whole free pages inside the heap). Returns whether any memory was released (False
    also where malloc_trim is missing, e.g. musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))


def trim_malloc_every(interval_s: float,
                      trim: Callable[[], bool] = malloc_trim) -> threading.Event:
    """Call ``trim`` every ``interval_s`` on a daemon thread until the returned event is set.

    Why: a worker's RocksDB block cache and memtables churn (blocks evicted, memtables flushed)
    while what it holds stays bounded; glibc keeps the freed chunks, fragmented, and resident
    memory creeps up although malloc's in-use memory is flat (ADR 0003, memory amendments).
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):  # the wait is the period, not a readiness check
            trim()

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()
    return stop
