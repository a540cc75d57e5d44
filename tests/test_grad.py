"""Gradients of every differentiable op vs float64 central finite differences.

Each check differentiates ``sum(op(...) * R)`` with a fixed random ``R`` (so the
whole Jacobian is exercised) and compares with central differences,
``‖g − g_fd‖ ≤ 1e-6 · ‖g_fd‖``. Shapes and configurations are drawn by
hypothesis; inputs are kept away from kinks and ties (relu, abs, max) so that
finite differences are meaningful. Pooling and fully_connect are also checked
against torch autograd when torch is installed.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray.ops.nn import batch_norm, cross_entropy, fully_connect, softmax
from fmtarray.ops.pool import avg_pool, max_pool

HAS_TORCH = importlib.util.find_spec("torch") is not None
SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RTOL = 1e-6


# helpers ------------------------------------------------------------------------------------


def _rng(*key):
    return np.random.default_rng(abs(hash(key)) % 2**32)


def _proj(out):
    """``sum(out * R)`` with a fixed random ``R`` of out's shape and format."""
    r = _rng("proj", out.shape).standard_normal(out.shape)
    return fa.sum(out * FormattedArray._wrap(r, out.format))


def distinct(shape, seed=0, lo=-1.0, hi=1.0, gap=1e-3):
    """Values in ``[lo, hi]`` that are pairwise ≥ ``gap`` apart and ≥ gap from 0."""
    n = int(np.prod(shape)) if shape else 1
    rng = _rng("distinct", seed, tuple(shape))
    assert (hi - lo) / (n + 2) > 2 * gap
    v = np.linspace(lo, hi, n + 2)[1:-1]
    v = np.where(np.abs(v) < gap, v + np.sign(v + 1e-12) * 2 * gap, v)
    return rng.permutation(v).reshape(shape)


def numeric_grad(f, args, k, h=1e-6):
    base = np.array(args[k].data, dtype=np.float64)
    g = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        vals = []
        for d in (h, -h):
            a = base.copy()
            a[idx] += d
            new = list(args)
            new[k] = FormattedArray._wrap(a, args[k].format)
            vals.append(float(f(*new).data))
        g[idx] = (vals[0] - vals[1]) / (2 * h)
    return g


def check_grad(f, *args, argnums=None, rtol=RTOL):
    """Compare ``fa.grad`` of scalar ``f`` with central differences for ``argnums``."""
    args = [a if isinstance(a, FormattedArray) else FormattedArray(np.asarray(a, float)) for a in args]
    if argnums is None:
        argnums = tuple(range(len(args)))
    grads = fa.grad(f, argnums=tuple(argnums))(*args)
    for k, g in zip(argnums, grads):
        assert isinstance(g, FormattedArray)
        assert g.format == args[k].format and g.shape == args[k].shape
        assert g.dtype == args[k].dtype
        num = numeric_grad(f, args, k)
        ga = np.asarray(g.data)
        scale = max(np.linalg.norm(num), 1e-8)
        err = np.linalg.norm(ga - num) / scale
        assert err <= rtol, f"argument {k}: relative error {err:.3g}\nanalytic {ga}\nnumeric {num}"


def fa64(shape, fmt, seed=0, kind="normal"):
    rng = _rng("fa64", seed, tuple(shape), fmt, kind)
    if kind == "normal":
        a = rng.standard_normal(shape)
    elif kind == "positive":
        a = rng.uniform(0.5, 2.0, shape)
    elif kind == "distinct":
        a = distinct(shape, seed)
    else:
        raise AssertionError(kind)
    return FormattedArray._wrap(a, fmt)


def sizes(fmt, draw, lo=1, hi=3):
    return tuple(draw(st.integers(lo, hi)) for _ in fmt)


# elementwise ----------------------------------------------------------------------------------

