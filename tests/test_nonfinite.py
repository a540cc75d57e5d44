"""Non-finite values (SPEC §2): NaN and inf propagate through every op as IEEE
arithmetic says, on every library, and gradients are NaN or inf exactly where
torch autograd's are (and equal to them elsewhere).

Inputs mix NaN, ±inf, zeros and ordinary values; the cotangent fed back is a
fixed array that itself holds NaN and inf, so that "an exact zero even where
the cotangent is NaN" (relu, where, maximum) is checked as well as "NaN passes".
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels import elementwise as kernels
from fmtarray.ops.nn import cross_entropy, softmax

HAS_TORCH = importlib.util.find_spec("torch") is not None
# the inputs are NaN and inf on purpose: NumPy (also inside Dask) warns about them
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
nan, inf = np.nan, np.inf

# eight values on an "S" dim: NaN, ±inf, zero and ordinary numbers
X = np.array([nan, -inf, -2.0, -0.5, 0.0, 0.5, 3.0, inf])
# a second operand without ties against X
Y = np.array([1.0, 2.0, -inf, nan, 0.25, -1.0, 0.0, 4.0])
# the cotangent: ordinary values with a NaN and an inf in places where some ops
# select (x > 0) and others do not
W = np.array([1.0, 2.0, nan, -1.0, inf, nan, 0.5, -inf])


def _out(xp, v):
    return xp.to_numpy(v)


def _same_nonfinite(ours, ref, what):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, what
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{what}: NaN pattern")
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref), err_msg=f"{what}: +inf")
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref), err_msg=f"{what}: -inf")
    fin = np.isfinite(ref)
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=1e-12, atol=1e-300, err_msg=what)


# forward: NaN in, NaN out, on every library ------------------------------------------------


def test_relu_propagates_nan(xp):
    for dt in (np.float32, np.float64):
        x = FormattedArray(xp.asarray(X, dt), "S")
        y = fa.relu(x)
        assert y.dtype == x.dtype and y.format == "S"
        np.testing.assert_array_equal(_out(xp, y), np.array([nan, 0, 0, 0, 0, 0.5, 3, inf], dt))


@pytest.mark.parametrize("name", [
    "exp", "log", "sqrt", "tanh", "sigmoid", "sin", "cos", "abs", "square", "negative", "relu",
])
def test_unary_keeps_nan(xp, name):
    x = FormattedArray(xp.asarray(X), "S")
    with np.errstate(all="ignore"):
        y = _out(xp, getattr(fa, name)(x))
        special = {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v))}
        ref = special[name](X) if name in special else getattr(np, name)(X)
    _same_nonfinite(y, ref, name)


def test_binary_reductions_and_nn_keep_nan(xp):
    x = FormattedArray(xp.asarray(X), "S")
    y = FormattedArray(xp.asarray(Y), "S")
    with np.errstate(all="ignore"):
        _same_nonfinite(_out(xp, fa.maximum(x, y)), np.maximum(X, Y), "maximum")
        _same_nonfinite(_out(xp, fa.minimum(x, y)), np.minimum(X, Y), "minimum")
        _same_nonfinite(_out(xp, fa.clip(x, -1.0, 1.0)), np.clip(X, -1, 1), "clip")
        _same_nonfinite(_out(xp, x * y), X * Y, "multiply")
        _same_nonfinite(_out(xp, fa.where(x > 0, x, y)), np.where(X > 0, X, Y), "where")
    for red in ("sum", "mean", "max", "min", "var", "std"):
        assert np.isnan(_out(xp, getattr(fa, red)(x, "S"))), red
    # label broadcast: a NaN channel scale spoils only its own channel
    a = FormattedArray(xp.asarray(np.ones((4, 3))), "SC")
    c = FormattedArray(xp.asarray(np.array([1.0, nan, 2.0])), "C")
    np.testing.assert_array_equal(np.isnan(_out(xp, a * c)), np.isnan(np.ones((4, 3)) * [1, nan, 2]))
    # softmax over C and the cross-entropy of a NaN prediction
    p = np.array([[0.2, 0.3], [nan, 0.3], [0.6, 0.4]])  # C × B
    t = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    s = _out(xp, softmax(FormattedArray(xp.asarray(p), "CB")))
    assert np.isnan(s[:, 0]).all() and np.isfinite(s[:, 1]).all()
    loss = cross_entropy(FormattedArray(xp.asarray(p), "CB"), FormattedArray(xp.asarray(t), "CB"))
    assert np.isnan(_out(xp, loss))


# gradients: the NaN / inf pattern of torch autograd ------------------------------------------


def _ours(xp, f, *arrays, fmts):
    """Gradients of ``sum(f(*args) * W_out)`` w.r.t. every argument."""
    args = tuple(FormattedArray(xp.asarray(a), fm) for a, fm in zip(arrays, fmts))

    def loss(*a):
        out = f(*a)
        w = np.resize(W, out.shape)
        return fa.sum(out * FormattedArray._wrap(xp.asarray(w), out.format))

    with np.errstate(all="ignore"):
        gs = fa.grad(loss, argnums=tuple(range(len(args))))(*args)
    return [_out(xp, g) for g in gs]


def _torch(f, *arrays):
    import torch

    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = f(*ts)
    w = torch.tensor(np.resize(W, tuple(out.shape)), dtype=torch.float64)
    (out * w).sum().backward()
    return [t.grad.numpy() for t in ts]


def _torch_cases():
    import torch

    eps = float(np.finfo(np.float64).eps)
    pos = np.abs(Y) + 0.5
    pos[3] = nan
    probs = np.array([[0.2, 0.0], [nan, 0.3], [0.6, inf], [0.2, 0.7]])  # C × B
    onehot = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    return {
        "relu": (fa.relu, torch.relu, (X,), ("S",)),
        "sigmoid": (fa.sigmoid, torch.sigmoid, (X,), ("S",)),
        "exp": (fa.exp, torch.exp, (X,), ("S",)),
        "log": (fa.log, torch.log, (X,), ("S",)),
        "sqrt": (fa.sqrt, torch.sqrt, (X,), ("S",)),
        "tanh": (fa.tanh, torch.tanh, (X,), ("S",)),
        "sin": (fa.sin, torch.sin, (X,), ("S",)),
        "abs": (fa.abs, torch.abs, (X,), ("S",)),
        "square": (fa.square, torch.square, (X,), ("S",)),
        "maximum": (fa.maximum, torch.maximum, (X, Y), ("S", "S")),
        "minimum": (fa.minimum, torch.minimum, (X, Y), ("S", "S")),
        "multiply": (fa.multiply, torch.mul, (X, Y), ("S", "S")),
        "divide": (fa.divide, torch.div, (X, Y), ("S", "S")),
        "pow": (fa.pow, torch.pow, (np.abs(X), Y), ("S", "S")),
        "pow_zero_base": (fa.pow, torch.pow, (np.array([0.0, 0.0, 2.0, 0.0, 1.0, 0.0, 3.0, 0.5]),
                                              np.array([0.0, 2.0, 1.0, -1.0, 0.0, 0.5, 0.0, nan])),
                          ("S", "S")),
        "pow_scalar": (lambda a: a ** 2.0, lambda a: a ** 2.0, (X,), ("S",)),
        "pow_zero": (lambda a: a ** 0.0, lambda a: a ** 0.0, (X,), ("S",)),
        "scalar_pow": (lambda b: 2.0 ** b, lambda b: 2.0 ** b, (Y,), ("S",)),
        "clip": (lambda a: fa.clip(a, -1.0, 1.0), lambda a: torch.clamp(a, -1.0, 1.0), (X,), ("S",)),
        "clip_min": (lambda a: fa.clip(a, 0.5), lambda a: torch.clamp(a, min=0.5), (X,), ("S",)),
        "clip_arrays": (lambda a, b: fa.clip(a, b), lambda a, b: torch.maximum(a, b), (X, Y),
                        ("S", "S")),
        "where": (lambda a, b: fa.where(a > 0, a, b), lambda a, b: torch.where(a > 0, a, b),
                  (X, Y), ("S", "S")),
        "broadcast_mul": (lambda a, c: a * c, lambda a, c: a * c[None, :],
                          (np.reshape(np.resize(X, 12), (4, 3)), np.array([1.0, nan, -inf])),
                          ("SC", "C")),
        "sum": (lambda a: fa.sum(a, "S"), lambda a: torch.sum(a, 0),
                (np.reshape(np.resize(X, 16), (4, 4)),), ("SC",)),
        "max": (lambda a: fa.max(a, "S"), lambda a: torch.amax(a, 0),
                (np.array([[1.0, nan, inf, 2.0], [3.0, 1.0, inf, 2.0]]),), ("SC",)),
        "var": (lambda a: fa.var(a, "S"), lambda a: torch.var(a, 0, correction=0),
                (np.array([[1.0, nan, inf, 2.0], [3.0, 1.0, 0.0, 2.0]]),), ("SC",)),
        "softmax": (softmax, lambda a: torch.softmax(a, 0), (probs,), ("CB",)),
        "cross_entropy": (
            lambda p: cross_entropy(p, FormattedArray._wrap(np.asarray(onehot), "CB")),
            lambda p: -(torch.tensor(onehot) * torch.log(torch.maximum(p, torch.tensor(eps)))
                        ).sum() / 2,
            (np.abs(probs),), ("CB",)),
        "log_positive": (fa.log, torch.log, (pos,), ("S",)),
    }


@pytest.mark.skipif(not HAS_TORCH, reason="torch is the reference for gradient patterns")
@pytest.mark.parametrize("case", [
    "relu", "sigmoid", "exp", "log", "sqrt", "tanh", "sin", "abs", "square", "maximum",
    "minimum", "multiply", "divide", "pow", "pow_zero_base", "pow_scalar", "pow_zero", "scalar_pow", "clip", "clip_min", "clip_arrays", "where",
    "broadcast_mul", "sum", "max", "var", "softmax", "cross_entropy", "log_positive",
])
def test_gradient_nonfinite_pattern_matches_torch(xp, case):
    ours_f, torch_f, arrays, fmts = _torch_cases()[case]
    if case == "cross_entropy":  # the targets must live in the library under test
        onehot = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        t = FormattedArray(xp.asarray(onehot), "CB")
        ours_f = lambda p: cross_entropy(p, t)  # noqa: E731
    ref = _torch(torch_f, *arrays)
    ours = _ours(xp, ours_f, *arrays, fmts=fmts)
    for i, (o, r) in enumerate(zip(ours, ref)):
        _same_nonfinite(o, r, f"{case} on {xp.name}, argument {i}")


# the kernels' exact selection ----------------------------------------------------------------


@pytest.mark.parametrize("dt", [np.float16, np.float32, np.float64])
def test_numpy_bit_select_is_where(dt):
    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 7)).astype(dt)
    g[0, :3] = [nan, inf, -inf]
    mask = rng.random((5, 7)) < 0.5
    mask[0, :3] = [True, False, True]
    for m in (mask, mask[:, :1], mask[:1, :]):  # the mask may broadcast against g
        z = kernels.zero_where(np, m, g)
        k = kernels.keep_where(np, m, g)
        assert z.dtype == k.dtype == dt
        np.testing.assert_array_equal(z, np.where(m, dt(0), g))
        np.testing.assert_array_equal(k, np.where(m, g, dt(0)))
        assert not np.signbit(z[np.broadcast_to(m, z.shape)]).any()  # an exact +0
    # g broadcasting against a larger mask
    np.testing.assert_array_equal(kernels.zero_where(np, mask, g[:1]), np.where(mask, dt(0), g[:1]))


def test_native_implementation_per_library(xp):
    """The hot ops run on the library's own primitive (a silent fall-back to the
    portable versions would fail here)."""
    expected = {"numpy": "numpy", "numpy-readonly": "numpy", "torch": "torch", "jax": "jax"}
    got = kernels.implementation(xp.ns)
    assert got == expected.get(xp.name, "array-api"), (xp.name, got)


def test_numpy_in_place_sigmoid_matches_formula():
    """The in-place NumPy sigmoid and its VJP equal the plain formulas, keep the
    dtype, and fall back (never write into an operand) when shapes or dtypes differ."""
    x = np.array([[nan, -inf, -30.0, 0.0], [1.5, 30.0, inf, -1.0]], np.float32)
    with np.errstate(over="ignore"):
        ref = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    y = kernels.sigmoid(np, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    g = np.array([1.0, nan, 2.0, inf], np.float32)
    for gg in (g, g.astype(np.float64), np.float32(3.0)):
        before = np.array(gg, copy=True)
        got = kernels.sigmoid_vjp(np, gg, y)
        want = gg * y * (1 - y)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(gg), before)


# the convolution's gradients next to non-finite weights --------------------------------------


def _torch_conv_grads(x, w, gy, stride, dil, pb, pa, value):
    """Gradients of ``sum(conv(x, w) * gy)`` by torch autograd in float64: channels-last
    ``x`` ``(N, *sp, C)``, MATLAB weights ``(*k, Cg, Fg, G)``; mirror padding gathers
    indices (autograd scatters them back), constant padding is ``F.pad``."""
    import torch

    from conv_reference import ref_pad

    d = x.ndim - 2
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    xc = xt.movedim(-1, 1)
    if isinstance(value, str):
        for ax in range(d):
            idx = ref_pad(np.arange(x.shape[ax + 1]), (pb[ax],), (pa[ax],), (0,), value)
            xc = torch.index_select(xc, 2 + ax, torch.tensor(idx))
    else:
        pads = [p for ax in reversed(range(d)) for p in (pb[ax], pa[ax])]
        xc = torch.nn.functional.pad(xc, pads, value=value)
    k, (cg, fg, g) = w.shape[:d], w.shape[d:]
    wc = wt.permute(d + 2, d + 1, d, *range(d)).reshape(g * fg, cg, *k).contiguous()
    y = getattr(torch.nn.functional, f"conv{d}d")(xc, wc, stride=stride, dilation=dil, groups=g)
    (y * torch.tensor(gy, dtype=torch.float64).movedim(-1, 1)).sum().backward()
    return xt.grad.numpy(), wt.grad.numpy()


def _same_pattern(ours, ref, tol, what):
    """Same NaN, +inf and -inf positions; the finite values within ``tol`` of the largest."""
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == ref.shape, what
    for f in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(f(ours), f(ref), err_msg=f"{what}: {f.__name__}")
    fin = np.isfinite(ref)
    if fin.any():
        scale = max(float(np.max(np.abs(ref[fin]))), 1e-30)
        assert float(np.max(np.abs(ours[fin] - ref[fin]))) <= tol * scale, what


def _spoil(a, rng, seed):
    """A copy of ``a`` with NaN (and, for some seeds, +inf and -inf) at random places."""
    a = a.copy()
    for v in (nan, inf, -inf)[: 1 + seed % 3]:
        a.reshape(-1)[rng.integers(a.size)] = v
    return a


def _with_non_finite(cfg, seed, where="w"):
    """``(x, w, rng)`` of the configuration, the weights (``where="w"``) or the input
    (``"x"``) spoiled by :func:`_spoil`; ``rng`` then draws the cotangent."""
    import test_numpy_algos as T

    x, w, _ = T._arrays(cfg)
    rng = np.random.default_rng(seed)
    if where == "w":
        w = _spoil(w, rng, seed)
    elif where == "x":
        x = _spoil(x, rng, seed)
    return x, w, rng


def _conv_grad_cases():
    import test_numpy_algos as T

    return {name: spec for name, spec in T.DOMAINS.items()
            if set(spec[0]) & {"input_grad", "weight_grad"}}


GRAD_ENTRIES = ["numpy.depthwise_bi", "numpy.depthwise", "numpy.flat_shift",
                "numpy.winograd_weight_grad", "numpy.last_innermost", "numpy.input_grad_bi",
                "numpy.winograd_input_grad", "numpy.last_innermost_input_grad",
                "numpy.gemm_wide", "numpy.gemm", "numpy.grad_as_conv", "numpy.col2im"]


def test_every_numpy_gradient_entry_is_checked():
    assert sorted(GRAD_ENTRIES) == sorted(_conv_grad_cases())


@pytest.mark.skipif(not HAS_TORCH, reason="torch is the reference for gradient patterns")
@pytest.mark.parametrize("where", ["w", "x", "gy"])
@pytest.mark.parametrize("name", GRAD_ENTRIES)
def test_conv_gradients_next_to_non_finite_weights_numpy_entries(name, where):
    """Each NumPy entry serving a gradient, forced by name over its domain, with NaN
    and ±inf weights: NaN and ±inf exactly where torch autograd has them (a stride-1
    input gradient that convolves the zero-padded cotangent would put ``0·inf = NaN``
    where no tap reaches); the Winograd input gradient declines them instead."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import array_api_compat.numpy as cnp

    import test_numpy_algos as T
    from fmtarray._kernels.conv import tuning
    from fmtarray._kernels.conv.registry import _by_name
    from fmtarray._kernels.conv.spec import Layout
    from kernel_calls import conv_backward, nsc_dims, spec_of

    ops, strategy = T.DOMAINS[name]
    grads = [op for op in ops if op != "forward"]
    ran = []

    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        cfg = data.draw(strategy, label="config")
        x, w, rng = _with_non_finite(cfg, len(ran), where)
        kw = T._kw(cfg)
        xl = T.laid_out(x, cfg["layout"], cfg["reverse"])
        with tuning(**cfg["tuning"]):
            spec = spec_of(cnp, x, w, **kw)
            gy = rng.standard_normal((spec.N, *spec.out, spec.F)).astype(cfg["dtype"])
            if where == "gy":
                gy = _spoil(gy, rng, len(ran))
            gyl = T.laid_out(gy, cfg["layout"], cfg["reverse"])
            if _by_name(name).applies(spec, Layout.of(nsc_dims(spec.d), xl, gyl)) is not None:
                return
            needs = ("input_grad" in grads, "weight_grad" in grads, False)
            force = {op: name for op in grads}
            if name.startswith("numpy.winograd") and (
                    where == "gy" or where == ("w" if "input" in name else "x")):
                with pytest.raises(ValueError, match="non-finite"):
                    conv_backward(cnp, gyl, xl, w, needs=needs, force=force, **kw)
                ran.append(name)
                return
            gx, gw, _ = conv_backward(cnp, gyl, xl, w, needs=needs, force=force, **kw)
        rx, rw = _torch_conv_grads(x, w, gy, cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"],
                                   cfg["value"])
        tol = 1e-4 if cfg["dtype"] == np.float32 else 1e-10
        if needs[0]:
            _same_pattern(gx, rx, tol, f"{name} input gradient, {cfg}")
        if needs[1]:
            _same_pattern(gw, rw, tol, f"{name} weight gradient, {cfg}")
        ran.append(name)

    with np.errstate(all="ignore"):
        check()
    assert len(ran) >= 3, f"{name}: too few configurations inside the domain"


