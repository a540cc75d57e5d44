"""The NumPy conv's parallel phases on libgomp's team (``_numpy/_omp.py``): who runs
which items, errors, nesting, the choice between the team and our own pool, the
environment variable, and the same bits on either."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels.conv._numpy import _omp
from fmtarray._kernels.conv._numpy import _runtime as rt


def _needs_libgomp():
    import ctypes

    if not sys.platform.startswith("linux") or os.environ.get("FMTARRAY_POOL") == "python":
        pytest.skip("the team is for Linux, and FMTARRAY_POOL=python turns it off")
    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError:
        pytest.skip("no libgomp here")


def _two_workers():
    if rt.n_workers() < 2:
        pytest.skip("needs more than one worker")


@pytest.mark.usefixtures("openmp_team")
@pytest.mark.parametrize("dynamic", [False, True])
def test_team_runs_each_item_once_with_the_pools_worker_numbers(dynamic):
    """Worker 0 is the caller; with a fixed assignment worker w takes items w, w+n, …;
    the other workers run on libgomp's threads, never on our pool's."""
    _two_workers()
    n = rt.n_workers()
    seen = []
    pool_ids = set(rt._placement.worker_ids())

    def item(w, it):
        time.sleep(0.002)  # long enough that every team thread gets some
        seen.append((w, it, threading.get_native_id()))

    rt.parallel(item, range(6 * n), dynamic=dynamic)
    assert sorted(it for _, it, _ in seen) == list(range(6 * n))
    me = threading.get_native_id()
    assert {t for w, _, t in seen if w == 0} == {me}
    others = {t for w, _, t in seen if w != 0}
    assert others and me not in others and not (others & pool_ids)
    if not dynamic:
        assert all(it % n == w for w, it, _ in seen)


@pytest.mark.usefixtures("openmp_team")
def test_team_error_stops_the_others_and_is_raised_after_all_returned():
    _two_workers()
    started, finished = [], []

    def item(w, it):
        started.append(it)
        if it == 0:
            raise KeyError("item 0")
        time.sleep(0.01)
        finished.append(it)

    with pytest.raises(KeyError, match="item 0"):
        rt.parallel(item, range(40), dynamic=True)
    assert len(started) < 40  # no new items after the error
    n_done = len(finished)
    time.sleep(0.05)
    assert len(finished) == n_done  # nothing still running after the raise


@pytest.mark.usefixtures("openmp_team")
def test_a_failing_watch_of_a_team_thread_drops_no_item(monkeypatch):
    """The team threads' bookkeeping (:func:`_omp._register`) failing leaves every item
    run, each once."""
    _two_workers()

    def broken(caller, w):
        raise OSError("no more file descriptors")

    monkeypatch.setattr(_omp, "_register", broken)
    seen = []
    rt.parallel(lambda w, it: (time.sleep(0.002), seen.append((w, it))), range(12))
    assert sorted(it for _, it in seen) == list(range(12))
    assert {w for w, _ in seen} == set(range(rt.n_workers()))


def test_a_smaller_team_leaves_the_missing_workers_to_the_caller():
    """A team of one thread (a thread limit, a nested region): worker 1's items run on
    the caller, under worker number 1 (the same per-worker sums)."""
    def one_thread_par(callback, data, n, flags):
        callback(data)  # only the caller, as thread 0

    seen = []
    stop = [False]
    _omp.run_team((one_thread_par, lambda: 0), lambda w: seen.append((w, threading.get_ident())),
                  3, stop)
    assert [w for w, _ in seen] == [0, 1, 2]
    assert {t for _, t in seen} == {threading.get_ident()}


def test_a_smaller_team_stops_after_an_error():
    def one_thread_par(callback, data, n, flags):
        callback(data)

    seen = []

    def run(w):
        seen.append(w)
        raise ValueError(f"worker {w}")

    with pytest.raises(ValueError, match="worker 0"):
        _omp.run_team((one_thread_par, lambda: 0), run, 2, [False])
    assert seen == [0]


@pytest.mark.usefixtures("openmp_team")
def test_convolution_inside_a_team_worker_runs_on_that_thread():
    """A convolution started on a team thread (a finaliser, a callback) runs there
    alone, with the same bits as on the caller."""
    _two_workers()
    rng = np.random.default_rng(0)
    x = FormattedArray(rng.standard_normal((9, 9, 4, 2)).astype(np.float32), "SSCB")
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    ref = fa.conv(x, w, padding=1).data
    got = {}

    def item(wid, it):
        time.sleep(0.002)
        if wid != 0:
            got[it] = fa.conv(x, w, padding=1).data

    rt.parallel(item, range(8))
    assert got
    for y in got.values():
        np.testing.assert_array_equal(y, ref)


@pytest.mark.usefixtures("openmp_team")
def test_same_bits_on_the_team_and_on_our_pool(monkeypatch):
    """Weight gradients are sums split over workers: the team hands out the same items
    to the same worker numbers as our pool, so the bits agree."""
    rng = np.random.default_rng(3)
    x = FormattedArray(rng.standard_normal((14, 14, 16, 8)).astype(np.float32), "SSCB")
    w = FormattedArray(rng.standard_normal((3, 3, 16, 16)).astype(np.float32))
    g = rng.standard_normal((14, 14, 16, 8)).astype(np.float32)

    def grads():
        def loss(x, w):
            return fa.sum(fa.conv(x, w, padding=1) * FormattedArray(g, "SSCB"))
        return [np.asarray(a.data) for a in fa.grad(loss, (0, 1))(x, w)]

    team = grads()
    monkeypatch.setattr(_omp, "_lib", [False])
    pool = grads()
    for a, b in zip(team, pool):
        np.testing.assert_array_equal(a, b)


_AWAKE_SCRIPT = r"""
import ctypes, threading, time
ctypes.CDLL("libgomp.so.1")  # loaded, as torch would
from fmtarray._kernels.conv._numpy import _omp
from fmtarray._kernels.conv._numpy import _runtime as rt
me = threading.get_native_id()
rt.parallel(lambda w, it: time.sleep(0.002), range(4))  # no team seen yet: it starts
known = {t for t, _ in _omp._team_threads[me].values()}
assert known and me not in known, known
assert _omp.awake(2)  # spinning right after the region
deadline = time.monotonic() + 5
while _omp.awake(2) and time.monotonic() < deadline:
    time.sleep(0.05)
