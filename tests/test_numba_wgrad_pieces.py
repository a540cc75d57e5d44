"""The weight-gradient tile with window values in the lanes (``_numba._wgrad_pieces``):
its driver against the other tile's, bit for bit (runs that are and are not whole
vectors, pieces of several runs and groups in one tile, filter blocks with fewer filters
than the tile's, position blocks), and ``numba.direct``'s and
``numba.winograd_weight_grad``'s weight gradients through it against the direct-loop
reference, non-finite values with the other tile's bits."""

from __future__ import annotations

import os

import numpy as np
import pytest

import array_api_compat.numpy as cnp

from fmtarray._kernels import conv as K
from fmtarray._kernels.conv import _numba
from kernel_calls import conv_backward, conv_forward
from test_numpy_algos import ref_conv_vjp

pytestmark = pytest.mark.skipif(os.environ.get("FMTARRAY_NUMBA") == "0"
                                or _numba.unavailable() is not None,
                                reason="numba unavailable or FMTARRAY_NUMBA=0")

PIECES, OTHER = {"numba_wgrad_pieces_min_fill": 0.0}, {"numba_wgrad_pieces_min_fill": 2.0}


def _drivers():
    from fmtarray._kernels.conv._numba import _simd, _wgrad_pieces

    return _simd, _wgrad_pieces


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("G,T,R,Fp,va,vb", [(1, 9, 48, 1, 0, 1), (1, 3, 5, 1, 0, 1),
                                            (4, 9, 16, 1, 0, 1), (2, 4, 37, 3, 1, 2),
                                            (3, 1, 70, 2, 1, 2), (1, 2, 1, 1, 0, 1)])
@pytest.mark.parametrize("per_tile,q0,q1", [(128, 0, 300), (7, 5, 61), (1000, 3, 4)])
def test_driver_has_the_other_tiles_bits(dtype, G, T, R, Fp, va, vb, per_tile, q0, q1):
    """Random windows (offsets into a flat input that ends where the last window's last
    run does: a whole-vector load past a short run's end would read past the array),
    ``Fp`` vectors of filters per group of which ``va .. vb-1`` are summed, into a zero
    gradient: the same bits as :func:`_simd.weight_grad_positions`, and the other filter
    vectors untouched."""
    simd, wp = _drivers()
    lanes = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    Fp *= lanes
    rng = np.random.default_rng(G * 100 + T * 10 + R)
    n = 300
    offs = np.sort(rng.integers(0, 4 * R + 1, size=(G, T)), axis=1).astype(np.int64)
    span = int(offs.max()) + R
    pos = rng.integers(0, 500, size=n).astype(np.int64)
    pos[-1] = 500  # the largest: its window ends at the end of xf
    xf = rng.standard_normal(500 + span).astype(dtype)
    gpos = (rng.permutation(n) * G * Fp).astype(np.int64)
    gf = rng.standard_normal(n * G * Fp).astype(dtype)
    want = np.zeros(G * T * R * Fp, dtype)
    simd.weight_grad_positions(xf, pos, gpos, offs, R, gf, want, Fp, 0, per_tile, q0, q1, va,
                               vb)
    got = np.zeros_like(want)
    wp.weight_grad_pieces(xf, pos, gpos, offs, R, gf, got, Fp, per_tile, q0, q1, va * lanes,
                          vb * lanes)
    assert np.array_equal(got, want)
    assert np.any(got != 0)
    lane = np.arange(G * T * R * Fp) % Fp
    assert not np.any(got[(lane < va * lanes) | (lane >= vb * lanes)])
    # into a gradient that holds sums already: those plus the same sums
    init = rng.standard_normal(want.size).astype(dtype)
    more = init.copy()
    wp.weight_grad_pieces(xf, pos, gpos, offs, R, gf, more, Fp, per_tile, q0, q1, va * lanes,
                          vb * lanes)
    assert np.array_equal(more, init + got)