@pytest.mark.skipif(not HAS_TORCH, reason="torch is the reference for gradient patterns")
@pytest.mark.parametrize("lib", ["portable", "array_api_strict", "torch", "jax"])
def test_conv_gradients_next_to_non_finite_weights_libraries(lib):
    """The same on each library's own entry (and the portable one, forced on NumPy and
    run by ``array_api_strict``), float64, over strides, dilations, groups, 1-3 dims
    and every padding form."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import test_numpy_algos as T
    from kernel_calls import conv_backward, spec_of

    if lib == "portable":
        import array_api_compat.numpy as xp
        conv, force = np.asarray, "portable.im2col"
    elif lib == "array_api_strict":
        xp = pytest.importorskip("array_api_strict")
        conv, force = xp.asarray, None
    elif lib == "torch":
        import array_api_compat.torch as xp
        import torch

        conv, force = torch.from_numpy, None
    else:
        xp = pytest.importorskip("jax.numpy")
        conv, force = xp.asarray, None
    ran = []

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        cfg = dict(data.draw(T.config(layouts="cl"), label="config"), dtype=np.float64)
        x, w, rng = _with_non_finite(cfg, len(ran))
        kw = T._kw(cfg)
        spec = spec_of(np, x, w, **kw)
        gy = rng.standard_normal((spec.N, *spec.out, spec.F))
        gx, gw, _ = conv_backward(xp, conv(gy), conv(x), conv(w), needs=(True, True, False),
                                  force=force, **kw)
        rx, rw = _torch_conv_grads(x, w, gy, cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"],
                                   cfg["value"])
        _same_pattern(np.asarray(gx), rx, 1e-10, f"{lib} input gradient, {cfg}")
        _same_pattern(np.asarray(gw), rw, 1e-10, f"{lib} weight gradient, {cfg}")
        ran.append(cfg)

    with np.errstate(all="ignore"):
        check()
