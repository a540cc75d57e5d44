"""The NumPy convolution entries under concurrency: threads, a re-entrant call from a
signal handler, and a child forked by ``multiprocessing`` after the parent used the
worker pool. Every result is bit-identical to the one computed on its own.

Each case forces one registered NumPy entry by name (forward and the gradients it
serves) on a small problem inside its domain, with tunings that make every call use
the worker pool (``serial_macs=0``) and scratch buffers kept between calls
(``scratch_keep_bytes=0``, a small workspace: many chunks per call), which is where
shared state would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import array_api_compat.numpy as cnp

from fmtarray._kernels import conv as K
from fmtarray._kernels.conv import tuning
from fmtarray._kernels.conv.registry import _by_name
from fmtarray._kernels.conv.spec import Layout
from kernel_calls import conv_backward, conv_forward, nsc_dims, spec_of
from test_numpy_algos import laid_out

#: every call on the pool, scratch buffers kept and reused, many chunks per call
POOLED = dict(serial_macs=0, scratch_keep_bytes=0, workspace_bytes=6000)
WINO = dict(winograd_min_total_cols=1)

# entry -> (layout, n, sp, Cg, Fg, G, k, conv kwargs, extra tuning)
CASES = {
    "numpy.winograd": ("bi", 4, (6, 6), 8, 8, 1, (3, 3), dict(pad_before=1, pad_after=1), WINO),
    "numpy.batch_innermost": ("bi", 3, (6, 5), 2, 3, 1, (2, 3), {}, {"bi_max_run": 10**6}),
    "numpy.depthwise_bi": ("bi", 3, (6, 6), 1, 1, 4, (3, 3), dict(pad_before=1), {}),
    "numpy.depthwise": ("cl", 2, (7, 6), 1, 2, 3, (3, 2), dict(stride=(2, 1)), {}),
    "numba.depthwise": ("cl", 3, (7, 6), 1, 2, 5, (3, 2), dict(stride=(2, 1), pad_before=1),
                        {}),
    "numba.direct": ("cl", 3, (7, 6), 3, 4, 2, (3, 2), dict(stride=(2, 1), pad_before=1), {}),
    "numba.direct_input_grad": ("bi", 3, (7, 6), 8, 4, 2, (3, 2), dict(stride=(2, 1)), {}),
    # several tile chunks (V of 3 tiles), transformed filters per item
    "numba.winograd": ("cl", 3, (7, 6), 5, 70, 1, (3, 3), dict(pad_before=1, pad_after=1),
                       dict(numba_winograd_min_cf=0, numba_winograd_max_v_bytes=960,
                            numba_winograd_u_bytes=0)),
    # blocks of tiles in runs of 3, a dilation's phases
    "numba.winograd_weight_grad": ("cl", 3, (7, 6), 5, 70, 1, (3, 3),
                                   dict(pad_before=1, dilation=(2, 1)),
                                   dict(numba_winograd_min_cf=0,
                                        numba_winograd_wgrad_min_cf=0,
                                        numba_winograd_run_bytes=3 * 16 * 80 * 4)),
    # transformed filters formed once, runs of 3 tiles
    "numba.winograd_input_grad": ("bi", 3, (7, 6), 5, 70, 1, (3, 3), dict(pad_before=1),
                                  dict(numba_winograd_min_cf=0,
                                       numba_winograd_run_bytes=3 * 16 * 70 * 4)),
    "numpy.flat_shift": ("bi", 3, (6, 7), 3, 4, 1, (3, 3), dict(pad_before=1, pad_after=1),
                         dict(flat_channels=(1, 32), flat_min_n=2, flat_min_row=1,
                              workspace_bytes=20000)),
    "numpy.winograd_weight_grad": ("bi", 4, (6, 6), 8, 8, 1, (3, 3),
                                   dict(pad_before=1, pad_after=1), WINO),
    "numpy.last_innermost": ("li", 2, (5, 9), 2, 3, 1, (2, 3), dict(pad_before=(1, 1)),
                             {"li_min_run": 1}),
    "numpy.input_grad_bi": ("bi", 3, (6, 6), 2, 4, 1, (3, 3), dict(stride=2), {}),
    "numpy.winograd_input_grad": ("bi", 4, (6, 6), 8, 8, 1, (3, 3),
                                  dict(pad_before=1, pad_after=1), WINO),
    "numpy.last_innermost_input_grad": ("li", 2, (5, 9), 2, 3, 1, (2, 3),
                                        dict(pad_before=(1, 1)), {"li_min_run": 1}),
    "numpy.gemm_wide": ("cl", 3, (7, 6), 3, 4, 1, (3, 2), dict(pad_value="replicate",
                                                               pad_before=1),
                        {"wide_weight_bytes": 1}),
    "numpy.gemm": ("cf", 3, (7, 6), 2, 3, 2, (3, 3), dict(dilation=(2, 1)), {}),
    "numpy.grad_as_conv": ("cl", 3, (7, 6), 3, 2, 1, (3, 3), dict(pad_before=2, pad_value=-1.5),
                           {}),
    "numpy.col2im": ("bi", 3, (7, 6), 3, 2, 1, (3, 3), dict(stride=(1, 2), pad_before=1), {}),
}


def _case(name):
    lay, n, sp, cg, fg, g, k, kw, extra = CASES[name]
    rng = np.random.default_rng(len(name))
    x = laid_out(rng.standard_normal((n, *sp, cg * g)).astype(np.float32), lay)
    w = rng.standard_normal((*k, cg, fg, g)).astype(np.float32)
    b = rng.standard_normal(fg * g).astype(np.float32)
    spec = spec_of(cnp, x, w, **kw)
    gy = laid_out(rng.standard_normal((n, *spec.out, spec.F)).astype(np.float32), lay)
    ops = _by_name(name).ops
    return dict(x=x, w=w, b=b, gy=gy, kw=kw, tuning=dict(POOLED, **extra), ops=ops,
                force={op: name for op in ops}, spec=spec,
                layout=Layout.of(nsc_dims(spec.d), x, gy))


def _run(case):
    """Forward (when the entry serves it) and the gradients it serves, forced by name."""
    out = []
    with tuning(**case["tuning"]):
        if "forward" in case["ops"]:
            out.append(conv_forward(cnp, case["x"], case["w"], case["b"],
                                    force=case["force"], **case["kw"]))
        needs = ("input_grad" in case["ops"], "weight_grad" in case["ops"], False)
        if any(needs):
            gx, gw, _ = conv_backward(cnp, case["gy"], case["x"], case["w"], needs=needs,
                                      force=case["force"], **case["kw"])
            out += [a for a in (gx, gw) if a is not None]
    return [np.array(a) for a in out]


@pytest.fixture(scope="module")
def cases():
    return _reference_cases()


def _identical(got, ref):
    return len(got) == len(ref) and all(
        g.dtype == r.dtype and g.shape == r.shape and np.array_equal(g, r) for g, r in zip(got, ref))


def test_every_numpy_entry_has_a_case():
    names = [a.name for a in K.algorithms("numpy")
             if a.name.startswith(("numpy.", "numba."))]
    assert sorted(names) == sorted(CASES)


def test_threads_give_bit_identical_results(cases):
    """6 threads × 25 rounds × every entry, all at once, each thread in its own order."""
    names = list(cases)
    errors = []

    def work(t):
        order = names[t % len(names):] + names[:t % len(names)]
        for _ in range(25):
            for name in order:
                if not _identical(_run(cases[name]), cases[name]["ref"]):
                    errors.append((t, name))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, sorted(set(n for _, n in errors))


def _reference_cases():
    from fmtarray._kernels.conv._numba import unavailable

    numba_off = unavailable() is not None  # FMTARRAY_NUMBA=0 or no numba: NumPy entries only
    cs = {name: _case(name) for name in CASES if not (numba_off and name.startswith("numba."))}
    for name, c in cs.items():  # each case inside its entry's domain
        with tuning(**c["tuning"]):
            assert _by_name(name).applies(c["spec"], c["layout"]) is None, name
        c["ref"] = _run(c)
    return cs


def signal_scenario(rounds=6):
    """A SIGALRM handler convolves (the case the main thread is running) every
    millisecond while the main thread convolves; returns ``(problems, handler calls
    made inside a convolution)``."""
    cases = _reference_cases()
    names = list(cases)
    state = dict(inside=None, busy=False, nested=0, bad=[])

    def handler(signum, frame):
        if state["busy"] or state["inside"] is None:
            return
        state["busy"] = True
        try:
            name = state["inside"]
            state["nested"] += 1
            if not _identical(_run(cases[name]), cases[name]["ref"]):
                state["bad"].append(("handler", name))
        finally:
            state["busy"] = False

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        for _ in range(rounds):
            for name in reversed(names):
                state["inside"] = name
                got = _run(cases[name])
                state["inside"] = None
                if not _identical(got, cases[name]["ref"]):
                    state["bad"].append(("main", name))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    return sorted(set(state["bad"])), state["nested"]


_SIGNAL_SCRIPT = """
import sys
sys.path[:0] = [sys.argv[1]]
import test_concurrency
bad, nested = test_concurrency.signal_scenario()
print(nested, bad)
sys.exit(0 if not bad and nested >= 10 else 3)
"""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timer")
def test_signal_handler_convolving_inside_a_convolution():
    """A handler that convolves while the same thread is inside a convolution (here
    SIGALRM every millisecond, running the same case): both the interrupted calls and
    the handler's own are bit-identical to calls made alone, and nothing deadlocks (in
    a fresh interpreter, so that a hang fails the test instead of stopping the run)."""
    try:
        r = subprocess.run([sys.executable, "-c", _SIGNAL_SCRIPT, os.path.dirname(__file__)],
                           timeout=60, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("a convolution from a signal handler inside a convolution hung")
    assert r.returncode == 0, r.stdout + r.stderr


_FORK_SCRIPT = r"""
import multiprocessing as mp, sys
import numpy as np
import fmtarray as fa
from fmtarray._kernels.conv import tuning

rng = np.random.default_rng(0)
xs = [rng.standard_normal((12, 12, 8, 8)).astype(np.float32) for _ in range(4)]
w = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)

def conv(x):
    with tuning(serial_macs=0, scratch_keep_bytes=0, workspace_bytes=20000):
        return fa.conv(fa.FormattedArray(x, "SSCB"), w, padding=1).data

if __name__ == "__main__":
    ref = [conv(x) for x in xs]  # the parent's pool threads run
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(conv, xs)
    sys.exit(0 if all(np.array_equal(g, r) for g, r in zip(got, ref)) else 3)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_multiprocessing_fork_after_the_pool_ran(tmp_path):
    """``multiprocessing``'s fork start method after the parent used the pool: the
    children compute the same results, within 30 s (in a fresh interpreter: the test
    process runs other libraries' threads, which make a fork unsafe)."""
    script = tmp_path / "fork_pool.py"
    script.write_text(_FORK_SCRIPT)
    try:
        r = subprocess.run([sys.executable, str(script)], timeout=30, capture_output=True,
                           text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("multiprocessing's forked children did not finish within 30 s")
    assert r.returncode == 0, r.stderr
