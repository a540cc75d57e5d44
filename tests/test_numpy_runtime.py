"""The NumPy kernels' runtime: BLAS's process-global thread limit under concurrency, the
worker count from the environment (threads, re-entry and fork: test_concurrency.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fmtarray as fa

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_concurrent_convolutions_leave_blas_threads_as_they_were():
    rng = np.random.default_rng(0)
    x = fa.FormattedArray(rng.standard_normal((24, 24, 16, 8)).astype(np.float32), "SSCB")
    w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = fa.extractdata(fa.conv(x, w, padding=1))
    # counted after a first convolution: importing Numba may load one more BLAS (SciPy's)
    before = _blas_threads()
    errors = []

    def run():
        for _ in range(15):
            y = fa.extractdata(fa.conv(x, w, padding=1))
            if not np.array_equal(y, ref):
                errors.append("result changed under concurrency")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _blas_threads() == before


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5"])
def test_bad_thread_count_in_the_environment_names_it(monkeypatch, value):
    """``FMTARRAY_NUM_THREADS`` that is not a positive whole number is a ValueError that
    names the variable, the value and the legal values (the pool starts on first use)."""
    from fmtarray._kernels.conv._numpy import _runtime

    saved = dict(_runtime._state)
    _runtime._state.clear()  # as in a fresh process: the next convolution starts the pool
    monkeypatch.setenv("FMTARRAY_NUM_THREADS", value)
    x = fa.FormattedArray(np.ones((5, 5, 2, 2), np.float32), "SSCB")
    try:
        with pytest.raises(ValueError, match=rf"FMTARRAY_NUM_THREADS='{value}'.*positive whole "
                                             r"number.*unset"):
            fa.conv(x, np.ones((3, 3, 2, 2), np.float32))
    finally:
        _runtime._state.clear()
        _runtime._state.update(saved)
    assert _runtime.threads_from_env(" 2 ") == 2 and _runtime.threads_from_env("") is None


def test_blas_is_held_at_one_thread_on_any_thread():
    """After the main thread has set and restored the BLAS limit (any convolution does),
    a convolution on another thread (a Dask worker) must still hold BLAS at one thread:
    OpenBLAS keeps per-thread counts that the process-wide limit does not reach."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fmtarray._kernels.conv._numpy import _runtime as rt

    _, n, ctl = rt.workers()
    if n <= 1 or ctl is None or not any(i["internal_api"] == "openblas"
                                        for i in threadpoolctl.threadpool_info()):
        pytest.skip("needs OpenBLAS and more than one worker")
    with rt.single_threaded_blas():
        pass  # the main thread sets and restores the process-wide limit
    seen = {}

    def counts():  # NumPy's OpenBLAS, the one the kernels' GEMMs call (SciPy may load
        # its own once Numba is imported, after the pool took stock of the libraries)
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["internal_api"] == "openblas" and "numpy" in i["filepath"]]

    def inside():
        with rt.single_threaded_blas():
            seen["in"] = counts()
            seen["pool"] = rt.workers()[0].submit(counts).result()
        seen["after"] = counts()

    t = threading.Thread(target=inside)
    t.start()
    t.join()
    assert seen["in"] and all(k == 1 for k in seen["in"]), seen
    assert all(k == 1 for k in seen["pool"]), seen
    assert counts() == seen["after"] and all(k > 1 for k in seen["after"])  # restored


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.usefixtures("python_pool")
def test_parallel_does_not_wait_for_a_worker_that_has_not_started(dynamic):
    """A pool thread that has not picked up its share (its core busy elsewhere) is not
    waited for: the calling thread runs that share under the worker's own number."""
    from fmtarray._kernels.conv._numpy import _runtime as rt

    pool, n, _ = rt.workers()
    if n < 2:
        pytest.skip("needs more than one worker")
    release = threading.Event()
    busy = [pool.submit(release.wait) for _ in range(n)]  # every pool thread occupied
    seen, done = [], threading.Event()

    def call():
        rt.parallel(lambda w, it: seen.append((w, it, threading.get_ident())), range(3 * n),
                    dynamic=dynamic)
        done.set()

    caller = threading.Thread(target=call)
    try:
        caller.start()
        assert done.wait(10), "parallel() waited for a pool thread that never started"
        assert sorted(it for _, it, _ in seen) == list(range(3 * n))  # each item once
        assert {t for *_, t in seen} == {caller.ident}
        if not dynamic:  # the fixed assignment kept: worker i's items i, i+n, …
            assert sorted((w, it) for w, it, _ in seen) == sorted((it % n, it) for it in range(3 * n))
    finally:
        release.set()
        for b in busy:
            b.result()
        caller.join()


