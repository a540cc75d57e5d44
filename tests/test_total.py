"""``fmtarray.sum`` / ``mean`` over every dim of a NumPy float array: the compiled
kernel's documented order, bit for bit, against a direct NumPy formulation of it; its
accuracy against an exact sum; non-finite values; and NumPy's own sum wherever the
kernel does not run (partial sums, strided arrays, small ones, compiled kernels off)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels.conv._numba import unavailable
from fmtarray._kernels.total import MIN_VALUES

COMPILED = unavailable() is None


def _pairwise(vals):
    """Adjacent pairs added, an odd last value carried up, until one is left."""
    vals = list(vals)
    while len(vals) > 1:
        nxt = [vals[i] + vals[i + 1] for i in range(0, len(vals) - 1, 2)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


def _reference(a):
    """The kernel's order, by NumPy: blocks of 2048 in memory order, 64 lanes each
    adding its values in turn, the lanes then the blocks added pairwise."""
    flat = a.ravel(order="K")
    parts = []
    for lo in range(0, flat.size, 2048):
        blk = flat[lo:lo + 2048]
        rows = blk.size // 64
        if rows:
            lanes = blk[:64].copy()
            for k in range(1, rows):
                lanes = lanes + blk[64 * k:64 * k + 64]
            for j in range(blk.size - 64 * rows):
                lanes[j] = lanes[j] + blk[64 * rows + j]
        else:
            lanes = blk.copy()
        parts.append(_pairwise(lanes))
    return _pairwise(parts)


def _expected(a):
    return _reference(a) if COMPILED else np.sum(a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [MIN_VALUES, MIN_VALUES + 1, MIN_VALUES + 63,
                               MIN_VALUES + 64 + 5, 2048 * 41 + 17, 100_003])
def test_sum_of_every_value_in_the_documented_order(dtype, n):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(dtype)
    x = FormattedArray(a, "B")
    got = fa.sum(x).data
    assert type(got) is np.dtype(dtype).type
    assert got.tobytes() == np.asarray(_expected(a), dtype).tobytes()
    m = fa.mean(x).data
    assert type(m) is np.dtype(dtype).type
    assert m.tobytes() == np.asarray(_expected(a) / n if COMPILED else np.mean(a), dtype).tobytes()
    # accuracy against the exact sum: the bound of the order (32 values in turn per
    # lane, then the pairwise levels), a margin of 8 levels
    exact = math.fsum(a.astype(np.float64).tolist())
    bound = (32 + math.log2(n) + 8) * np.finfo(dtype).eps * float(np.sum(np.abs(a), dtype=np.float64))
    assert abs(float(got) - exact) <= bound


def test_memory_order_any_layout_and_keepdims():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 130, 129, 3)).astype(np.float32)  # > MIN_VALUES
    x = FormattedArray(a, "BSSC")  # channels-last memory: canonical "SSCB" is a view
    got = fa.sum(x)
    assert got.data.tobytes() == np.asarray(_expected(a), np.float32).tobytes()
    k = fa.sum(x, keepdims=True)
    assert k.shape == (1, 1, 1, 1) and k.data.dtype == np.float32
    assert k.data.tobytes() == got.data.tobytes()
    f = np.asfortranarray(a)
    assert fa.sum(FormattedArray(f, "BSSC")).data.tobytes() == np.asarray(
        _expected(f), np.float32).tobytes()


def test_numpy_sum_where_the_kernel_does_not_run():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((300, 400)).astype(np.float32)
    x = FormattedArray(a, "SB")
    # some of the dims, a strided view, few values, another dtype: NumPy's own bits
    assert np.array_equal(fa.sum(x, "S").data, np.sum(a, axis=0))
    assert fa.sum(FormattedArray(a[:, ::2], "SB")).data.tobytes() == np.sum(a[:, ::2]).tobytes()
    small = a[:100, :100]
    assert fa.sum(FormattedArray(small, "SB")).data.tobytes() == np.sum(small).tobytes()
    i = np.arange(MIN_VALUES * 2, dtype=np.int64)
    assert fa.sum(FormattedArray(i, "B")).data == np.sum(i)
    swapped = a.astype(">f4")
    assert fa.sum(FormattedArray(swapped, "SB")).data == np.sum(swapped)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_and_signed_zero(dtype):
    n = MIN_VALUES + 7
    a = np.ones(n, dtype)
    a[5000] = np.inf
    assert fa.sum(FormattedArray(a, "B")).data == np.inf
    a[70] = -np.inf
    with np.errstate(invalid="ignore"):  # NumPy's sum warns (with the kernels off)
        assert np.isnan(fa.sum(FormattedArray(a, "B")).data)
    a = np.ones(n, dtype)
    a[n - 1] = np.nan
    assert np.isnan(fa.sum(FormattedArray(a, "B")).data)
    z = np.full(n, -0.0, dtype)
    s = fa.sum(FormattedArray(z, "B")).data
    # the kernel adds no zero that is not in the data (IEEE: -0 + -0 = -0); NumPy's
    # pairwise sum starts its accumulators from +0
    assert s == 0 and bool(np.signbit(s)) == COMPILED


def test_gradient_of_a_compiled_sum():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((256, 300)).astype(np.float32)
    g = rng.standard_normal((256, 300)).astype(np.float32)
    val, ga = fa.value_and_grad(lambda x: fa.mean(x * g))(FormattedArray(a, "SB"))
    assert val.data.tobytes() == np.asarray(
        (_reference(a * g) / a.size) if COMPILED else np.mean(a * g), np.float32).tobytes()
    np.testing.assert_array_equal(ga.data, g * np.float32(1 / a.size))
