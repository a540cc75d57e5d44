"""FormattedArray construction, accessors, operators and reductions on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fmtarray as fa
from fmtarray import FormattedArray

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape)


# construction ----------------------------------------------------------------------

def test_permutes_to_canonical_order(xp):
    a = rand(2, 3, 4, 5)  # B C S S
    x = FormattedArray(xp.asarray(a), "BCSS")
    assert x.format == "SSCB"
    assert x.shape == (4, 5, 3, 2)
    np.testing.assert_array_equal(xp.to_numpy(x), a.transpose(2, 3, 1, 0))
    assert fa.dims(x) == "SSCB"


def test_matlab_example_tcb_becomes_cbt(xp):
    x = FormattedArray(xp.asarray(rand(7, 3, 2)), "TCB")
    assert x.format == "CBT" and x.shape == (3, 2, 7)


def test_permutation_is_a_view_on_numpy():
    a = rand(2, 3, 4)
    x = FormattedArray(a, "BCS")
    assert np.shares_memory(x.data, a)


def test_long_format_appends_singletons(xp):
    x = FormattedArray(xp.asarray(rand(4, 5)), "SSCB")
    assert x.shape == (4, 5, 1, 1)
    assert x.size("C") == 1 and x.size("B") == 1 and x.size("T") == 1
    assert x.size("S") == (4, 5)


def test_short_format_is_an_error(xp):
    with pytest.raises(ValueError, match=r"format 'SS' has 2 labels but the data has 3 dims \(shape \(2, 3, 4\)\)"):
        FormattedArray(xp.asarray(rand(2, 3, 4)), "SS")


@pytest.mark.parametrize("fmt, msg", [("SSX", "unknown label 'X'"), ("SCCB", "repeats label 'C'")])
def test_bad_labels(xp, fmt, msg):
    with pytest.raises(ValueError, match=msg):
        FormattedArray(xp.asarray(rand(2, 2, 2, 2)), fmt)


def test_reformat_describes_current_dims(xp):
    x = FormattedArray(xp.asarray(rand(2, 3, 4)), "BCS")  # now SCB (4, 3, 2)
    y = FormattedArray(x, "CBT")  # relabels dims (4,3,2) as C, B, T
    assert y.format == "CBT" and y.shape == (4, 3, 2)
    np.testing.assert_array_equal(xp.to_numpy(y), xp.to_numpy(x))
    z = FormattedArray(x, "TBC")  # T=4, B=3, C=2 -> canonical CBT (2, 3, 4)
    assert z.format == "CBT" and z.shape == (2, 3, 4)
    np.testing.assert_array_equal(xp.to_numpy(z), xp.to_numpy(x).transpose(2, 1, 0))


def test_unformatted(xp):
    x = FormattedArray(xp.asarray(rand(2, 3)))
    assert x.format == "" and fa.dims(x) == "" and fa.finddim(x, "S") == ()
    with pytest.raises(ValueError, match="unformatted"):
        fa.sum(x, "S")
    np.testing.assert_allclose(xp.to_numpy(fa.sum(x, 1)), xp.to_numpy(x).sum(1))


def test_rejects_non_arrays():
    with pytest.raises(TypeError, match="data must be an array"):
        FormattedArray([[1.0, 2.0]], "SS")


def test_accessors(xp):
    x = FormattedArray(xp.asarray(rand(6, 5, 3, 2)), "SSCB")
    assert fa.finddim(x, "S") == (0, 1) and fa.finddim(x, "B") == (3,) and fa.finddim(x, "T") == ()
    assert x.ndim == 4 and x.dtype == x.data.dtype
    assert x.device == fa._backend.device(x.data)
    assert fa.extractdata(x) is x.data
    s = fa.stripdims(x)
    assert s.format == "" and s.shape == x.shape
    s2 = fa.stripdims(x, "BCSS")
    assert s2.shape == (2, 3, 6, 5)
    with pytest.raises(ValueError, match="must be a permutation"):
        fa.stripdims(x, "SSC")


def test_repr_shows_format_sizes_dtype_backend(xp):
    x = FormattedArray(xp.asarray(rand(4, 5, 3), dtype=np.float32), "SSC")
    r = repr(x)
    assert "4×5×3 SSC" in r and "S(4) S(5) C(3)" in r and "float32" in r
    assert xp.name.split("-")[0] in r
    if xp.name.endswith("device1"):
        assert "device1" in r


@given(st.permutations("SSCBT"), st.lists(st.integers(1, 3), min_size=5, max_size=5))
@settings(max_examples=50, deadline=None)
def test_stripdims_roundtrip(perm, sizes):
    fmt = "".join(perm)
    a = RNG.standard_normal(sizes)
    x = FormattedArray(a, fmt)
    back = fa.stripdims(x, fmt)
    # same labels in the same order: S dims keep their relative order
    np.testing.assert_array_equal(back.data, a)
    y = FormattedArray(back.data, fmt)
    np.testing.assert_array_equal(y.data, x.data)


# elementwise + broadcasting ---------------------------------------------------------------

def test_broadcast_by_label_not_position(xp):
    a = rand(4, 5, 3, 2)
    x = FormattedArray(xp.asarray(a), "SSCB")
    c = rand(3)
    y = FormattedArray(xp.asarray(c), "C")
    z = x + y
    assert z.format == "SSCB"
    np.testing.assert_allclose(xp.to_numpy(z), a + c[None, None, :, None])
    # the same with the bias given batch-first, a different label order
    bt = rand(2, 3)
    w = FormattedArray(xp.asarray(bt), "BC")
    np.testing.assert_allclose(xp.to_numpy(x * w), a * bt.T[None, None])


def test_union_format(xp):
    x = FormattedArray(xp.asarray(rand(4, 3)), "SC")
    t = FormattedArray(xp.asarray(rand(2, 7)), "BT")
    z = x - t
    assert z.format == "SCBT" and z.shape == (4, 3, 2, 7)
    np.testing.assert_allclose(xp.to_numpy(z), xp.to_numpy(x)[:, :, None, None] - xp.to_numpy(t)[None, None])


def test_center_with_dropped_mean(xp):
    a = rand(4, 5, 3, 2)
    x = FormattedArray(xp.asarray(a), "SSCB")
    m = fa.mean(x, "SSB")
    assert m.format == "C"
    np.testing.assert_allclose(xp.to_numpy(x - m), a - a.mean(axis=(0, 1, 3))[None, None, :, None])


def test_scalars_and_unformatted(xp):
    a = rand(4, 3, 2)
    x = FormattedArray(xp.asarray(a), "SCB")
    np.testing.assert_allclose(xp.to_numpy(2.0 * x - 1), 2 * a - 1)
    np.testing.assert_allclose(xp.to_numpy(1.0 / (x + 10.0)), 1 / (a + 10))
    u = rand(3, 2)
    z = x + xp.asarray(u)  # positional against canonical layout
    assert z.format == "SCB"
    np.testing.assert_allclose(xp.to_numpy(z), a + u)
    with pytest.raises(ValueError, match="more dims"):
        FormattedArray(xp.asarray(rand(3)), "C") + xp.asarray(rand(2, 3))


def test_broadcast_errors(xp):
    x = FormattedArray(xp.asarray(rand(4, 4, 3)), "SSC")
    with pytest.raises(ValueError, match="ambiguous"):
        x + FormattedArray(xp.asarray(rand(4, 3)), "SC")
    with pytest.raises(ValueError, match="sizes 3 and 2"):
        x + FormattedArray(xp.asarray(rand(2)), "C")


def test_mixed_libraries_and_devices():
    import array_api_strict as xs

    x = FormattedArray(np.ones((2, 3)), "SC")
    y = FormattedArray(xs.asarray(np.ones((2, 3))), "SC")
    with pytest.raises(TypeError, match="cannot mix array libraries.*numpy.*array_api_strict"):
        x + y
    z = FormattedArray(xs.asarray(np.ones((2, 3)), device=xs.Device("device1")), "SC")
    with pytest.raises(ValueError, match="different devices"):
        y + z
    moved = fa.to_device(y, xs.Device("device1")) + z
    assert moved.device == xs.Device("device1")


def test_unary_functions(xp):
    a = rand(3, 4)
    x = FormattedArray(xp.asarray(a), "CB")
    pos = FormattedArray(xp.asarray(np.abs(a) + 0.1), "CB")
    cases = {
        "abs": (fa.abs(x), np.abs(a)),
        "exp": (fa.exp(x), np.exp(a)),
        "log": (fa.log(pos), np.log(np.abs(a) + 0.1)),
        "sqrt": (fa.sqrt(pos), np.sqrt(np.abs(a) + 0.1)),
        "square": (fa.square(x), a * a),
        "tanh": (fa.tanh(x), np.tanh(a)),
        "sigmoid": (fa.sigmoid(x), 1 / (1 + np.exp(-a))),
        "relu": (fa.relu(x), np.maximum(a, 0)),
        "maximum": (fa.maximum(x, 0.5), np.maximum(a, 0.5)),
        "minimum": (fa.minimum(x, pos), np.minimum(a, np.abs(a) + 0.1)),
        "clip": (fa.clip(x, -0.5, 0.5), np.clip(a, -0.5, 0.5)),
        "where": (fa.where(x > 0, x, 0.0), np.where(a > 0, a, 0.0)),
        "neg": (-x, -a),
        "pow": (pos ** 2.5, (np.abs(a) + 0.1) ** 2.5),
    }
    for name, (got, want) in cases.items():
        assert got.format == "CB", name
        np.testing.assert_allclose(xp.to_numpy(got), want, rtol=1e-12, err_msg=name)
    cmp = x >= 0
    assert cmp.format == "CB"
    np.testing.assert_array_equal(xp.to_numpy(cmp), a >= 0)


def test_no_silent_casts(xp):
    i = FormattedArray(xp.asarray(np.arange(6).reshape(2, 3)), "CB")
    with pytest.raises(TypeError, match="floating-point"):
        fa.exp(i)
    with pytest.raises(TypeError, match="silent cast"):
        fa.maximum(i, 0.5)
    f32 = FormattedArray(xp.asarray(rand(2, 3), dtype=np.float32), "CB")
    assert (f32 * 2.0).dtype == f32.dtype
    assert fa.astype(f32, xp.ns.float64).dtype == xp.ns.float64


# reductions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "var", "std"])
def test_reductions_by_label(xp, name):
    a = rand(4, 5, 3, 2)
    x = FormattedArray(xp.asarray(a), "SSCB")
    f = getattr(fa, name)
    ref = getattr(np, name)
    # (atol: a sum of standard-normal values can land near zero, where another library's
    # order of additions differs from NumPy's by more than 1e-12 of the result)
    r = f(x, "S")
    assert r.format == "CB"
    np.testing.assert_allclose(xp.to_numpy(r), ref(a, axis=(0, 1)), rtol=1e-12, atol=1e-12)
    r = f(x, "SB", keepdims=True)
    assert r.format == "SSCB" and r.shape == (1, 1, 3, 1)
    np.testing.assert_allclose(xp.to_numpy(r), ref(a, axis=(0, 1, 3), keepdims=True),
                               rtol=1e-12, atol=1e-12)
    r = f(x)
    assert r.format == "" and r.shape == ()
    np.testing.assert_allclose(xp.to_numpy(r), ref(a), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="label 'T' is not in the array's format 'SSCB'"):
        f(x, "T")


def test_getitem_drops_labels(xp):
    a = rand(4, 5, 3, 2, 6)
    x = FormattedArray(xp.asarray(a), "SSCBT")
    s = x[:, :, :, :, 2]
    assert s.format == "SSCB"
    np.testing.assert_array_equal(xp.to_numpy(s), a[..., 2])
    s = x[1:3, ..., 0:2]
    assert s.format == "SSCBT" and s.shape == (2, 5, 3, 2, 2)


def test_dask_stays_lazy():
    pytest.importorskip("dask")
    import dask.array as da

    x = FormattedArray(da.ones((4, 3, 2), chunks=2), "SCB")
    y = fa.relu(x - fa.mean(x, "S"))
    assert isinstance(y.data, da.Array)
    np.testing.assert_allclose(np.asarray(y.data.compute()), np.zeros((4, 3, 2)))


def test_readonly_numpy_inputs_are_not_written():
    a = rand(3, 4)
    a.flags.writeable = False
    x = FormattedArray(a, "CB")
    y = fa.relu(x) + 1.0
    g = fa.grad(lambda x: fa.sum(fa.square(x)))(x)
    np.testing.assert_allclose(g.data, 2 * a)
    assert y.shape == (3, 4)


@pytest.mark.parametrize("scalar", [np.float64(2.5), np.float32(2.5), np.int64(3), 2.5, 3])
def test_numpy_scalars_are_weak_like_python_scalars(xp, scalar):
    """A NumPy scalar operand keeps the array's dtype, as a Python scalar does (NumPy's
    own rules would make ``float32 * np.float64`` float64) — SPEC §2, on every library."""
    a = rand(2, 3).astype(np.float32)
    x = FormattedArray(xp.asarray(a), "SB")
    for y in (x * scalar, scalar * x, x + scalar, x - scalar, x / scalar):
        got = xp.to_numpy(y)
        assert got.dtype == np.float32
    np.testing.assert_allclose(xp.to_numpy(x * scalar), a * np.float32(float(scalar)), rtol=1e-6)
