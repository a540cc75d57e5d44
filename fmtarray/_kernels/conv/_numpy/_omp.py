"""Parallel phases on the process's OpenMP runtime (GNU libgomp), where there is one.

**Why.** torch runs its threads on libgomp, whose idle workers spin for about 5 ms of
CPU after each parallel region before they sleep (libgomp's default spin count). With a
pool of threads of our own, a convolution that starts right after a torch call shares
the cores with that spinning worker: three runnable threads on two vCPUs. Measured on a
2-vCPU VM, each of our calls right after one of torch's, same process, interleaved
(medians of 20): b8 7×7 512→512 forward 5.4 ms on our own pool against 4.2 ms on
libgomp's team, its training step 19.2 against 15.1 ms, dilated 64→64 step 16.7 against
13.5. On one runtime one team serves both libraries: the worker still spinning after
torch's call takes our items at once, and after our call it serves torch's next. The
same holds for anything else in the process on that libgomp (numba's ``omp`` threading
layer).

**How.** ``GOMP_parallel(fn, data, n, 0)``, the entry GCC emits for ``#pragma omp
parallel`` (stable since GCC 4.9), runs ``fn`` on a team of ``n`` threads, the calling
thread being thread 0. ``fn`` is a :mod:`ctypes` callback: ctypes releases the GIL
around the foreign call and takes it on each team thread for the callback (a team
thread that Python has not seen gets a thread state for the call), which runs worker
``omp_get_thread_num()``. Worker 0 runs in the caller's context, the others each in a
copy of it (``tuning()`` settings travel). An exception in a worker is kept and raised
once the team has finished; the phase's other workers take no new items after it. A
team smaller than asked (``OMP_THREAD_LIMIT``, ``OMP_DYNAMIC``, a region nested in
another) leaves the missing workers' items to the calling thread, under their own
worker numbers.

**Where.** The ``libgomp.so.1`` the process has loaded (torch's, numba's ``omp``
layer's), if any: we never load one ourselves, so a process without torch keeps its
threads as before, and a later ``import torch`` is not handed a libgomp other than its
own (while none is loaded, :func:`team` looks again at most once a second). Not in a
forked child (libgomp's threads do not survive a fork, and a team used before it can
hang after it), not where ``FMTARRAY_POOL=python``, not off Linux: :mod:`._runtime`'s
own thread pool serves there, whenever the team is asleep (:func:`awake`), and where
the team threads' state cannot be read (no procfs).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import sys
import threading
import time

__all__ = ["team", "run_team", "pool_from_env", "ENV_POOL", "POOLS"]

ENV_POOL = "FMTARRAY_POOL"
POOLS = ("openmp", "python")
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
#: [] not looked up yet; [None] no libgomp loaded when last looked; [False] never here;
#: [(GOMP_parallel, omp_get_thread_num)]
_lib = []
_checked = [0.0]  # time.monotonic() of the last look-up
RECHECK_S = 1.0
_RTLD_NOLOAD = getattr(os, "RTLD_NOLOAD", 4)
_lock = threading.Lock()
_team_threads: dict = {}  # caller's native thread id -> {worker: (its thread id, stat file)}


def _close(fd):
    if fd >= 0:
        os.close(fd)


def _after_fork_in_child():
    _lib[:] = [False]
    for known in _team_threads.values():
        for _, fd in known.values():
            _close(fd)
    _team_threads.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def pool_from_env(value):
    """The pool ``FMTARRAY_POOL`` asks for: ``"openmp"`` (the default: the team of the
    libgomp the process has loaded, if any) or ``"python"`` (our own threads only)."""
    if value is None or not value.strip():
        return "openmp"
    v = value.strip().lower()
    if v not in POOLS:
        raise ValueError(f"{ENV_POOL}={value!r}: expected one of {POOLS} (or leave it unset: "
                         "'openmp', libgomp's team where the process has loaded libgomp)")
    return v


def _load():
    """The team's entry points, ``None`` while no libgomp is loaded, ``False`` never."""
    if pool_from_env(os.environ.get(ENV_POOL)) != "openmp" or not sys.platform.startswith("linux"):
        return False
    try:  # only a libgomp the process has loaded already: we never load one ourselves
        lib = ctypes.CDLL("libgomp.so.1", mode=_RTLD_NOLOAD | os.RTLD_LAZY)
        par, num = lib.GOMP_parallel, lib.omp_get_thread_num
    except OSError:
        return None
    except AttributeError:  # not GNU's libgomp after all
        return False
    par.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    par.restype = None
    num.argtypes, num.restype = [], ctypes.c_int
    return par, num


