"""The compiled (Numba) NumPy convolution entries: each one, forced by name, against the
direct-loop reference over its domain (forward, both gradients, float32 and float64,
inf/NaN patterns), which entry runs with and without ``FMTARRAY_NUMBA=0``, and the
reasons they decline. Skipped where numba cannot be imported (the NumPy entries serve
there, and the rest of the suite checks them)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import array_api_compat.numpy as cnp

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels import conv as K
from fmtarray._kernels.conv import _numba
from fmtarray._kernels.conv.registry import _by_name
from fmtarray._kernels.conv.spec import Layout
from kernel_calls import conv_backward, conv_forward, nsc_dims, spec_of
from test_numpy_algos import (TOL, _arrays, _kw, config, laid_out, magnitudes, ref_conv_vjp,
                              rel_err)

from conv_reference import ref_conv

needs_numba = pytest.mark.skipif(os.environ.get("FMTARRAY_NUMBA") == "0"
                                 or _numba.unavailable() is not None,
                                 reason="numba unavailable or FMTARRAY_NUMBA=0")

#: entry -> (ops it serves, strategy of configurations inside its domain)
DOMAINS = {
    "numba.depthwise": (("forward", "input_grad", "weight_grad"), config(
        d=(1, 2, 2, 3), G=(2, 3, 5, 17, 40), Cg=1, Fg=(1, 1, 2, 3), N=(1, 2, 3),
        stride=(1, 2, 3), dil=(1, 2), layouts=("cl", "cl", "bi", "li", "cf"))),
    "numba.direct": (("forward", "weight_grad"), config(
        d=(1, 2, 2, 3), G=(1, 1, 2, 3), Cg=(1, 2, 3, 5), Fg=(1, 2, 3, 4, 5, 7), N=(1, 2, 3),
        stride=(1, 2, 3), dil=(1, 2, 3), layouts=("cl", "cl", "bi", "li", "cf"),
        # the reduction in blocks: pieces of one run, or a few runs at a time
        tunings=({}, {"direct_weight_block_bytes": 1},
                 {"direct_weight_block_bytes": 3 * 64 * 8},
                 # zero-padded input read in place (border groups) however small
                 {"direct_in_place_ratio": 0},
                 {"direct_in_place_ratio": 0, "direct_wgrad_split_bytes": 0}))),
    "numba.winograd": (("forward",), config(
        d=2, k=[(3, 3)], stride=1, dil=(1, 1, 2, 3), G=1, Cg=(1, 2, 5, 17, 40),
        Fg=(1, 3, 16, 17, 70),
        pads=(0, 1, 2, 3), values=(0.0, -1.5), layouts="cl",
        tunings=({"numba_winograd_min_cf": 0},
                 # per-item transformed filters, the tiles in chunks of one or a few
                 {"numba_winograd_min_cf": 0, "numba_winograd_u_bytes": 0},
                 {"numba_winograd_min_cf": 0, "numba_winograd_u_bytes": 0,
                  "numba_winograd_max_v_bytes": 1},
                 {"numba_winograd_min_cf": 0, "numba_winograd_u_bytes": 0,
                  "numba_winograd_max_v_bytes": 5000},
                 {"numba_winograd_min_cf": 0, "numba_winograd_run_bytes": 1}))),
    "numba.winograd_input_grad": (("input_grad",), config(
        d=2, k=[(3, 3)], stride=1, dil=(1, 1, 2, 3), G=1, Cg=(1, 2, 5, 17, 40),
        Fg=(1, 3, 16, 17, 70),
        pads=(0, 1, 2, 3), values=(0.0, -1.5), layouts=("cl", "cl", "bi", "cf"),
        tunings=({"numba_winograd_min_cf": 0},
                 {"numba_winograd_min_cf": 0, "numba_winograd_u_bytes": 0},
                 {"numba_winograd_min_cf": 0, "numba_winograd_u_bytes": 0,
                  "numba_winograd_max_v_bytes": 5000},
                 {"numba_winograd_min_cf": 0, "numba_winograd_run_bytes": 3000}))),
    "numba.winograd_weight_grad": (("weight_grad",), config(
        d=2, k=[(3, 3)], stride=1, dil=(1, 1, 2, 3), G=1, Cg=(1, 2, 5, 17, 40),
        Fg=(1, 3, 16, 17, 70), pads=(0, 1, 2, 3), values=(0.0, -1.5), layouts="cl",
        tunings=({"numba_winograd_min_cf": 0, "numba_winograd_wgrad_min_cf": 0},
                 {"numba_winograd_min_cf": 0, "numba_winograd_wgrad_min_cf": 0,
                  "numba_winograd_run_bytes": 3000}))),
    "numba.direct_input_grad": (("input_grad",), config(
        d=(1, 2, 2, 3), G=(1, 1, 2, 3), Cg=(1, 2, 3, 5, 8, 9), Fg=(1, 2, 3, 4, 5, 7),
        N=(1, 2, 3), stride=(1, 2, 3), dil=(1, 2, 3), layouts=("cl", "cl", "bi", "li", "cf"),
        # the cotangent read in place (border groups) however small, or always padded
        tunings=({}, {"direct_weight_block_bytes": 1}, {"direct_input_grad_in_place_ratio": 0},
                 {"direct_input_grad_in_place_ratio": 1 << 40}))),
}


def test_every_numba_entry_has_a_domain():
    names = [a.name for a in K.algorithms("numpy") if a.name.startswith("numba.")]
    assert sorted(names) == sorted(DOMAINS)
    numpy_names = [a.name for a in K.algorithms("numpy") if a.library == "numpy"]
    assert numpy_names[:len(names)] == names  # ahead of the NumPy entries


@needs_numba
@pytest.mark.parametrize("name", list(DOMAINS))
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_entry_matches_reference(name, data):
    ops, strategy = DOMAINS[name]
    cfg = data.draw(strategy, label="config")
    x, w, b = _arrays(cfg)
    kw = _kw(cfg)
    args = (cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"], cfg["value"])
    tol = TOL[cfg["dtype"]]
    xl = laid_out(x, cfg["layout"], cfg["reverse"])
    spec = spec_of(cnp, x, w, **kw)
    gy = np.random.default_rng(3).standard_normal((spec.N, *spec.out, spec.F))
    gy = gy.astype(cfg["dtype"])
    gyl = laid_out(gy, cfg["layout"], cfg["reverse"])
    with K.tuning(**cfg["tuning"]):  # (a domain may depend on the tuning)
        assume(_by_name(name).applies(spec, Layout.of(nsc_dims(spec.d), xl, gyl)) is None)
    with_bias = data.draw(st.booleans(), label="bias")
    with K.tuning(**cfg["tuning"]):
        _check_entry(name, ops, cfg, data, x, w, b, xl, gy, gyl, kw, args, tol, with_bias)
    np.testing.assert_array_equal(xl, x)


def _check_entry(name, ops, cfg, data, x, w, b, xl, gy, gyl, kw, args, tol, with_bias):
    mags = magnitudes(x, w, gy, args, b if with_bias else None)
    if "forward" in ops:
        y = conv_forward(cnp, xl, w, b if with_bias else None, force=name, **kw)
        assert y.dtype == cfg["dtype"]
        assert rel_err(y, ref_conv(x, w, b if with_bias else None, *args), mags[0]) <= tol
    refs = ref_conv_vjp(x, w, gy, *args)
    needs = ("input_grad" in ops, "weight_grad" in ops)
    got = conv_backward(cnp, gyl, xl, w, needs=(*needs, False), force=name, **kw)[:2]
    for g, ref, mag, need in zip(got, refs, mags[1:], needs):
        assert (g is None) == (not need)
        if need:
            assert g.dtype == cfg["dtype"] and rel_err(g, ref, mag) <= tol
    if all(needs):
        one = data.draw(st.sampled_from([0, 1]), label="single")
        single = conv_backward(cnp, gyl, xl, w, needs=(one == 0, one == 1, False),
                               force=name, **kw)
        assert single[1 - one] is None
        np.testing.assert_array_equal(single[one], got[one])


def _nhwc_case(n=2, hw=(7, 6), c=4, m=1, k=(3, 3), dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *hw, c)).astype(dtype)
    w = rng.standard_normal((*k, 1, m, c)).astype(dtype)
    return x, w


def _torch_reference(x, w, gy, stride, pad):
    """``(y, gx, gw)`` by torch autograd (float64) on NHWC ``x``, MATLAB ``w``
    ``(kh, kw, Cg, Fg, G)``."""
    torch = pytest.importorskip("torch")
    kh, kw, cg, fg, g = w.shape
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(np.ascontiguousarray(w.transpose(4, 3, 2, 0, 1)).reshape(
        g * fg, cg, kh, kw), requires_grad=True)
    y = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad, groups=g)
    y.backward(torch.tensor(gy.transpose(0, 3, 1, 2)))
    gw = tw.grad.numpy().reshape(g, fg, cg, kh, kw).transpose(3, 4, 2, 1, 0)
    return (y.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1), gw)


@needs_numba
@pytest.mark.parametrize("name,groups", [("numba.depthwise", 4), ("numba.direct", 1),
                                         ("numba.direct", 2)])
@pytest.mark.parametrize("where", ["x", "w", "gy"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_pattern_is_torchs(name, groups, where, bad):
    """One inf or NaN in the input, the weights or the cotangent: the result and both
    gradients have inf/NaN exactly where torch autograd puts them (zero padding 1,
    stride 2 along the rows: some taps read only padding, some inputs no tap reads)."""
    x, _ = _nhwc_case(m=2)
    cg = 4 // groups
    w = np.random.default_rng(2).standard_normal((3, 3, cg, 2 if cg == 1 else 3, groups))
    kw = dict(stride=(2, 1), dilation=(1, 1), pad_before=(1, 1), pad_after=(1, 1),
              pad_value=0.0)
    spec = spec_of(cnp, x, w, **kw)
    gy = np.random.default_rng(1).standard_normal((spec.N, *spec.out, spec.F))
    {"x": x, "w": w, "gy": gy}[where][(0, 1, 1, 1) if where != "w" else (0, 1, 0, 1, groups - 1)] = bad
    refs = _torch_reference(x, w, gy, (2, 1), (1, 1))
    with np.errstate(invalid="ignore", over="ignore"):
        y = conv_forward(cnp, x, w, None, force=name, **kw)
        force = name if name != "numba.direct" else {
            "input_grad": "numba.direct_input_grad", "weight_grad": "numba.direct"}
        gx, gw, _ = conv_backward(cnp, gy, x, w, needs=(True, True, False), force=force, **kw)
    for got, ref in zip((y, gx, gw), refs):
        assert got.shape == ref.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(np.asarray(got)[fin], ref[fin], rtol=1e-12, atol=1e-12)


def _plan(fmt, data, weights, **kw):
    return fa.conv_plan(FormattedArray(data, fmt), weights, **kw).chosen()


@needs_numba
def test_channels_innermost_depthwise_selects_the_compiled_kernel():
    x, w = _nhwc_case(n=4, hw=(9, 9), c=8, dtype=np.float32)
    assert set(_plan("BSSC", x, w, padding=1).values()) == {"numba.depthwise"}
    # canonical batch-innermost data: copied channels-last for one filter per channel
    # (measured b16 28×28 128: forward 2.6 vs 3.6 ms, both gradients 6.9 vs 9.3 ms with
    # numpy.depthwise_bi), the NumPy entry with several
    xs = np.ascontiguousarray(x.transpose(1, 2, 3, 0))
    assert set(_plan("SSCB", xs, w, padding=1).values()) == {"numba.depthwise"}
    w2 = _nhwc_case(n=4, hw=(9, 9), c=8, m=2, dtype=np.float32)[1]
    assert set(_plan("SSCB", xs, w2, padding=1).values()) == {"numpy.depthwise"}


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups,fg", [(1, 40), (2, 17), (3, 70)])
def test_weight_gradient_split_by_filter_blocks(dtype, groups, fg):
    """A big weight gradient is split over the workers by filter vectors (here forced with
    direct_wgrad_split_bytes=0): the same values as the reference and, to rounding (the
    sums run in another order), as the split by positions."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 7, 6, 2 * groups)).astype(dtype)
    w = rng.standard_normal((3, 2, 2, fg, groups)).astype(dtype)
    kw = dict(stride=(2, 1), dilation=(1, 1), pad_before=(1, 0), pad_after=(0, 1),
              pad_value=0.0)
    spec = spec_of(cnp, x, w, **kw)
    gy = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(dtype)
    with K.tuning(direct_wgrad_split_bytes=0):
        gw = conv_backward(cnp, gy, x, w, needs=(False, True, False), force="numba.direct",
                           **kw)[1]
    ref = ref_conv_vjp(x, w, gy, (2, 1), (1, 1), (1, 0), (0, 1), 0.0)[1]
    assert rel_err(gw, ref) <= TOL[dtype]
    with K.tuning(direct_wgrad_split_bytes=1 << 40):
        by_positions = conv_backward(cnp, gy, x, w, needs=(False, True, False),
                                     force="numba.direct", **kw)[1]
    assert rel_err(gw, by_positions) <= TOL[dtype]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups,cg,fg,pad", [(1, 70, 70, 0), (2, 3, 130, 1), (1, 5, 90, 1)])
