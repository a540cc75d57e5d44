"""Threads, scratch buffers and copies shared by the NumPy convolution algorithms.

* **Workers.** One worker per core that BLAS would use (``FMTARRAY_NUM_THREADS``
  overrides it); the calling thread is worker 0. While a convolution runs, BLAS is held
  at one thread (:func:`single_threaded_blas`): gathers (memory copies) and GEMMs then
  run on every core, instead of a single-threaded gather followed by a multi-threaded
  GEMM. NumPy and BLAS release the GIL. Every task handed to the pool runs in a copy
  of the caller's :mod:`contextvars` context, so :func:`~fmtarray._kernels.conv.tuning`
  settings reach the worker threads; they wake off the caller's CPU (:mod:`._placement`).
  Where the process has loaded libgomp (torch) and its OpenMP team is awake, a phase
  runs on that team instead (:mod:`._omp`), with the same worker numbers and items.
* **Small problems** (fewer multiply-adds than ``Tuning.serial_macs``) run on the
  calling thread alone (:class:`kernel_call`): waking a pool thread costs more than
  it saves.
* **Scratch.** Buffers of ``Tuning.scratch_keep_bytes`` and more (chunk copies, chunk
  columns, transposed cotangents) are checked out of a per-thread free list for one
  kernel call (:class:`kernel_call`) and returned to it when the call ends — at most
  ``2 · workspace_bytes`` stay there for the next call, since faulting in fresh pages
  costs about 0.1 ms per MiB; :func:`release_scratch` drops them. A buffer belongs to
  one call while it is checked out, so a call made while another is running on the
  same thread (a signal handler, a finaliser, a trace hook) or on other threads never
  sees it.
* **Re-entry.** A convolution started on a thread that is already inside one (see
  above), or on one of the pool's threads, runs on the calling thread alone and leaves
  BLAS's limit to the outer call; it hands its items to the same worker numbers as a
  pooled call, so its sums, hence its results, are bit-identical to one.
* **Fork safety.** A forked child starts its own pool on first use.
* **Heap.** The first kernel call sets glibc's malloc thresholds (:mod:`._heap`), so
  that a step's arrays of a few MiB are not returned to the system and faulted in again.
* Copies split over the workers are in :mod:`._copies`.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

import numpy as np

from ..thresholds import current
from . import _heap, _omp, _placement
from ._common import row_ranges

__all__ = ["workers", "n_workers", "dynamic_blocks", "threads_from_env",
           "single_threaded_blas", "kernel_call", "serial_if_small", "on_calling_thread",
           "parallel", "parallel_into", "parallel_add", "row_blocks", "scratch", "release_scratch",
           "cached_scratch"]

_lock = threading.RLock()
_state: dict = {}
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None
_local_saved = None  # the BLAS count to restore (OpenBLAS setter path)
_tls = threading.local()
#: ``False``: pooled; ``True``: on the calling thread (small problems, Dask blocks);
#: ``_REENTRANT``: on the calling thread, items handed out as the pool would
_SERIAL: contextvars.ContextVar = contextvars.ContextVar("fmtarray_conv_serial", default=False)
_REENTRANT = "reentrant"
#: the running kernel call's scratch checkouts (:class:`kernel_call`)
_SESSION: contextvars.ContextVar = contextvars.ContextVar("fmtarray_conv_scratch", default=None)
_END = object()
_KEYS = itertools.count()  # free-list keys (``next`` is atomic under the GIL)
ENV_THREADS = "FMTARRAY_NUM_THREADS"


def _after_fork_in_child():
    """A forked child has none of the parent's pool threads: start a fresh pool (and
    fresh locks) on first use instead of waiting on threads that do not exist."""
    global _lock, _blas_lock, _blas_users, _blas_limiter, _local_saved
    _lock = threading.RLock()
    _state.clear()
    _placement.reset()
    _blas_lock = threading.Lock()
    if _blas_limiter is not None:  # forked inside a convolution: give BLAS its threads back
        _blas_limiter.restore_original_limits()
    if _local_saved is not None:
        _restore_local_blas(_local_saved)
    _blas_users, _blas_limiter, _local_saved = 0, None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def threads_from_env(value):
    """The worker count ``FMTARRAY_NUM_THREADS`` asks for (``None``: unset or empty)."""
    if value is None or not value.strip():
        return None
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV_THREADS}={value!r}: expected a positive whole number of "
                         "worker threads (1, 2, ...), or leave it unset (or empty) for "
                         "one per core that BLAS would use")
    return n


def _local_blas_setters(ctl):
    """OpenBLAS's ``openblas_set_num_threads_local`` of every OpenBLAS that ``ctl`` sees
    (OpenBLAS >= 0.3.27). OpenBLAS keeps a per-thread count beside the process-wide one,
    and a thread other than the main one may go on using its own count after the main
    thread changed the process-wide one (measured with NumPy's OpenBLAS 0.3.31: the
    global limit set from a worker thread did not apply, BLAS ran two threads under our
    two workers, 5-10x slower). Setting the calling thread's own count as well holds
    BLAS at one thread on any thread."""
    import ctypes

    out = []
    for lc in getattr(ctl, "lib_controllers", ()):
        if getattr(lc, "internal_api", "") != "openblas":
            continue
        f = getattr(getattr(lc, "dynlib", None), "openblas_set_num_threads_local", None)
        if f is not None:
            f.restype, f.argtypes = ctypes.c_int, [ctypes.c_int]
            out.append(f)
    return tuple(out)


def _set_local_blas(n):
    """Set this thread's own OpenBLAS thread count(s); returns the previous ones."""
    return [f(n) for f in _state.get("local_blas", ())]


