"""Convolution: kernels and ``fmtarray.conv`` against an independent direct-loop reference
(``conv_reference.py``) and torch, over every backend; geometry, padding forms and values,
groups, S+T, errors, bounded workspace, and gradients (finite differences, torch autograd)."""

from __future__ import annotations

import importlib.util
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels.conv import tuning
from fmtarray._kernels.conv.spec import same_padding
from fmtarray._kernels.pad import PAD_MODES
from kernel_calls import conv_backward, conv_forward

from conv_reference import make, numeric_grad, ref_conv
from test_numpy_algos import magnitudes, rel_err, selected

HAS_TORCH = importlib.util.find_spec("torch") is not None
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
VALUES = [0.0, -1.5, *PAD_MODES]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


# ---------------------------------------------------------------------------------------
# kernel configurations


@st.composite
def kernel_config(draw, max_d=3):
    d = draw(st.integers(1, max_d))
    small = d == 3
    k = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(d))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    pb = tuple(draw(st.integers(0, 3)) for _ in range(d))
    pa = tuple(draw(st.integers(0, 3)) for _ in range(d))
    value = draw(st.sampled_from(VALUES))
    sp = []
    for kk, dl, b, a in zip(k, dil, pb, pa):
        eff = (kk - 1) * dl + 1
        lo = max(1, eff - b - a)
        sp.append(draw(st.integers(lo, lo + (3 if small else 5))))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    fg = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return dict(d=d, k=k, dil=dil, stride=stride, pb=pb, pa=pa, value=value, sp=tuple(sp),
                groups=groups, cg=cg, fg=fg, n=n, dtype=dtype)


def kw_of(cfg):
    return dict(stride=cfg["stride"], dilation=cfg["dil"], pad_before=cfg["pb"],
                pad_after=cfg["pa"], pad_value=cfg["value"], groups=cfg["groups"])