def test_forward_and_input_grad_split_by_filter_blocks(monkeypatch, dtype, groups, cg, fg, pad):
    """Big weights send the forward and the input gradient to the workers by blocks of
    filter vectors, each over all the positions (forced here: direct_filter_split_bytes=0,
    eight blocks as on a pool): the reference's values, and the same bits as the split by
    positions (each output is the same running sum)."""
    from fmtarray._kernels.conv._numba import direct as dr
    from fmtarray._kernels.conv._numba._simd import NV_MAX

    items = []

    def recording(real):
        return lambda fn, it, *a, **k: items.append(list(it)) or real(fn, it, *a, **k)

    for name in ("parallel", "parallel_into"):
        monkeypatch.setattr(dr, name, recording(getattr(dr, name)))
    monkeypatch.setattr(dr, "dynamic_blocks", lambda: 8)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 6, 5, groups * cg)).astype(dtype)
    w = rng.standard_normal((3, 2, cg, fg, groups)).astype(dtype)
    b = rng.standard_normal(groups * fg).astype(dtype)
    args = ((1, 2), (1, 1), (pad, 1), (pad, 0), 0.0)
    kw = dict(stride=args[0], dilation=args[1], pad_before=args[2], pad_after=args[3],
              pad_value=0.0)
    spec = spec_of(cnp, x, w, **kw)
    gy = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(dtype)
    force = {"forward": "numba.direct", "input_grad": "numba.direct_input_grad"}
    got = {}
    for split in (0, 1 << 40):
        items.clear()
        with K.tuning(direct_filter_split_bytes=split, direct_in_place_ratio=0,
                      direct_input_grad_in_place_ratio=0, direct_copy_min_cg=1):
            y = conv_forward(cnp, x, w, b, force="numba.direct", **kw)
            gx = conv_backward(cnp, gy, x, w, needs=(True, False, False), force=force,
                               **kw)[0]
        got[split] = (y, gx)
        # the phases over positions, whose items are bundles of (group, q0, q1, va, vb)
        # (not the weights' transposing copy, by taps)
        vranges = {s[3:] for phase in items for it in phase if isinstance(it[0], tuple)
                   for s in it}
        lanes = dr._width(np.dtype(dtype), fg)[0]
        if split == 0:  # the forward's filters (fg) in blocks of NV_MAX vectors
            assert (0, NV_MAX) in vranges and len(vranges) > 1
        else:
            assert all(va == 0 for va, _ in vranges)
            assert (0, -(-fg // lanes)) in vranges
    refs = (ref_conv(x, w, b, *args), ref_conv_vjp(x, w, gy, *args)[0])
    for a, ref in zip(got[0], refs):
        assert rel_err(a, ref) <= TOL[dtype]
    for a, c in zip(got[0], got[1 << 40]):
        np.testing.assert_array_equal(a, c)


@needs_numba
def test_dense_and_grouped_select_the_compiled_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9, 9, 8)).astype(np.float32)
    xs = np.ascontiguousarray(x.transpose(1, 2, 3, 0))  # canonical memory order
    direct = {"forward": "numba.direct", "input_grad": "numba.direct_input_grad",
              "weight_grad": "numba.direct"}
    for w in (rng.standard_normal((3, 3, 8, 6)), rng.standard_normal((3, 3, 4, 3, 2))):
        w = w.astype(np.float32)
        assert _plan("BSSC", x, w, padding=1, stride=2) == direct
    w = rng.standard_normal((3, 3, 8, 6)).astype(np.float32)
    assert _plan("SSCB", xs, w, padding=1) == direct  # few channels: copied channels-last
    with K.tuning(direct_copy_min_cg=9):  # the input gradient of 8 channels: not copied
        assert _plan("SSCB", xs, w, padding=1)["input_grad"] != "numba.direct_input_grad"
    with K.tuning(direct_copy_max_cf=47):  # 8·6 channels × filters: not copied
        plan = fa.conv_plan(FormattedArray(xs, "SSCB"), w, padding=1)
        assert "numba.direct" not in plan.chosen().values()
        assert "direct_copy_max_cf (47)" in str(plan)
        assert _plan("BSSC", x, w, padding=1) == direct  # channels innermost: any size
    # where numpy.winograd applies (here with its size thresholds lowered), 8·8 channels ×
    # filters above direct_max_cf go to the Winograd and BLAS entries
    w = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    with K.tuning(direct_max_cf=63, winograd_min_total_cols=1):
        plan = fa.conv_plan(FormattedArray(x, "BSSC"), w, padding=1)
        assert "numba.direct" not in plan.chosen().values()
        assert "direct_max_cf (63) where numpy.winograd applies" in str(plan)
    with K.tuning(direct_max_cf=63, direct_input_grad_min_positions=0):
        assert _plan("BSSC", x, w, padding=1) == direct  # Winograd declines this case
    with K.tuning(direct_max_cf=64, winograd_min_total_cols=1):
        assert _plan("BSSC", x, w, padding=1) == direct
    # big weights over few positions: the input gradient goes to the BLAS entries
    with K.tuning(direct_max_cf=63, direct_input_grad_min_positions=4 * 9 * 9 + 1):
        plan = fa.conv_plan(FormattedArray(x, "BSSC"), w, padding=1)
        assert plan.chosen()["input_grad"] != "numba.direct_input_grad"
        assert "direct_input_grad_min_positions (325)" in str(plan)
    with K.tuning(direct_max_cf=63, direct_input_grad_min_positions=4 * 9 * 9):
        assert _plan("BSSC", x, w, padding=1) == direct


