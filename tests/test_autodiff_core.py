"""Core autodiff: label-broadcast gradients on every backend, pytrees, errors."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray


def _numeric_grad(f, arrays, i, eps=1e-6):
    base = [a.copy() for a in arrays]
    g = np.zeros_like(base[i])
    for idx in np.ndindex(g.shape):
        p = [a.copy() for a in base]
        m = [a.copy() for a in base]
        p[i][idx] += eps
        m[i][idx] -= eps
        g[idx] = (f(*p) - f(*m)) / (2 * eps)
    return g


def test_broadcast_where_pow_grad_matches_finite_differences(xp):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 3, 2))
    c = rng.standard_normal(3)

    def ref(a, c):
        y = np.tanh(a * c[None, :, None] - a.mean(0, keepdims=True))
        return np.where(a > 0.1, y ** 2, c[None, :, None]).sum()

    def f(x, w):
        return fa.sum(fa.where(x > 0.1, fa.tanh(x * w - fa.mean(x, "S")) ** 2.0, w))

    x = FormattedArray(xp.asarray(a), "SCB")
    w = FormattedArray(xp.asarray(c), "C")
    val, (gx, gw) = fa.value_and_grad(f, argnums=(0, 1))(x, w)
    assert gx.format == "SCB" and gw.format == "C"
    assert gx.device == x.device
    np.testing.assert_allclose(float(xp.to_numpy(val)), ref(a, c), rtol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(gx), _numeric_grad(ref, [a, c], 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(xp.to_numpy(gw), _numeric_grad(ref, [a, c], 1), rtol=1e-6, atol=1e-8)


def test_pytree_arguments_and_has_aux():
    rng = np.random.default_rng(0)
    params = {"w": FormattedArray(rng.standard_normal(3), "C"), "b": [FormattedArray(np.ones(2), "B")]}
    x = FormattedArray(rng.standard_normal((3, 2)), "CB")

    def loss(p, x):
        y = x * p["w"] + p["b"][0]
        return fa.sum(y * y), "aux"

    (val, aux), g = fa.value_and_grad(loss, has_aux=True)(params, x)
    assert aux == "aux"
    y = x.data * params["w"].data[:, None] + 1
    np.testing.assert_allclose(g["w"].data, (2 * y * x.data).sum(1))
    np.testing.assert_allclose(g["b"][0].data, (2 * y).sum(0))
    assert g["b"][0].format == "B"


def test_unused_argument_gets_zero_gradient():
    x = FormattedArray(np.ones((2, 3)), "CB")
    y = FormattedArray(np.ones(3), "B")
    gx, gy = fa.grad(lambda x, y: fa.sum(x), argnums=(0, 1))(x, y)
    np.testing.assert_array_equal(gy.data, np.zeros(3))


def test_errors():
    x = FormattedArray(np.ones((2, 3)), "CB")
    with pytest.raises(ValueError, match=r"scalar loss, got shape \(2, 3\)"):
        fa.grad(lambda x: x * 2.0)(x)
    with pytest.raises(TypeError, match="argument 0.*not a FormattedArray"):
        fa.grad(lambda x: fa.sum(x))(np.ones(3))
    with pytest.raises(TypeError, match="dtype"):
        fa.grad(lambda x: fa.sum(x))(FormattedArray(np.ones(3, dtype=np.int64), "C"))


def test_nothing_recorded_outside_grad():
    x = FormattedArray(np.ones((2, 3)), "CB")
    y = fa.tanh(x * 2.0 + 1.0)
    assert y._node is None


def test_grad_step_leaves_no_cyclic_garbage():
    """A gradient over a dict of parameters frees everything by reference counting: the
    tape, the traced leaves and the rebuilt argument hold no reference cycle (a
    self-referencing closure in the rebuild once kept each step's leaves alive until the
    cyclic GC ran)."""
    import gc

    rng = np.random.default_rng(0)
    x = FormattedArray(rng.standard_normal((6, 5, 3, 2)).astype(np.float32), "SSCB")
    params = {"w": FormattedArray(rng.standard_normal((3, 3, 3, 4)).astype(np.float32)),
              "b": [FormattedArray(rng.standard_normal(4).astype(np.float32))]}

    def loss(p, x):
        return fa.sum(fa.relu(fa.conv(x, p["w"], p["b"][0], padding=1)) * x[:, :, :1, :])

    step = fa.grad(loss, argnums=(0, 1))
    step(params, x)
    gc.collect()
    gc.disable()
    try:
        gp, gx = step(params, x)
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0
    assert gp["w"].shape == (3, 3, 3, 4) and gp["b"][0].shape == (4,)
    assert gx.format == "SSCB" and float(fa.sum(gx * gx).data) > 0


def test_recorded_vjps_keep_only_the_arrays_they_read():
    """The tape keeps what each VJP reads, as torch autograd saves tensors: a sum keeps
    nothing of its input, a product with an untraced factor keeps that factor only, a sum
    of arrays keeps neither, relu keeps its output, not its input. So ``sum(conv(x) * g)``
    frees the conv output and the product when the forward is done with them, instead of
    holding both until the backward pass (two more arrays of the output's size)."""
    import weakref

    rng = np.random.default_rng(1)
    g = rng.standard_normal((4, 3, 2))
    x0 = rng.standard_normal((4, 3, 2))
    dropped, kept = [], []

    def f(x):
        y = x + 1.0  # add: reads nothing
        h = fa.relu(y * 3.0)  # multiply by a scalar: reads the scalar; relu: its output
        q = h + y
        p = q * g  # g untraced: the product keeps g, not q
        s = fa.sum(p)  # reads nothing of p
        dropped.extend(weakref.ref(a.data) for a in (y, q, p))
        kept.append(weakref.ref(h.data))
        del y, h, q, p
        assert [r() is None for r in dropped] == [True] * 3
        assert kept[0]() is not None  # relu's VJP reads it
        return s

    val, gx = fa.value_and_grad(f)(FormattedArray(x0, "SCB"))
    y = x0 + 1.0
    np.testing.assert_allclose(float(val.data), np.sum((np.maximum(3 * y, 0) + y) * g), rtol=1e-12)
    np.testing.assert_allclose(gx.data, g * (3.0 * (y > 0) + 1.0), rtol=1e-12)

    # both factors traced: each keeps the other, and the gradients are the other factor
    a0, b0 = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    ga, gb = fa.grad(lambda a, b: fa.sum(a * b), argnums=(0, 1))(
        FormattedArray(a0, "CB"), FormattedArray(b0, "CB"))
    np.testing.assert_array_equal(ga.data, b0)
    np.testing.assert_array_equal(gb.data, a0)