assert not _omp.awake(2)  # asleep
ran = []
rt.parallel(lambda w, it: (ran.append(threading.get_native_id()), time.sleep(0.002)), range(4))
assert not set(ran) & known, (ran, known)  # our pool served: no sleeping team thread woken
assert len(set(ran)) == 2, ran
print("ok")
"""


def test_awake_reads_the_team_threads_state():
    """After a region the team's threads spin (awake); once they sleep, a phase runs on
    our own pool, which never waits for a thread that has not started. In a fresh
    process: libgomp spins less while it manages more threads than there are CPUs (the
    teams of other tests' threads)."""
    _needs_libgomp()
    if os.environ.get("OMP_WAIT_POLICY", "").lower() == "active":
        pytest.skip("OMP_WAIT_POLICY=active: libgomp's threads never sleep")
    _two_workers()
    env = {k: v for k, v in os.environ.items() if k != "FMTARRAY_NUM_THREADS"}
    env["FMTARRAY_NUM_THREADS"] = "2"
    r = subprocess.run([sys.executable, "-c", _AWAKE_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


_NOLOAD_SCRIPT = r"""
import ctypes, threading, time
import numpy as np
import fmtarray as fa
from fmtarray._kernels.conv import tuning
from fmtarray._kernels.conv._numpy import _omp
from fmtarray._kernels.conv._numpy import _runtime as rt

def gomp_mapped():
    return any("libgomp" in line for line in open("/proc/self/maps"))

x = fa.FormattedArray(np.ones((32, 32, 16, 8), np.float32), "SSCB")
w = np.ones((3, 3, 16, 16), np.float32)
with tuning(serial_macs=0):
    fa.conv(x, w, padding=1)
assert not gomp_mapped() and _omp.team() is None  # nothing loaded on our behalf
ctypes.CDLL("libgomp.so.1")  # now as an `import torch` would
_omp.RECHECK_S = 0.0
assert _omp.team() is not None
seen = set()
rt.parallel(lambda w, it: (seen.add(threading.get_native_id()), time.sleep(0.002)), range(4))
assert threading.get_native_id() in seen and set(_omp._team_threads), _omp._team_threads
print("ok")
"""


def test_libgomp_is_joined_never_loaded():
    """A process without libgomp keeps our own pool and gets no libgomp from us; once
    something loads it (torch), the next look-up finds its team and phases run there."""
    _needs_libgomp()
    _two_workers()
    env = dict(os.environ, FMTARRAY_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", _NOLOAD_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_a_team_thread_whose_state_cannot_be_read_leaves_the_phase_to_our_pool(monkeypatch):
    """Without procfs (a sandbox) the team's state is unknown: phases stay on our pool."""
    monkeypatch.setattr(_omp, "_team_threads", {threading.get_native_id(): {1: (12345, -1)}})
    assert not _omp.awake(2)
    assert _omp.awake(1)  # a team of one has no other thread to wait for


@pytest.mark.parametrize("value,pool", [(None, "openmp"), ("", "openmp"), ("python", "python"),
                                        (" OpenMP ", "openmp")])
def test_pool_from_the_environment(value, pool):
    assert _omp.pool_from_env(value) == pool


@pytest.mark.parametrize("value", ["omp", "threads", "1"])
def test_bad_pool_in_the_environment_names_it(value):
    with pytest.raises(ValueError, match=r"FMTARRAY_POOL='.*'.*'openmp', 'python'"):
        _omp.pool_from_env(value)


_ENV_SCRIPT = r"""
import ctypes, threading
try:
    ctypes.CDLL("libgomp.so.1")  # loaded, as torch would: FMTARRAY_POOL=python must still win
except OSError:
    pass
import numpy as np
import fmtarray as fa
from fmtarray._kernels.conv import tuning
from fmtarray._kernels.conv._numpy import _omp
x = fa.FormattedArray(np.ones((32, 32, 16, 8), np.float32), "SSCB")
with tuning(serial_macs=0):
    fa.conv(x, np.ones((3, 3, 16, 16), np.float32), padding=1)
print(_omp.team() is None, sum(1 for t in threading.enumerate() if t.name.startswith("fmtarray")))
"""


def test_fmtarray_pool_python_uses_our_threads_only():
    env = dict(os.environ, FMTARRAY_POOL="python")
    r = subprocess.run([sys.executable, "-c", _ENV_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    no_team, pool_threads = r.stdout.split()
    assert no_team == "True" and (int(pool_threads) >= 1 or rt.n_workers() == 1)


def test_bad_fmtarray_pool_fails_the_convolution_with_its_name():
    env = dict(os.environ, FMTARRAY_POOL="gomp")
    r = subprocess.run([sys.executable, "-c", _ENV_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "FMTARRAY_POOL='gomp'" in r.stderr
