"""FormattedArray as a JAX pytree: ``jax.jit``, ``jax.grad`` and ``jax.vmap`` over functions of
FormattedArrays, the lazy registration, and the jitted training step example.

(The ``xp`` fixture runs the rest of the suite on jax arrays too; this file is about the JAX
transformations.)  float64 is enabled in conftest, so the float64 checks are real.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import fmtarray as fa  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _j(a, dtype=np.float64):
    return jnp.asarray(np.asarray(a, dtype=dtype))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = fa.FormattedArray(_j(rng.standard_normal((3, 2, 7, 6))), "BCSS")  # canonical SSCB
    w = fa.FormattedArray(_j(rng.standard_normal((3, 3, 2, 4)) * 0.5), "SSCU")
    b = fa.FormattedArray(_j(rng.standard_normal(4)), "C")
    return x, w, b


def _net(x, w, b):
    return fa.relu(fa.conv(x, w, b, padding=1, stride=(1, 2)))


def _loss(x, w, b):
    y = _net(x, w, b)
    return fa.sum(y * y - fa.mean(y, "SSB"))


def _close(a, b, tol=1e-10):
    a = a.data if isinstance(a, fa.FormattedArray) else a
    b = b.data if isinstance(b, fa.FormattedArray) else b
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# the pytree ------------------------------------------------------------------------------------


def test_pytree_leaf_is_the_data_and_the_format_is_static(data):
    x, _, _ = data
    leaves, tree = jax.tree_util.tree_flatten(x)
    assert len(leaves) == 1 and leaves[0] is x.data
    assert "SSCB" in str(tree)
    (path, leaf), = jax.tree_util.tree_flatten_with_path(x)[0]
    assert jax.tree_util.keystr(path) == ".data"
    # unflatten wraps as is: no re-permutation, no validation
    y = jax.tree_util.tree_unflatten(tree, leaves)
    assert type(y) is fa.FormattedArray and y.format == "SSCB" and y.data is x.data
    y = jax.tree_util.tree_map(lambda a: a * 2, x)
    assert y.format == "SSCB" and y.shape == x.shape
    _close(y.data, 2 * x.data)
    # a dict of FormattedArrays is a pytree of raw leaves
    assert len(jax.tree_util.tree_leaves({"x": x, "n": [x, x]})) == 3


def test_format_is_part_of_the_tree_structure(data):
    x, _, _ = data
    u = fa.FormattedArray(x.data)  # same data, unformatted
    assert jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(u)


# jit -------------------------------------------------------------------------------------------


def test_jit_matches_eager(data):
    x, w, b = data

    def f(x, w, b):
        y = _net(x, w, b)
        return y - fa.mean(y, "SSB"), fa.max(y, "C"), fa.max_pool(y, 2, stride=2)

    eager = f(x, w, b)
    jitted = jax.jit(f)(x, w, b)
    for e, j in zip(eager, jitted):
        assert type(j) is fa.FormattedArray
        assert j.format == e.format and j.shape == e.shape and j.dtype == e.dtype
        _close(j, e, 1e-12)
    # traced once per format/shape/dtype: a second call with new values reuses the compilation
    count = []
    g = jax.jit(lambda v: (count.append(1), fa.relu(v))[1])
    g(x)
    g(x * 2.0)
    assert len(count) == 1
    g(fa.FormattedArray(x.data, "SSCT"))  # another format is another trace
    assert len(count) == 2


def test_jit_keeps_float32(data):
    x, w, b = (fa.astype(a, jnp.float32) for a in data)
    y = jax.jit(_net)(x, w, b)
    assert y.dtype == jnp.float32
    _close(y, _net(x, w, b), 1e-5)


def test_jit_of_fmtarray_grad(data):
    x, w, b = data
    ref = fa.grad(_loss, argnums=(0, 1, 2))(x, w, b)
    got = jax.jit(fa.grad(_loss, argnums=(0, 1, 2)))(x, w, b)
    for r, g in zip(ref, got):
        assert g.format == r.format
        _close(g, r, 1e-10)


# grad ------------------------------------------------------------------------------------------


def test_jax_grad_matches_fmtarray_grad_and_finite_differences(data):
    x, w, b = data
    gj = jax.grad(lambda *a: _loss(*a).data, argnums=(0, 1, 2))(x, w, b)
    gf = fa.grad(_loss, argnums=(0, 1, 2))(x, w, b)
    for a, g, r in zip((x, w, b), gj, gf):
        assert type(g) is fa.FormattedArray
        assert g.format == a.format and g.shape == a.shape and g.dtype == a.dtype
        _close(g, r, 1e-10)
    # central differences along random directions, float64
    rng = np.random.default_rng(1)
    args = [x, w, b]
    for i in range(3):
        for _ in range(2):
            d = _j(rng.standard_normal(args[i].shape))
            eps = 1e-6

            def at(s, i=i, d=d):
                a = list(args)
                a[i] = fa.FormattedArray(args[i].data + s * d, args[i].format)
                return float(_loss(*a).data)

            fd = (at(eps) - at(-eps)) / (2 * eps)
            an = float(jnp.sum(gj[i].data * d))
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (i, fd, an)


def test_jitted_jax_grad_over_a_dict_of_learnables(data):
    x, w, b = data
    params = {"w": w, "b": b}
    loss = lambda p: _loss(x, p["w"], p["b"]).data
    g = jax.jit(jax.grad(loss))(params)
    assert set(g) == {"w", "b"} and g["w"].format == "SSCU" and g["b"].format == "C"
    ref = fa.grad(lambda p: _loss(x, p["w"], p["b"]))(params)
    _close(g["w"], ref["w"], 1e-10)
    _close(g["b"], ref["b"], 1e-10)


def test_network_forward_under_jit_and_grad():
    from fmtarray.layers import convolution2d_layer, fully_connected_layer, image_input_layer, relu_layer

    net = fa.Network([image_input_layer((6, 6, 2), normalization="none"), convolution2d_layer(3, 4),
                      relu_layer(), fully_connected_layer(3)])
    net.initialize(xp=jnp, dtype=jnp.float64)
    x = fa.FormattedArray(_j(np.random.default_rng(2).standard_normal((6, 6, 2, 5))), "SSCB")
    loss = lambda p: fa.sum(fa.square(net.forward(x, p)[0]))
    params = net.learnables()
    g = jax.jit(jax.grad(lambda p: loss(p).data))(params)
    ref = fa.grad(loss)(params)
    for a, r in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref)):
        _close(a, r, 1e-10)
    # the network's own learnables are untouched by the traced call
    for a, r in zip(jax.tree_util.tree_leaves(net.learnables()), jax.tree_util.tree_leaves(params)):
        assert a is r


# vmap ------------------------------------------------------------------------------------------


def test_vmap_over_a_leading_batch(data):
    """The mapped axis is not part of the format: inside, each example is an "SSC" array."""
    x, w, b = data
    X = jnp.moveaxis(x.data, -1, 0)  # (B, S, S, C): batch-first raw data

    def per_example(d):
        return _net(fa.FormattedArray(d, "SSC"), w, b)

    ys = jax.vmap(per_example)(X)
    assert ys.format == "SSC" and ys.shape[0] == X.shape[0]  # data: mapped axis + format dims
    ref = _net(x, w, b)  # fmtarray's own batch semantics: B is batch-like
    _close(fa.FormattedArray(ys.data, "BSSC"), ref, 1e-12)  # re-label the mapped axis
    # a batched FormattedArray (made by vmapping the constructor) maps through vmap again
    xb = jax.vmap(lambda d: fa.FormattedArray(d, "SSC"))(X)
    ys2 = jax.jit(jax.vmap(lambda v: _net(v, w, b)))(xb)
    _close(ys2, ys, 1e-12)


def test_per_example_gradients_with_vmap(data):
    x, w, b = data
    X = jnp.moveaxis(x.data, -1, 0)

    def loss(w, d):
        return fa.sum(fa.square(_net(fa.FormattedArray(d, "SSC"), w, b))).data

    per = jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, X)
    assert per.format == "SSCU" and per.shape == (X.shape[0],) + w.shape
    full = fa.grad(lambda w: fa.sum(fa.square(_net(x, w, b))))(w)
    _close(jnp.sum(per.data, axis=0), full.data, 1e-10)


# what does not mix -----------------------------------------------------------------------------


def test_fmtarray_traced_array_into_jax_is_an_error(data):
    x, _, _ = data
    with pytest.raises(TypeError, match="fmtarray's tape cannot follow it through JAX"):
        fa.grad(lambda v: fa.sum(jax.jit(fa.relu)(v)))(x)


# lazy registration -----------------------------------------------------------------------------


def test_registration_is_lazy_and_automatic():
    code = """
import sys
import numpy as np
import fmtarray as fa
assert "jax" not in sys.modules, "importing fmtarray must not import jax"
x = fa.FormattedArray(np.ones((2, 3)), "SC")       # built before jax is imported
import jax
y = fa.FormattedArray(np.ones((2, 3), np.float32), "SC")  # first array seen after: registers
out = jax.jit(lambda v: v * 2)(y)
assert type(out) is fa.FormattedArray and out.format == "SC", out
assert fa.register_jax() is True                   # idempotent
out = jax.jit(lambda v: v + 1)(x)
assert type(out) is fa.FormattedArray
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# the example -----------------------------------------------------------------------------------


def test_jitted_training_step_example():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import jax_train_step as ex
    finally:
        sys.path.pop(0)
    losses = ex.main(steps=6, verbose=False)
    assert all(np.isfinite(losses))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses
    x, y = ex.make_data()
    p, _ = ex.train_step(ex.init_params(), x, y, 0.05)
    assert {k: v.format for k, v in p.items()} == {"w1": "SSCU", "b1": "C", "w2": "SSCU", "b2": "C"}
    assert all(v.dtype == jnp.float32 for v in p.values())
