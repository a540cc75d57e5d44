"""Entries run on a canonical copy of channels-last data ("via canonical copy: …").

NumPy data stored channels innermost, batch outermost (``"BSSC"``) misses the entries
that read the batch as the innermost run (Winograd, the batch-innermost GEMMs); the
``via canonical copy:`` entries copy the operands once into canonical order, run the
entry there and copy the result back channels-last. Checked here: both routes,
forced by name, against the direct-loop reference (float32 and float64), bit-equality
with the wrapped entry on canonical data, the memory order of the results, the
selection (and the reasons) for the benchmark's two affected cases, and the inf/NaN
pattern of the direct path.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fmtarray as fa
from fmtarray._kernels.conv import ConvSpec, Layout, tuning
from fmtarray._kernels.conv import registry as R

from conv_reference import ref_conv, ref_pad

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DIMS = "01CN"  # kernel dims of canonical SSCB data
VIA = "via canonical copy: "
# thresholds low enough for small test sizes to reach every entry
SMALL = dict(winograd_min_c=1, winograd_min_f=1, winograd_min_n=2,
             winograd_min_total_cols=1, relayout_winograd_min_macs=0,
             relayout_bi_min_taps=1, serial_macs=1)
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def _numpy_entries_only(monkeypatch):
    """With Numba, ``numba.direct`` serves channels-last data ahead of these routes;
    they serve it where the compiled kernels cannot run, as here."""
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")


def ref_input_grad(gy, w, sp, stride=1, dilation=1, before=0, after=0):
    """Direct-loop adjoint of :func:`ref_conv` with constant padding: ``gx`` of
    ``sum(conv(x) * gy)``, float64 ``(N, *sp, C)``."""
    gy = np.asarray(gy, np.float64)
    w = np.asarray(w, np.float64)
    d = len(sp)
    k = w.shape[:d]
    cg, fg, g = w.shape[d:]
    stride, dilation = (stride,) * d, (dilation,) * d
    before, after = (before,) * d, (after,) * d
    n = gy.shape[0]
    gpad = np.zeros((n, *(s + b + a for s, b, a in zip(sp, before, after)), cg * g))
    for pos in itertools.product(*(range(o) for o in gy.shape[1:-1])):
        for grp in range(g):
            go = gy[(slice(None),) + pos + (slice(grp * fg, (grp + 1) * fg),)]  # (n, fg)
            for off in itertools.product(*(range(kk) for kk in k)):
                idx = tuple(p * s + o * dl for p, s, o, dl in zip(pos, stride, off, dilation))
                gpad[(slice(None),) + idx + (slice(grp * cg, (grp + 1) * cg),)] += (
                    go @ w[off + (slice(None), slice(None), grp)].T)
    crop = tuple(slice(b, b + s) for b, s in zip(before, sp))
    return gpad[(slice(None),) + crop]


def _nhwc(a):
    """Channels-last ``(N, *sp, C)`` values as kernel dims ``01CN`` over NHWC memory."""
    return np.transpose(a, (1, 2, 3, 0))


def _canonical(a):
    return np.ascontiguousarray(_nhwc(a))


def _cl(a):
    """Kernel-dims ``01CN`` array back to channels-last ``(N, H, W, C)`` values."""
    return np.transpose(np.asarray(a), (3, 0, 1, 2))


def _rel_err(ours, ref):
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def _data(dtype, n, hw, c, f, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *hw, c)).astype(dtype)
    w = rng.standard_normal((*k, c, f, 1)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, w, b


# (name of the wrapped entry, direct route on NHWC data, n, (H, W), C, F, k, pad, value[,
#  dilation])
FORWARD = [
    ("numpy.winograd", "numpy.gemm", 4, (7, 6), 5, 3, (3, 3), 1, 0.0),
    ("numpy.winograd", "numpy.gemm", 3, (5, 9), 2, 4, (3, 3), 2, -1.5),
    ("numpy.winograd", "numpy.gemm", 5, (4, 4), 3, 6, (3, 3), 0, 0.0),
    ("numpy.winograd", "numpy.gemm", 2, (9, 11), 3, 2, (3, 3), 2, 0.5, 2),  # dilated
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, direct, n, hw, c, f, k, pad, value, dil",
                         [c if len(c) == 10 else (*c, 1) for c in FORWARD])
def test_forward_both_routes_match_reference(dtype, name, direct, n, hw, c, f, k, pad, value,
                                             dil):
    x, w, b = _data(dtype, n, hw, c, f, k)
    ref = ref_conv(x, w, b, dilation=dil, before=pad, after=pad, value=value)
    xn = fa.FormattedArray(x, "BSSC")
    kw = dict(padding=pad, padding_value=value, dilation_factor=dil)
    wf = fa.FormattedArray(w[..., 0], "SSCU")
    with tuning(**SMALL):
        assert fa.conv_plan(xn, wf, b, **kw).forward.chosen == VIA + name
        via = fa.conv(xn, wf, b, algorithm={"forward": VIA + name}, **kw)
        plain = fa.conv(xn, wf, b, algorithm={"forward": direct}, **kw)
        on_canonical = fa.conv(fa.FormattedArray(_canonical(x), "SSCB"), wf, b,
                               algorithm={"forward": name}, **kw)
    for y in (via, plain):
        assert y.format == "SSCB"
        assert _rel_err(_cl(y.data), ref) <= TOL[dtype]
        assert y.dtype == dtype
    # the copy changes nothing: bit-equal to the entry on canonical data
    np.testing.assert_array_equal(np.asarray(via.data), np.asarray(on_canonical.data))
    # the result comes back channels-last (channels innermost, batch outermost), as the
    # direct entries return it
    st = np.asarray(via.data).strides
    assert st[2] == dtype().itemsize and st[3] == max(st)


# (name of the wrapped entry, direct route, n, (H, W), C, F, k, pad, stride, dilation)
INPUT_GRAD = [
    ("numpy.winograd_input_grad", "numpy.col2im", 4, (7, 6), 5, 3, (3, 3), 1, 1, 1),
    ("numpy.winograd_input_grad", "numpy.grad_as_conv", 3, (5, 9), 3, 2, (3, 3), 0, 1, 1),
    ("numpy.winograd_input_grad", "numpy.col2im", 2, (9, 8), 2, 3, (3, 3), 2, 1, 2),
    ("numpy.input_grad_bi", "numpy.col2im", 5, (9, 8), 1, 4, (5, 5), 0, 1, 1),
    ("numpy.input_grad_bi", "numpy.grad_as_conv", 3, (6, 7), 2, 5, (2, 3), 2, 1, 1),
    ("numpy.input_grad_bi", "numpy.col2im", 3, (11, 10), 1, 3, (3, 2), 1, 2, 1),
    ("numpy.input_grad_bi", "numpy.col2im", 2, (12, 9), 2, 3, (3, 3), 2, 3, 2),
]


def _backward(name, spec, gy, x, w, layout):
    return R.backward(np, spec, layout, gy, x, w, (True, False, False),
                      force={"input_grad": name})[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, direct, n, hw, c, f, k, pad, stride, dil", INPUT_GRAD)
def test_input_grad_both_routes_match_reference(dtype, name, direct, n, hw, c, f, k, pad,
                                                stride, dil):
    x, w, _ = _data(dtype, n, hw, c, f, k)
    spec = ConvSpec.make(x.shape, w.shape, pad_before=pad, pad_after=pad, stride=stride,
                         dilation=dil, dtype=np.dtype(dtype).name)
    gy = np.random.default_rng(1).standard_normal((n, *spec.out, f)).astype(dtype)
    ref = ref_input_grad(gy, w, hw, stride, dil, before=pad, after=pad)
    xk, gk = _nhwc(x), _nhwc(gy)
    lay = Layout.of(DIMS, xk, gk)
    with tuning(**SMALL):
        assert R.select("input_grad", spec, lay, "numpy", arrays=(gk, w)).name == VIA + name
        via = _backward(VIA + name, spec, gk, xk, w, lay)
        plain = _backward(direct, spec, gk, xk, w, lay)
        xc, gc = _canonical(x), _canonical(gy)
        on_canonical = _backward(name, spec, gc, xc, w, Layout.of(DIMS, xc, gc))
    for gx in (via, plain):
        assert gx.dtype == dtype
        assert _rel_err(_cl(gx), ref) <= TOL[dtype]
    np.testing.assert_array_equal(via, on_canonical)
    assert via.strides[2] == dtype().itemsize and via.strides[3] == max(via.strides)


def test_forward_reference_with_nonzero_padding_value_is_not_the_zero_padded_one():
    # guards the reference itself: a padding value must change border outputs
    x, w, b = _data(np.float64, 2, (4, 4), 2, 2, (3, 3))
    assert not np.allclose(ref_conv(x, w, b, before=1, after=1, value=2.0),
                           ref_conv(x, w, b, before=1, after=1, value=0.0))
    assert ref_pad(x, (1, 1), (1, 1), (1, 2), 2.0)[0, 0, 0, 0] == 2.0


# ---- selection for the benchmark's two affected cases (default thresholds)


def _plan(shape_nhwc, k, c, f, layout, **kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape_nhwc, dtype=np.float32)
    if layout == "canonical":
        xa = fa.FormattedArray(_canonical(x), "SSCB")
    else:
        xa = fa.FormattedArray(x, "BSSC")
    w = fa.FormattedArray(rng.standard_normal((*k, c, f), dtype=np.float32), "SSCU")
    return fa.conv_plan(xa, w, **kw)


def _reason(choice, name):
    return dict(choice.rejected)[name]


def test_selection_b64_14x14_256_to_256_nhwc_uses_winograd_via_copy():
    p = _plan((64, 14, 14, 256), (3, 3), 256, 256, "nhwc", padding=1)
    assert p.forward.chosen == VIA + "numpy.winograd"
    assert p.input_grad.chosen == VIA + "numpy.winograd_input_grad"
    # Winograd's weight gradient does not pay through copies of gy and x
    assert p.weight_grad.chosen == "numpy.gemm_wide"
    assert "batch is not innermost" in _reason(p.forward, "numpy.winograd")
    assert "batch is not innermost" in _reason(p.input_grad, "numpy.winograd_input_grad")
    assert _reason(p.forward, "numpy.gemm_wide") == f"{VIA}numpy.winograd comes first"
    # canonical data runs the entry in place; the wrapper says why it is not needed
    c = _plan((64, 14, 14, 256), (3, 3), 256, 256, "canonical", padding=1)
    assert c.forward.chosen == "numpy.winograd"
    assert "canonical already" in _reason(c.forward, VIA + "numpy.winograd")
    assert c.input_grad.chosen == "numpy.winograd_input_grad"


def test_selection_b128_28x28_1_to_20_5x5_nhwc_uses_input_grad_bi_via_copy():
    p = _plan((128, 28, 28, 1), (5, 5), 1, 20, "nhwc")
    assert p.input_grad.chosen == VIA + "numpy.input_grad_bi"
    assert "batch of x or of the cotangent" in _reason(p.input_grad, "numpy.input_grad_bi")
    assert (_reason(p.input_grad, "numpy.last_innermost_input_grad")
            == f"{VIA}numpy.input_grad_bi comes first")
    # the forward stays on a direct entry (the copy route did not pay there)
    assert not p.forward.chosen.startswith(VIA)
    assert "3×3" in _reason(p.forward, VIA + "numpy.winograd")


def test_selection_declines_where_the_copies_do_not_pay():
    # 3×3 64→64: 288 multiply-adds per copied value, below the Winograd threshold
    p = _plan((32, 56, 56, 64), (3, 3), 64, 64, "nhwc", padding=1)
    assert p.forward.chosen == "numpy.gemm"
    assert "Tuning.relayout_winograd_min_macs = 512" in _reason(p.forward, VIA + "numpy.winograd")
    # 1×1: channels-last data is the GEMM operand already
    q = _plan((16, 32, 32, 8), (1, 1), 8, 32, "nhwc")
    assert "Tuning.relayout_bi_min_taps" in _reason(q.input_grad, VIA + "numpy.input_grad_bi")
    assert not q.forward.chosen.startswith(VIA) and not q.input_grad.chosen.startswith(VIA)
    with tuning(relayout_winograd_min_macs=200):
        assert _plan((32, 56, 56, 64), (3, 3), 64, 64, "nhwc",
                     padding=1).forward.chosen == VIA + "numpy.winograd"


# ---- non-finite values: exactly the direct path's inf/NaN pattern


def _same_pattern(ours, ref, rtol):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["gy", "w"])
def test_non_finite_input_grad_pattern_equals_direct_path(dtype, where):
    x, w, _ = _data(dtype, 5, (9, 8), 1, 4, (5, 5))
    spec = ConvSpec.make(x.shape, w.shape, dtype=np.dtype(dtype).name)
    gy = np.random.default_rng(1).standard_normal((5, *spec.out, 4)).astype(dtype)
    if where == "gy":
        gy[0, 1, 1, 2], gy[2, 4, 0, 0], gy[4, 3, 3, 1] = np.inf, np.nan, -np.inf
    else:
        w[0, 0, 0, 1, 0], w[2, 3, 0, 2, 0] = -np.inf, np.nan
    xk, gk = _nhwc(x), _nhwc(gy)
    lay = Layout.of(DIMS, xk, gk)
    with tuning(**SMALL):
        chosen = R.select("input_grad", spec, lay, "numpy", arrays=(gk, w)).name
        assert chosen == VIA + "numpy.input_grad_bi"
        ours = R.backward(np, spec, lay, gk, xk, w, (True, False, False))[0]
        direct = _backward("numpy.col2im", spec, gk, xk, w, lay)
    _same_pattern(ours, direct, 10 * TOL[dtype])
    assert np.isnan(ours).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("where", ["x", "w"])
def test_non_finite_forward_pattern_equals_direct_path(dtype, where):
    # Winograd (and so its copy route) declines non-finite values: the direct path runs
    x, w, b = _data(dtype, 4, (7, 6), 5, 3, (3, 3))
    if where == "x":
        x[0, 1, 1, 1], x[2, 0, 5, 4], x[3, 6, 0, 0] = np.inf, np.nan, -np.inf
    else:
        w[1, 1, 2, 0, 0], w[0, 2, 4, 2, 0] = np.inf, np.nan
    xn = fa.FormattedArray(x, "BSSC")
    wf = fa.FormattedArray(w[..., 0], "SSCU")
    with tuning(**SMALL):
        with pytest.raises(ValueError, match="non-finite"):
            fa.conv(xn, wf, b, padding=1, algorithm={"forward": VIA + "numpy.winograd"})
        plan = fa.conv_plan(xn, wf, b, padding=1)
        ours = fa.conv(xn, wf, b, padding=1)
        direct = fa.conv(xn, wf, b, padding=1, algorithm={"forward": "numpy.gemm"})
    assert "non-finite" in _reason(plan.forward, VIA + "numpy.winograd")
    _same_pattern(ours.data, direct.data, 10 * TOL[dtype])
    _same_pattern(_cl(ours.data), ref_conv(x, w, b, before=1, after=1), 10 * TOL[dtype])
    assert np.isnan(np.asarray(ours.data)).any()


def test_via_canonical_refuses_an_entry_without_a_data_shaped_result():
    from fmtarray._kernels.conv._numpy.relayout import batch_innermost_worth, via_canonical
    from fmtarray._kernels.conv.registry import _by_name

    base = _by_name("numpy.winograd_weight_grad")
    with pytest.raises(ValueError, match=r"numpy.winograd_weight_grad.*\('forward',\)"):
        via_canonical(base, "domain", batch_innermost_worth)


def test_threads_give_bit_identical_results():
    """4 threads × 10 rounds of both copy routes at once (the copies share the workers)."""
    import threading

    x, w, b = _data(np.float32, 6, (12, 10), 8, 8, (3, 3))
    spec = ConvSpec.make(x.shape, w.shape, pad_before=1, pad_after=1, dtype="float32")
    gy = np.random.default_rng(2).standard_normal((6, *spec.out, 8)).astype(np.float32)
    xk, gk = _nhwc(x), _nhwc(gy)
    lay_f, lay_b = Layout.of(DIMS, xk), Layout.of(DIMS, xk, gk)

    def run():
        with tuning(**SMALL):
            y = R.forward(np, spec, lay_f, xk, w, b, force=VIA + "numpy.winograd")
            gx = _backward(VIA + "numpy.winograd_input_grad", spec, gk, xk, w, lay_b)
        return np.array(y), np.array(gx)

    ref = run()
    errors = []

    def work():
        for _ in range(10):
            got = run()
            if not all(np.array_equal(g, r) for g, r in zip(got, ref)):
                errors.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _rel_err(_cl(ref[0]), ref_conv(x, w, b, before=1, after=1)) <= 1e-5