@pytest.mark.usefixtures("python_pool")
def test_parallel_waits_for_started_workers_and_raises_their_error():
    """A worker's exception reaches the caller, after every started task has ended."""
    from fmtarray._kernels.conv._numpy import _runtime as rt

    pool, n, _ = rt.workers()
    if n < 2:
        pytest.skip("needs more than one worker")
    main, done = threading.get_ident(), []
    started = threading.Event()

    def work(w, it):
        if threading.get_ident() == main:
            started.wait(5)  # let the pool thread start its share
            return
        started.set()
        done.append(it)
        if it == 1:
            raise KeyError("worker failed")

    with pytest.raises(KeyError, match="worker failed"):
        rt.parallel(work, range(2 * n))
    # worker 1 stopped at its failing item (its next, 1 + n, never ran), and the caller
    # waited for it; other pool workers (n > 2) ran their own items
    assert 1 in done and 1 + n not in done
    assert all(it % n != 0 for it in done)  # the caller's items ran on the caller


def _stuck_phase(rt, n_items, on_worker):
    """A :func:`parallel_into` phase of ``n_items`` items (item ``i`` writes ``i + 1`` at
    ``flat[i]``) whose pool thread stops in its first item, in ``on_worker(flat, it)``,
    until the returned ``release`` is set; the caller starts its items once it has."""
    main, started, release = threading.get_ident(), threading.Event(), threading.Event()
    stuck = []

    def fill(_w, it, flat):
        if threading.get_ident() != main and not stuck:
            stuck.append(it)
            started.set()
            release.wait(30)
            on_worker(flat, it)
            return
        started.wait(5)  # let the pool thread claim its item
        flat[it] = it + 1

    out = np.zeros(n_items)
    return out, stuck, release, lambda: rt.parallel_into(fill, range(n_items), out)


@pytest.mark.usefixtures("python_pool")
def test_an_item_a_pool_thread_is_stuck_in_is_redone_by_the_caller():
    """parallel_into: the caller runs every other item, waits a little for the stuck
    pool thread, then copies the output, redoes that item into the copy and returns it
    without waiting; the stuck thread finishes into the old array, which the returned
    one never sees, and the pool serves the next phase."""
    import time

    from fmtarray._kernels.conv._numpy import _runtime as rt

    pool, n, _ = rt.workers()
    if n < 2:
        pytest.skip("needs more than one worker")
    finished = threading.Event()
    out, stuck, release, phase = _stuck_phase(
        rt, 12, lambda flat, it: (flat.fill(-7.0), finished.set()))
    t0 = time.perf_counter()
    got = phase()
    took = time.perf_counter() - t0
    try:
        assert len(stuck) == 1 and took < 10
        assert got is not out and got.shape == out.shape
        np.testing.assert_array_equal(got, np.arange(1, 13))  # the stuck item redone
    finally:
        release.set()
    assert finished.wait(10)
    assert (out == -7.0).all()  # the stale item wrote the old array only
    np.testing.assert_array_equal(got, np.arange(1, 13))
    # a phase whose threads all finish returns its own array
    out2 = np.zeros(40)
    res = rt.parallel_into(lambda _w, it, flat: flat.__setitem__(it, 2.0 * it), range(40), out2)
    assert res is out2
    np.testing.assert_array_equal(out2, 2.0 * np.arange(40))


@pytest.mark.usefixtures("python_pool")
def test_a_big_output_waits_for_its_stuck_thread(monkeypatch):
    """Above BACKUP_MAX_BYTES the output is not copied: the caller waits for the stuck
    pool thread and returns ``out`` itself, every item written once."""
    import time

    from fmtarray._kernels.conv._numpy import _runtime as rt

    if rt.workers()[1] < 2:
        pytest.skip("needs more than one worker")
    monkeypatch.setattr(rt, "BACKUP_MAX_BYTES", 8)
    out, stuck, release, phase = _stuck_phase(
        rt, 12, lambda flat, it: flat.__setitem__(it, it + 1))
    timer = threading.Timer(0.3, release.set)
    timer.start()
    t0 = time.perf_counter()
    try:
        got = phase()
    finally:
        release.set()
        timer.cancel()
    assert stuck and time.perf_counter() - t0 >= 0.25
    assert got is out
    np.testing.assert_array_equal(out, np.arange(1, 13))


def test_parallel_into_needs_a_contiguous_output():
    from fmtarray._kernels.conv._numpy import _runtime as rt

    with pytest.raises(ValueError, match=r"out must be C-contiguous.*strides"):
        rt.parallel_into(lambda _w, it, flat: None, range(4), np.zeros((4, 4)).T)


_LINUX_AFFINITY = pytest.mark.skipif(
    not hasattr(__import__("os"), "sched_setaffinity") or len(__import__("os").sched_getaffinity(0)) < 2,
    reason="needs Linux CPU affinity and at least two CPUs")


def _run_phase(rt, n_items=8):
    out = np.zeros(n_items)

    def fill(_w, i):
        out[i] = i * i

    rt.parallel(fill, range(n_items), dynamic=True)
    np.testing.assert_array_equal(out, np.arange(n_items) ** 2)


