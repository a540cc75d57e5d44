"""JAX convolution entries (``fmtarray._kernels.conv._jax``) against the direct-loop
reference (``conv_reference.py``): every entry forced by name over its domain (1-3
convolved dims, stride, dilation, groups and depthwise, every padding form and value,
input dilation), forward, input gradient and weight gradient, float32 and float64; the
formats ``SSCB``, ``BSSC``, ``SCBT`` (with ``STCU`` weights) and ``SSCBT`` through
``fmtarray.conv`` and ``fmtarray.grad``; the selection on JAX arrays; ``jax.jit`` /
``jax.grad`` over functions calling ``fmtarray.conv``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)  # the float64 cases must run in float64
import jax.numpy as jnp  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fmtarray as fa  # noqa: E402
from conv_reference import make, ref_conv, ref_pad  # noqa: E402
from fmtarray import FormattedArray  # noqa: E402
from fmtarray._kernels import conv as kconv  # noqa: E402
from fmtarray._kernels.pad import PAD_MODES  # noqa: E402
from kernel_calls import conv_backward, conv_forward  # noqa: E402

ENTRIES = [a.name for a in kconv.algorithms("jax") if a.library == "jax"]
VALUES = [0.0, -1.5, *PAD_MODES]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def rel_err(y, ref):
    y = np.asarray(y, dtype=np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30)) if ref.size else 0.0


# ---------------------------------------------------------------------------------------
# the reference, extended (independently of fmtarray) to input dilation and the VJP


def ref_dilate(x, lhs):
    """``lhs - 1`` zeros between the elements of each spatial dim of ``(N, *sp, C)``."""
    out = np.zeros((x.shape[0], *((n - 1) * s + 1 for n, s in zip(x.shape[1:-1], lhs)),
                    x.shape[-1]))
    out[(slice(None),) + tuple(slice(None, None, s) for s in lhs)] = x
    return out


def ref_forward(cfg, x, w, b=None):
    xd = ref_dilate(np.asarray(x, np.float64), cfg["lhs"])
    return ref_conv(xd, w, b, cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"], cfg["value"])


def ref_vjp(cfg, x, w, gy):
    """``(gx, gw)`` of :func:`ref_forward` for the cotangent ``gy``, by direct loops: the
    windows' adjoint into the padded input, then the padding's adjoint (each padded
    element adds onto the element it was copied from: ``numpy.pad`` of an index array)."""
    x = ref_dilate(np.asarray(x, np.float64), cfg["lhs"])
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    d = x.ndim - 2
    k = w.shape[:d]
    cg, fg, groups = w.shape[d:]
    axes = tuple(range(1, d + 1))
    xpad = ref_pad(x, cfg["pb"], cfg["pa"], axes, cfg["value"])
    gpad = np.zeros_like(xpad)
    gw = np.zeros_like(w)
    for pos in itertools.product(*(range(o) for o in gy.shape[1:-1])):
        for g in range(groups):
            gyp = gy[(slice(None),) + pos + (slice(g * fg, (g + 1) * fg),)]  # (n, fg)
            for off in itertools.product(*(range(kk) for kk in k)):
                idx = tuple(p * s + o * dl for p, s, o, dl in
                            zip(pos, cfg["stride"], off, cfg["dil"]))
                sl = (slice(None),) + idx + (slice(g * cg, (g + 1) * cg),)
                gw[off + (slice(None), slice(None), g)] += xpad[sl].T @ gyp
                gpad[sl] += gyp @ w[off + (slice(None), slice(None), g)].T
    # adjoint of the padding: source index of every padded element (-1: a constant)
    src = np.arange(x.size).reshape(x.shape)
    value = cfg["value"] if isinstance(cfg["value"], str) else -1
    src = ref_pad(src, cfg["pb"], cfg["pa"], axes, value)
    keep = src >= 0
    gx = np.zeros(x.size)
    np.add.at(gx, src[keep], gpad[keep])
    gx = gx.reshape(x.shape)
    return gx[(slice(None),) + tuple(slice(None, None, s) for s in cfg["lhs"])], gw


# ---------------------------------------------------------------------------------------
# kernel configurations (channels-last kernel arrays, "N01C")


def cfg_of(sp, k, *, cg=2, fg=2, groups=1, n=2, stride=1, dil=1, pb=0, pa=0, value=0.0,
           lhs=1):
    d = len(sp)
    t = (lambda v: (v,) * d if isinstance(v, int) else tuple(v))
    return dict(d=d, sp=tuple(sp), k=tuple(k), cg=cg, fg=fg, groups=groups, n=n,
                stride=t(stride), dil=t(dil), pb=t(pb), pa=t(pa), value=value, lhs=t(lhs))


@st.composite
def kernel_config(draw):
    d = draw(st.integers(1, 3))
    small = d == 3
    k = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(d))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    lhs = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(d))
    pb = tuple(draw(st.integers(0, 3)) for _ in range(d))
    pa = tuple(draw(st.integers(0, 3)) for _ in range(d))
    sp = []
    for kk, dl, b, a, s in zip(k, dil, pb, pa, lhs):
        eff = (kk - 1) * dl + 1
        lo = max(1, -(-(eff - b - a - 1) // s) + 1)  # (n - 1)·s + 1 + b + a >= eff
        sp.append(draw(st.integers(lo, lo + (2 if small else 4))))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    return cfg_of(sp, k, cg=draw(st.integers(1, 3)), fg=draw(st.integers(1, 3)),
                  groups=groups, n=draw(st.integers(1, 3)), stride=stride, dil=dil, pb=pb,
                  pa=pa, value=draw(st.sampled_from(VALUES)), lhs=lhs)


def kw_of(cfg):
    return dict(stride=cfg["stride"], dilation=cfg["dil"], pad_before=cfg["pb"],
                pad_after=cfg["pa"], pad_value=cfg["value"], lhs_dilation=cfg["lhs"])


def check_entry(name, cfg, dtype, seed=0):
    """Forward (with bias), input gradient and weight gradient of the forced entry."""
    x, w, b = make(cfg, seed)
    ref = ref_forward(cfg, x, w, b)
    gy = np.random.default_rng(seed + 1).standard_normal(ref.shape)
    rgx, rgw = ref_vjp(cfg, x, w, gy)
    tol = TOL[dtype]
    j = (lambda a: jnp.asarray(a.astype(dtype)))
    y = conv_forward(jnp, j(x), j(w), j(b), force=name, **kw_of(cfg))
    assert isinstance(y, jax.Array) and y.dtype == dtype
    assert rel_err(y, ref) <= tol, ("forward", rel_err(y, ref))
    gx, gw, gb = conv_backward(jnp, j(gy), j(x), j(w), force=name, **kw_of(cfg))
    assert gx.dtype == dtype and gw.dtype == dtype
    assert rel_err(gx, rgx) <= tol, ("input_grad", rel_err(gx, rgx))
    assert rel_err(gw, rgw) <= tol, ("weight_grad", rel_err(gw, rgw))
    assert rel_err(gb, gy.reshape(-1, b.size).sum(0)) <= tol
    for needs in ((True, False, False), (False, True, False)):  # one gradient alone
        gx1, gw1, _ = conv_backward(jnp, j(gy), j(x), j(w), force=name, needs=needs,
                                    **kw_of(cfg))
        assert (gx1 is None) != needs[0] and (gw1 is None) != needs[1]
        got, want = (gx1, rgx) if needs[0] else (gw1, rgw)
        assert rel_err(got, want) <= tol


def test_reference_vjp_is_the_adjoint():
    """The test's own reference VJP against finite differences of the reference (it is
    exact for this bilinear map up to rounding)."""
    for value in VALUES:
        cfg = cfg_of((5, 4), (3, 2), groups=2, stride=(2, 1), dil=(1, 2), pb=(2, 0),
                     pa=(1, 3), value=value, lhs=(2, 1))
        x, w, _ = make(cfg)
        gy = np.random.default_rng(3).standard_normal(ref_forward(cfg, x, w).shape)
        gx, gw = ref_vjp(cfg, x, w, gy)
        rng = np.random.default_rng(4)
        dx, dw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        e = 1e-3  # bilinear: central differences are exact but for rounding

        def f(xx, ww, cfg=cfg, gy=gy):
            return float((ref_forward(cfg, xx, ww) * gy).sum())

        assert np.isclose((gx * dx).sum(), (f(x + e * dx, w) - f(x - e * dx, w)) / (2 * e),
                          rtol=1e-9)
        assert np.isclose((gw * dw).sum(), (f(x, w + e * dw) - f(x, w - e * dw)) / (2 * e),
                          rtol=1e-9)


GEOMETRIES = [
    # 1-D: stride, dilation, asymmetric padding
    cfg_of((9,), (3,), stride=2, dil=2, pb=2, pa=1),
    # 2-D: groups with several filters per group (the group-major weight order)
    cfg_of((7, 6), (3, 2), cg=2, fg=3, groups=2, stride=(2, 1), dil=(1, 2), pb=(1, 2),
           pa=(3, 0)),
    # 2-D depthwise, symmetric padding
    cfg_of((6, 6), (3, 3), cg=1, fg=1, groups=4, pb=1, pa=1),
    # 2-D channel multiplier (depthwise with 2 filters per channel), input dilation
    cfg_of((5, 4), (2, 3), cg=1, fg=2, groups=3, pb=(0, 2), pa=(1, 1), lhs=(2, 3)),
    # 3-D with everything
    cfg_of((4, 3, 5), (2, 2, 3), cg=1, fg=2, groups=2, stride=(1, 2, 2), dil=(2, 1, 1),
           pb=(1, 0, 2), pa=(0, 2, 1), lhs=(1, 2, 1)),
    # pads larger than the input (mirror modes wrap around), 1x1 filter
    cfg_of((2, 3), (1, 1), cg=3, fg=2, pb=(3, 4), pa=(5, 1)),
    # input dilation with stride (the strided input gradient's geometry)
    cfg_of((4, 5), (3, 3), cg=2, fg=2, stride=(2, 3), lhs=(3, 2), pb=(2, 1), pa=(1, 2)),
]


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("value", VALUES, ids=str)
@pytest.mark.parametrize("geom", range(len(GEOMETRIES)))
def test_entry_geometries(name, dtype, value, geom):
    check_entry(name, dict(GEOMETRIES[geom], value=value), dtype)


@pytest.mark.parametrize("name", ENTRIES)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cfg=kernel_config(), dtype=st.sampled_from([np.float32, np.float64]))
def test_entry_random(name, cfg, dtype):
    check_entry(name, cfg, dtype)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_mixed_dtypes_and_layouts(name):
    """x float32 with float64 weights gives float64 (the spec's dtype); the kernel array
    in a batch-innermost layout ("01CN", canonical SSCB) and channel-first ("NC01")."""
    from fmtarray._kernels.conv.spec import ConvSpec, Layout

    cfg = cfg_of((6, 5), (3, 2), cg=2, fg=3, groups=2, stride=(1, 2), pb=(1, 0), pa=(2, 1),
                 value="symmetric-exclude-edge", lhs=(1, 2))
    x, w, b = make(cfg)
    ref = ref_forward(cfg, x, w, b)
    gy = np.random.default_rng(1).standard_normal(ref.shape)
    rgx, rgw = ref_vjp(cfg, x.astype(np.float32), w, gy)
    y = conv_forward(jnp, jnp.asarray(x, jnp.float32), jnp.asarray(w), jnp.asarray(b),
                     force=name, **kw_of(cfg))
    assert y.dtype == jnp.float64 and rel_err(y, ref) <= 1e-6  # x rounded to float32
    gx, gw, _ = conv_backward(jnp, jnp.asarray(gy), jnp.asarray(x, jnp.float32),
                              jnp.asarray(w), force=name, **kw_of(cfg))
    assert gx.dtype == jnp.float32 and gw.dtype == jnp.float64
    assert rel_err(gx, rgx) <= 1e-6 and rel_err(gw, rgw) <= 1e-12
    rgx64, rgw64 = ref_vjp(cfg, x, w, gy)
    for dims in ("01CN", "NC01", "C0N1"):
        perm = tuple("N01C".index(c) for c in dims)
        spec = ConvSpec.make(x.shape, w.shape, **kw_of(cfg), dtype="float64")
        xk = jnp.asarray(np.transpose(x, perm))
        lay = Layout.of(dims, xk)
        yk = kconv.forward(jnp, spec, lay, xk, jnp.asarray(w), jnp.asarray(b), force=name)
        assert rel_err(yk, np.transpose(ref, perm)) <= 1e-12
        gk = jnp.asarray(np.transpose(gy, perm))
        gxk, gwk, gbk = kconv.backward(jnp, spec, Layout.of(dims, xk, gk), gk, xk,
                                       jnp.asarray(w), (True, True, True), force=name)
        assert rel_err(gxk, np.transpose(rgx64, perm)) <= 1e-12
        assert rel_err(gwk, rgw64) <= 1e-12


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_empty_batch(name):
    cfg = cfg_of((5, 4), (3, 3), n=0, pb=1, pa=1)
    x, w, b = make(cfg)
    y = conv_forward(jnp, jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), force=name,
                     **kw_of(cfg))
    assert y.shape == (0, 5, 4, 2)
    gx, gw, _ = conv_backward(jnp, jnp.zeros(y.shape), jnp.asarray(x), jnp.asarray(w),
                              force=name, **kw_of(cfg))
    assert gx.shape == x.shape and gw.shape == w.shape and not np.any(np.asarray(gw))


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("value", VALUES[:2], ids=str)
def test_entry_empty_spatial_dim(name, value):
    """A convolved dim of size 0 padded to a window: the windows read padding only."""
    cfg = cfg_of((0, 5), (3, 3), pb=(2, 1), pa=(1, 1), value=value)
    check_entry(name, cfg, np.float64)


def test_padding_values_share_one_program():
    """A non-zero constant padding value (NaN too) is an argument of the compiled
    program, not part of its key: a new value compiles nothing new."""
    from fmtarray._kernels.conv import _jax

    cfg = cfg_of((4, 4), (3, 3), pb=1, pa=1)
    x, w, _ = make(cfg)
    outs = []
    for i, value in enumerate([2.0, -3.0, float("nan")]):
        y = conv_forward(jnp, jnp.asarray(x), jnp.asarray(w), **dict(kw_of(cfg), pad_value=value))
        if i == 0:
            size = _jax._forward_fn.cache_info().currsize
        assert _jax._forward_fn.cache_info().currsize == size
        outs.append(np.asarray(y))
    assert rel_err(outs[1], ref_forward(dict(cfg, value=-3.0), x, w)) <= 1e-12
    assert np.isnan(outs[2][:, 0]).all() and np.isfinite(outs[2][:, 1:-1, 1:-1]).all()


# ---------------------------------------------------------------------------------------
# formats through fmtarray.conv / fmtarray.grad


def _nsc_sscb(a):  # (H, W, C, B) -> (B, H, W, C)
    return np.transpose(a, (3, 0, 1, 2))


def _nsc_scbt(a):  # (S, C, B, T) convolved over S and T -> (B, S, T, C)
    return np.transpose(a, (2, 0, 3, 1))


def _nsc_sscbt(a):  # (H, W, C, B, T) -> (B·T, H, W, C)
    t = np.transpose(a, (3, 4, 0, 1, 2))
    return t.reshape(-1, *t.shape[2:])


# format, user data shape, weights (user shape), weights_format, to channels-last(canonical)
FORMATS = {
    "SSCB": ("SSCB", (7, 6, 4, 3), (3, 2, 2, 3, 2), None, _nsc_sscb),
    "BSSC": ("BSSC", (3, 7, 6, 4), (3, 3, 4, 5), None, _nsc_sscb),
    "SCBT": ("SCBT", (9, 3, 2, 6), (3, 2, 3, 4), "STCU", _nsc_scbt),
    "SSCBT": ("SSCBT", (6, 5, 2, 2, 3), (2, 3, 1, 2, 2), None, _nsc_sscbt),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("value", [0.0, 2.5, "replicate"], ids=str)
def test_formats(fmt, dtype, value):
    ufmt, xshape, wshape, wfmt, to_nsc = FORMATS[fmt]
    rng = np.random.default_rng(0)
    xd = rng.standard_normal(xshape)
    wd = rng.standard_normal(wshape)
    w5 = wd if len(wshape) == 5 else wd[..., None]  # MATLAB (*k, Cg, Fg, G)
    F = w5.shape[-2] * w5.shape[-1]
    b = rng.standard_normal(F)
    call = dict(stride=(2, 1), padding=[[1, 0], [2, 1]], padding_value=value,
                weights_format=wfmt)
    cfg = cfg_of((0, 0), w5.shape[:2], stride=(2, 1), pb=(1, 0), pa=(2, 1), value=value)
    X = FormattedArray(jnp.asarray(xd.astype(dtype)), ufmt)
    W = FormattedArray(jnp.asarray(wd.astype(dtype)))
    xn = to_nsc(np.asarray(X.data, np.float64))
    plan = fa.conv_plan(X, W, jnp.asarray(b.astype(dtype)), **call)
    assert set(plan.chosen().values()) == {"jax.conv_general_dilated"}
    y = fa.conv(X, W, jnp.asarray(b.astype(dtype)), **call)
    assert y.format == X.format and isinstance(y.data, jax.Array) and y.dtype == dtype
    ref = ref_forward(cfg, xn, w5, b)
    assert rel_err(to_nsc(np.asarray(y.data)), ref) <= TOL[dtype]

    gy = rng.standard_normal(y.shape)
    G = FormattedArray(jnp.asarray(gy.astype(dtype)), y.format)
    gx, gw = fa.grad(lambda a, c: fa.sum(fa.conv(a, c, **call) * G), argnums=(0, 1))(X, W)
    rgx, rgw = ref_vjp(cfg, xn, w5, to_nsc(gy))
    assert gx.format == X.format and gx.dtype == dtype
    assert rel_err(to_nsc(np.asarray(gx.data)), rgx) <= TOL[dtype]
    assert rel_err(np.asarray(gw.data).reshape(w5.shape), rgw) <= TOL[dtype]


# ---------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize("call", [
    dict(fmt="SSCB", shape=(8, 8, 3, 2), w=(3, 3, 3, 4), kw=dict(padding=1)),
    dict(fmt="BSSC", shape=(2, 8, 8, 6), w=(3, 3, 1, 1, 6), kw=dict(padding="same")),
    dict(fmt="SCBT", shape=(8, 3, 2, 5), w=(3, 2, 3, 4), kw=dict(weights_format="STCU")),
    dict(fmt="SSCB", shape=(8, 8, 3, 2), w=(3, 3, 3, 4),
         kw=dict(padding=2, padding_value="symmetric-include-edge", stride=2)),
    dict(fmt="SSSCB", shape=(5, 5, 5, 2, 1), w=(3, 3, 3, 2, 2), kw=dict(padding=1)),
])
def test_jax_arrays_select_the_jax_entry(call):
    """A silent fall-back to the portable path fails here: the plan names the JAX entry
    for all three ops, and the forward really runs it (the portable entry is made to
    fail)."""
    x = FormattedArray(jnp.ones(call["shape"], jnp.float32), call["fmt"])
    w = jnp.ones(call["w"], jnp.float32)
    plan = fa.conv_plan(x, w, **call["kw"])
    assert plan.library == "jax"
    assert plan.chosen() == dict.fromkeys(kconv.OPS, "jax.conv_general_dilated")
    assert "jax.conv_general_dilated" in str(plan)
    portable = next(a for a in kconv.algorithms("jax") if a.name == "portable.im2col")
    saved = portable.forward, portable.backward
    try:  # Algo is frozen: swap this instance's functions for ones that fail
        object.__setattr__(portable, "forward", _fail)
        object.__setattr__(portable, "backward", _fail)
        y = fa.conv(x, w, **call["kw"])
        fa.grad(lambda a, c: fa.sum(fa.conv(a, c, **call["kw"])), argnums=(0, 1))(
            x, FormattedArray(w))
    finally:
        object.__setattr__(portable, "forward", saved[0])
        object.__setattr__(portable, "backward", saved[1])
    assert isinstance(y.data, jax.Array)


def _fail(*args, **kwargs):
    raise AssertionError("the portable entry ran on JAX arrays")


# ---------------------------------------------------------------------------------------
# jax.jit / jax.grad over fmtarray.conv (raw arrays at the boundary)


def test_jit_forward_and_fmtarray_grad_inside_jit():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 7, 3, 2)), jnp.float32)   # SSCB
    w = jnp.asarray(rng.standard_normal((3, 3, 1, 2, 3)), jnp.float32)  # grouped
    b = jnp.asarray(rng.standard_normal(6), jnp.float32)
    gy = jnp.asarray(rng.standard_normal((4, 7, 6, 2)), jnp.float32)
    call = dict(stride=(2, 1), padding="same", padding_value="symmetric-exclude-edge")

    def f(x, w, b):
        return fa.conv(fa.FormattedArray(x, "SSCB"), w, b, **call).data

    y = jax.jit(f)(x, w, b)
    assert isinstance(y, jax.Array)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(f(x, w, b)))
    cfg = cfg_of((8, 7), (3, 3), cg=1, fg=2, groups=3, stride=(2, 1), pb=(0, 1), pa=(1, 1),
                 value="symmetric-exclude-edge")
    xn = _nsc_sscb(np.asarray(x, np.float64))
    assert rel_err(_nsc_sscb(np.asarray(y)), ref_forward(cfg, xn, w, b)) <= 1e-5

    def g(x, w, gy):  # fmtarray's own reverse mode, traced by jax.jit
        G = fa.FormattedArray(gy, "SSCB")
        gx, gw = fa.grad(lambda a, c: fa.sum(fa.conv(a, c, **call) * G), argnums=(0, 1))(
            fa.FormattedArray(x, "SSCB"), fa.FormattedArray(w))
        return gx.data, gw.data

    gx, gw = jax.jit(g)(x, w, gy)
    rgx, rgw = ref_vjp(cfg, xn, w, _nsc_sscb(np.asarray(gy)))
    assert rel_err(_nsc_sscb(np.asarray(gx)), rgx) <= 1e-5
    assert rel_err(np.asarray(gw), rgw) <= 1e-5

    # JAX's own reverse mode through fmtarray.conv, jitted
    jgx, jgw = jax.jit(jax.grad(lambda x, w: jnp.sum(f(x, w, b) * gy), argnums=(0, 1)))(x, w)
    assert rel_err(_nsc_sscb(np.asarray(jgx)), rgx) <= 1e-5
    assert rel_err(np.asarray(jgw), rgw) <= 1e-5


def test_jit_over_formats_and_vmap():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((9, 3, 2, 6)))  # SCBT convolved over S and T
    w = jnp.asarray(rng.standard_normal((3, 2, 3, 4)))

    def f(x, w):
        return fa.conv(fa.FormattedArray(x, "SCBT"), w, weights_format="STCU",
                       padding=1, padding_value=-0.5).data

    y = jax.jit(f)(x, w)
    np.testing.assert_allclose(np.asarray(y), np.asarray(f(x, w)), rtol=1e-13, atol=1e-13)
    ys = jax.vmap(f, in_axes=(0, None))(jnp.stack([x, 2 * x]), w)
    np.testing.assert_allclose(np.asarray(ys[1]), np.asarray(f(2 * x, w)), rtol=1e-12,
                               atol=1e-12)
