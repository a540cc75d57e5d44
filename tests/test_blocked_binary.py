"""Binary ops on NumPy operands stored in different memory orders
(:mod:`fmtarray._kernels.blocked_binary`): bit-identical to one NumPy ufunc call, in the
memory order NumPy gives, for every op, dtype mix, non-finite values and layout."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray._kernels import blocked_binary as bb
from fmtarray.ops import elementwise as el

_SHAPE = (12, 10, 24, 20)  # 57,600 values: above 4 · copy_block with the block set below


@pytest.fixture(autouse=True)
def _small_blocks():
    from fmtarray._kernels.conv import tuning

    with tuning(copy_block=4096):
        yield


def _stored(a, order):
    """``a`` (same values, same shape) stored with its dims in memory order ``order``."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, order, range(a.ndim))),
                       range(a.ndim), order)


def _values(rng, dtype, shape=_SHAPE):
    v = rng.standard_normal(shape).astype(dtype)
    flat = v.reshape(-1)
    flat[::97] = np.nan
    flat[5::89] = np.inf
    flat[7::83] = -np.inf
    flat[11::79] = 0.0
    flat[13::71] = -0.0
    return v


@pytest.mark.parametrize("name", sorted(bb.UFUNCS))
@pytest.mark.parametrize("dtypes", [("float32", "float32"), ("float64", "float64"),
                                    ("float32", "float64")])
def test_mixed_orders_match_numpy_bit_for_bit(name, dtypes):
    rng = np.random.default_rng(len(name))
    x = _values(rng, dtypes[0])
    y = _values(rng, dtypes[1])
    y.reshape(-1)[::5] = x.reshape(-1)[::5]  # ties for maximum, minimum, comparisons
    a = _stored(x, (3, 0, 1, 2))  # the last dim outermost: a conv output on canonical data
    b = np.ascontiguousarray(y)
    with np.errstate(all="ignore"):
        got = bb.apply(name, a, b)
        ref = bb.UFUNCS[name](a, b)
    assert got is not None
    assert got.dtype == ref.dtype and got.strides == ref.strides
    assert np.array_equal(got.view(np.uint8), ref.view(np.uint8))  # the bits, NaN included


@pytest.mark.parametrize("order", [(1, 0, 2, 3), (2, 3, 0, 1), (0, 1, 3, 2)])
def test_other_orders_and_views(order):
    rng = np.random.default_rng(1)
    x, y = _values(rng, "float32"), _values(rng, "float32")
    a = _stored(x, order)[:, ::-1]  # a reversed view too
    b = np.ascontiguousarray(y)[:, ::-1]
    with np.errstate(all="ignore"):
        got, ref = bb.apply("divide", a, b), np.divide(a, b)
    assert got is not None and got.strides == ref.strides
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_left_to_numpy_where_it_does_not_apply():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(_SHAPE).astype(np.float32)
    a = _stored(x, (3, 0, 1, 2))
    assert bb.apply("pow", a, x) is None  # not exactly rounded
    assert bb.apply("multiply", x, x) is None  # stored alike
    assert bb.apply("multiply", a, x[:1]) is None  # broadcasting
    assert bb.apply("multiply", a[:2, :2], x[:2, :2]) is None  # small
    assert bb.apply("multiply", a, 2.0) is None


def test_formatted_ops_take_it_and_keep_values():
    """``y * g`` of a conv output on canonical data (channels-last memory) and a canonical
    ``g``: through the op, the same bits and memory order as NumPy's product."""
    rng = np.random.default_rng(3)
    x = fa.FormattedArray(rng.standard_normal((9, 8, 6, 16)).astype(np.float32), "SSCB")
    w = rng.standard_normal((3, 3, 6, 40)).astype(np.float32)
    y = fa.conv(x, w, padding=1)
    g = fa.FormattedArray(_values(rng, "float32", y.shape), "SSCB")
    yd, gd = np.asarray(y.data), np.asarray(g.data)
    assert bb._order(yd) != bb._order(gd)
    for op, uf in ((el.multiply, np.multiply), (el.add, np.add), (el.maximum, np.maximum)):
        with np.errstate(all="ignore"):
            got, ref = np.asarray(op(y, g).data), uf(yd, gd)
        assert got.strides == ref.strides and np.array_equal(got.view(np.uint32),
                                                              ref.view(np.uint32))


def test_tape_sums_mixed_order_cotangents_exactly(monkeypatch):
    """A value read by a convolution (its input gradient: a channels-last view) and by a
    product (a canonical cotangent): the tape's sum of the two goes through
    :func:`blocked_binary.add`, with the bits of NumPy's sum of the two gradients."""
    rng = np.random.default_rng(4)
    x = fa.FormattedArray(rng.standard_normal((10, 9, 8, 16)).astype(np.float32), "SSCB")
    w = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    h = fa.FormattedArray(rng.standard_normal((10, 9, 8, 16)).astype(np.float32), "SSCB")
    mixed = []
    real = bb.add
    monkeypatch.setattr(bb, "add", lambda a, b: mixed.append(
        bb._order(a) != bb._order(b)) or real(a, b))
    both = fa.grad(lambda x: fa.sum(fa.conv(x, w, padding=1) * h + x * h))(x)
    assert mixed == [True]
    g_conv = np.asarray(fa.grad(lambda x: fa.sum(fa.conv(x, w, padding=1) * h))(x).data)
    g_prod = np.asarray(fa.grad(lambda x: fa.sum(x * h))(x).data)
    assert np.array_equal(np.asarray(both.data), g_conv + g_prod)