def _case(n, sp, c, f, groups, dtype, seed=0):
    rng = np.random.default_rng(seed)
    d = len(sp)
    x = rng.standard_normal((n, *sp, c)).astype(dtype)
    w = rng.standard_normal((*(3,) * d, c // groups, f // groups, groups)).astype(dtype)
    return x, w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sp,c,f,groups,pad", [((9, 8, 7), 16, 16, 1, 1), ((11, 10), 64, 64, 4, 1),
                                               ((12, 9), 7, 13, 1, 0), ((10, 10), 33, 5, 1, 2)])
def test_direct_weight_gradient_matches_the_reference(dtype, sp, c, f, groups, pad):
    """``numba.direct``'s weight gradient with the tile forced (3-D, grouped, runs of
    21 and 99 values: a short last piece) against the reference's, and with the same
    bits as the other tile's."""
    x, w = _case(3, sp, c, f, groups, dtype)
    kw = dict(pad_before=pad, pad_after=pad, groups=groups)
    y = conv_forward(cnp, x, w, **kw)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    with K.tuning(**PIECES):
        gw = conv_backward(cnp, gy, x, w, needs=(False, True), force="numba.direct", **kw)[1]
    with K.tuning(**OTHER):
        other = conv_backward(cnp, gy, x, w, needs=(False, True), force="numba.direct",
                              **kw)[1]
    ref = _ref_weight_grad(x, w, gy, pad, groups)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert gw.dtype == dtype and gw.shape == w.shape
    assert np.abs(gw - ref).max() <= tol * (np.abs(ref).max() + 1)
    assert np.array_equal(gw, other)


def _ref_weight_grad(x, w, gy, pad, groups):
    """The direct-loop reference's weight gradient (stride and dilation 1, zero padding
    ``pad`` on every side)."""
    d = x.ndim - 2
    return ref_conv_vjp(x, w, gy, (1,) * d, (1,) * d, (pad,) * d, (pad,) * d, 0.0)[1]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_have_the_other_tiles_bits(bad):
    """An input or cotangent value ±inf or NaN: the same inf/NaN pattern and bits, and no
    warning (partial sums holding ±inf add to NaN, the definition's value)."""
    x, w = _case(2, (8, 7), 16, 16, 1, np.float32)
    kw = dict(pad_before=1, pad_after=1)
    gy = np.random.default_rng(1).standard_normal((2, 8, 7, 16)).astype(np.float32)
    x[1, 3, 2, 5] = bad
    gy[0, 0, 6, 11] = bad
    out = []
    for t in (PIECES, OTHER):
        with K.tuning(**t):
            out.append(conv_backward(cnp, gy, x, w, needs=(False, True), force="numba.direct",
                                     **kw)[1])
    assert np.array_equal(out[0], out[1], equal_nan=True)
    assert not np.all(np.isfinite(out[0]))


def test_winograd_weight_gradient_of_one_filter_vector():
    """``numba.winograd_weight_grad`` with 16 filters (one float32 vector: the transformed
    tiles in pieces) against the reference, and the same bits as the other tile's."""
    x, w = _case(2, (9, 10), 40, 16, 1, np.float32)
    kw = dict(pad_before=1, pad_after=1)
    gy = np.random.default_rng(1).standard_normal((2, 9, 10, 16)).astype(np.float32)
    out = []
    for t in (PIECES, OTHER):
        with K.tuning(numba_winograd_min_cf=0, numba_winograd_wgrad_min_cf=0, **t):
            out.append(conv_backward(cnp, gy, x, w, needs=(False, True),
                                     force="numba.winograd_weight_grad", **kw)[1])
    ref = _ref_weight_grad(x, w, gy, 1, 1)
    assert np.abs(out[0] - ref).max() <= 2e-5 * (np.abs(ref).max() + 1)
    assert np.array_equal(out[0], out[1])
