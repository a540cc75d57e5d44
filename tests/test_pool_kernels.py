"""Max pooling of NumPy arrays: the compiled kernels (``fmtarray._kernels._pool_numba``)
against a direct-loop reference and, bit for bit, against the NumPy formulation they
replace (``FMTARRAY_NUMBA=0``), over sampled geometries, memory orders, ties and
non-finite values. Under ``FMTARRAY_NUMBA=0`` (``make unit-no-numba``) the same tests
check the NumPy formulation and that the compiled kernels stay out."""

from __future__ import annotations

import itertools
import os
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import array_api_compat.numpy as cnp

from fmtarray import _backend as fa_backend
from fmtarray._kernels import pool as P
from fmtarray._kernels.conv._numba import unavailable

COMPILED = os.environ.get("FMTARRAY_NUMBA") != "0" and unavailable() is None


def ref_max_pool(x, k, stride, before, after):
    """Direct loops over ``(N, *sp, C)``: each window's max (padding ``-inf``, NaN wins)
    and the tap (C order, padding included) that the gradient goes to, ``-1`` for none."""
    d = len(k)
    N, sp, C = x.shape[0], x.shape[1:-1], x.shape[-1]
    out = [(n + b + a - kk) // s + 1 for n, b, a, kk, s in zip(sp, before, after, k, stride)]
    y = np.empty((N, *out, C), x.dtype)
    first = np.full((N, *out, C), -1)
    for n, o, c in itertools.product(range(N), itertools.product(*map(range, out)), range(C)):
        vals = []
        for t in itertools.product(*map(range, k)):
            i = tuple(o[j] * stride[j] + t[j] - before[j] for j in range(d))
            inside = all(0 <= i[j] < sp[j] for j in range(d))
            vals.append(x[(n, *i, c)] if inside else -np.inf)
        m = np.nan if any(np.isnan(vals)) else max(vals)
        y[(n, *o, c)] = m
        hits = [j for j, v in enumerate(vals) if v == m]
        first[(n, *o, c)] = hits[0] if hits else -1
    return y, first


def ref_max_pool_grad(gy, x, first, k, stride, before):
    """The input gradient from :func:`ref_max_pool`'s taps, summed in float64."""
    d = len(k)
    gx = np.zeros(x.shape)
    taps = list(itertools.product(*map(range, k)))
    for idx in np.ndindex(*first.shape):
        f = first[idx]
        if f < 0:
            continue
        n, o, c = idx[0], idx[1:-1], idx[-1]
        i = tuple(o[j] * stride[j] + taps[f][j] - before[j] for j in range(d))
        if all(0 <= i[j] < x.shape[1 + j] for j in range(d)):
            gx[(n, *i, c)] += gy[idx]
    return gx


@st.composite
def pooling(draw):
    d = draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    before = tuple(draw(st.integers(0, kk - 1)) for kk in k)
    after = tuple(draw(st.integers(0, kk - 1)) for kk in k)
    sp = tuple(draw(st.integers(max(1, kk - b - a), kk + 4))
               for kk, b, a in zip(k, before, after))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-2, 3, (N, *sp, C)).astype(dtype)  # small integers: many ties
    for v, p in ((np.nan, draw(st.sampled_from([0, 0.1]))),
                 (-np.inf, draw(st.sampled_from([0, 0.3]))),
                 (np.inf, draw(st.sampled_from([0, 0.1])))):
        x[rng.random(x.shape) < p] = v
    order = draw(st.permutations(range(d + 2)))  # any memory order, odd strides too
    x = np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))
    if draw(st.booleans()):
        x = np.repeat(x, 2, axis=0)[::2]  # a strided batch
    gy_seed = draw(st.integers(0, 2**32 - 1))
    return x, k, stride, before, after, gy_seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pooling())
def test_max_pool_against_direct_loops_and_the_numpy_formulation(case):
    x, k, stride, before, after, gy_seed = case
    kw = dict(stride=stride, pad_before=before, pad_after=after)
    calls = []
    real_fwd, real_bwd = P._pool_numba_forward, P._pool_numba_backward
    with mock.patch.object(P, "_pool_numba_forward",
                           lambda *a: calls.append("f") or real_fwd(*a)), \
            mock.patch.object(P, "_pool_numba_backward",
                              lambda *a: calls.append("b") or real_bwd(*a)):
        y = P.pool_forward(cnp, x, "max", k, **kw)
        gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(x.dtype)
        gx = P.pool_backward(cnp, gy, x, y, "max", k, **kw)
    assert calls == (["f", "b"] if COMPILED else [])

    ry, first = ref_max_pool(x, k, stride, before, after)
    np.testing.assert_array_equal(y, ry)  # a max is exact (NaN where the loops give NaN)
    rgx = ref_max_pool_grad(gy, x, first, k, stride, before)
    tol = 1e-6 if x.dtype == np.float32 else 1e-13
    np.testing.assert_allclose(gx, rgx, rtol=tol, atol=tol)
    assert gx.shape == x.shape and gx.dtype == x.dtype

    with mock.patch.dict(os.environ, {"FMTARRAY_NUMBA": "0"}):
        y0 = P.pool_forward(cnp, x, "max", k, **kw)
        gx0 = P.pool_backward(cnp, gy, x, y0, "max", k, **kw)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(gx, gx0)  # the same sums in the same order: same bits


