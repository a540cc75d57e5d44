"""Where the worker pool's threads may run: off the calling thread's CPU.

A parallel phase hands items to pool threads that sleep between phases. Linux wakes a
thread on an idle CPU when it sees one, but a virtual machine's idle vCPU is halted,
and the guest kernel avoids a vCPU that its host has descheduled: it wakes the worker
on the caller's own CPU instead, where the two take turns until the load balancer
moves one (milliseconds later). Measured on a 2-vCPU VM (a 1×1 convolution's GEMM
split in two 0.55 ms halves, the caller running one): after 12 ms idle the worker
shared the caller's CPU in 24 of 30 phases and the phase took 1.4–1.6 ms; after
200 ms idle in 28 of 30, 1.7 ms. OpenMP and OpenBLAS hide this by spinning their
threads for milliseconds after each call; ours sleep at once.

So before it wakes the workers, :func:`place_workers` lets each run on the CPUs it
started with (inherited from the thread that started the pool: a process restricted by
``taskset`` stays so) except the CPU the caller is on (``sched_setaffinity``; once per
change of that CPU or of the pool's threads): the scheduler then wakes the halted vCPU
instead.
Same measurement: 0.80–0.85 ms after 12 ms idle, 1.06–1.18 ms after 200 ms. Only the
caller's CPU is excluded, not each worker bound to one CPU of its own: processes that
share a machine are not piled onto the same cores.

Linux only (where ``os.sched_setaffinity`` and the C library's ``sched_getcpu``
exist); elsewhere, or when the system refuses (``OSError``: a sandbox, a CPU set that
changed), the workers run where the scheduler puts them, as before.
"""

from __future__ import annotations

import os
import threading

__all__ = ["register_worker", "place_workers", "worker_ids", "reset"]

_tids: list = []  # (native id, CPUs it may run on) of the pool's threads, in start order
_placed = [None]  # (caller's CPU, the _tids entries) last applied
_getcpu = [None]  # the C library's sched_getcpu; False: placement unavailable


def register_worker():
    """Record the calling pool thread and the CPUs it may run on (inherited from the
    thread that started it; the pool's initializer calls this)."""
    tid = threading.get_native_id()
    try:
        mask = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mask = None
    _tids.append((tid, mask))


def worker_ids() -> tuple:
    return tuple(t for t, _ in _tids)


def reset():
    """Forget the threads and what was applied (a forked child starts a new pool)."""
    _tids.clear()
    _placed[0] = None


def _cpu_getter():
    f = _getcpu[0]
    if f is None:
        f = False
        if hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity"):
            try:
                import ctypes

                g = ctypes.CDLL(None).sched_getcpu
                g.restype, g.argtypes = ctypes.c_int, []
                if g() >= 0:
                    f = g
            except (OSError, AttributeError):  # no sched_getcpu in this C library
                f = False  # placement stays off
        _getcpu[0] = f
    return f


def place_workers():
    """Let each pool thread run on the CPUs it started with, except the caller's now."""
    get = _cpu_getter()
    if get is False or not _tids:
        return
    key = (get(), tuple(_tids))
    if key == _placed[0]:
        return
    try:
        for tid, mask in key[1]:
            if mask:
                os.sched_setaffinity(tid, mask - {key[0]} or mask)
    except OSError:
        _getcpu[0] = False  # refused here: leave the threads where the scheduler puts them
        return
    _placed[0] = key
