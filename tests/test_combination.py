"""Combination layers (addition, multiplication, concatenation, depth concatenation), the
flatten layer, and the ops ``concat`` / ``flatten``: values and gradients against torch in
float64 (an independent implementation) on every library, errors, display."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray.layers import (
    AdditionLayer, ConcatenationLayer, DepthConcatenationLayer, FlattenLayer, MultiplicationLayer,
    addition_layer, concatenation_layer, depth_concatenation_layer, flatten_layer,
    fully_connected_layer, multiplication_layer,
)

torch = pytest.importorskip("torch")


def _np(a):
    from fmtarray import _backend

    return np.asarray(_backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _grads(f, xs, xp):
    """fmtarray gradients of sum(f(xs) * w) with a fixed random cotangent w."""
    y0 = f(xs)
    w = np.random.default_rng(9).standard_normal(y0.shape)
    W = FormattedArray._wrap(xp.asarray(w), y0.format)
    return fa.grad(lambda v: fa.sum(f(v) * W))(xs), w


def _torch_grads(f, arrays, w):
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    y = f(ts)
    (y * torch.tensor(w)).sum().backward()
    return y.detach().numpy(), [t.grad.numpy() for t in ts]


def _sscb(xp, rng, shape):
    a = rng.standard_normal(shape)
    return a, FormattedArray(xp.asarray(a), "SSCB")


# ops ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,axis", [("C", 2), (3, 2), ("B", 3), (4, 3), (1, 0), (2, 1)])
def test_concat_matches_torch_values_and_gradients(xp, dim, axis):
    rng = np.random.default_rng(0)
    sizes = [2, 3, 1]
    arrays, xs = [], []
    for k in sizes:
        shape = [4, 5, 2, 3]
        shape[axis] = k
        a, x = _sscb(xp, rng, tuple(shape))
        arrays.append(a)
        xs.append(x)
    y = fa.concat(xs, dim)
    assert y.format == "SSCB"
    g, w = _grads(lambda v: fa.concat(v, dim), xs, xp)
    ref_y, ref_g = _torch_grads(lambda ts: torch.cat(ts, dim=axis), arrays, w)
    np.testing.assert_array_equal(xp.to_numpy(y), ref_y)
    for gi, ri, xi in zip(g, ref_g, xs):
        assert gi.format == "SSCB" and gi.shape == xi.shape
        np.testing.assert_array_equal(xp.to_numpy(gi), ri)


def test_concat_errors_name_the_inputs_and_dims():
    a = FormattedArray(np.zeros((4, 4, 2, 1)), "SSCB")
    b = FormattedArray(np.zeros((4, 5, 3, 1)), "SSCB")
    with pytest.raises(ValueError, match=r"input 1 has shape \(4, 4, 2, 1\) and input 2 has shape "
                                         r"\(4, 5, 3, 1\) \(they differ in dim 2 \('S'\)\)"):
        fa.concat([a, b], "C")
    with pytest.raises(ValueError, match=r"same format; input 1 has format 'SSCB'.*input 2 has "
                                         r"format 'CB'"):
        fa.concat([a, FormattedArray(np.zeros((2, 1)), "CB")], "C")
    with pytest.raises(ValueError, match=r"'S' is ambiguous.*2 'S' dims.*\(1, 2\)"):
        fa.concat([a, a], "S")
    with pytest.raises(ValueError, match=r"dim='T' is not a dim of the input format 'SSCB'"):
        fa.concat([a, a], "T")
    with pytest.raises(ValueError, match=r"dim=5 is out of range.*1 to 4"):
        fa.concat([a, a], 5)
    with pytest.raises(TypeError, match="dim must be a label"):
        fa.concat([a, a], 2.0)
    with pytest.raises(ValueError, match="xs is empty"):
        fa.concat([], "C")
    with pytest.raises(TypeError, match="list or tuple"):
        fa.concat(a, "C")


def test_concat_unformatted_takes_dim_numbers_only():
    a, b = np.ones((2, 3)), np.zeros((2, 1))
    y = fa.concat([FormattedArray(a), FormattedArray(b)], 2)
    np.testing.assert_array_equal(_np(y), np.concatenate([a, b], axis=1))
    with pytest.raises(ValueError, match="unformatted.*dim number"):
        fa.concat([FormattedArray(a), FormattedArray(a)], "C")


@pytest.mark.parametrize("fmt,shape", [("SSCB", (3, 4, 2, 5)), ("SCBT", (3, 2, 4, 2)),
                                       ("SSSCB", (2, 3, 2, 2, 3)), ("SSB", (3, 2, 4))])
def test_flatten_is_matlab_column_major_reshape_with_gradients(xp, fmt, shape):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape)
    x = FormattedArray(xp.asarray(a), fmt)
    y = fa.flatten(x)
    ns = fmt.count("S")
    nfeat = int(np.prod(shape[: ns + ("C" in fmt)]))
    rest = shape[ns + ("C" in fmt):]
    assert y.format == "C" + fmt[ns + ("C" in fmt):] and y.shape == (nfeat, *rest)
    # MATLAB: reshape(X, H*W*C, N) in column-major order (first S fastest)
    if not rest:
        ref = a.reshape(nfeat, order="F")
    else:
        ref = np.stack([a[(..., *idx)].reshape(nfeat, order="F") for idx in np.ndindex(rest)],
                       axis=-1).reshape((nfeat, *rest))
    np.testing.assert_array_equal(xp.to_numpy(y), ref)
    g, w = _grads(fa.flatten, x, xp)
    # the gradient of a permutation is the inverse permutation of the cotangent
    perm = tuple([ns] if "C" in fmt else []) + tuple(range(ns - 1, -1, -1))
    perm += tuple(range(len(perm), len(shape)))
    ref_g = torch.tensor(w).reshape(tuple(shape[p] for p in perm)).permute(
        *np.argsort(perm).tolist()).numpy()
    np.testing.assert_array_equal(xp.to_numpy(g), ref_g)


def test_flatten_then_fully_connected_equals_fully_connected():
    rng = np.random.default_rng(2)
    x = FormattedArray(rng.standard_normal((3, 4, 2, 5)), "SSCB")
    w = FormattedArray(rng.standard_normal((6, 24)))
    b = FormattedArray(rng.standard_normal((6, 1)))
    direct = fa.fully_connect(x, w, b)
    via = fa.fully_connect(fa.flatten(x), w, b)
    np.testing.assert_allclose(_np(via), _np(direct), rtol=1e-13)
    cb = FormattedArray(np.ones((3, 2)), "CB")
    assert fa.flatten(cb) is cb
    with pytest.raises(ValueError, match="formatted input"):
        fa.flatten(FormattedArray(np.ones((3, 2))))


# layers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["add", "mul"])
def test_addition_and_multiplication_layers_vs_torch(xp, kind):
    rng = np.random.default_rng(3)
    arrays, xs = zip(*[_sscb(xp, rng, (4, 3, 2, 2)) for _ in range(3)])
    layer = addition_layer(3) if kind == "add" else multiplication_layer(3)
    y = layer.predict(*xs)
    g, w = _grads(lambda v: layer.predict(*v), list(xs), xp)

    def ref(ts):
        return ts[0] + ts[1] + ts[2] if kind == "add" else ts[0] * ts[1] * ts[2]

    ref_y, ref_g = _torch_grads(ref, arrays, w)
    assert _rel(xp.to_numpy(y), ref_y) <= 1e-15
    for gi, ri in zip(g, ref_g):
        assert _rel(xp.to_numpy(gi), ri) <= 1e-14


def test_concatenation_layers_vs_torch(xp):
    rng = np.random.default_rng(4)
    a1, x1 = _sscb(xp, rng, (4, 3, 2, 2))
    a2, x2 = _sscb(xp, rng, (4, 3, 5, 2))
    for layer in (depth_concatenation_layer(2), concatenation_layer(3, 2),
                  concatenation_layer("C", 2)):
        y = layer.predict(x1, x2)
        g, w = _grads(lambda v, lay=layer: lay.predict(*v), [x1, x2], xp)
        ref_y, ref_g = _torch_grads(lambda ts: torch.cat(ts, dim=2), [a1, a2], w)
        np.testing.assert_array_equal(xp.to_numpy(y), ref_y)
        for gi, ri in zip(g, ref_g):
            np.testing.assert_array_equal(xp.to_numpy(gi), ri)
    y = concatenation_layer(4, 2).predict(x1, x1)  # MATLAB dim 4 of SSCB: B
    assert y.shape == (4, 3, 2, 4)


def test_combination_layer_errors_say_which_inputs_differ():
    a = FormattedArray(np.zeros((4, 4, 2, 1)), "SSCB")
    b = FormattedArray(np.zeros((4, 4, 3, 1)), "SSCB")
    with pytest.raises(ValueError, match=r"addition layer 'add': inputs must have the same sizes; "
                                         r"input 'in1' has shape \(4, 4, 2, 1\) and input 'in2' has "
                                         r"shape \(4, 4, 3, 1\)"):
        addition_layer(2, name="add").predict(a, b)
    with pytest.raises(ValueError, match=r"input 'in1' has format 'SSCB'.*input 'in3' has format 'CB'"):
        multiplication_layer(3).predict(a, a, FormattedArray(np.zeros((2, 1)), "CB"))
    with pytest.raises(TypeError, match=r"takes 2 inputs \(in1, in2\), got 3"):
        addition_layer(2).predict(a, a, a)
    with pytest.raises(ValueError, match="except along dim 3"):
        concatenation_layer(3, 2).predict(a, FormattedArray(np.zeros((4, 5, 3, 1)), "SSCB"))
    with pytest.raises(ValueError, match="format 'SB'; they need a 'C' dim"):
        depth_concatenation_layer(2).predict(FormattedArray(np.zeros((4, 1)), "SB"),
                                             FormattedArray(np.zeros((4, 1)), "SB"))
    for bad in (1, 0, 2.5, True, "2"):
        with pytest.raises(ValueError, match="num_inputs must be an integer >= 2"):
            addition_layer(bad)
    for bad in ("X", "CB", 0, -1, 1.5):
        with pytest.raises(ValueError, match="dim must be one label"):
            concatenation_layer(bad, 2)
    with pytest.raises(TypeError, match="name must be a str"):
        flatten_layer(name=3)


def test_ports_and_rebuild_from_constructor_parameters():
    layers = [AdditionLayer(3, name="a"), MultiplicationLayer(2), ConcatenationLayer("C", 4),
              DepthConcatenationLayer(2, name="d"), FlattenLayer(name="f")]
    params = {AdditionLayer: ("num_inputs", "name"), MultiplicationLayer: ("num_inputs", "name"),
              ConcatenationLayer: ("dim", "num_inputs", "name"),
              DepthConcatenationLayer: ("num_inputs", "name"), FlattenLayer: ("name",)}
    for layer in layers:
        again = type(layer)(**{p: getattr(layer, p) for p in params[type(layer)]})
        assert repr(again) == repr(layer)
        assert again.input_names == layer.input_names and again.num_outputs == 1
    assert layers[0].input_names == ("in1", "in2", "in3") and layers[0].output_names == ("out",)
    assert layers[4].input_names == ("in",)
    layers[1].num_inputs = 4
    assert layers[1].input_names == ("in1", "in2", "in3", "in4")


def test_default_display_matlab_style():
    assert repr(addition_layer(2)) == (
        "AdditionLayer with properties:\n\n              Name: ''\n         NumInputs: 2\n"
        "        InputNames: {'in1', 'in2'}")
    assert repr(flatten_layer()) == "FlattenLayer with properties:\n\n              Name: ''"
    text = repr(concatenation_layer(3, 2))
    assert "               Dim: 3" in text
    rows = [(layer.type_name(), layer.description()) for layer in (
        addition_layer(2), multiplication_layer(3), concatenation_layer(3, 2),
        depth_concatenation_layer(2), flatten_layer())]
    assert rows == [("Addition", "Element-wise addition of 2 inputs"),
                    ("Multiplication", "Element-wise multiplication of 3 inputs"),
                    ("Concatenation", "Concatenation of 2 inputs along dimension 3"),
                    ("Depth concatenation", "Depth concatenation of 2 inputs"),
                    ("Flatten", "Flatten")]


def test_flatten_layer_in_a_network_equals_fc_alone():
    rng = np.random.default_rng(5)
    x = FormattedArray(rng.standard_normal((3, 4, 2, 5)), "SSCB")
    a = fa.Network([flatten_layer(), fully_connected_layer(3, name="fc")]).initialize(x)
    b = fa.Network([fully_connected_layer(3, name="fc")]).initialize(x)
    b.set_learnables(a.learnables())
    np.testing.assert_allclose(_np(a.predict(x)), _np(b.predict(x)), rtol=1e-13)


def test_matlab_names():
    from fmtarray import matlab as m

    assert m.additionLayer(2, "Name", "add").name == "add"
    assert m.multiplicationLayer(3, Name="m").num_inputs == 3
    c = m.concatenationLayer(3, 2)
    assert (c.dim, c.num_inputs) == (3, 2)
    assert m.depthConcatenationLayer(4).input_names[-1] == "in4"
    assert isinstance(m.flattenLayer(), FlattenLayer)
    with pytest.raises(ValueError, match="additionLayer: NumInputs \\(num_inputs\\)"):
        m.additionLayer(1)
    with pytest.raises(TypeError, match="unknown option 'Dim'"):
        m.additionLayer(2, "Dim", 3)