def _restore_local_blas(prev):
    for f, n in zip(_state.get("local_blas", ()), prev):
        f(n)


def _mark_pool_thread():
    _tls.pool_thread = True
    _placement.register_worker()


def workers():
    """``(pool, n, controller)``: one worker per core that BLAS would use."""
    got = _state.get("workers")
    if got is not None:
        return got
    with _lock:  # re-entrant: a signal handler may convolve while this one builds
        if "workers" not in _state:
            n = os.cpu_count() or 1
            ctl = None
            try:
                from threadpoolctl import ThreadpoolController

                ctl = ThreadpoolController()
                blas = [i["num_threads"] for i in ctl.info() if i["user_api"] == "blas"]
                if blas:
                    n = max(1, min(n, max(blas)))
            except Exception:  # pragma: no cover - threadpoolctl missing
                # BLAS cannot be held at one thread: no worker threads on top of it
                ctl, n = None, 1
            env = threads_from_env(os.environ.get(ENV_THREADS))
            if env is not None:
                n = env
            _state["local_blas"] = _local_blas_setters(ctl) if ctl is not None else ()
            pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fmtarray",
                                      initializer=_mark_pool_thread)
            # one store: a nested call sees either nothing or the whole triple
            _state.setdefault("workers", (pool, n, ctl))
    return _state["workers"]


def n_workers() -> int:
    return workers()[1]


def dynamic_blocks() -> int:
    """How many blocks a dynamic :func:`parallel` phase should cut its work into: four
    per worker when it runs on the pool (a core slowed by something else takes fewer),
    one when it runs on the calling thread alone (small problems, Dask blocks): each
    block costs a compiled kernel's dispatch, about 5 µs."""
    if _SERIAL.get() is True:
        return 1
    n = n_workers()
    return 1 if n == 1 else 4 * n


@contextlib.contextmanager
def single_threaded_blas():
    """Hold BLAS at one thread within the block (our workers are the parallelism).

    BLAS's thread count is process-global: concurrent convolutions share one limit,
    set by the first to enter and restored by the last to leave, so any number of
    overlapping calls leave BLAS exactly as they found it. With OpenBLAS it is set with
    ``openblas_set_num_threads_local`` where available (see :func:`_local_blas_setters`),
    else with threadpoolctl. A thread that holds it
    already (an outer call, which a signal handler may have interrupted anywhere,
    even within the counter's lock) leaves it to that call."""
    global _blas_users, _blas_limiter
    _, n, ctl = workers()
    if n <= 1 or ctl is None or getattr(_tls, "blas", False) \
            or getattr(_tls, "pool_thread", False):  # they run under their caller's limit
        yield
        return
    _tls.blas = True
    try:
        if _state.get("local_blas"):
            # OpenBLAS's own setter (see _local_blas_setters): the first call to enter
            # records the count and sets one, the last to leave restores it
            global _local_saved
            with _blas_lock:
                if _blas_users == 0:
                    _local_saved = _set_local_blas(1)
                _blas_users += 1
            try:
                yield
            finally:
                with _blas_lock:
                    _blas_users -= 1
                    if _blas_users == 0:
                        _restore_local_blas(_local_saved)
                        _local_saved = None
            return
        with _blas_lock:
            if _blas_users == 0:
                _blas_limiter = ctl.limit(limits=1, user_api="blas")
            _blas_users += 1
        try:
            yield
        finally:
            with _blas_lock:
                _blas_users -= 1
                if _blas_users == 0:
                    _blas_limiter.restore_original_limits()
                    _blas_limiter = None
    finally:
        _tls.blas = False


