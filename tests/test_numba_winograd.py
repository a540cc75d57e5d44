"""``numba.winograd``, ``numba.winograd_input_grad`` and ``numba.winograd_weight_grad``
(Winograd F(2×2, 3×3) on channels-last data, compiled): the forward's work cut into
several filter blocks, tile runs, chunks and dilation phases against the direct-loop
reference, where the entries are chosen, the inputs they leave to the direct kernels
(non-finite or overflowing values, mixed dtypes) with the direct kernels' results bit
for bit, and the weight gradient's bits for any number of workers. Their
hypothesis-sampled domain tests are in ``test_numba.py``."""

from __future__ import annotations

import os

import numpy as np
import pytest

import array_api_compat.numpy as cnp

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels import conv as K
from fmtarray._kernels.conv import _numba
from conv_reference import ref_conv
from fmtarray._kernels.conv.spec import Layout
from kernel_calls import conv_backward, conv_forward, nsc_dims, spec_of

pytestmark = pytest.mark.skipif(os.environ.get("FMTARRAY_NUMBA") == "0"
                                or _numba.unavailable() is not None,
                                reason="numba unavailable or FMTARRAY_NUMBA=0")

ON = {"numba_winograd_min_cf": 0, "numba_winograd_wgrad_min_cf": 0}


