"""The Winograd F(2×2, 3×3) NumPy path: same numbers as the direct-loop reference.

Every test first checks that the configuration really takes the Winograd path (3×3,
stride 1, one group, constant padding, batch-innermost input, ≥ 8 channels, batch
≥ 4), then compares against ``ref_conv`` (direct loops, float64)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import array_api_compat.numpy as cnp
import array_api_strict

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels.conv import tuning
from fmtarray._kernels.conv._numpy import winograd
from fmtarray._kernels.conv.spec import ConvSpec
from kernel_calls import conv_backward, conv_forward

from conv_reference import ref_conv
from test_numpy_algos import selected


@pytest.fixture(autouse=True)
def _numpy_entries_only(monkeypatch):
    """With Numba, ``numba.direct`` takes these few-channel canonical cases (copied
    channels-last); Winograd serves them where the compiled kernels cannot run, as here."""
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")

TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def _small_problems_too():
    """The path's size heuristic would send these small problems to the direct path."""
    with tuning(winograd_min_total_cols=1):
        yield


def rel_err(y, ref):
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def batch_innermost(a):
    """``(N, H, W, C)`` values laid out as the canonical ``SSCB`` (batch innermost)."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)


def setup(n, h, w, c, f, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = batch_innermost(rng.standard_normal((n, h, w, c)).astype(dtype))
    wt = rng.standard_normal((3, 3, c, f, 1)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, wt, b


def check(x, w, b, dil, pb, pa, value, dtype):
    kw = dict(dilation=dil, pad_before=pb, pad_after=pa, pad_value=value)
    assert selected("forward", x, w, **kw) == "numpy.winograd"
    y = conv_forward(cnp, x, w, b, **kw)
    ref = ref_conv(x, w, b, 1, dil, pb, pa, value)
    assert y.dtype == dtype and y.shape == ref.shape
    assert rel_err(y, ref) <= TOL[dtype]
    return y, ref


CASES = [
    # n, h, w, c, f, dilation, pad before, pad after, value
    (4, 8, 8, 8, 8, (1, 1), (1, 1), (1, 1), 0.0),
    (5, 7, 9, 16, 24, (1, 1), (1, 2), (0, 1), 0.0),  # odd output sizes: partial tiles
    (4, 9, 7, 8, 16, (2, 2), (2, 2), (2, 2), 0.0),
    (6, 11, 10, 8, 40, (2, 3), (0, 0), (0, 0), 0.0),  # six phases of different sizes
    (4, 5, 5, 12, 8, (1, 2), (1, 1), (1, 1), -1.5),  # non-zero padding value
    (4, 3, 3, 8, 8, (1, 1), (0, 0), (0, 0), 0.0),  # a single output pixel
    (4, 6, 6, 9, 8, (1, 1), (3, 0), (0, 3), 2.0),  # padding beyond the filter reach
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_direct_loops(case, bias, dtype):
    n, h, w, c, f, dil, pb, pa, value = case
    x, wt, b = setup(n, h, w, c, f, dtype)
    check(x, wt, b if bias else None, dil, pb, pa, value, dtype)


@pytest.mark.parametrize("wide", [False, True])
def test_small_blocks_and_wide_chunks(wide):
    """Blocks of part of a tile row, several tile rows, and (wide mode) several chunks
    of blocks sharing one GEMM per ξν give the same numbers."""
    x, wt, b = setup(5, 13, 11, 8, 12, np.float64, seed=3)
    ref = check(x, wt, b, (1, 2), (1, 2), (1, 0), 0.5, np.float64)[1]
    # ~7 tiles per chunk in wide mode
    extra = dict(winograd_wide_u_bytes=1, workspace_bytes=16 * 20 * 8 * 5 * 7) if wide else {}
    kw = dict(dilation=(1, 2), pad_before=(1, 2), pad_after=(1, 0), pad_value=0.5)
    for block in (1, 5 * 2 * (12 * 8 + 16 * 8 + 16 * 12) * 8):  # one tile; several rows
        with tuning(winograd_block_bytes=block, **extra):
            assert selected("forward", x, wt, **kw) == "numpy.winograd"
            y = conv_forward(cnp, x, wt, b, **kw)
        assert rel_err(y, ref) <= 1e-12


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(4, 6), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(8, 11),
       f=st.integers(8, 11), dil=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pads=st.tuples(*[st.integers(0, 4)] * 4), dtype=st.sampled_from([np.float32, np.float64]))
def test_forward_property(n, h, w, c, f, dil, pads, dtype):
    pb, pa = pads[:2], pads[2:]
    if any(s + b + a < 2 * d + 1 for s, b, a, d in zip((h, w), pb, pa, dil)):
        return  # output would be empty: an error, tested elsewhere
    x, wt, b = setup(n, h, w, c, f, dtype, seed=h * 10 + w)
    check(x, wt, b, dil, pb, pa, 0.0, dtype)


def test_batch_split_bounds_the_blocks():
    """A workspace too small for one tile of the whole batch: blocks take part of the
    batch. Forward and both gradients equal the unsplit results."""
    x, wt, b = setup(9, 7, 8, 8, 12, np.float64, seed=7)
    kw = dict(dilation=(1, 1), pad_before=(1, 1), pad_after=(1, 1))
    y = np.asarray(conv_forward(cnp, x, wt, b, **kw))
    gy = batch_innermost(np.random.default_rng(8).standard_normal(y.shape))
    full = conv_backward(cnp, gy, x, wt, **kw)
    per_n = (12 * 8 + 16 * 8 + 16 * 12) * 8
    geo = ConvSpec.make(x.shape, wt.shape, pad_before=1, pad_after=1, dtype="float64")
    with tuning(workspace_bytes=8 * per_n):  # <= 4 samples per block
        assert max(s[6] - s[5] for s in winograd._blocks(geo, 8)) <= 4
        assert selected("forward", x, wt, **kw) == "numpy.winograd"
        assert selected("weight_grad", x, wt, gy, **kw) == "numpy.winograd_weight_grad"
        assert selected("input_grad", x, wt, gy, **kw) == "numpy.winograd_input_grad"
        np.testing.assert_allclose(np.asarray(conv_forward(cnp, x, wt, b, **kw)), y, rtol=1e-12)
        got = conv_backward(cnp, gy, x, wt, **kw)
    assert rel_err(y, ref_conv(x, wt, b, 1, 1, 1, 1, 0.0)) <= 1e-12
    for g, e in zip(got, full):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("value", [0.0, "replicate"])
def test_input_gradient(value):
    """The stride-1 input gradient (a convolution of the cotangent with the flipped
    filters, zero-padded whatever the padding mode) and, with constant padding, the
    weight gradient take the Winograd path; they equal the portable path's on
    array_api_strict. With a padding mode the registry prefers the scatter of
    ``numpy.input_grad_bi`` (fewer channels than filters); forced, Winograd agrees."""
    x, wt, b = setup(4, 9, 8, 8, 10, np.float64, seed=5)
    kw = dict(dilation=(2, 1), pad_before=(2, 1), pad_after=(1, 1), pad_value=value)
    y = np.asarray(conv_forward(cnp, x, wt, b, **kw))
    gy = batch_innermost(np.random.default_rng(6).standard_normal(y.shape))
    const = value == 0.0
    assert selected("weight_grad", x, wt, gy, **kw) == (
        "numpy.winograd_weight_grad" if const else "numpy.gemm")
    assert selected("input_grad", x, wt, gy, **kw) == (
        "numpy.winograd_input_grad" if const else "numpy.input_grad_bi")
    got = conv_backward(cnp, gy, x, wt, **kw)
    sa = array_api_strict.asarray
    want = conv_backward(array_api_strict, sa(gy), sa(x), sa(wt), **kw)
    for g, e in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-11, atol=1e-12)
    gx, _, _ = conv_backward(cnp, gy, x, wt, needs=(True, False, False),
                             force={"input_grad": "numpy.winograd_input_grad"}, **kw)
    np.testing.assert_allclose(gx, np.asarray(want[0]), rtol=1e-11, atol=1e-12)


def test_layer_output_is_canonical():
    """Through the op: SSCB in, SSCB out whose memory is the canonical layout."""
    x, wt, b = setup(4, 10, 10, 8, 16, np.float32)
    xc = FormattedArray(np.ascontiguousarray(np.moveaxis(x, 0, -1)), "SSCB")
    y = fa.conv(xc, wt[..., 0], b, padding="same")
    assert y.format == "SSCB" and y.data.flags.c_contiguous
    ref = np.moveaxis(ref_conv(x, wt, b, 1, 1, 1, 1, 0.0), 0, -1)
    assert rel_err(y.data, ref) <= 1e-5


def test_mixed_dtypes_promote():
    """float32 input with float64 weights: computed and returned in float64."""
    x, wt, b = setup(4, 6, 7, 8, 9, np.float32, seed=11)
    w64 = wt.astype(np.float64)
    assert selected("forward", x, w64, pad_before=1, pad_after=1) == "numpy.winograd"
    y = conv_forward(cnp, x, w64, None, pad_before=1, pad_after=1)
    assert y.dtype == np.float64
    assert rel_err(y, ref_conv(x, w64, None, 1, 1, 1, 1, 0.0)) <= 1e-12


def test_size_heuristic():
    """With the default threshold, too few tiles × batch for the filter transform to
    pay go to the direct path (the benchmark's 512-channel 7×7 case with a batch of 8);
    the 256-channel 14×14 case with a batch of 64 takes Winograd."""
    kw = dict(pad_before=1, pad_after=1)
    with tuning(winograd_min_total_cols=512):
        x_small = batch_innermost(np.zeros((8, 7, 7, 512), np.float32))
        w_small = np.zeros((3, 3, 512, 512, 1), np.float32)
        assert selected("forward", x_small, w_small, **kw) == "numpy.gemm_wide"
        with pytest.raises(ValueError, match="winograd_min_total_cols"):
            selected("forward", x_small, w_small, force="numpy.winograd", **kw)
        x_big = batch_innermost(np.zeros((64, 14, 14, 256), np.float32))
        w_big = np.zeros((3, 3, 256, 256, 1), np.float32)
        assert selected("forward", x_big, w_big, **kw) == "numpy.winograd"
        # the canonical channels-last layout (batch outermost) never takes this path
        x_cl = np.zeros((64, 14, 14, 256), np.float32)
        assert selected("forward", x_cl, w_big, **kw) != "numpy.winograd"


def test_flipped_filter_transform():
    """``flip=True`` is the transform of the spatially flipped filters."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 5, 6, 1))
    geo = ConvSpec.make((4, 6, 6, 5), w.shape, pad_before=1, pad_after=1, dtype="float64")
    got = winograd.transformed_filters(w, geo, np.dtype(np.float64), flip=True)
    want = winograd.transformed_filters(w[::-1, ::-1], geo, np.dtype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_keep_direct_semantics(bad):
    """An infinite input would turn into NaN through the transforms' subtractions: such
    calls take the direct path, so ±inf stays ±inf (and NaN stays NaN), forward and
    backward, exactly where the direct-loop reference puts them."""
    x, wt, b = setup(4, 6, 7, 8, 8, np.float64, seed=13)
    x = np.array(x)  # writable, same batch-innermost layout
    x[1, 2, 3, 4] = bad
    kw = dict(pad_before=1, pad_after=1)
    with np.errstate(all="ignore"):
        assert selected("forward", x, wt, **kw) == "numpy.gemm"
        with pytest.raises(ValueError, match="non-finite"):
            selected("forward", x, wt, force="numpy.winograd", **kw)
        y = np.asarray(conv_forward(cnp, x, wt, b, **kw))
        ref = ref_conv(x, wt, b, 1, 1, 1, 1, 0.0)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
        ok = np.isfinite(ref)
        np.testing.assert_allclose(y[ok], ref[ok], rtol=1e-12, atol=1e-12)
        gy = batch_innermost(np.ones(y.shape))
        gx, gw, _ = conv_backward(cnp, gy, x, wt, **kw)
        sa = array_api_strict.asarray
        ex, ew, _ = conv_backward(array_api_strict, sa(gy), sa(x), sa(wt), **kw)
        for g, e in ((gx, ex), (gw, ew)):
            g, e = np.asarray(g), np.asarray(e)
            np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
            np.testing.assert_array_equal(np.isinf(g), np.isinf(e))


def _checkerboard(shape, big, dtype, seed):
    """Small noise, and ±``big`` alternating over a 6×6 patch of one sample and channel
    of ``(N, H, W, C)``: the patch sums to 0 (a summing guard sees nothing) while the
    input transform of a tile inside it reaches ±4·big."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    sign = np.where((np.arange(6)[:, None] + np.arange(6)[None, :]) % 2 == 0, 1.0, -1.0)
    a[1, :6, :6, 2] = big * sign
    return batch_innermost(a.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_near_the_dtype_limit_keep_direct_results(dtype):
    """Finite values near the dtype's largest (±0.3·max in a checkerboard: sums cancel,
    the transforms would reach 1.2·max): forward and both gradients equal the direct path's
    (forced ``numpy.gemm`` / ``numpy.col2im``) and the float64 direct-loop reference,
    finite everywhere; forcing a Winograd entry names the reason."""
    big = 0.3 * float(np.finfo(dtype).max)
    rng = np.random.default_rng(1)
    x = _checkerboard((4, 6, 7, 8), big, dtype, 2)
    wt = (1e-3 * rng.standard_normal((3, 3, 8, 8, 1))).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    kw = dict(pad_before=1, pad_after=1)
    small = batch_innermost(rng.standard_normal((4, 6, 7, 8)).astype(dtype))
    assert selected("forward", small, wt, **kw) == "numpy.winograd"  # ordinary values
    with pytest.raises(ValueError, match="numpy.winograd.*values up to.*overflow"):
        selected("forward", x, wt, force="numpy.winograd", **kw)
    y = np.asarray(conv_forward(cnp, x, wt, b, **kw))
    direct = np.asarray(conv_forward(cnp, x, wt, b, force="numpy.gemm", **kw))
    ref = ref_conv(x, wt, b, 1, 1, 1, 1, 0.0)
    assert np.isfinite(y).all() and np.isfinite(ref).all()
    assert rel_err(y, direct) <= TOL[dtype] and rel_err(y, ref) <= TOL[dtype]
    # the input gradient (Winograd of the cotangent) and the weight gradient
    gy = _checkerboard((4, 6, 7, 8), big, dtype, 3)
    assert selected("input_grad", small, wt, gy=small, **kw) == "numpy.winograd_input_grad"
    assert selected("weight_grad", small, wt, gy=small, **kw) == "numpy.winograd_weight_grad"
    for op, direct_name in (("input_grad", "numpy.col2im"), ("weight_grad", "numpy.gemm")):
        i, (g, xx) = (0, (gy, small)) if op == "input_grad" else (1, (small * 1e-3, x))
        needs = (i == 0, i == 1, False)
        got = np.asarray(conv_backward(cnp, g, xx, wt, needs=needs, **kw)[i])
        want = np.asarray(conv_backward(cnp, g, xx, wt, needs=needs, force={op: direct_name},
                                        **kw)[i])
        assert np.isfinite(got).all() and np.isfinite(want).all(), op
        assert rel_err(got, want) <= 4 * TOL[dtype], op

