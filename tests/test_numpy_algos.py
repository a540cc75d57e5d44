"""Every registered NumPy convolution entry, forced by name, against the direct-loop
reference over its applicability domain (forward, input gradient and weight gradient,
float32 and float64); which entry the registry selects for representative cases; and
the reason a forced entry gives outside its domain.

Each entry's domain is a hypothesis strategy below (sizes, strides, dilation, padding
forms and values, groups, memory layouts, and the :func:`~fmtarray._kernels.conv.tuning`
settings that widen the domain to small problems or cut the work into tiny tiles)."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import array_api_compat.numpy as cnp

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels import conv as K
from fmtarray._kernels.conv import tuning
from fmtarray._kernels.conv._numpy import _runtime
from fmtarray._kernels.conv.registry import _by_name
from fmtarray._kernels.conv.spec import Layout
from fmtarray._kernels.pad import PAD_MODES
from kernel_calls import conv_backward, conv_forward, nsc_dims, spec_of

from conv_reference import ref_conv, ref_pad

TOL = {np.float32: 1e-5, np.float64: 1e-12}
VALUES = [0.0, -1.5, *PAD_MODES]


# ---------------------------------------------------------------------------------------
# helpers (also used by test_conv.py and test_winograd.py)


def selected(op, x, w, gy=None, force=None, **kw):
    """Name of the NumPy entry the registry picks for ``op`` on channels-last ``x``
    (``(N, *sp, C)``, any strides) and, for the gradients, the cotangent ``gy``
    (default: dense in ``x``'s memory order)."""
    spec = spec_of(cnp, x, w, **kw)
    dims = nsc_dims(spec.d)
    if op == "forward":
        layout, arrays = Layout.of(dims, x), (x, w)
    elif gy is None:
        layout, arrays = Layout.of(dims, x).with_dense_gy((spec.N, *spec.out, spec.F)), None
    else:
        layout = Layout.of(dims, x, gy)
        arrays = (gy, w) if op == "input_grad" else (gy, x)
    return K.select(op, spec, layout, "numpy", force=force, arrays=arrays).name


def ref_conv_vjp(x, w, gy, stride, dilation, before, after, value):
    """Exact VJP of :func:`ref_conv` by direct loops (float64): scatter into the padded
    input, then the adjoint of the padding as the transpose of the padding matrix."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    gy = np.asarray(gy, dtype=np.float64)
    d = x.ndim - 2
    k = w.shape[:d]
    cg, fg, g = w.shape[d:]
    xp = ref_pad(x, before, after, tuple(range(1, d + 1)), value)
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    out = gy.shape[1:-1]
    for pos in itertools.product(*(range(o) for o in out)):
        for grp in range(g):
            gyv = gy[(slice(None),) + pos + (slice(grp * fg, (grp + 1) * fg),)]  # (n, fg)
            for off in itertools.product(*(range(kk) for kk in k)):
                idx = tuple(p * s + o * dl for p, s, o, dl in zip(pos, stride, off, dilation))
                sl = (slice(None),) + idx + (slice(grp * cg, (grp + 1) * cg),)
                wm = w[off + (slice(None), slice(None), grp)]  # (cg, fg)
                gxp[sl] += gyv @ wm.T
                gw[off + (slice(None), slice(None), grp)] += xp[sl].T @ gyv
    gx = gxp
    for ax in range(d):
        n = x.shape[ax + 1]
        lin = value if isinstance(value, str) else 0.0  # the linear part of the padding
        pm = ref_pad(np.eye(n), (before[ax],), (after[ax],), (0,), lin)  # (n+b+a, n)
        gx = np.moveaxis(np.tensordot(pm.T, np.moveaxis(gx, ax + 1, 0), axes=1), 0, ax + 1)
    return gx, gw


def rel_err(y, ref, mag=None):
    """The largest error relative to the largest reference value, or to the largest of
    ``mag``: each value's sum of absolute terms (:func:`magnitudes`), the scale of a
    float sum's rounding where its terms cancel to near zero."""
    y = np.asarray(y, dtype=np.float64)
    scale = np.abs(ref if mag is None else mag)
    return float(np.max(np.abs(y - ref)) / max(np.max(scale), 1e-30)) if ref.size else 0.0


def magnitudes(x, w, gy, args, b=None):
    """The reference forward and gradients of ``|x|``, ``|w|``, ``|gy|`` (and ``|b|``,
    ``|pad value|``): per value the sum of its terms' magnitudes. A one-value output
    (or input gradient) summed from terms that cancel is only accurate relative to
    these: a wrong or missing term still moves it by a term's size."""
    value = args[-1]
    a = (*args[:-1], abs(value) if isinstance(value, (int, float)) else value)
    y = ref_conv(np.abs(x), np.abs(w), None if b is None else np.abs(b), *a)
    if gy is None:  # the forward's only
        return (y,)
    return (y, *ref_conv_vjp(np.abs(x), np.abs(w), np.abs(gy), *a))


def memory_order(layout, d):
    """Dims of a channels-last ``(N, *sp, C)`` array from the outermost to the innermost
    in memory: ``"cl"`` channels-last, ``"bi"`` batch innermost (canonical ``S…S C B``:
    the ``(C, N)`` values of a position contiguous), ``"li"`` the last convolved dim
    innermost (canonical ``S C B T`` over S and T), ``"cf"`` channels first (NCHW)."""
    return {"cl": tuple(range(d + 2)), "bi": tuple(range(1, d + 2)) + (0,),
            "li": tuple(range(1, d)) + (d + 1, 0, d),
            "cf": (0, d + 1) + tuple(range(1, d + 1))}[layout]


def laid_out(a, layout, reverse=False):
    """The values of ``a`` stored in ``layout``'s memory order (``reverse``: the first
    convolved dim stored backwards, a negative stride)."""
    order = memory_order(layout, a.ndim - 2)
    r = np.ascontiguousarray(a.transpose(order)).transpose(np.argsort(order))
    if reverse:
        r = np.flip(np.ascontiguousarray(np.flip(r, 1).transpose(order)).transpose(
            np.argsort(order)), 1)
    np.testing.assert_array_equal(r, a)
    return r


# ---------------------------------------------------------------------------------------
# the domains


def _one(draw, v):
    return draw(st.sampled_from(v)) if isinstance(v, (list, tuple)) else v


@st.composite
def config(draw, d=(1, 2, 2, 3), k=None, stride=(1, 2), stride_last=None, dil=(1, 2),
           pads=(0, 1, 2), values=tuple(VALUES), G=(1, 2, 3), Cg=(1, 2, 3), Fg=(1, 2, 3),
           N=(1, 2, 3), layouts=("cl", "bi", "li", "cf"), tunings=({},)):
    """A convolution (``cfg`` dict) drawn from the given choices; ``k``: list of filter
    shapes (default: per dim from 1-3, 1-2 in 3-D)."""
    d = _one(draw, d)
    if k is None:
        k = tuple(draw(st.sampled_from([1, 2, 3] if d < 3 else [1, 2])) for _ in range(d))
    else:
        k = draw(st.sampled_from(k))
        d = len(k)
    stride = tuple(_one(draw, stride) for _ in range(d))
    if stride_last is not None:
        stride = stride[:-1] + (stride_last,)
    dil = tuple(_one(draw, dil) for _ in range(d))
    pb = tuple(_one(draw, pads) for _ in range(d))
    pa = tuple(_one(draw, pads) for _ in range(d))
    sp = []
    for kk, dl, b, a in zip(k, dil, pb, pa):
        lo = max(1, (kk - 1) * dl + 1 - b - a)
        sp.append(lo + draw(st.sampled_from([0, 1, 3, 5] if d < 3 else [0, 1, 2])))
    return dict(d=d, k=k, stride=stride, dil=dil, pb=pb, pa=pa, value=_one(draw, values),
                sp=tuple(sp), groups=_one(draw, G), cg=_one(draw, Cg), fg=_one(draw, Fg),
                n=_one(draw, N), layout=(lay := _one(draw, layouts)),
                reverse=draw(st.booleans()) and (lay != "li" or d > 1),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                tuning=draw(st.sampled_from(list(tunings))))


WINO = dict(d=2, k=[(3, 3)], stride=1, G=1, Cg=(8, 9), Fg=(8, 10), N=(4, 5), dil=(1, 2, 3),
            pads=(0, 1, 2, 3), values=(0.0, -1.5), layouts="bi")
WINO_T = {"winograd_min_total_cols": 1}
FLAT_T = dict(flat_channels=(1, 32), flat_min_n=2, flat_min_row=1)
TINY = dict(tile_bytes=200, workspace_bytes=1500, depthwise_tile_bytes=64,
            depthwise_wgrad_tile_bytes=64, copy_block=16)

#: entry -> (ops it serves, strategy of configurations inside its domain)
DOMAINS = {
    "numpy.winograd": (("forward",), config(**WINO, tunings=(
        WINO_T, dict(WINO_T, winograd_block_bytes=1),  # one tile per block
        dict(WINO_T, winograd_wide_u_bytes=1, workspace_bytes=20000),  # wide chunks
        dict(WINO_T, workspace_bytes=8000)))),  # part of the batch per block
    "numpy.batch_innermost": (("forward",), config(G=1, N=(2, 3, 5), layouts="bi", tunings=(
        {"bi_max_run": 10**6}, {"bi_max_run": 10**6, "tile_bytes": 100}))),
    "numpy.depthwise_bi": (("forward", "input_grad", "weight_grad"), config(
        G=(2, 3, 4), Cg=1, Fg=1, N=(2, 3), layouts="bi", tunings=(
            {}, {"depthwise_wgrad_tile_bytes": 64}))),
    "numpy.depthwise": (("forward", "input_grad", "weight_grad"), config(
        G=(2, 3), Cg=1, Fg=(1, 2), tunings=({}, TINY))),
    "numpy.flat_shift": (("input_grad", "weight_grad"), config(
        d=2, stride=1, G=1, values=(0.0, -1.5), Cg=(1, 2, 3), Fg=(1, 2, 4), N=(2, 3),
        layouts="bi", tunings=(FLAT_T, dict(FLAT_T, flat_tile=7)))),
    "numpy.winograd_weight_grad": (("weight_grad",), config(**WINO, tunings=(
        WINO_T, dict(WINO_T, winograd_block_bytes=1), dict(WINO_T, workspace_bytes=8000)))),
    "numpy.last_innermost": (("forward", "weight_grad"), config(
        G=1, stride_last=1, layouts="li", tunings=({"li_min_run": 1},))),
    "numpy.input_grad_bi": (("input_grad",), config(
        G=1, Cg=(1, 2), Fg=(3, 4), N=(2, 3), layouts="bi", tunings=({}, {"tile_bytes": 100}))),
    "numpy.winograd_input_grad": (("input_grad",), config(**dict(
        WINO, values=tuple(VALUES)), tunings=(WINO_T, dict(WINO_T, winograd_block_bytes=1)))),
    "numpy.last_innermost_input_grad": (("input_grad",), config(
        G=1, stride=1, values=(0.0, -1.5), layouts="li", tunings=({"li_min_run": 1},))),
    "numpy.gemm_wide": (("forward", "weight_grad"), config(tunings=(
        {"wide_weight_bytes": 1}, {"wide_weight_bytes": 1, "workspace_bytes": 1500}))),
    "numpy.gemm": (("forward", "weight_grad"), config(tunings=({}, TINY))),
    "numpy.grad_as_conv": (("input_grad",), config(stride=1, tunings=({}, TINY))),
    "numpy.col2im": (("input_grad",), config(tunings=({}, TINY))),
}


def test_every_numpy_entry_has_a_domain():
    names = [a.name for a in K.algorithms("numpy") if a.name.startswith("numpy.")]
    assert sorted(names) == sorted(DOMAINS)
    for name in names:
        a = _by_name(name)
        assert set(a.ops) == set(DOMAINS[name][0]), name
        assert a.domain


def _arrays(cfg):
    rng = np.random.default_rng(abs(hash((cfg["sp"], cfg["k"], cfg["cg"]))) % 2**32)
    dt = cfg["dtype"]
    C, F = cfg["groups"] * cfg["cg"], cfg["groups"] * cfg["fg"]
    x = rng.standard_normal((cfg["n"], *cfg["sp"], C)).astype(dt)
    w = rng.standard_normal((*cfg["k"], cfg["cg"], cfg["fg"], cfg["groups"])).astype(dt)
    b = rng.standard_normal(F).astype(dt)
    return x, w, b


def _kw(cfg):
    return dict(stride=cfg["stride"], dilation=cfg["dil"], pad_before=cfg["pb"],
                pad_after=cfg["pa"], pad_value=cfg["value"])


@pytest.mark.parametrize("name", list(DOMAINS))
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_entry_matches_reference(name, data):
    ops, strategy = DOMAINS[name]
    cfg = data.draw(strategy, label="config")
    x, w, b = _arrays(cfg)
    kw = _kw(cfg)
    args = (cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"], cfg["value"])
    tol = TOL[cfg["dtype"]]
    xl = laid_out(x, cfg["layout"], cfg["reverse"])
    with tuning(**cfg["tuning"]):
        spec = spec_of(cnp, x, w, **kw)
        gy = np.random.default_rng(3).standard_normal((spec.N, *spec.out, spec.F))
        gy = gy.astype(cfg["dtype"])
        gyl = laid_out(gy, cfg["layout"], cfg["reverse"])
        layout = Layout.of(nsc_dims(spec.d), xl, gyl)
        # the strategy stays inside the domain but for rare edges (e.g. a cotangent of
        # one column for the last-dim-innermost input gradient)
        assume(_by_name(name).applies(spec, layout if ops != ("forward",) else
                                      Layout.of(nsc_dims(spec.d), xl)) is None)
        mags = magnitudes(x, w, gy, args, b)
        if "forward" in ops:
            y = conv_forward(cnp, xl, w, b, force=name, **kw)
            assert y.dtype == cfg["dtype"]
            assert rel_err(y, ref_conv(x, w, b, *args), mags[0]) <= tol
        grads = [op for op in ops if op != "forward"]
        if not grads:
            return
        gx_ref, gw_ref = ref_conv_vjp(x, w, gy, *args)
        needs = ("input_grad" in grads, "weight_grad" in grads, False)
        gx, gw, _ = conv_backward(cnp, gyl, xl, w, needs=needs, force={op: name for op in grads},
                                  **kw)
        if len(grads) == 2:  # the fused call, and each gradient on its own
            one = data.draw(st.sampled_from(grads), label="single")
            single = conv_backward(cnp, gyl, xl, w, needs=(one == "input_grad",
                                                          one == "weight_grad", False),
                                   force={one: name}, **kw)
            i = 0 if one == "input_grad" else 1
            assert single[1 - i] is None
            np.testing.assert_allclose(single[i], (gx, gw)[i], rtol=tol, atol=tol)
    if needs[0]:
        assert gx.dtype == cfg["dtype"] and gx.shape == x.shape
        assert rel_err(gx, gx_ref, mags[1]) <= tol
    if needs[1]:
        assert gw.dtype == cfg["dtype"] and gw.shape == w.shape
        assert rel_err(gw, gw_ref, mags[2]) <= tol
    # the inputs were only read
    np.testing.assert_array_equal(xl, x)


# ---------------------------------------------------------------------------------------
# outside the domains: forcing an entry is a ValueError naming the reason


def _case(n=3, sp=(6, 6), c=2, k=(3, 3), f=3, g=1, layout="cl", dtype=np.float64):
    rng = np.random.default_rng(0)
    x = laid_out(rng.standard_normal((n, *sp, c * g)).astype(dtype), layout)
    w = rng.standard_normal((*k, c, f, g)).astype(dtype)
    return x, w


OUTSIDE = [
    # name, op, case kwargs, conv kwargs, reason
    ("numpy.winograd", "forward", dict(n=4, c=8, f=8, k=(3, 2), layout="bi"), {}, "3×3"),
    ("numpy.winograd", "forward", dict(n=4, c=8, f=8, layout="cl"), {}, "not innermost"),
    ("numpy.batch_innermost", "forward", dict(c=1), {}, "batch is not innermost"),
    ("numpy.batch_innermost", "forward", dict(c=3, layout="bi"), {}, "bi_max_run"),
    ("numpy.depthwise_bi", "forward", dict(c=2, g=2, f=1, layout="bi"), {}, "one channel and one"),
    ("numpy.depthwise_bi", "forward", dict(c=1, g=3, f=1), {}, "contiguous run"),
    ("numpy.depthwise", "weight_grad", dict(c=2), {}, "channel-wise only"),
    ("numpy.flat_shift", "input_grad", dict(layout="bi", c=8, f=8, n=16), dict(stride=2),
     "stride"),
    ("numpy.flat_shift", "weight_grad", dict(layout="bi", c=8, f=8, n=4), {}, "flat_min_n"),
    ("numpy.flat_shift", "forward", dict(layout="bi"), {}, "does not compute the forward"),
    ("numpy.winograd_weight_grad", "weight_grad", dict(n=4, c=8, f=8), {}, "not innermost"),
    ("numpy.last_innermost", "forward", dict(c=2), {}, "not innermost"),
    ("numpy.last_innermost", "forward", dict(c=2, layout="li"), dict(stride=(1, 2)),
     "stride 2 along the last"),
    ("numpy.input_grad_bi", "input_grad", dict(c=4, f=3, layout="bi"), {}, "input channels >="),
    ("numpy.input_grad_bi", "input_grad", dict(n=8, sp=(24, 24), c=8, f=16, layout="bi"), {},
     "winograd_weight_grad applies"),
    ("numpy.winograd_input_grad", "input_grad", dict(n=4, c=8, f=8, layout="bi"),
     dict(stride=2), "stride"),
    ("numpy.last_innermost_input_grad", "input_grad", dict(layout="li"),
     dict(pad_value="replicate"), "constant padding only"),
    ("numpy.gemm_wide", "forward", {}, {}, "wide_weight_bytes"),
    ("numpy.gemm", "input_grad", {}, {}, "does not compute the input_grad"),
    ("numpy.grad_as_conv", "input_grad", {}, dict(stride=(2, 1)), "stride"),
    ("numpy.col2im", "weight_grad", {}, {}, "does not compute the weight_grad"),
]


@pytest.mark.parametrize("name,op,case,kw,reason", OUTSIDE)
def test_forced_outside_domain_names_the_reason(name, op, case, kw, reason):
    x, w = _case(**case)
    with pytest.raises(ValueError, match=f"algorithm='{name}' cannot run this {op}.*{reason}"):
        selected(op, x, w, force=name, **kw)
    assert selected(op, x, w, **kw) != name


@pytest.mark.parametrize("name", list(DOMAINS))
def test_numpy_entries_decline_input_dilation(name):
    x, w = _case(n=4, c=8, f=8, layout="bi")
    op = DOMAINS[name][0][0]
    with pytest.raises(ValueError, match="input dilation"):
        selected(op, x, w, force=name, lhs_dilation=2)
    assert selected(op, x, w, lhs_dilation=2) == "portable.im2col"
    y = conv_forward(cnp, x, w, None, lhs_dilation=(2, 1))
    assert y.shape == (4, 9, 4, 8)


# ---------------------------------------------------------------------------------------
# which entry runs


def _plan(fmt, shape, wshape, **kw):
    x = FormattedArray(np.zeros(shape, np.float32), fmt)
    return fa.conv_plan(x, np.zeros(wshape, np.float32), **kw).chosen()


def _all(name):
    return {"forward": name, "input_grad": name, "weight_grad": name}


@pytest.mark.parametrize("fmt,shape,wshape,kw,want", [
    # the benchmark's cases (canonical layouts)
    ("SSCB", (56, 56, 64, 32), (3, 3, 64, 64), dict(padding=1),
     {"forward": "numpy.winograd", "input_grad": "numpy.winograd_input_grad",
      "weight_grad": "numpy.winograd_weight_grad"}),
    ("SSCB", (224, 224, 3, 32), (7, 7, 3, 64), dict(stride=2, padding=3),
     {"forward": "numpy.gemm", "input_grad": "numpy.input_grad_bi", "weight_grad": "numpy.gemm"}),
    ("SSCB", (14, 14, 256, 64), (3, 3, 256, 256), dict(padding=1),
     {"forward": "numpy.winograd", "input_grad": "numpy.winograd_input_grad",
      "weight_grad": "numpy.winograd_weight_grad"}),
    ("SSCB", (28, 28, 1, 128), (5, 5, 1, 20), {},
     {"forward": "numpy.batch_innermost", "input_grad": "numpy.input_grad_bi",
      "weight_grad": "numpy.gemm"}),
    ("SSCB", (7, 7, 512, 8), (3, 3, 512, 512), dict(padding=1),
     {"forward": "numpy.gemm_wide", "input_grad": "numpy.grad_as_conv",
      "weight_grad": "numpy.gemm_wide"}),
    ("SSCB", (28, 28, 128, 16), (3, 3, 1, 1, 128), dict(padding=1), _all("numpy.depthwise_bi")),
    ("SSCB", (56, 56, 64, 8), (3, 3, 64, 64), dict(padding=2, dilation_factor=2),
     {"forward": "numpy.winograd", "input_grad": "numpy.winograd_input_grad",
      "weight_grad": "numpy.winograd_weight_grad"}),
    ("SCBT", (64, 16, 8, 200), (3, 3, 16, 32), dict(padding="same", weights_format="STCU"),
     {"forward": "numpy.last_innermost", "input_grad": "numpy.last_innermost_input_grad",
      "weight_grad": "numpy.last_innermost"}),
    ("SSCBT", (32, 32, 16, 4, 16), (3, 3, 16, 16), dict(padding="same"),
     {"forward": "numpy.winograd", "input_grad": "numpy.flat_shift",
      "weight_grad": "numpy.flat_shift"}),
    # channel-wise with several filters per channel; data stored channels-last
    ("SSCB", (9, 9, 4, 3), (3, 3, 1, 2, 4), dict(padding=1), _all("numpy.depthwise")),
    ("BSSC", (8, 12, 12, 3), (3, 3, 3, 4), dict(stride=2),
     {"forward": "numpy.gemm", "input_grad": "numpy.col2im", "weight_grad": "numpy.gemm"}),
    ("BSSC", (8, 12, 12, 3), (3, 3, 3, 4), dict(padding="same"),
     {"forward": "numpy.gemm", "input_grad": "numpy.grad_as_conv", "weight_grad": "numpy.gemm"}),
])
def test_selected_entry(fmt, shape, wshape, kw, want, monkeypatch):
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")  # the NumPy entries (the compiled ones: in
    # tests/test_numba.py)
    assert _plan(fmt, shape, wshape, **kw) == want


def test_selected_entry_through_the_op(monkeypatch):
    """``fa.conv`` runs the entry ``conv_plan`` names (a forced wrong one is refused)."""
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")  # the NumPy entries
    x = FormattedArray(np.ones((6, 6, 8, 4), np.float32), "SSCB")
    w = np.ones((3, 3, 8, 8), np.float32)
    with tuning(winograd_min_total_cols=1):
        assert fa.conv_plan(x, w, padding=1).chosen()["forward"] == "numpy.winograd"
        y = fa.conv(x, w, padding=1, algorithm="numpy.winograd")
        np.testing.assert_allclose(y.data, fa.conv(x, w, padding=1, algorithm="numpy.gemm").data,
                                   rtol=1e-6)
    with pytest.raises(ValueError, match="winograd_min_total_cols"):
        fa.conv(x, w, padding=1, algorithm="numpy.winograd")


@pytest.mark.parametrize("pool", ["python_pool", "openmp_team"])
def test_tuning_reaches_the_workers(request, pool):
    """Either pool runs each task in a copy of the caller's context: ``tuning()`` settings
    are seen by every worker thread, and nothing is left behind after the block."""
    request.getfixturevalue(pool)
    seen = {}
    main, pool_ran = threading.get_ident(), threading.Event()

    def work(wid, item):
        seen[(threading.get_ident(), item)] = K.current().tile_bytes
        if threading.get_ident() != main:
            pool_ran.set()
        elif _runtime.n_workers() > 1:
            # the caller would take a share whose pool thread has not started yet
            pool_ran.wait(5)

    with tuning(tile_bytes=12345):
        _runtime.parallel(work, range(16))  # fixed assignment: every worker takes items
        pool_ran.clear()
        _runtime.parallel(work, range(16, 32), dynamic=True)
    assert set(seen.values()) == {12345} and len(seen) == 32
    if _runtime.n_workers() > 1:
        assert len({t for t, _ in seen}) > 1
    seen.clear()
    _runtime.parallel(work, range(16))
    assert set(seen.values()) == {K.Tuning().tile_bytes}


_FORK_SCRIPT = """
import os, sys
import numpy as np
import fmtarray as fa
from fmtarray._kernels.conv import tuning

rng = np.random.default_rng(0)
x = fa.FormattedArray(rng.standard_normal((16, 16, 8, 8)).astype(np.float32), "SSCB")
w = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
with tuning(serial_macs=0):
    y = fa.conv(x, w, padding=1)  # the pool's threads run
    pid = os.fork()
    if pid == 0:
        os._exit(0 if np.allclose(fa.conv(x, w, padding=1).data, y.data) else 3)
    _, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")
def test_forked_child_gets_its_own_pool():
    """A child forked after the pool started (its threads are not copied) starts its
    own pool instead of waiting on the parent's threads (in a fresh interpreter: the
    test process runs other libraries' threads, which make a fork unsafe)."""
    import subprocess
    import sys

    try:
        r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], timeout=120,
                           capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung")
    assert r.returncode == 0, r.stderr