@_LINUX_AFFINITY
@pytest.mark.usefixtures("python_pool")
def test_pool_threads_run_off_the_callers_cpu(monkeypatch):
    """Before a phase wakes them, the pool's threads may run on the CPUs they started
    with, except the one the caller is on (a halted vCPU is not passed over for the
    caller's); re-applied when the caller is on another CPU; never an empty set."""
    import os

    from fmtarray._kernels.conv._numpy import _omp
    from fmtarray._kernels.conv._numpy import _placement as pl
    from fmtarray._kernels.conv._numpy import _runtime as rt

    pool, n, _ = rt.workers()
    if n < 2:
        pytest.skip("needs more than one worker")
    _run_phase(rt)
    _run_phase(rt)  # the pool's threads exist (and are registered) by now
    tids = pl.worker_ids()
    assert 1 <= len(tids) <= n
    started = dict(pl._tids)
    cpu, placed = pl._placed[0]
    assert [t for t, _ in placed] == list(tids) and cpu in os.sched_getaffinity(0)
    for tid in tids:
        assert os.sched_getaffinity(tid) == started[tid] - {cpu}
    other = min(started[tids[0]] - {cpu})
    try:
        monkeypatch.setattr(pl, "_getcpu", [lambda: other])  # the caller moved
        _run_phase(rt)
        for tid in tids:
            assert os.sched_getaffinity(tid) == started[tid] - {other}
        pl._tids[:] = [(t, frozenset({other})) for t, _ in started.items()]  # one CPU each
        _run_phase(rt)
        for tid in tids:
            assert os.sched_getaffinity(tid) == {other}  # not an empty set
    finally:
        pl._tids[:] = list(started.items())
        monkeypatch.undo()
        monkeypatch.setattr(_omp, "_lib", [False])  # the undo dropped python_pool's too
        pl._placed[0] = None
        _run_phase(rt)  # as before the test
    cpu = pl._placed[0][0]
    for tid in tids:
        assert os.sched_getaffinity(tid) == started[tid] - {cpu}


@_LINUX_AFFINITY
@pytest.mark.usefixtures("python_pool")
def test_refused_placement_leaves_the_threads_alone(monkeypatch):
    """A system that refuses the affinity call (a sandbox) turns the placement off:
    phases still run, on the pool's threads wherever the scheduler puts them."""
    import os

    from fmtarray._kernels.conv._numpy import _omp
    from fmtarray._kernels.conv._numpy import _placement as pl
    from fmtarray._kernels.conv._numpy import _runtime as rt

    pool, n, _ = rt.workers()
    if n < 2:
        pytest.skip("needs more than one worker")
    _run_phase(rt)
    calls = []

    def refuse(tid, cpus):
        calls.append(tid)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pl, "_placed", [None])
    monkeypatch.setattr(pl, "_getcpu", [None])
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    _run_phase(rt)
    assert len(calls) == 1 and pl._getcpu[0] is False
    _run_phase(rt)  # not tried again
    assert len(calls) == 1
    monkeypatch.undo()  # the real module state back: its placement applies again
    monkeypatch.setattr(_omp, "_lib", [False])  # the undo dropped python_pool's too
    pl._placed[0] = None
    _run_phase(rt)
    assert pl._placed[0] is not None


_HEAP_SCRIPT = r"""
import resource, sys
import numpy as np
import fmtarray as fa
x = fa.FormattedArray(np.ones((4, 4, 2, 1), np.float32), "SSCB")
fa.conv(x, np.ones((3, 3, 2, 2), np.float32))  # the first NumPy convolution tunes the heap
from fmtarray._kernels.conv._numpy import _heap
print(_heap._result[0])  # set by the convolution, not here

def step():  # a step's arrays of a few MiB, freed in an order that empties the heap top
    a = np.ones(1600000, np.float32); b = a * 2; c = b + a; d = c * b
    del a, b
    e = d + 1.0
    return float(e[0] + c[0])

for _ in range(3):
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10)
"""


def _heap_run(env):
    import os
    import subprocess
    import sys

    e = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    e.pop("FMTARRAY_HEAP_TUNING", None)
    r = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT], env={**e, **env}, timeout=120,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    reason, faults = r.stdout.split("\n")[-3:-1]
    return reason, float(faults)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's heap")
def test_heap_thresholds_keep_step_arrays_mapped():
    """After the first NumPy convolution, arrays of a few MiB freed and allocated again
    come back without page faults; with the tuning off, glibc gives the heap top back to
    the system and every step faults its pages in again."""
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc")
    reason, faults = _heap_run({})
    assert reason == "None" and faults <= 20  # 0 here; 6.4 MB arrays are 1,563 pages each
    reason, faults = _heap_run({"FMTARRAY_HEAP_TUNING": "0"})
    assert reason == "FMTARRAY_HEAP_TUNING=0" and faults > 500
    reason, _ = _heap_run({"MALLOC_TOP_PAD_": "1048576"})
    assert reason == "the environment sets glibc's malloc (MALLOC_TOP_PAD_)"


def test_heap_tuning_env_value_is_checked(monkeypatch):
    from fmtarray._kernels.conv._numpy import _heap

    monkeypatch.setenv("FMTARRAY_HEAP_TUNING", "yes")
    with pytest.raises(ValueError, match=r"FMTARRAY_HEAP_TUNING='yes': expected 0 .* or 1"):
        _heap._tune()