def ref_of(cfg, x, w, b):
    return ref_conv(x, w, b, cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"], cfg["value"])


def _strided(a):
    """The same values as a batch-innermost strided view (like the canonical layout)."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)


@SETTINGS
@given(cfg=kernel_config())
def test_kernel_forward_numpy_and_portable(cfg):
    import array_api_compat.numpy as cnp
    import array_api_strict

    x, w, b = make(cfg)
    ref = ref_of(cfg, x, w, b)
    mag = magnitudes(x, w, None, (cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"],
                                  cfg["value"]), b)[0]
    dt = cfg["dtype"]
    tol = TOL[dt]
    variants = ((cnp, lambda a: a.astype(dt), None), (cnp, lambda a: _strided(a.astype(dt)), 0),
                (cnp, lambda a: _strided(a.astype(dt)), 10**6),
                (array_api_strict, lambda a: array_api_strict.asarray(a.astype(dt)), None))
    for ns, conv_in, bi in variants:
        # bi: channels-last (0) or batch-innermost (10**6) NumPy path for strided input
        with tuning(**({} if bi is None else {"bi_max_run": bi})):
            y = conv_forward(ns, conv_in(x), conv_in(w), conv_in(b), **kw_of(cfg))
        y = np.asarray(y)
        assert y.dtype == dt
        assert y.shape == ref.shape
        assert rel_err(y, ref, mag) <= tol


def _fd_directional(cfg, x, w, b, gy):
    """Directional derivatives of <conv(x, w), gy> along random directions (float64 FD)."""
    rng = np.random.default_rng(7)
    dx, dw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    e = 1e-6

    def f(xx, ww):
        return float((ref_of(cfg, xx, ww, None) * gy).sum())

    return dx, dw, (f(x + e * dx, w) - f(x - e * dx, w)) / (2 * e), (
        f(x, w + e * dw) - f(x, w - e * dw)) / (2 * e)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=kernel_config())
def test_kernel_backward_numpy_and_portable(cfg):
    """Kernel VJP: directional finite differences of the reference, NumPy and portable paths."""
    import array_api_compat.numpy as cnp
    import array_api_strict

    x, w, b = make(cfg)
    ref = ref_of(cfg, x, w, b)
    gy = np.random.default_rng(5).standard_normal(ref.shape)
    dx, dw, fx, fw = _fd_directional(cfg, x, w, b, gy)
    got = []
    for ns, conv_in in ((cnp, lambda a: a), (cnp, _strided), (array_api_strict, array_api_strict.asarray)):
        gx, gw, gb = (np.asarray(a) for a in conv_backward(ns, conv_in(gy), conv_in(x), conv_in(w),
                                                            **kw_of(cfg)))
        assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
        assert np.isclose((gx * dx).sum(), fx, rtol=1e-6, atol=1e-7)
        assert np.isclose((gw * dw).sum(), fw, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(gb, gy.reshape(-1, gb.size).sum(0), rtol=1e-12)
        got.append((gx, gw))
    for gx, gw in got[1:]:
        np.testing.assert_allclose(gx, got[0][0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gw, got[0][1], rtol=1e-10, atol=1e-12)


def test_kernel_needs_subset():
    import array_api_compat.numpy as cnp

    cfg = dict(d=2, k=(3, 2), dil=(1, 1), stride=(2, 1), pb=(1, 0), pa=(0, 1), value=0.0,
               sp=(6, 5), groups=1, cg=2, fg=3, n=2, dtype=np.float64)
    x, w, b = make(cfg)
    gy = np.ones((2, 3, 5, 3))
    gx, gw, gb = conv_backward(cnp, gy, x, w, **kw_of(cfg), needs=(False, True, False))
    assert gx is None and gb is None and gw.shape == w.shape


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("value", [0.0, "symmetric-exclude-edge"])
@pytest.mark.parametrize("groups,cg", [(1, 3), (2, 2), (4, 1)])
def test_tiled_and_chunked_paths(value, groups, cg, wide, monkeypatch):
    """Tiny workspace and tiles: row tiles inside a sample and many batch chunks give
    the same numbers (forward and backward, NumPy and portable). The compiled kernels
    are off: they neither tile nor chunk (tests/test_numba.py checks them)."""
    import array_api_compat.numpy as cnp
    import array_api_strict

    monkeypatch.setenv("FMTARRAY_NUMBA", "0")
    cfg = dict(d=2, k=(3, 2), dil=(1, 2), stride=(2, 1), pb=(1, 2), pa=(2, 0), value=value,
               sp=(9, 7), groups=groups, cg=cg, fg=2, n=5, dtype=np.float64)
    x, w, b = make(cfg)
    ref = ref_of(cfg, x, w, b)
    gy = np.random.default_rng(1).standard_normal(ref.shape)
    full = [np.asarray(a) for a in conv_backward(cnp, gy, x, w, **kw_of(cfg))]
    # batch-innermost path for the views; wide: big-weights mode (chunk-sized columns,
    # one GEMM per chunk split over the workers)
    small = dict(workspace_bytes=2000, tile_bytes=300, bi_max_run=10**6)
    if wide:
        small["wide_weight_bytes"] = 1
    with tuning(**small):
        if wide:
            assert selected("forward", x, w, **kw_of(cfg)) == ("numpy.gemm_wide" if cg > 1
                                                               else "numpy.depthwise")
        for ns, conv_in in ((cnp, lambda a: a), (cnp, _strided),
                            (array_api_strict, array_api_strict.asarray)):
            y = np.asarray(conv_forward(ns, conv_in(x), conv_in(w), conv_in(b), **kw_of(cfg)))
            assert rel_err(y, ref) < 1e-12
            got = conv_backward(ns, conv_in(gy), conv_in(x), conv_in(w), **kw_of(cfg))
            for a, e in zip(got, full):
                np.testing.assert_allclose(np.asarray(a), e, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("numpy_entries")
@tuning(workspace_bytes=2**20)
def test_workspace_is_bounded():
    """Extra memory of the NumPy path does not grow with the batch (tracemalloc)."""
    import array_api_compat.numpy as cnp

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 8, 8, 1)).astype(np.float32)
    peaks = []
    # both batches past the size where tiles (Tuning.tile_bytes per worker) saturate
    for n in (64, 256):
        xc = rng.standard_normal((16, 16, 8, n)).astype(np.float32)  # canonical SSCB
        x = np.moveaxis(xc, -1, 0)
        out_bytes = n * 16 * 16 * 8 * 4
        conv_forward(cnp, x, w, None, pad_before=1, pad_after=1)  # warm up the pool
        tracemalloc.start()
        conv_forward(cnp, x, w, None, pad_before=1, pad_after=1)
        gx, gw, _ = conv_backward(cnp, np.moveaxis(np.ones((16, 16, 8, n), np.float32), -1, 0), x,
                                  w, pad_before=1, pad_after=1)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peaks.append(peak - 2 * out_bytes)  # the output and the input gradient are results
    assert peaks[1] < 6 * 2**20, peaks
    assert peaks[1] < peaks[0] + 2**20, peaks


# ---------------------------------------------------------------------------------------
# the op over every backend


def _canon_ref(x_canon, fmt, w_kernel, b, conv_labels, **kw):
    """Reference for ``fa.conv`` written independently: canonical data -> channels-last
    loops -> canonical output (format gains C when missing)."""
    keys = []
    seen = {}
    for ch in fmt:
        keys.append((ch, seen.get(ch, 0)))
        seen[ch] = seen.get(ch, 0) + 1
    conv_keys = [("S", i) for i in range(fmt.count("S"))] + ([("T", 0)] if "T" in conv_labels else [])
    batch_keys = [k for k in keys if k[0] in "BT" and k not in conv_keys]
    has_c = "C" in fmt
    order = batch_keys + conv_keys + ([("C", 0)] if has_c else [])
    xk = np.transpose(x_canon, [keys.index(k) for k in order])
    bs = xk.shape[: len(batch_keys)]
    xk = xk.reshape((int(np.prod(bs)),) + xk.shape[len(batch_keys):] + (() if has_c else (1,)))
    y = ref_conv(xk, w_kernel, b, **kw)
    y = y.reshape(bs + y.shape[1:])
    ofmt = fmt if has_c else fa._format.canonicalize(fmt + "C")[0]
    okeys = []
    seen = {}
    for ch in ofmt:
        okeys.append((ch, seen.get(ch, 0)))
        seen[ch] = seen.get(ch, 0) + 1
    yk = batch_keys + conv_keys + [("C", 0)]
    return np.transpose(y, [yk.index(k) for k in okeys]), ofmt


OP_CASES = {
    # name: (format, canonical shape, weight kernel shape (*k, Cg, Fg, G), kwargs, weights_format)
    "2d-tblr-replicate": ("SSCB", (7, 6, 3, 2), (3, 2, 3, 4, 1),
                          dict(stride=(2, 1), dilation_factor=(1, 2), padding=(1, 2, 0, 1),
                               padding_value="replicate"), None),
    "1d-causal": ("SCB", (9, 2, 3), (3, 2, 2, 1), dict(padding="causal", dilation_factor=2), None),
    "3d-same": ("SSSCB", (5, 4, 3, 2, 2), (2, 3, 2, 2, 3, 1),
                dict(padding="same", stride=(2, 1, 1)), None),
    "s+t-same": ("SCBT", (6, 2, 2, 7), (3, 2, 2, 3, 1),
                 dict(padding="same", stride=2, padding_value="symmetric-include-edge"), "STCU"),
    "t-batchlike-groups": ("SSCBT", (5, 5, 4, 2, 3), (3, 3, 2, 3, 2),
                           dict(padding=1, padding_value="symmetric-exclude-edge"), "SSCUU"),
    "no-c": ("SSB", (6, 5, 2), (3, 3, 1, 2, 1), dict(padding=[1, 2]), None),
    "depthwise": ("SSCB", (6, 6, 4, 2), (3, 3, 1, 2, 4), dict(padding=1, padding_value=0.5), None),
}


@pytest.mark.parametrize("case", list(OP_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_op_backends(xp, case, dtype):
    fmt, shape, wshape, kwargs, wfmt = OP_CASES[case]
    rng = np.random.default_rng(11)
    xn = rng.standard_normal(shape)
    wn = rng.standard_normal(wshape)
    F = wshape[-2] * wshape[-1]
    bn = rng.standard_normal(F)
    w_user = wn[..., 0] if wshape[-1] == 1 and (wfmt is None or wfmt.count("U") == 1) else wn
    x = FormattedArray(xp.asarray(xn, dtype=dtype), fmt)
    y = fa.conv(x, xp.asarray(w_user, dtype=dtype), xp.asarray(bn, dtype=dtype),
                weights_format=wfmt, **kwargs)
    # reference geometry
    nconv = len(wshape) - 3
    ksz = wshape[:nconv]
    conv_labels = "S" * fmt.count("S") + ("T" if wfmt and "T" in wfmt else "")
    stride = kwargs.get("stride", 1)
    stride = (stride,) * nconv if isinstance(stride, int) else tuple(stride)
    dil = kwargs.get("dilation_factor", 1)
    dil = (dil,) * nconv if isinstance(dil, int) else tuple(dil)
    sp = [shape[i] for i, ch in enumerate(fmt) if ch == "S"] + (
        [shape[fmt.index("T")]] if "T" in conv_labels else [])
    p = kwargs.get("padding", 0)
    if p == "same":
        pads = [same_padding(n, k, s, d) for n, k, s, d in zip(sp, ksz, stride, dil)]
        before, after = [a for a, _ in pads], [b for _, b in pads]
    elif p == "causal":
        before, after = [(k - 1) * d for k, d in zip(ksz, dil)], [0] * nconv
    elif isinstance(p, int):
        before = after = [p] * nconv
    elif len(p) == 2 * nconv:
        before, after = list(p[0::2]), list(p[1::2])
    else:
        before = after = list(p)
    ref, ofmt = _canon_ref(xn, fmt, wn, bn, conv_labels, stride=stride, dilation=dil,
                           before=tuple(before), after=tuple(after),
                           value=kwargs.get("padding_value", 0.0))
    assert y.format == ofmt
    assert y.shape == ref.shape
    assert y.dtype == x.dtype
    assert str(y.device) == str(x.device)
    if xp.name == "dask":
        import dask.array as da

        assert isinstance(y.data, da.Array)
    assert rel_err(xp.to_numpy(y), ref) <= TOL[dtype]


def test_unformatted_with_data_format(xp):
    rng = np.random.default_rng(2)
    xn = rng.standard_normal((2, 3, 7, 6))  # B C S S
    wn = rng.standard_normal((3, 3, 3, 4))
    y = fa.conv(xp.asarray(xn), xp.asarray(wn), padding="same", data_format="BCSS")
    assert y.format == ""
    ref = fa.conv(FormattedArray(xn, "BCSS"), wn, padding="same")  # SSCB
    np.testing.assert_allclose(xp.to_numpy(y), np.transpose(ref.data, (3, 2, 0, 1)), rtol=1e-12)
    # unformatted FormattedArray input, missing C: C inserted after the last S
    y2 = fa.conv(FormattedArray(xp.asarray(xn[:, 0])), xp.asarray(wn[:, :, :1]), data_format="BSS")
    assert y2.format == "" and y2.shape == (2, 5, 4, 4)


def test_weights_and_bias_as_formatted_arrays():
    rng = np.random.default_rng(4)
    x = FormattedArray(rng.standard_normal((6, 5, 2, 3)), "SSCB")
    w = rng.standard_normal((3, 2, 2, 4))
    b = rng.standard_normal((1, 1, 4))
    base = fa.conv(x, w, b)
    # formatted weights (MATLAB dlconv: "SSCU"), given in another order
    wf = FormattedArray(np.transpose(w, (3, 2, 0, 1)), "UCSS")
    y = fa.conv(x, wf, FormattedArray(b))
    np.testing.assert_allclose(y.data, base.data, rtol=1e-12)
    # raw weights with weights_format in a non-canonical order
    y = fa.conv(x, np.transpose(w, (2, 0, 1, 3)), b.reshape(-1), weights_format="CSSU")
    np.testing.assert_allclose(y.data, base.data, rtol=1e-12)
    # scalar bias
    y = fa.conv(x, w, 0.25)
    np.testing.assert_allclose(y.data, fa.conv(x, w).data + 0.25, rtol=1e-12)


@pytest.mark.parametrize("value", list(VALUES[:1]) + list(PAD_MODES))
def test_seed_padding_through_conv(xp, value):
    """The seed's 3x3 examples padded by 2, reproduced exactly by conv with a 1x1 identity."""
    from test_pad import SEED_PADDED, SEED_X

    x = FormattedArray(xp.asarray(SEED_X, dtype=np.float32), "SS")
    y = fa.conv(x, xp.asarray(np.ones((1, 1, 1, 1), np.float32)), padding=2, padding_value=value)
    assert y.format == "SSC"
    np.testing.assert_array_equal(xp.to_numpy(y)[..., 0], np.array(SEED_PADDED[value], np.float32))


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (4, 2, 1), (3, 3, 2), (1, 2, 1), (5, 1, 1)])
def test_same_geometry(n, k, s, d):
    b, a = same_padding(n, k, s, d)
    eff = (k - 1) * d + 1
    assert (n + b + a - eff) // s + 1 == -(-n // s)  # ceil(in / stride)
    assert a - b in (0, 1)  # odd pixel after
    assert b + a == max((-(-n // s) - 1) * s + eff - n, 0)


def test_geometry_matlab_examples():
    x = FormattedArray(np.zeros((28, 28, 3, 1)), "SSCB")
    # 11x11 stride 4: floor((28 - 11) / 4) + 1 = 5; what does not fit is ignored
    assert fa.conv(x, np.zeros((11, 11, 3, 2)), stride=4).shape == (5, 5, 2, 1)
    # dilation: effective size (3-1)*2+1 = 5
    assert fa.conv(x, np.zeros((3, 3, 3, 2)), dilation_factor=2).shape == (24, 24, 2, 1)
    assert fa.conv(x, np.zeros((3, 3, 3, 2)), padding="same", stride=3).shape == (10, 10, 2, 1)
    assert fa.conv(x, np.zeros((3, 3, 3, 2)), padding=[1, 0]).shape == (28, 26, 2, 1)
    assert fa.conv(x, np.zeros((3, 3, 3, 2)), padding=[[1, 0], [2, 0]]).shape == (29, 26, 2, 1)


# ---------------------------------------------------------------------------------------
# torch


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=kernel_config(max_d=2), data=st.data())
def test_matches_torch(cfg, data):
    import torch
    import torch.nn.functional as F

    value = data.draw(st.sampled_from([0.0, "symmetric-exclude-edge", "replicate"]))
    cfg["value"] = value
    if value == "symmetric-exclude-edge":  # torch's reflect needs pad < size
        assume(all(max(b, a) < n for b, a, n in zip(cfg["pb"], cfg["pa"], cfg["sp"])))
    x, w, b = make(cfg)
    d = cfg["d"]
    # torch layouts: x (N, C, *sp); w (F, Cg, *k) with F = g*Fg + j
    tx = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    tw = torch.from_numpy(np.moveaxis(w, (-1, -2, -3), (0, 1, 2)).reshape(
        cfg["groups"] * cfg["fg"], cfg["cg"], *cfg["k"]).copy())
    tb = torch.from_numpy(b)
    pads = []
    for bb, aa in zip(reversed(cfg["pb"]), reversed(cfg["pa"])):
        pads += [bb, aa]
    mode = {0.0: "constant", "symmetric-exclude-edge": "reflect", "replicate": "replicate"}[value]
    tp = F.pad(tx, pads, mode=mode) if any(pads) else tx
    conv = F.conv1d if d == 1 else F.conv2d
    ref = conv(tp, tw, tb, stride=cfg["stride"], dilation=cfg["dil"], groups=cfg["groups"])
    ref = np.moveaxis(ref.numpy(), 1, -1)
    import array_api_compat.numpy as cnp
    import array_api_compat.torch as ct

    y = conv_forward(cnp, x, w, b, **kw_of(cfg))
    assert rel_err(y, ref) <= 1e-12
    yt = conv_forward(ct, torch.from_numpy(x), torch.from_numpy(w), tb, **kw_of(cfg))
    assert rel_err(yt.numpy(), ref) <= 1e-12


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.parametrize("groups,cg,stride,dil,pad", [(1, 3, 1, 1, 1), (2, 2, 2, 1, 2),
                                                     (4, 1, 1, 2, 0), (1, 2, (2, 3), (1, 2), 1)])
def test_gradients_match_torch_autograd(groups, cg, stride, dil, pad):
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 8, groups * cg, 2))  # SSCB
    w = rng.standard_normal((3, 2, cg, 3, groups))
    b = rng.standard_normal(3 * groups)

    def loss(xx, ww, bb):
        y = fa.conv(xx, ww, bb, stride=stride, dilation_factor=dil, padding=pad)
        r = FormattedArray._wrap(np.cos(np.arange(np.prod(y.shape))).reshape(y.shape), y.format)
        return fa.sum(y * r)

    gx, gw, gb = fa.grad(loss, argnums=(0, 1, 2))(FormattedArray(x, "SSCB"), FormattedArray(w),
                                                  FormattedArray(b))
    tx = torch.tensor(np.transpose(x, (3, 2, 0, 1)), requires_grad=True)
    tw = torch.tensor(np.moveaxis(w, (-1, -2, -3), (0, 1, 2)).reshape(3 * groups, cg, 3, 2),
                      requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = F.conv2d(tx, tw, tb, stride=stride, dilation=dil, padding=pad, groups=groups)
    r = torch.tensor(np.transpose(np.cos(np.arange(ty.numel())).reshape(
        ty.shape[2], ty.shape[3], ty.shape[1], ty.shape[0]), (3, 2, 0, 1)))
    (ty * r).sum().backward()
    np.testing.assert_allclose(gx.data, np.transpose(tx.grad.numpy(), (2, 3, 1, 0)), rtol=1e-10)
    twg = np.moveaxis(tw.grad.numpy().reshape(groups, 3, cg, 3, 2), (0, 1, 2), (-1, -2, -3))
    np.testing.assert_allclose(gw.data, twg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb.data, tb.grad.numpy(), rtol=1e-10)


# ---------------------------------------------------------------------------------------
# gradients vs float64 central finite differences (through fa.grad)


@st.composite
def op_config(draw):
    kind = draw(st.sampled_from(["SSCB", "SCB", "SCBT-ST", "SSCBT", "SSB"]))
    value = draw(st.sampled_from(VALUES))
    groups = draw(st.sampled_from([1, 2])) if kind != "SSB" else 1
    cg = draw(st.integers(1, 2))
    fg = draw(st.integers(1, 2))
    nconv = 1 if kind == "SCB" else 2
    k = tuple(draw(st.integers(1, 3)) for _ in range(nconv))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nconv))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nconv))
    padding = draw(st.one_of(st.just("same"), st.integers(0, 2),
                             st.lists(st.integers(0, 2), min_size=2 * nconv, max_size=2 * nconv)))
    return dict(kind=kind, value=value, groups=groups, cg=cg, fg=fg, k=k, stride=stride, dil=dil,
                padding=padding)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=op_config())