def team():
    """``(GOMP_parallel, omp_get_thread_num)`` of the process's libgomp, or ``None``
    where :mod:`._runtime`'s own pool serves (see the module's docstring). While no
    libgomp is loaded it looks again at most every :data:`RECHECK_S` seconds (torch
    imported later)."""
    got = _lib[0] if _lib else None
    if got:
        return got
    if got is False:
        return None
    now = time.monotonic()
    if _lib and now - _checked[0] < RECHECK_S:
        return None
    with _lock:
        _checked[0] = now
        got = _load()
        _lib[:] = [got]
    return got or None


def awake(n) -> bool:
    """Whether the calling thread's team of ``n`` is awake: each of its threads 1 … n-1
    seen so far running or spinning (state ``R``; libgomp gives a team of ``n`` the first
    ``n - 1`` threads of the caller's pool), or none seen yet (the first region starts
    them). A region waits at its end for a thread it had to wake from its sleep, while
    our own pool's callers never wait for a thread that has not started."""
    known = _team_threads.get(threading.get_native_id())
    if not known:
        return True
    for w in range(1, n):
        got = known.get(w)
        if got is None:
            continue
        if got[1] < 0:  # its state cannot be read (no procfs): our pool, as before
            return False
        try:
            s = os.pread(got[1], 256, 0)
        except OSError:  # the thread has ended
            if known.pop(w, None) is not None:
                _close(got[1])
            continue
        if s[s.rindex(b")") + 2:s.rindex(b")") + 3] != b"R":
            return False
    return True


def _register(caller, w):
    """Watch the calling thread's state (:func:`awake`) as worker ``w`` of ``caller``'s
    team."""
    tid = threading.get_native_id()
    got = _team_threads.get(caller, {}).get(w)
    if got is not None and got[0] == tid:
        return
    with _lock:
        if caller not in _team_threads:  # forget callers that have ended (and their files)
            for c in [c for c in list(_team_threads)
                      if not os.path.exists(f"/proc/self/task/{c}")]:
                for _, fd in _team_threads.pop(c, {}).values():
                    _close(fd)
        known = _team_threads.setdefault(caller, {})
        old = known.pop(w, None)
        if old is not None:
            _close(old[1])
        try:
            known[w] = (tid, os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY))
        except OSError:  # no procfs: its state stays unknown, and the team unused
            known[w] = (tid, -1)


def run_team(lib, run, n, stop):
    """Run ``run(w)`` for ``w`` in ``0 … n-1`` on a libgomp team of ``n`` threads (the
    caller is worker 0, the others each in a copy of its context); ``stop[0]`` is set on
    the first error, which is raised after every worker has returned."""
    par, num = lib
    ctxs = [None] + [contextvars.copy_context() for _ in range(1, n)]
    ran = [False] * n
    errors = []
    caller = threading.get_native_id()

    def worker(w):
        try:
            if w == 0:
                run(0)
            else:
                ctxs[w].run(run, w)
        except BaseException as e:  # noqa: BLE001 - kept and raised by the caller
            stop[0] = True
            errors.append(e)

    def body(_data):
        w = num()
        if 0 <= w < n:
            ran[w] = True
            if w:
                with contextlib.suppress(Exception):  # bookkeeping: the items run regardless
                    _register(caller, w)
            worker(w)

    callback = _CALLBACK(body)  # referenced until the call returns
    par(callback, None, n, 0)
    for w in range(n):
        if not ran[w] and not stop[0]:  # a smaller team than asked: the rest here
            worker(w)
    if errors:
        raise errors[0]