def _case(n=2, hw=(7, 6), c=5, f=70, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *hw, c)).astype(dtype)
    w = (rng.standard_normal((3, 3, c, f, 1)) / np.sqrt(9 * c)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, w, b


def _kw(pb=(1, 0), pa=(2, 1), value=0.0):
    return dict(stride=(1, 1), dilation=(1, 1), pad_before=pb, pad_after=pa, pad_value=value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tiles", [1, 3, 7, 256])
@pytest.mark.parametrize("tuning", [{}, {"numba_winograd_u_bytes": 0},
                                    {"numba_winograd_u_bytes": 0,
                                     "numba_winograd_max_v_bytes": 16 * 5 * 8 * 4},
                                    {"numba_winograd_run_bytes": 16 * 5 * 8 * 4}])
@pytest.mark.parametrize("hw,pb,pa,value,dil", [((7, 6), (1, 0), (2, 1), 0.0, (1, 1)),
                                                ((5, 9), (0, 3), (0, 1), -1.5, (1, 1)),
                                                ((2, 2), (1, 1), (1, 1), 2.0, (1, 1)),
                                                ((9, 8), (2, 1), (2, 0), 0.5, (2, 3))])
def test_filter_blocks_and_tile_runs_match_the_reference(monkeypatch, dtype, tiles, tuning, hw,
                                                         pb, pa, value, dil):
    """70 filters (two float32 blocks of 64 filters, three float64 blocks of 32), the
    tiles in runs of ``tiles`` (several items per filter block, a last short one), a
    dilation (2 × 3 phases, each its own tiles, odd and even phase sizes), the
    transformed filters formed once (each item takes a run of tiles through all three
    steps: runs of 4 or 8 tiles) or per item (the tiles in chunks, V of 4 or 8 tiles at
    a time: several input and product phases), odd
    and even output sizes (the last tile's second row or column is never stored),
    asymmetric and non-zero constant padding, with and without a bias."""
    from fmtarray._kernels.conv._numba import winograd

    monkeypatch.setattr(winograd, "TILES", tiles)
    x, w, b = _case(n=3, hw=hw, dtype=dtype)
    kw = dict(_kw(pb, pa, value), dilation=dil)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for bias in (None, b):
        with K.tuning(**ON, **tuning):
            y = conv_forward(cnp, x, w, bias, force="numba.winograd", **kw)
        ref = ref_conv(x, w, bias, 1, dil, pb, pa, value)
        assert y.dtype == dtype and y.shape == ref.shape
        assert np.abs(y - ref).max() <= tol * (np.abs(ref).max() + 1)


def test_chosen_for_channels_last_data_with_many_channels():
    """The benchmark's 512-channel shape, smaller: NHWC data gets ``numba.winograd``;
    fewer channels × filters than ``numba_winograd_min_cf``, or canonical data, do not."""
    x = np.zeros((2, 7, 7, 256), np.float32)
    w = np.zeros((3, 3, 256, 256), np.float32)
    plan = fa.conv_plan(FormattedArray(x, "BSSC"), w, padding=1)
    assert plan.forward.chosen == "numba.winograd"
    small = fa.conv_plan(FormattedArray(np.zeros((2, 7, 7, 16), np.float32), "BSSC"),
                         w[:, :, :16, :16], padding=1)
    assert small.forward.chosen == "numba.direct"
    assert "numba_winograd_min_cf" in str(small)
    canon = fa.conv_plan(FormattedArray(np.zeros((7, 7, 256, 2), np.float32), "SSCB"), w,
                         padding=1)
    assert canon.forward.chosen != "numba.winograd"
    assert "not channels-innermost" in str(canon)


@pytest.mark.parametrize("where,bad", [("x", np.inf), ("x", -np.inf), ("x", np.nan),
                                       ("w", np.inf), ("w", np.nan), ("x", "overflow")])
def test_values_the_transforms_cannot_take_are_done_by_the_direct_kernel(where, bad):
    """±inf (the transforms' differences would make NaN of it), NaN, or values whose
    transform overflows (``3e38 - (-3e38)``) where the direct sum stays finite: the
    direct kernel's result, bit for bit, inf/NaN in the same places."""
    x, w, b = _case(c=8, f=8)
    if bad == "overflow":  # rows 1 and 3 of x are rows 0 and 2 of one padded 4×4 tile
        x[0, 1, 1, 0], x[0, 3, 1, 0] = 3e38, -3e38
    else:
        {"x": x, "w": w}[where][(0, 1, 1, 1) if where == "x" else (1, 1, 0, 0, 0)] = bad
    kw = _kw()
    with K.tuning(**ON), np.errstate(invalid="ignore", over="ignore"):
        spec = spec_of(cnp, x, w, **kw)
        choice = K.explain("forward", spec, Layout.of(nsc_dims(2), x), "numpy", None, (x, w))
        y = conv_forward(cnp, x, w, b, **kw)
        wino = conv_forward(cnp, x, w, b, force="numba.winograd", **kw)
        direct = conv_forward(cnp, x, w, b, force="numba.direct", **kw)
    assert choice.chosen == "numba.winograd"
    np.testing.assert_array_equal(y, direct)
    np.testing.assert_array_equal(wino, direct)
    if bad == "overflow":
        assert np.isfinite(direct).all()
    else:
        assert not np.isfinite(direct).all()


def test_mixed_dtypes_are_not_read_in_place():
    """float32 weights on float64 data: not this entry (it reads both in place in the
    result's dtype); the result is float64 and matches the reference."""
    x, w, b = _case(c=8, f=8, dtype=np.float64)
    w32 = w.astype(np.float32)
    kw = _kw()
    with K.tuning(**ON):
        with pytest.raises(ValueError, match="numba.winograd"):
            conv_forward(cnp, x, w32, b, force="numba.winograd", **kw)
        y = conv_forward(cnp, x, w32, b, **kw)
    assert y.dtype == np.float64
    ref = ref_conv(x, w32, b, 1, 1, (1, 0), (2, 1), 0.0)
    assert np.abs(y - ref).max() <= 1e-12 * np.abs(ref).max()


@pytest.mark.parametrize("grad,where,bad", [
    ("input", "gy", np.inf), ("input", "gy", np.nan), ("input", "w", -np.inf),
    ("input", "w", np.nan), ("weight", "gy", np.inf), ("weight", "gy", np.nan),
    ("weight", "x", -np.inf), ("weight", "x", np.nan)])
def test_gradients_with_non_finite_values_are_the_direct_kernels(grad, where, bad):
    """±inf or NaN in the cotangent, the weights (input gradient) or the input (weight
    gradient): numba.direct_input_grad's / numba.direct's gradient, bit for bit (for a
    non-finite weight, the exact scatter: no NaN where no tap reaches; Winograd's
    transforms would mix an infinity into NaN over whole 4×4 tiles)."""
    x, w, _ = _case(c=8, f=8)
    kw = _kw()
    spec = spec_of(cnp, x, w, **kw)
    gy = np.random.default_rng(4).standard_normal((spec.N, *spec.out, spec.F)).astype(x.dtype)
    {"gy": gy, "w": w, "x": x}[where][(1, 1, 0, 0, 0) if where == "w" else (0, 1, 1, 1)] = bad
    i = 0 if grad == "input" else 1
    needs = (i == 0, i == 1, False)
    names = (("numba.winograd_input_grad", "numba.direct_input_grad") if i == 0 else
             ("numba.winograd_weight_grad", "numba.direct"))
    with K.tuning(**ON), np.errstate(invalid="ignore", over="ignore"):
        got = conv_backward(cnp, gy, x, w, needs=needs, **kw)[i]
        forced = conv_backward(cnp, gy, x, w, needs=needs, force=names[0], **kw)[i]
        direct = conv_backward(cnp, gy, x, w, needs=needs, force=names[1], **kw)[i]
    assert not np.isfinite(direct).all()
    np.testing.assert_array_equal(got, direct)
    np.testing.assert_array_equal(forced, direct)


def test_chosen_for_the_input_gradient_in_any_layout():
    """The input gradient of a 3×3 stride-1 convolution of many channels, NHWC or
    canonical data: numba.winograd_input_grad."""
    w = np.zeros((3, 3, 64, 64), np.float32)
    for fmt, shape in (("BSSC", (4, 14, 14, 64)), ("SSCB", (14, 14, 64, 4))):
        plan = fa.conv_plan(FormattedArray(np.zeros(shape, np.float32), fmt), w, padding=1)
        assert plan.input_grad.chosen == "numba.winograd_input_grad", (fmt, str(plan))


def test_weight_gradient_chosen_from_its_own_channel_count():
    """The weight gradient goes to Winograd from ``numba_winograd_wgrad_min_cf`` channels ×
    filters (96 → 96), to numba.direct below (64 → 64, whose forward is Winograd's), and
    the threshold is a tuning."""
    plans = {c: fa.conv_plan(FormattedArray(np.zeros((4, 14, 14, c), np.float32), "BSSC"),
                             np.zeros((3, 3, c, c), np.float32), padding=1) for c in (64, 96)}
    assert plans[96].weight_grad.chosen == "numba.winograd_weight_grad"
    assert plans[64].forward.chosen == "numba.winograd"
    assert plans[64].weight_grad.chosen == "numba.direct"
    assert "numba_winograd_wgrad_min_cf" in str(plans[64])
    with K.tuning(numba_winograd_wgrad_min_cf=64 * 64):
        plan = fa.conv_plan(FormattedArray(np.zeros((4, 14, 14, 64), np.float32), "BSSC"),
                            np.zeros((3, 3, 64, 64), np.float32), padding=1)
    assert plan.weight_grad.chosen == "numba.winograd_weight_grad"


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("partials", [1 << 30, 3 * 16 * 6 * 32 * 4])
def test_weight_gradient_has_the_same_bits_for_any_workers(monkeypatch, workers, partials):
    """The blocks of tiles are fixed by the problem and added in block order: 1, 2 or 3
    workers give the same bits, with the tiles of a dilation's two phases in blocks of
    their own or (``ordered_sum_bytes`` for three partial sums) in three blocks that
    cross from one phase into the other."""
    from fmtarray._kernels.conv._numpy import _runtime

    x, w, _ = _case(n=4, hw=(11, 10), c=6, f=20, seed=7)
    kw = dict(_kw(), dilation=(2, 1))
    spec = spec_of(cnp, x, w, **kw)
    gy = np.random.default_rng(6).standard_normal((spec.N, *spec.out, spec.F)).astype(x.dtype)
    got = []
    base = _runtime.workers()
    for n in (1, workers):
        monkeypatch.setattr(_runtime, "workers", lambda n=n: (base[0], n, base[2]))
        with K.tuning(**ON, serial_macs=0, numba_winograd_run_bytes=16 * 20 * 4 * 5,
                      ordered_sum_bytes=partials):
            got.append(conv_backward(cnp, gy, x, w, needs=(False, True, False),
                                     force="numba.winograd_weight_grad", **kw)[1])
    np.testing.assert_array_equal(got[0], got[1])
    ref = np.asarray(conv_backward(cnp, gy.astype(np.float64), x.astype(np.float64),
                                   w.astype(np.float64), needs=(False, True, False),
                                   force="numba.direct", **kw)[1])
    assert np.abs(got[0] - ref).max() <= 2e-5 * np.abs(ref).max()