def test_gradients_finite_differences(cfg):
    rng = np.random.default_rng(9)
    C = cfg["groups"] * cfg["cg"]
    kind = cfg["kind"]
    fmt, wfmt = kind.split("-")[0], ("STCUU" if kind.endswith("-ST") else None)
    sizes = {"S": 5, "C": C, "B": 2, "T": 4}
    shape = []
    for ch in fmt:
        shape.append(sizes[ch])
    if fmt == "SSB":
        cfg["cg"] = 1
    x = rng.standard_normal(shape)
    w = rng.standard_normal((*cfg["k"], cfg["cg"], cfg["fg"], cfg["groups"]))
    b = rng.standard_normal(cfg["fg"] * cfg["groups"])
    kwargs = dict(stride=cfg["stride"], dilation_factor=cfg["dil"], padding=cfg["padding"],
                  padding_value=cfg["value"], weights_format=wfmt)
    try:
        probe = fa.conv(FormattedArray(x, fmt), w, b, **kwargs)
    except ValueError:
        assume(False)
    r = np.sin(np.arange(np.prod(probe.shape)) + 0.3).reshape(probe.shape)

    def loss_np(xx, ww, bb):
        y = fa.conv(FormattedArray(xx, fmt), ww, bb, **kwargs)
        return float((y.data * r).sum())

    def loss(xx, ww, bb):
        y = fa.conv(xx, ww, bb, **kwargs)
        return fa.sum(y * FormattedArray._wrap(r, y.format))

    gx, gw, gb = fa.grad(loss, argnums=(0, 1, 2))(FormattedArray(x, fmt), FormattedArray(w),
                                                  FormattedArray(b))
    fx = numeric_grad(lambda v: loss_np(v, w, b), x)
    fw = numeric_grad(lambda v: loss_np(x, v, b), w)
    fb = numeric_grad(lambda v: loss_np(x, w, v), b)
    for g, f in ((gx.data, fx), (gw.data, fw), (gb.data, fb)):
        assert g.shape == f.shape
        assert np.linalg.norm(g - f) <= 1e-6 * max(np.linalg.norm(f), 1e-12)