class kernel_call:
    """Context of one NumPy kernel call: its scratch checkouts (returned when it ends),
    BLAS held at one thread (``blas1``), and where its :func:`parallel` phases run —
    on the pool, or on the calling thread when the problem is small (``N·P·K·C/groups·F``
    below ``Tuning.serial_macs``) or when the call is re-entrant (the thread is inside
    another kernel call, or is one of the pool's threads)."""

    __slots__ = ("spec", "blas1", "depth", "session", "tokens", "blas")

    def __init__(self, spec, blas1=True):
        self.spec, self.blas1 = spec, blas1

    def __enter__(self):
        _heap.tune()
        depth = getattr(_tls, "depth", 0)
        self.depth, self.tokens, self.session, self.blas = depth, [], None, None
        _tls.depth = depth + 1
        try:
            if depth or getattr(_tls, "pool_thread", False):
                self.tokens.append(_SERIAL.set(_REENTRANT))
            elif not _SERIAL.get() and self.spec.macs < current().serial_macs:
                self.tokens.append(_SERIAL.set(True))
            self.session = _Session(_free_list())
            self.tokens.append(_SESSION.set(self.session))
            if self.blas1:
                blas = single_threaded_blas()
                blas.__enter__()
                self.blas = blas
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.blas is not None:
                self.blas.__exit__(*exc)
        finally:
            for tok in reversed(self.tokens):
                tok.var.reset(tok)
            if self.session is not None:
                self.session.close()
            _tls.depth = self.depth
        return False


def row_blocks(m):
    """One block of GEMM rows per worker. The big GEMMs of wide mode are split over
    our workers (BLAS held at one thread) rather than handed to BLAS's own threads,
    which spin for a long while after each call and slow whatever runs next."""
    return row_ranges(m, n_workers())


def parallel(fn, items, dynamic=False):
    """Run ``fn(worker, item)`` over ``items``; worker ``i`` takes items ``i, i+n, …``
    (a fixed assignment: sums per worker are reproducible). Worker 0 is the calling
    thread, which starts at once: a pool thread that has been idle takes a while to
    wake up (hundreds of µs on a virtual machine), and each conv runs a few of these
    parallel phases. It never waits for a pool thread that has not started: it takes
    that worker's items itself (see below).

    ``dynamic=True`` (for items whose results do not depend on which worker ran them:
    disjoint outputs, no per-worker sums): each worker takes the next item as it
    becomes free, so a core slowed by something else (another library's threads still
    spinning after its call, another process) gets fewer items instead of holding up
    the whole phase (:func:`parallel_into` also redoes an item a thread is stuck in)."""
    _phase(fn, items, dynamic, None)


def parallel_into(fn, items, out):
    """A dynamic :func:`parallel` phase whose items each write their own part of the
    fresh, C-contiguous ``out`` through ``fn(worker, item, flat)`` (``flat``: 1-D, its
    size); returns the array holding the results. When the caller has run every item it
    could and a pool thread is still in one a while later (:func:`_redo_stuck`: the
    scheduler may leave a thread off its CPU for a tick, 4 ms, when another library's
    thread spins there), the caller redoes that item into a copy of ``out`` (64 bytes of
    slack past its end, as the compiled tiles need) and returns the copy at once; the
    stuck thread finishes into the old array, which nothing else reads."""
    if not out.flags.c_contiguous:
        raise ValueError(f"parallel_into: out must be C-contiguous, got strides {out.strides} "
                         f"for shape {out.shape}")
    flat = out.reshape(-1)
    got = _phase(fn, items, True, flat)
    return out if got is flat else got.reshape(out.shape)