@needs_numba
def test_big_weight_gradients_go_to_blas():
    """One group's weights of ``direct_wgrad_max_bytes`` and more: numba.direct serves
    the forward but not the weight gradient (numpy.gemm_wide's GEMM, same values to
    rounding); forcing it names the threshold; a grouped one stays compiled."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 5, 40)).astype(np.float32)
    w = rng.standard_normal((3, 3, 40, 24)).astype(np.float32)  # 34560 bytes
    kw = dict(padding=1, stride=2)
    with K.tuning(direct_wgrad_max_bytes=34560, wide_weight_bytes=34560):
        plan = fa.conv_plan(FormattedArray(x, "BSSC"), w, **kw)
        assert plan.chosen()["forward"] == "numba.direct"
        assert plan.chosen()["weight_grad"] == "numpy.gemm_wide"
        assert "direct_wgrad_max_bytes (34560)" in str(plan)
        gy = rng.standard_normal((2, 3, 3, 24)).astype(np.float32)
        kk = dict(stride=2, pad_before=1, pad_after=1)
        got = conv_backward(cnp, gy, x, w[..., None], needs=(False, True), **kk)[1]
        with pytest.raises(ValueError, match="direct_wgrad_max_bytes"):
            conv_backward(cnp, gy, x, w[..., None], needs=(False, True), force="numba.direct",
                          **kk)
        wg = w.reshape(3, 3, 20, 24, 2)[:, :, :, :12]  # two groups: the compiled kernel
        assert _plan("BSSC", x, wg, **kw)["weight_grad"] == "numba.direct"
    with K.tuning(direct_wgrad_max_bytes=34561):
        assert _plan("BSSC", x, w, **kw)["weight_grad"] == "numba.direct"
        forced = conv_backward(cnp, gy, x, w[..., None], needs=(False, True),
                               force="numba.direct", **kk)[1]
    ref = ref_conv_vjp(x, w[..., None], gy, (2, 2), (1, 1), (1, 1), (1, 1), 0.0)[1]
    for gw in (got, forced):
        assert np.abs(gw - ref).max() <= 1e-5 * (np.abs(ref).max() + 1)


def test_fmtarray_numba_0_turns_the_compiled_kernels_off(monkeypatch):
    x, w = _nhwc_case(n=4, hw=(9, 9), c=8, dtype=np.float32)
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")
    plan = fa.conv_plan(FormattedArray(x, "BSSC"), w, padding=1)
    assert set(plan.chosen().values()) == {"numpy.depthwise"}
    assert "FMTARRAY_NUMBA=0" in str(plan)
    with pytest.raises(ValueError, match="FMTARRAY_NUMBA=0"):
        fa.conv(FormattedArray(x, "BSSC"), w, padding=1, algorithm="numba.depthwise")


def test_fmtarray_numba_bad_value_names_the_variable(monkeypatch):
    x, w = _nhwc_case(n=4, hw=(9, 9), c=8, dtype=np.float32)
    monkeypatch.setenv("FMTARRAY_NUMBA", "yes")
    with pytest.raises(ValueError, match=r"FMTARRAY_NUMBA='yes'.*expected 0"):
        fa.conv(FormattedArray(x, "BSSC"), w, padding=1)


@pytest.mark.parametrize("name,shape,wshape,fmt,reason", [
    ("numba.depthwise", (2, 5, 5, 4), (3, 3, 4, 4), "BSSC", "channel-wise only"),
    ("numba.depthwise", (5, 5, 4, 2), (3, 3, 1, 2, 4), "SSCB", "not channels-innermost"),
    ("numba.depthwise", (2, 4, 4, 4, 3), (2, 2, 2, 1, 2, 3), "BSSSC", "1 or 2 only"),
    ("numba.direct", (2, 5, 5, 4), (3, 3, 1, 1, 4), "BSSC", "numba.depthwise's domain"),
    ("numba.direct", (2, 2, 1024, 2), (1, 1, 1024, 1024), "SSCB", "direct_copy_max_cf"),
])
def test_forced_outside_the_domain_names_the_reason(name, shape, wshape, fmt, reason):
    x = FormattedArray(np.zeros(shape), fmt)
    with pytest.raises(ValueError, match=reason):
        fa.conv(x, np.zeros(wshape), algorithm=name)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d,stride,dil,pb,pa", [
    (2, (1, 1), (1, 1), (1, 1), (1, 1)),
    (2, (2, 1), (1, 2), (2, 0), (1, 3)),
    (1, (3,), (2,), (5,), (6,)),      # windows wholly in the padding: the bias alone
    (3, (1, 2, 1), (1, 1, 2), (0, 1, 2), (2, 1, 0)),
    (2, (1, 1), (1, 1), (0, 0), (0, 0)),
])
def test_depthwise_reads_channels_last_input_in_place(monkeypatch, dtype, d, stride, dil, pb,
                                                      pa):
    """One filter per channel, channels-last input with whole vectors of channels and zero
    padding: the forward and the weight gradient read the input where it lies (output
    positions grouped by their taps inside the input) and the input gradient the
    cotangent, the reference's values; both gradients in one pass (the input gradient's
    plan) unless a window lies wholly in the padding, the input gradient with the bits of
    the input gradient alone; a ±inf weight or cotangent keeps the padded copy's NaN
    pattern (0 · inf at padded taps)."""
    from fmtarray._kernels.conv._numba import _simd
    from fmtarray._kernels.conv._numba import depthwise as dw

    from fmtarray._kernels.conv._numba import plans

    calls = []
    for mod, fn in ((dw, "_border_forward"), (dw, "_border_weight_grad"),
                    (plans, "input_grad_border_plan")):
        orig = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda *a, _o=orig, _n=fn: calls.append(_n) or _o(*a))
    both = dw._simd_gradients
    monkeypatch.setattr(dw, "_simd_gradients", lambda *a: calls.append(
        "_simd_gradients") or (lambda r: calls.append("one pass" if r else "none") or r)(both(*a)))
    c = 2 * _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, *(5, 6, 4)[:d], c)).astype(dtype)
    w = rng.standard_normal((*(3, 2, 3)[:d], 1, 1, c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    kw = dict(stride=stride, dilation=dil, pad_before=pb, pad_after=pa, pad_value=0.0)
    spec = spec_of(cnp, x, w, **kw)
    gy = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(dtype)
    args = (stride, dil, pb, pa, 0.0)
    y = conv_forward(cnp, x, w, b, force="numba.depthwise", **kw)
    assert rel_err(y, ref_conv(x, w, b, *args)) <= TOL[dtype]
    gx, gw, _ = conv_backward(cnp, gy, x, w, needs=(True, True, False),
                              force="numba.depthwise", **kw)
    refs = ref_conv_vjp(x, w, gy, *args)
    assert rel_err(gx, refs[0]) <= TOL[dtype] and rel_err(gw, refs[1]) <= TOL[dtype]
    seq = [c for i, c in enumerate(calls) if not i or calls[i - 1] != c]  # (the plan's
    wholly_in_padding = len(plans.border_plan(spec, c)[1]) > 0           # rows)
    assert seq == (["_border_forward", "_simd_gradients", "none", "input_grad_border_plan",
                    "_border_weight_grad"] if wholly_in_padding else
                   ["_border_forward", "_simd_gradients", "input_grad_border_plan", "one pass"])
    gx1 = conv_backward(cnp, gy, x, w, needs=(True, False, False), force="numba.depthwise",
                        **kw)[0]
    assert gx.tobytes() == gx1.tobytes()
    if not any(pb + pa):
        return
    w2 = w.copy()
    w2[(0,) * d + (0, 0, 1)] = np.inf
    gy2 = gy.copy()
    gy2[(0,) * (d + 1) + (2,)] = -np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        refs = (ref_conv(x, w2, None, *args), ref_conv_vjp(x, w2, gy, *args)[1],
                ref_conv_vjp(x, w, gy2, *args)[1])
        gx2, gw2 = conv_backward(cnp, gy2, x, w, needs=(True, True, False),
                                 force="numba.depthwise", **kw)[:2]  # (one pass, then the
        got = (conv_forward(cnp, x, w2, None, force="numba.depthwise", **kw),  # weight
               conv_backward(cnp, gy, x, w2, needs=(False, True, False),   # gradient again)
                             force="numba.depthwise", **kw)[1], gw2)
        # (the reference's input gradient is exact for finite cotangents only)
        assert gx2.tobytes() == conv_backward(cnp, gy2, x, w, needs=(True, False, False),
                                              force="numba.depthwise", **kw)[0].tobytes()
    for g, r in zip(got, refs):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
        np.testing.assert_array_equal(np.isinf(g), np.isinf(r))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d,groups,cg,fg,stride,dil,pb,pa", [
    (2, 1, 3, 5, (1, 1), (1, 1), (1, 1), (1, 1)),       # window rows as runs
    (2, 2, 3, 17, (2, 1), (1, 2), (2, 0), (1, 3)),      # one run per tap, some windows
    (2, 2, 3, 17, (2, 1), (1, 2), (2, 0), (1, 1)),      # all padding; and none
    (1, 1, 4, 3, (3,), (2,), (5,), (6,)),               # windows wholly in the padding
    (3, 1, 2, 40, (1, 2, 1), (1, 1, 1), (0, 1, 2), (2, 1, 0)),
    (3, 3, 2, 2, (2, 1, 1), (2, 1, 2), (1, 1, 1), (1, 1, 1)),
])
def test_direct_reads_zero_padded_input_in_place(monkeypatch, dtype, d, groups, cg, fg, stride,
                                                 dil, pb, pa):
    """numba.direct's forward and weight gradient on channels-last input with zero
    padding read the input where it lies (output positions grouped by their taps inside
    it, each group with its rows of the weights): the reference's values; a ±inf weight
    (forward) or cotangent (weight gradient) keeps the padded copy's NaN pattern (0 · inf
    at padded taps); the input gradient reads the cotangent in place."""
    from fmtarray._kernels.conv._numba import direct as dr

    calls = []
    for fn in ("_border_run", "_border_weight_grad", "_input_grad_in_place"):
        orig = getattr(dr, fn)
        monkeypatch.setattr(dr, fn, lambda *a, _o=orig, _n=fn: calls.append(_n) or _o(*a))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, *(6, 5, 4)[:d], groups * cg)).astype(dtype)
    w = rng.standard_normal((*(3, 2, 3)[:d], cg, fg, groups)).astype(dtype)
    b = rng.standard_normal(groups * fg).astype(dtype)
    kw = dict(stride=stride, dilation=dil, pad_before=pb, pad_after=pa, pad_value=0.0)
    args = (stride, dil, pb, pa, 0.0)
    spec = spec_of(cnp, x, w, **kw)
    gy = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(dtype)
    force = {"forward": "numba.direct", "weight_grad": "numba.direct",
             "input_grad": "numba.direct_input_grad"}
    refs = ref_conv_vjp(x, w, gy, *args)
    with K.tuning(direct_in_place_ratio=0, direct_input_grad_in_place_ratio=0):
        y = conv_forward(cnp, x, w, b, force="numba.direct", **kw)
        assert rel_err(y, ref_conv(x, w, b, *args)) <= TOL[dtype]
        gx, gw, _ = conv_backward(cnp, gy, x, w, needs=(True, True, False), force=force, **kw)
        assert rel_err(gx, refs[0]) <= TOL[dtype] and rel_err(gw, refs[1]) <= TOL[dtype]
        # outputs reading only padding: the weight gradient keeps the copy
        wholly_padding = len(dr.border_plan(spec_of(cnp, x, w, **kw))[1]) > 0
        assert sorted(calls) == sorted(["_border_run", "_input_grad_in_place"] + (
            [] if wholly_padding else ["_border_weight_grad"]))
        calls.clear()
        w[(0,) * d + (0, 1, 0)] = np.inf
        gy[(0,) * (d + 1) + (1,)] = -np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            y = conv_forward(cnp, x, w, None, force="numba.direct", **kw)
            gw = conv_backward(cnp, gy, x, w, needs=(False, True, False), force=force, **kw)[1]
            refs = (ref_conv(x, w, None, *args), ref_conv_vjp(x, w, gy, *args)[1])
    assert "_border_run" not in calls
    for got, ref in zip((y, gw), refs):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))


@needs_numba
@pytest.mark.parametrize("bias", [True, False])
def test_direct_forward_where_every_window_reads_only_padding(bias):
    """A 1×1 stride-2 filter over a size-1 dim padded by one before: the one output
    position along it reads the padding only, so every output is the bias (zero
    without one); read in place there is no group of positions left to run (found by
    hypothesis: it raised an IndexError)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 1, 2, 3)).astype(np.float32)
    w = rng.standard_normal((1, 1, 1, 3, 2, 1)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32) if bias else None
    args = ((1, 2, 1), (1, 1, 1), (0, 1, 0), (0, 0, 0), 0.0)
    kw = dict(stride=args[0], dilation=args[1], pad_before=args[2], pad_after=args[3],
              pad_value=0.0)
    with K.tuning(direct_in_place_ratio=0):
        y = conv_forward(cnp, x, w, b, force="numba.direct", **kw)
    ref = ref_conv(x, w, b, *args)
    np.testing.assert_array_equal(np.asarray(y), ref.astype(np.float32))
    assert np.asarray(y).shape == (2, 2, 1, 2, 2)
    np.testing.assert_array_equal(np.asarray(y)[0, 0, 0, 0], b if bias else 0.0)