UNARY = {
    "negative": ("normal", fa.negative),
    "abs": ("distinct", fa.abs),
    "exp": ("normal", fa.exp),
    "log": ("positive", fa.log),
    "sqrt": ("positive", fa.sqrt),
    "square": ("normal", fa.square),
    "tanh": ("normal", fa.tanh),
    "sigmoid": ("normal", fa.sigmoid),
    "relu": ("distinct", fa.relu),
    "sin": ("normal", fa.sin),
    "cos": ("normal", fa.cos),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(data=st.data())
def test_unary(name, data):
    kind, op = UNARY[name]
    fmt = data.draw(st.sampled_from(["SSCB", "CB", "CBT", "SCBU", ""]))
    shape = sizes(fmt or "UU", data.draw)
    x = fa64(shape, fmt, 1, kind)
    check_grad(lambda x: _proj(op(x)), x)


BINARY = {
    "add": (fa.add, "normal", "normal"),
    "subtract": (fa.subtract, "normal", "normal"),
    "multiply": (fa.multiply, "normal", "normal"),
    "divide": (fa.divide, "normal", "positive"),
    "pow": (fa.pow, "positive", "normal"),
    "maximum": (fa.maximum, "distinct", "distinct"),
    "minimum": (fa.minimum, "distinct", "distinct"),
}

# (format a, format b): b's labels are broadcast against a's by label
PAIRS = [("SSCB", "SSCB"), ("SSCB", "C"), ("SSCB", "CB"), ("CB", "SSCB"), ("SSCB", "SSB"),
         ("CBT", "T"), ("SCBT", "SB"), ("CB", "BT"), ("SSCB", "")]


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(data=st.data())
def test_binary_label_broadcasting(name, data):
    op, ka, kb = BINARY[name]
    fa_, fb = data.draw(st.sampled_from(PAIRS))
    sz = {}
    shape_a = []
    for i, ch in enumerate(fa_):
        key = (ch, fa_[:i + 1].count(ch))
        sz[key] = data.draw(st.integers(1, 3))
        shape_a.append(sz[key])
    if fb == "":
        # unformatted: positional against a's canonical layout (trailing dims)
        shape_b = tuple(data.draw(st.sampled_from([1, n])) for n in shape_a[-2:])
    else:
        shape_b = []
        for i, ch in enumerate(fb):
            key = (ch, fb[:i + 1].count(ch))
            n = sz.get(key, data.draw(st.integers(1, 3)))
            shape_b.append(data.draw(st.sampled_from([1, n])))
    a = fa64(tuple(shape_a), fa_, 2, ka)
    b = fa64(tuple(shape_b), fb, 3, kb)
    if name in ("maximum", "minimum"):
        b = FormattedArray._wrap(np.asarray(b.data) + 0.5 / (b.data.size + 3), fb)
    check_grad(lambda a, b: _proj(op(a, b)), a, b)


@pytest.mark.parametrize("expr", [
    lambda x: x * 3.0 + 1.0, lambda x: 2.0 - x, lambda x: 1.5 / x, lambda x: x ** 3.0,
    lambda x: 2.0 ** x, lambda x: -x / 4.0, lambda x: fa.clip(x, -0.5, 0.5),
])
def test_scalar_operands(expr):
    x = fa64((3, 4), "CB", 4, "distinct")
    x = FormattedArray._wrap(np.asarray(x.data) + 2.0 * (np.asarray(x.data) > 0.9), "CB")
    check_grad(lambda x: _proj(expr(x)), x)


def test_where():
    a = fa64((3, 4), "CB", 5)
    b = fa64((3,), "C", 6)
    cond = FormattedArray._wrap(_rng("cond").random((3, 4)) > 0.5, "CB")
    check_grad(lambda a, b: _proj(fa.where(cond, a, b)), a, b)


# reductions ----------------------------------------------------------------------------------

REDUCERS = {"sum": (fa.sum, "normal"), "mean": (fa.mean, "normal"), "max": (fa.max, "distinct"),
            "min": (fa.min, "distinct"), "var": (fa.var, "normal"), "std": (fa.std, "normal")}


@pytest.mark.parametrize("name", sorted(REDUCERS))
@SETTINGS
@given(data=st.data())
def test_reductions(name, data):
    op, kind = REDUCERS[name]
    fmt = data.draw(st.sampled_from(["SSCB", "CBT", "SCB"]))
    shape = sizes(fmt, data.draw, 1, 3)
    labels = "".join(sorted(set(fmt)))
    dims = data.draw(st.sampled_from([None] + [c for c in labels] + ["SB" if "S" in fmt else "CB"]))
    keepdims = data.draw(st.booleans())
    if name in ("var", "std"):
        # needs more than one element along the reduced dims
        red = [n for ch, n in zip(fmt, shape) if dims is None or ch in dims]
        assume(np.prod(red) > 1)
    x = fa64(shape, fmt, 7, kind)
    kw = {"correction": data.draw(st.sampled_from([0, 1]))} if name in ("var", "std") else {}
    if name in ("var", "std") and kw["correction"] == 1:
        red = [n for ch, n in zip(fmt, shape) if dims is None or ch in dims]
        assume(np.prod(red) > 1)
    check_grad(lambda x: _proj(op(x, dims, keepdims=keepdims, **kw)), x)


def test_reduction_recombines_by_label():
    x = fa64((3, 2, 2, 4), "SSCB", 8)
    check_grad(lambda x: _proj((x - fa.mean(x, "SSB")) / fa.std(x, "SSB")), x)


# indexing, relabelling ---------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_getitem(data):
    shape = sizes("SSCB", data.draw, 1, 4)
    key = []
    for n in shape:
        if data.draw(st.booleans()):
            key.append(data.draw(st.integers(-n, n - 1)))
        else:
            a = data.draw(st.integers(0, n - 1))
            b = data.draw(st.integers(a + 1, n))
            key.append(slice(a, b))
    x = fa64(shape, "SSCB", 9)
    check_grad(lambda x: _proj(x[tuple(key)]), x)


def test_relabel_and_stripdims():
    x = fa64((2, 3, 4), "CBT", 10)
    check_grad(lambda x: _proj(FormattedArray(x, "TUC")), x)  # relabel, permuted
    check_grad(lambda x: _proj(FormattedArray(fa.stripdims(x, "TCB"), "UUU")), x)
    check_grad(lambda x: _proj(fa.astype(x, np.float64)), x)


# pooling ------------------------------------------------------------------------------------------


@st.composite
def pool_cases(draw):
    fmt, dims = draw(st.sampled_from(
        [("SSCB", "S"), ("SSB", "S"), ("SSCBT", "S"), ("SCBT", "ST"), ("SCB", "S"), ("SSSCB", "S")]
    ))
    d = fmt.count("S") + (1 if dims == "ST" else 0)
    shape = []
    for ch in fmt:
        shape.append(draw(st.integers(2, 6)) if ch == "S" or (ch == "T" and dims == "ST")
                     else draw(st.integers(1, 2)))
    if d == 3:
        shape = [min(n, 4) for n in shape]
    k = tuple(draw(st.integers(1, 3)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    pmode = draw(st.sampled_from(["zero", "same", "sym", "asym"]))
    if pmode == "zero":
        padding = 0
    elif pmode == "same":
        padding = "same"
    elif pmode == "sym":
        padding = tuple(draw(st.integers(0, kk - 1)) for kk in k)
    else:
        padding = (tuple(draw(st.integers(0, kk - 1)) for kk in k),
                   tuple(draw(st.integers(0, kk - 1)) for kk in k))
    pooled = [n for ch, n in zip(fmt, shape) if ch == "S" or (ch == "T" and dims == "ST")]
    if padding == "same" or padding == 0:
        pb = pa = (0,) * d
    elif isinstance(padding[0], tuple):
        pb, pa = padding
    else:
        pb = pa = padding
    if padding != "same":
        assume(all(n + b + a >= kk for n, b, a, kk in zip(pooled, pb, pa, k)))
    return fmt, dims, tuple(shape), k, stride, padding


@pytest.mark.parametrize("mode", ["max", "avg", "avg-mean"])
@SETTINGS
@given(case=pool_cases())
def test_pool(mode, case):
    fmt, dims, shape, k, stride, padding = case
    x = fa64(shape, fmt, 11, "distinct")
    if mode == "max":
        f = lambda x: _proj(max_pool(x, k, stride=stride, padding=padding, dims=dims))  # noqa: E731
    else:
        pv = "mean" if mode == "avg-mean" else 0
        f = lambda x: _proj(avg_pool(x, k, stride=stride, padding=padding, dims=dims,  # noqa: E731
                                     padding_value=pv))
    check_grad(f, x)


def test_pool_unformatted_data_format():
    x = FormattedArray(distinct((2, 3, 5, 4), 12))  # BCSS, unformatted
    f = lambda x: fa.sum(max_pool(x, 2, stride=1, data_format="BCSS") * 1.7)  # noqa: E731
    check_grad(f, x)
    y = max_pool(x, 2, data_format="BCSS")
    assert y.format == "" and y.shape == (2, 3, 4, 3)


# fully_connect, softmax, cross_entropy, batch_norm -------------------------------------------------


@st.composite
def fc_cases(draw):
    fmt = draw(st.sampled_from(["SSCB", "CB", "CBT", "SCBT", "SSCBT", "SSB", "C", "CBU"]))
    shape = tuple(draw(st.integers(1, 3)) for _ in fmt)
    n_out = draw(st.integers(1, 4))
    bias = draw(st.sampled_from(["col", "flat", None]))
    return fmt, shape, n_out, bias


@SETTINGS
@given(case=fc_cases())
def test_fully_connect(case):
    fmt, shape, n_out, bias = case
    n_in = int(np.prod([n for ch, n in zip(fmt, shape) if ch in "SCU"]))
    x = fa64(shape, fmt, 13)
    w = fa64((n_out, n_in), "", 14)
    if bias is None:
        check_grad(lambda x, w: _proj(fully_connect(x, w)), x, w)
        return
    b = fa64((n_out, 1) if bias == "col" else (n_out,), "", 15)
    check_grad(lambda x, w, b: _proj(fully_connect(x, w, b)), x, w, b)


@SETTINGS
@given(fmt=st.sampled_from(["CB", "SSCB", "CBT", "C"]), data=st.data())
def test_softmax(fmt, data):
    x = fa64(sizes(fmt, data.draw, 1, 4), fmt, 16)
    check_grad(lambda x: _proj(softmax(x)), x)


@SETTINGS
@given(fmt=st.sampled_from(["CB", "SSCB", "CBT", "C"]), norm=st.sampled_from(["batch", "none"]),
       data=st.data())
def test_cross_entropy(fmt, norm, data):
    shape = sizes(fmt, data.draw, 1, 4)
    y = fa64(shape, fmt, 17, "positive")
    t = fa64(shape, fmt, 18, "positive")
    check_grad(lambda y, t: cross_entropy(y, t, normalization=norm), y, t)
    # through a softmax, as in training
    x = fa64(shape, fmt, 19)
    check_grad(lambda x: cross_entropy(softmax(x), t), x)


@st.composite
def bn_cases(draw):
    fmt = draw(st.sampled_from(["SSCB", "CB", "CBT", "SCBT"]))
    shape = tuple(draw(st.integers(1, 3)) if ch != "B" else draw(st.integers(3, 4)) for ch in fmt)
    return fmt, shape


@SETTINGS
@given(case=bn_cases())
def test_batch_norm_training(case):
    fmt, shape = case
    c = shape[fmt.index("C")]
    ns = fmt.count("S")
    pshape = (1,) * ns + (c,) if ns else (c, 1)
    x = fa64(shape, fmt, 20)
    off = fa64(pshape, "", 21)
    sc = fa64(pshape, "", 22, "positive")
    check_grad(lambda x, o, s: _proj(batch_norm(x, o, s, training=True)[0]), x, off, sc)


@SETTINGS
@given(case=bn_cases())
def test_batch_norm_inference(case):
    fmt, shape = case
    c = shape[fmt.index("C")]
    x = fa64(shape, fmt, 23)
    off, sc = fa64((c,), "", 24), fa64((c,), "", 25, "positive")
    mu, var = fa64((c,), "", 26), fa64((c,), "", 27, "positive")
    check_grad(lambda x, o, s, m, v: _proj(batch_norm(x, o, s, m, v)), x, off, sc, mu, var)


# against torch autograd ------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@SETTINGS
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(3, 7), w=st.integers(3, 7),
       k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 1),
       mode=st.sampled_from(["max", "avg", "avg-exclude"]))
def test_pool_vs_torch(n, c, h, w, k, s, p, mode):
    import torch
    import torch.nn.functional as F

    assume(p <= k // 2)  # torch's limit on padding
    x = np.random.default_rng(h * 31 + w).standard_normal((n, c, h, w))
    g = np.random.default_rng(k * 7 + s).standard_normal
    xt = torch.tensor(x, requires_grad=True)
    if mode == "max":
        yt = F.max_pool2d(xt, k, s, p)
    else:
        yt = F.avg_pool2d(xt, k, s, p, count_include_pad=(mode == "avg"))
    gy = g(tuple(yt.shape))
    (yt * torch.tensor(gy)).sum().backward()

    X = FormattedArray(x, "BCSS")
    G = FormattedArray(gy, "BCSS")
    if mode == "max":
        def f(X):
            return fa.sum(max_pool(X, k, stride=s, padding=p) * G)
    else:
        pv = 0 if mode == "avg" else "mean"

        def f(X):
            return fa.sum(avg_pool(X, k, stride=s, padding=p, padding_value=pv) * G)

    y = max_pool(X, k, stride=s, padding=p) if mode == "max" else avg_pool(
        X, k, stride=s, padding=p, padding_value=0 if mode == "avg" else "mean")
    np.testing.assert_allclose(np.asarray(fa.stripdims(y, "BCSS").data), yt.detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    gx = fa.grad(f)(X)
    np.testing.assert_allclose(np.asarray(fa.stripdims(gx, "BCSS").data), xt.grad.numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@SETTINGS
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       o=st.integers(1, 5))
def test_fully_connect_vs_torch(n, c, h, w, o):
    """torch flattens NCHW rows as (c, h, w); MATLAB order is (h fastest, then w, then c)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(n * 100 + c * 10 + h)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((o, c * h * w))  # torch layout: index c*H*W + h*W + w
    b = rng.standard_normal(o)
    gy = rng.standard_normal((n, o))
    xt, wtt, bt = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    yt = F.linear(xt.reshape(n, -1), wtt, bt)
    (yt * torch.tensor(gy)).sum().backward()

    # the same weights in MATLAB's order (index h + H*w + H*W*c)
    wm = wt.reshape(o, c, h, w).transpose(0, 1, 3, 2).reshape(o, -1)
    X = FormattedArray(x, "BCSS")
    W = FormattedArray(wm)
    B = FormattedArray(b)
    G = FormattedArray(gy, "BC")
    y = fully_connect(X, W, B)
    assert y.format == "CB"
    np.testing.assert_allclose(np.asarray(y.data).T, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    gx, gw, gb = fa.grad(lambda X, W, B: fa.sum(fully_connect(X, W, B) * G), argnums=(0, 1, 2))(X, W, B)
    np.testing.assert_allclose(np.asarray(fa.stripdims(gx, "BCSS").data), xt.grad.numpy(),
                               rtol=1e-10, atol=1e-12)
    gw_torch_order = np.asarray(gw.data).reshape(o, c, w, h).transpose(0, 1, 3, 2).reshape(o, -1)
    np.testing.assert_allclose(gw_torch_order, wtt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gb.data), bt.grad.numpy(), rtol=1e-10, atol=1e-12)


# bad input -----------------------------------------------------------------------------------------


def test_non_scalar_loss():
    x = fa64((2, 3), "CB", 30)
    with pytest.raises(ValueError, match="scalar loss.*shape \\(2, 3\\).*'CB'"):
        fa.grad(lambda x: x * 2.0)(x)


def test_loss_not_a_formatted_array():
    x = fa64((2, 3), "CB", 31)
    with pytest.raises(TypeError, match="scalar FormattedArray"):
        fa.grad(lambda x: 1.0)(x)


def test_gradient_for_non_differentiable_argument():
    x = fa64((2, 3), "CB", 32)
    ints = FormattedArray(np.arange(6).reshape(2, 3), "CB")
    with pytest.raises(TypeError, match="argument 1.*int64.*float32 or float64"):
        fa.grad(lambda x, i: fa.sum(x * fa.astype(i, np.float64)), argnums=(0, 1))(x, ints)
    with pytest.raises(TypeError, match="argument 0.*numpy.ndarray.*not a FormattedArray"):
        fa.grad(lambda a: fa.sum(FormattedArray(a)))(np.ones(3))
    with pytest.raises(TypeError, match=r"argument 0\['w'\]"):
        fa.grad(lambda p: fa.sum(p["x"]))({"x": x, "w": "not an array"})


def test_cross_entropy_format_mismatch():
    y = fa64((3, 4), "CB", 33, "positive")
    t = fa64((2, 2, 3, 4), "SSCB", 34, "positive")
    with pytest.raises(ValueError, match="targets have format 'SSCB'.*predictions have format 'CB'"):
        cross_entropy(y, t)
    with pytest.raises(ValueError, match="unformatted targets of shape \\(4, 3\\)"):
        cross_entropy(y, np.ones((4, 3)))


def test_no_tape_outside_grad():
    x = fa64((3, 4), "CB", 35)
    y = softmax(fully_connect(x, np.ones((2, 3)), np.zeros(2)))
    assert y._node is None
    z = max_pool(fa64((4, 4, 1, 1), "SSCB", 36), 2)
    assert z._node is None


def test_pytree_gradients_keep_structure():
    x = fa64((4, 2), "CB", 37)
    params = {"fc": {"weights": FormattedArray(np.ones((3, 4))), "bias": FormattedArray(np.zeros((3, 1)))},
              "scale": [fa64((3,), "C", 38)]}

    def loss(p):
        y = fully_connect(x, p["fc"]["weights"], p["fc"]["bias"]) * p["scale"][0]
        return fa.sum(y * y)

    g = fa.grad(loss)(params)
    assert set(g) == {"fc", "scale"} and set(g["fc"]) == {"weights", "bias"}
    assert g["fc"]["weights"].shape == (3, 4) and g["scale"][0].format == "C"
    check_grad(lambda w, b, s: loss({"fc": {"weights": w, "bias": b}, "scale": [s]}),
               params["fc"]["weights"], params["fc"]["bias"], params["scale"][0])


def test_to_device_gradient_comes_back_to_the_source_device():
    import array_api_strict as xps

    d1 = xps.Device("device1")
    x = FormattedArray(xps.asarray(np.arange(6.0).reshape(2, 3)), "CB")
    w = FormattedArray(xps.asarray(np.ones((2, 3)), device=d1), "CB")
    g = fa.grad(lambda x: fa.sum(fa.to_device(x, d1) * w * 3.0))(x)
    assert g.device == x.device
    np.testing.assert_allclose(np.asarray(g.data), 3.0)
    with pytest.raises(ValueError, match="different devices"):
        x * w