#: :func:`_redo_stuck`'s least wait (s), its wait per byte of the output (what a copy
#: into fresh pages costs) and the most bytes it copies (a tick's stall is about 4 ms)
BACKUP_WAIT = 2e-4
BACKUP_WAIT_PER_BYTE = 0.4e-3 / 2**20
BACKUP_MAX_BYTES = 4 * 2**20


def _phase(fn, items, dynamic, flat):
    """:func:`parallel`, and with ``flat`` (dynamic only) :func:`parallel_into`."""
    pool, n, _ = workers()
    items = list(items)
    mode = _SERIAL.get()
    call = (lambda w, it, _o: fn(w, it)) if flat is None else fn
    if n == 1 or len(items) <= 1 or mode is True:
        for it in items:
            call(0, it, flat)
        return flat
    n = min(n, len(items))
    if mode is _REENTRANT:  # on this thread, each worker's items in the pool's order
        for w in range(n):
            for it in items[w::n]:
                call(w, it, flat)
        return flat

    target = [flat]  # where items write: read with each claim, under the lock
    running = {}  # pool worker -> the item it is in the middle of
    spent = [0.0, 0]  # seconds and count of the items run so far
    stop = [False]  # an error in a worker: the others take no new items
    team = _omp.team()
    if dynamic:
        nxt = iter(items)
        lock = threading.Lock()

        def run(w):
            while not stop[0]:
                with lock:
                    it = next(nxt, _END)
                    if it is _END:
                        return
                    running[w] = it
                    dst = target[0]
                t0 = time.perf_counter()
                call(w, it, dst)
                with lock:
                    del running[w]
                    spent[0] += time.perf_counter() - t0
                    spent[1] += 1
    else:
        lock = None

        def run(w):
            for it in items[w::n]:
                if stop[0]:
                    return
                fn(w, it)

    if team is not None and _omp.awake(n):
        def marked(w):  # a team thread's nested convolution runs on it alone
            if w == 0:
                return run(0)
            was = getattr(_tls, "pool_thread", False)
            _tls.pool_thread = True
            try:
                return run(w)
            finally:
                _tls.pool_thread = was

        _omp.run_team(team, marked, n, stop)
        return flat

    _placement.place_workers()
    # each task in its own copy of the caller's context (tuning() settings travel)
    futures = [(w, pool.submit(contextvars.copy_context().run, run, w)) for w in range(1, n)]
    failed = False
    left = set()  # futures whose item was redone here: not waited for
    try:
        run(0)
        # A worker that has not started yet (its core busy with another process or
        # another library's spinning threads, or its vCPU halted) is not waited for: its
        # share runs here, under its own worker number (so per-worker sums stay the same
        # bits); with dynamic items it finds none left.
        for w, f in futures:
            if f.cancel():
                run(w)
        if flat is not None:
            left = _redo_stuck(futures, lock, running, spent, target, call)
    except BaseException:
        failed = stop[0] = True
        raise
    finally:
        # every started task is waited for (after a failure nothing more starts), but
        # those whose item was redone; the first worker's exception is raised when the
        # caller's own items went through
        errors = [f.exception() for _, f in futures
                  if f not in left and not (failed and f.cancel()) and not f.cancelled()]
        errors = [e for e in errors if e is not None]
        if errors and not failed:
            raise errors[0]
    return target[0]