@needs_numba
@pytest.mark.parametrize("cg,fg,groups,copied", [
    (16, 16, 1, True),   # whole vectors of filters: both passes read the one copy
    (8, 16, 4, True),    # grouped
    (3, 5, 1, True),     # the input gradient reads it in place (cotangent ≫ weights)
    (40, 40, 1, False),  # neither would: each pass keeps its own padded/packed copy
])
def test_both_direct_gradients_share_one_channels_last_cotangent(cg, fg, groups, copied):
    """A cotangent not stored channels-last (batch innermost, as canonical data holds
    it) is copied channels-last once for numba.direct's weight gradient and
    numba.direct_input_grad, and both read that copy: the reference's values."""
    algos = {a.name: a for a in K.algorithms("numpy")}
    share = algos["numba.direct"].cotangent
    assert share is algos["numba.direct_input_grad"].cotangent is not None
    calls = []

    def spy(spec, layout, gy, x, w):
        out = share(spec, layout, gy, x, w)
        calls.append(out[0] is not gy)
        if out[0] is not gy:  # channels-last C-contiguous, and the layout says so
            assert out[0].shape == gy.shape and out[0].flags.c_contiguous
            assert out[1].gy_memory.startswith("N") and out[1].gy_memory.endswith("C")
        return out

    rng = np.random.default_rng(3)
    n, hw = (3, (7, 6)) if copied else (1, (3, 3))
    x = rng.standard_normal((n, *hw, groups * cg)).astype(np.float32)
    w = rng.standard_normal((3, 3, cg, fg, groups)).astype(np.float32)
    kw = dict(stride=1, dilation=1, pad_before=(1, 1), pad_after=(1, 0), pad_value=0.0)
    spec = spec_of(cnp, x, w, **kw)
    gy_cl = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(np.float32)
    gy = np.moveaxis(np.ascontiguousarray(np.moveaxis(gy_cl, 0, -1)), -1, 0)  # batch innermost
    force = {"weight_grad": "numba.direct", "input_grad": "numba.direct_input_grad"}
    for name in force.values():
        object.__setattr__(algos[name], "cotangent", spy)
    try:
        gx, gw, _ = conv_backward(cnp, gy, x, w, needs=(True, True, False), force=force, **kw)
    finally:
        for name in force.values():
            object.__setattr__(algos[name], "cotangent", share)
    assert calls == [copied]
    refs = ref_conv_vjp(x, w, gy, (1, 1), (1, 1), (1, 1), (1, 0), 0.0)
    assert rel_err(gx, refs[0]) <= TOL[np.float32] and rel_err(gw, refs[1]) <= TOL[np.float32]
    # a cotangent stored channels-last already is handed over as it is
    out = share(spec, K.Layout.of(nsc_dims(2), x, gy_cl), gy_cl, x, w)
    assert out[0] is gy_cl


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cg,in_place", [(5, False), (16, False), (16, True), (7, True)])
def test_weight_gradient_of_two_filter_vectors(dtype, cg, in_place):
    """Two vectors of filters per tile (32 float32 / 16 float64 filters): the tile sums
    ``WGRAD_BLOCK[2]`` window offsets at a time, fewer than the forward's ``BLOCK[2]``
    (see ``_simd``); window rows of 3 taps × ``cg`` channels that are (48) and are not
    (15, 21) whole numbers of blocks, by position blocks and on the padded copy or in
    place, against the reference."""
    from fmtarray._kernels.conv._numba import _simd

    lanes = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    fg = 2 * lanes
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 9, 13, cg)).astype(dtype)
    w = rng.standard_normal((3, 3, cg, fg, 1)).astype(dtype)
    kw = dict(stride=(1, 1), dilation=(1, 1), pad_before=(1, 1), pad_after=(1, 1),
              pad_value=0.0)
    spec = spec_of(cnp, x, w, **kw)
    gy = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(dtype)
    ratio = 0 if in_place else 1 << 40
    with K.tuning(direct_in_place_ratio=ratio, direct_wgrad_split_bytes=1 << 40):
        gw = conv_backward(cnp, gy, x, w, needs=(False, True, False), force="numba.direct",
                           **kw)[1]
    ref = ref_conv_vjp(x, w, gy, (1, 1), (1, 1), (1, 1), (1, 1), 0.0)[1]
    assert gw.shape == ref.shape
    assert rel_err(gw, ref) <= TOL[dtype]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cg,fg,stride,dil,pb,pa,block", [
    (3, 5, (1, 1), (1, 1), (1, 1), (1, 1), None),       # 3×3 p1: 9 classes
    (24, 40, (2, 1), (2, 1), (2, 0), (1, 3), None),     # strides, row dilation, uneven
    (16, 33, (1, 2), (1, 1), (3, 1), (0, 2), 512),      # runs summed in pieces
    (5, 7, (1, 1), (1, 1), (4, 0), (0, 0), 300),        # windows wholly in the padding
])
def test_padded_forward_skips_the_zero_padding(monkeypatch, dtype, cg, fg, stride, dil, pb,
                                               pa, block):
    """numba.direct's forward over a padded copy (weights too big to read the input in
    place) splits its positions by the window rows and offsets inside the input
    (:func:`plans.span_plan`), all on the same weights: the reference's values, with
    bias and without, the reduction in blocks or not, and the input gradient's over the
    padded cotangent; a ±inf weight keeps every product (0 · inf at the padding is NaN)
    and the reference's NaN pattern."""
    from fmtarray._kernels.conv._numba import direct as dr

    calls = []
    orig = dr.span_plan
    monkeypatch.setattr(dr, "span_plan", lambda s: calls.append(s) or orig(s))
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 6, 7, cg)).astype(dtype)
    w = rng.standard_normal((3, 4, cg, fg, 1)).astype(dtype)
    b = rng.standard_normal(fg).astype(dtype)
    kw = dict(stride=stride, dilation=dil, pad_before=pb, pad_after=pa, pad_value=0.0)
    args = (stride, dil, pb, pa, 0.0)
    tune = dict(direct_in_place_ratio=10**9, direct_input_grad_in_place_ratio=10**9)
    if block:
        tune["direct_weight_block_bytes"] = block
    spec = spec_of(cnp, x, w, **kw)
    gy = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(dtype)
    with K.tuning(**tune):
        for bias in (b, None):
            y = conv_forward(cnp, x, w, bias, force="numba.direct", **kw)
            assert rel_err(y, ref_conv(x, w, bias, *args)) <= TOL[dtype]
        assert len(calls) == 2
        gx = conv_backward(cnp, gy, x, w, needs=(True, False, False),
                           force={"input_grad": "numba.direct_input_grad"}, **kw)[0]
        assert rel_err(gx, ref_conv_vjp(x, w, gy, *args)[0]) <= TOL[dtype]
        w[1, 0, 0, 1, 0] = np.inf
        with np.errstate(invalid="ignore", over="ignore"):
            y = conv_forward(cnp, x, w, None, force="numba.direct", **kw)
            ref = ref_conv(x, w, None, *args)
    assert len(calls) == 2
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