@pytest.mark.skipif(not COMPILED, reason="numba unavailable or FMTARRAY_NUMBA=0")
def test_compiled_max_pool_splits_a_big_batch_over_the_workers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 34, 33, 16)).astype(np.float32)  # above serial_macs
    kw = dict(stride=(2, 3), pad_before=(1, 0), pad_after=(0, 2))
    y = P.pool_forward(cnp, x, "max", (3, 3), **kw)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = P.pool_backward(cnp, gy, x, y, "max", (3, 3), **kw)
    with mock.patch.dict(os.environ, {"FMTARRAY_NUMBA": "0"}):
        np.testing.assert_array_equal(y, P.pool_forward(cnp, x, "max", (3, 3), **kw))
        np.testing.assert_array_equal(gx, P.pool_backward(cnp, gy, x, y, "max", (3, 3), **kw))


def test_other_dtypes_and_mixed_dtypes_keep_the_numpy_formulation():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float16).reshape(2, 4, 4, 3)
    y = P.pool_forward(cnp, x, "max", 2, stride=2)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x.reshape(2, 2, 2, 2, 2, 3).max(axis=(2, 4)))
    x32 = x.astype(np.float32)
    y32 = P.pool_forward(cnp, x32, "max", 2, stride=2)
    gx = P.pool_backward(cnp, np.ones(y32.shape), x32, y32, "max", 2, stride=2)  # float64 gy
    assert gx.dtype == np.float64 and gx.sum() == y32.size


@pytest.mark.usefixtures("python_pool")
def test_dask_pooling_blocks_stay_on_their_scheduler_thread(monkeypatch):
    """Each block of a Dask max pooling runs on the scheduler thread that took it (the
    compiled kernels hand nothing to the worker pool), with the NumPy values."""
    da = pytest.importorskip("dask.array")
    import dask

    from fmtarray._kernels.conv._numpy import _runtime as rt

    submitted = []
    real = rt.workers

    def spy():
        pool, n, ctl = real()

        class Watch:
            def submit(self, *a, **k):
                submitted.append(1)
                return pool.submit(*a, **k)

        return Watch(), n, ctl

    monkeypatch.setattr(rt, "workers", spy)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 40, 40, 16)).astype(np.float32)  # above serial_macs
    xd = da.from_array(x, chunks=(16, 40, 40, 16))
    kw = dict(stride=2)
    dxp = fa_backend.namespace(xd)
    with dask.config.set(scheduler="threads"):
        y = P.pool_forward(dxp, xd, "max", 2, **kw).compute()
        gy = np.ones(y.shape, np.float32)
        gx = P.pool_backward(dxp, da.from_array(gy, chunks=(16, 20, 20, 16)), xd,
                             da.from_array(y, chunks=(16, 20, 20, 16)), "max", 2,
                             **kw).compute()
    assert submitted == []
    np.testing.assert_array_equal(y, P.pool_forward(cnp, x, "max", 2, **kw))
    np.testing.assert_array_equal(gx, P.pool_backward(cnp, gy, x, y, "max", 2, **kw))
    assert bool(submitted) == COMPILED  # the whole NumPy array: split over the workers


def test_pooling_plan_cache_keeps_every_argument_check():
    """Pooling calls reuse their checked arguments per signature; a value equal to a
    cached one but of another kind (``True == 1``) is still refused, and a cached plan
    gives the values of a fresh one."""
    import fmtarray as fa
    from fmtarray.ops import pool as OP

    x = fa.FormattedArray(np.arange(4 * 5 * 2 * 3, dtype=np.float32).reshape(4, 5, 2, 3),
                          "SSCB")
    first = fa.max_pool(x, 1, stride=1, padding=0)
    fa.max_pool(x, 1, padding=((0, 0), (0, 0)))  # the pooling layers' form, cached
    for args, kw in (((True,), {}), ((1,), {"stride": True}), (((1, True),), {}),
                     ((1,), {"padding": (0, True)}), ((1,), {"padding": ((0, 0), (0, True))})):
        with pytest.raises(TypeError, match="bool|True"):
            fa.max_pool(x, *args, **kw)
    OP._PLANS.clear()
    np.testing.assert_array_equal(fa.max_pool(x, 1, stride=1, padding=0).data, first.data)
    y = fa.avg_pool(x, (2, 3), stride=(2, 1), padding="same")
    assert fa.avg_pool(x, (2, 3), stride=(2, 1), padding="same").shape == y.shape == (2, 5, 2, 3)


def test_pooling_padding_errors_speak_of_pooled_dims():
    import fmtarray as fa

    x = fa.FormattedArray(np.ones((4, 4, 2, 2), np.float32), "SSCB")
    for bad in (-1, [[0, 0, 0], [0, 0, 0]], "causal"):
        with pytest.raises(ValueError) as e:
            fa.max_pool(x, 2, padding=bad)
        msg = str(e.value)
        assert "max_pool: padding=" in msg and "one per pooled dim)" in msg
        assert "convolved" not in msg