def test_gradients_on_backends(xp):
    """The VJP runs on every backend (device kept, Dask lazy) and agrees with NumPy."""
    rng = np.random.default_rng(1)
    xn = rng.standard_normal((6, 2, 2, 5))  # SCBT, convolve S and T
    wn = rng.standard_normal((3, 2, 2, 3))
    bn = rng.standard_normal(3)
    kwargs = dict(padding="same", stride=(1, 2), padding_value="symmetric-exclude-edge",
                  weights_format="STCU")

    def loss(x, w, b):
        y = fa.conv(x, w, b, **kwargs)
        return fa.sum(y * y)

    args = [FormattedArray(xp.asarray(xn), "SCBT"), FormattedArray(xp.asarray(wn)),
            FormattedArray(xp.asarray(bn))]
    grads = fa.grad(loss, argnums=(0, 1, 2))(*args)
    ref = fa.grad(loss, argnums=(0, 1, 2))(FormattedArray(xn, "SCBT"), FormattedArray(wn),
                                           FormattedArray(bn))
    for g, r, a in zip(grads, ref, args):
        assert g.format == a.format and str(g.device) == str(a.device)
        if xp.name == "dask":
            import dask.array as da

            assert isinstance(g.data, da.Array)
        np.testing.assert_allclose(xp.to_numpy(g), r.data, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# errors


X4 = FormattedArray(np.zeros((6, 6, 4, 2), np.float32), "SSCB")
W4 = np.zeros((3, 3, 4, 2), np.float32)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fa.conv(X4, np.zeros((3, 4, 2), np.float32)), ValueError, r"rank 3.*rank 4"),
    (lambda: fa.conv(X4, np.zeros((3, 3, 3, 2), np.float32)), ValueError,
     r"channel mismatch.*3 input channels.*has 4"),
    (lambda: fa.conv(X4, np.zeros((3, 3, 1, 2, 3), np.float32)), ValueError,
     r"groups=3.*does not divide the 4 input channels"),
    (lambda: fa.conv(X4, W4, stride=0), ValueError, r"stride=0.*>= 1"),
    (lambda: fa.conv(X4, W4, stride=(1, 2, 3)), ValueError, r"stride=\(1, 2, 3\).*2 positive"),
    (lambda: fa.conv(X4, W4, dilation_factor=(1, -1)), ValueError, r"dilation_factor.*>= 1"),
    (lambda: fa.conv(X4, W4, stride=1.5), ValueError, r"stride=1.5.*not an integer"),
    (lambda: fa.conv(X4, W4, padding=-1), ValueError, r"padding=-1.*non-negative"),
    (lambda: fa.conv(X4, W4, padding=1.5), ValueError, r"padding=1.5.*not an integer"),
    (lambda: fa.conv(X4, W4, padding=[1, 2, 3]), ValueError, r"padding=\[1, 2, 3\].*fits no"),
    (lambda: fa.conv(X4, W4, padding="full"), ValueError, r"padding='full'.*'same'"),
    (lambda: fa.conv(X4, W4, padding="causal"), ValueError, r"causal.*exactly one convolved dim"),
    (lambda: fa.conv(X4, np.zeros((7, 3, 4, 2), np.float32)), ValueError,
     r"output size \(0, 4\) < 1.*input size \(6, 6\)"),
    (lambda: fa.conv(X4, W4, padding_value="mirror"), ValueError,
     r"padding_value='mirror'.*symmetric-include-edge.*replicate"),
    (lambda: fa.conv(FormattedArray(np.zeros((6, 6, 4, 2), np.float32), "SSCU"), W4), ValueError,
     r"'SSCU'.*'U' dims"),
    (lambda: fa.conv(FormattedArray(np.zeros((6, 6, 4, 2), np.int32), "SSCB"),
                     W4.astype(np.int32)), TypeError, r"int32.*float32 or float64"),
    (lambda: fa.conv(FormattedArray(np.zeros((6, 4, 2), bool), "SCB"), W4[0]), TypeError,
     r"bool"),
    (lambda: fa.conv(np.zeros((6, 6, 4, 2), np.float32), W4), ValueError, r"unformatted.*data_format"),
    (lambda: fa.conv(X4, W4, data_format="SSCB"), ValueError, r"only for unformatted"),
    (lambda: fa.conv(FormattedArray(np.zeros((4, 2), np.float32), "CB"), W4), ValueError,
     r"'CB'.*1 to 3 S dims"),
    (lambda: fa.conv(X4, W4, np.zeros(3, np.float32)), ValueError, r"bias of shape \(3,\).*2"),
    (lambda: fa.conv(X4, np.zeros((3, 3, 4, 2), np.float32), weights_format="STCU"), ValueError,
     r"no T dim"),
    (lambda: fa.conv(X4, W4, weights_format="SSCB"), ValueError, r"weights_format='SSCB'"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_mixed_libraries_and_devices():
    import array_api_strict

    with pytest.raises(TypeError, match="cannot mix array libraries"):
        fa.conv(X4, array_api_strict.asarray(W4))
    x = FormattedArray(array_api_strict.asarray(np.zeros((6, 6, 4, 2)),
                                                device=array_api_strict.Device("device1")), "SSCB")
    with pytest.raises(ValueError, match="different devices"):
        fa.conv(x, array_api_strict.asarray(np.zeros((3, 3, 4, 2))))