def _redo_stuck(futures, lock, running, spent, target, call):
    """:func:`parallel_into`'s backup: the futures of the pool threads whose item was
    redone on this thread into a copy of the output (``target[0]`` replaced), after
    waiting for them :data:`BACKUP_WAIT`, twice the mean item time or what the copy
    costs (:data:`BACKUP_WAIT_PER_BYTE`), whichever is longest; none for an output of more
    than :data:`BACKUP_MAX_BYTES`."""
    pending = [f for _, f in futures if not f.done()]
    if not pending or target[0].nbytes > BACKUP_MAX_BYTES:
        return set()
    with lock:
        wait = max(BACKUP_WAIT, 2 * spent[0] / max(1, spent[1]),
                   target[0].nbytes * BACKUP_WAIT_PER_BYTE)
    futures_wait(pending, timeout=wait)
    with lock:  # every item is claimed: nothing reads target[0] after this but here
        stuck = dict(running)
        if not stuck:
            return set()
        old = target[0]
        fresh = np.empty(old.size + 64 // old.itemsize, old.dtype)[:old.size]
        target[0] = fresh
    np.copyto(fresh, old)  # the finished items' results (the stuck ones': redone below)
    for it in stuck.values():
        call(0, it, fresh)
    return {f for w, f in futures if w in stuck}


@contextlib.contextmanager
def serial_if_small(spec):
    """Within the block, :func:`parallel` runs on the calling thread when the
    convolution is small (``N·P·K·C/groups·F`` below ``Tuning.serial_macs``)."""
    if spec.macs >= current().serial_macs or _SERIAL.get():
        yield
        return
    token = _SERIAL.set(True)
    try:
        yield
    finally:
        _SERIAL.reset(token)


@contextlib.contextmanager
def on_calling_thread():
    """Within the block, every convolution runs on the calling thread alone, BLAS held
    at one thread: for callers that are the parallelism themselves (Dask's threaded
    scheduler running one block per core)."""
    token = _SERIAL.set(True)
    try:
        with single_threaded_blas():
            yield
    finally:
        _SERIAL.reset(token)


def parallel_add(out, bias):
    """``out += bias`` over the last dim, split over the workers by rows."""
    o2 = out.reshape(-1, out.shape[-1])
    step = -(-o2.shape[0] // n_workers())
    parallel(lambda w, i: np.add(o2[i:i + step], bias, out=o2[i:i + step]),
             range(0, o2.shape[0], step))


# ---------------------------------------------------------------------------------------
# scratch


def _free_list() -> dict:
    """The calling thread's free scratch buffers, ``key -> buffer`` (oldest first)."""
    free = getattr(_tls, "free", None)
    if free is None:
        free = _tls.free = {}
    return free


class _Session:
    """The scratch buffers one kernel call has checked out of its thread's free list.

    Only single dict operations (``pop``, store), each atomic under the GIL, move a
    buffer between the free list and a call: whatever runs in between — another call on
    this thread from a signal handler, the call's own workers — never gets a buffer
    that is checked out."""

    __slots__ = ("free", "out")

    def __init__(self, free):
        self.free, self.out = free, []

    def checkout(self, nbytes, cap):
        free = self.free
        while True:
            best = None
            for key, b in list(free.items()):
                if b.nbytes >= nbytes and (best is None or b.nbytes < best[1].nbytes):
                    best = (key, b)
            if best is None:
                break
            buf = free.pop(best[0], None)
            if buf is not None:  # else taken in between: look again
                self.out.append(buf)
                return buf
        if nbytes + sum(b.nbytes for b in list(free.values())) > cap:
            free.clear()  # free the smaller ones first
        buf = np.empty(nbytes, dtype=np.uint8)
        self.out.append(buf)
        return buf

    def close(self):
        """Return the buffers; at most ``2 · workspace_bytes`` stay (newer ones first)."""
        out, self.out = self.out, []
        cap = 2 * current().workspace_bytes
        free = self.free
        for buf in out:
            if buf.nbytes > cap:
                continue
            total = sum(b.nbytes for b in list(free.values()))
            for key in list(free):
                if total + buf.nbytes <= cap:
                    break
                old = free.pop(key, None)
                total -= 0 if old is None else old.nbytes
            free[next(_KEYS)] = buf


def scratch(role, shape, dtype, keep=False):
    """Uninitialised scratch array for one role (``"chunk"``, ``"cols"``, ``"gy"``, ``"li"``).

    Large ones (``Tuning.scratch_keep_bytes``, or ``keep``) are checked out of the
    thread's free list for the running :class:`kernel_call` (the smallest one that is
    large enough, else a new one) and go back when the call ends; outside a kernel call
    they are plain new arrays. ``role`` only names the use: a checked-out buffer is the
    call's alone, whatever the role. Never used for anything returned to the caller.
    :func:`release_scratch` empties the free list.
    """
    t = current()
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    session = _SESSION.get() if keep or nbytes >= t.scratch_keep_bytes else None
    if session is None:
        return np.empty(shape, dtype=dtype)
    buf = session.checkout(nbytes, 2 * t.workspace_bytes)
    return buf[:nbytes].view(dtype).reshape(shape)


def release_scratch():
    """Drop the calling thread's free scratch buffers (those of running calls stay theirs)."""
    _free_list().clear()


def cached_scratch() -> dict:
    """The calling thread's free scratch buffers, ``key -> buffer`` (for tests and
    diagnostics)."""
    return dict(_free_list())
