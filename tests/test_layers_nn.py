"""The non-convolution layers and their ops: every backend, MATLAB semantics, errors."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels import pool as kpool
from fmtarray.layers import (
    AveragePooling2DLayer,
    BatchNormalizationLayer,
    FullyConnectedLayer,
    ImageInputLayer,
    MaxPooling2DLayer,
    average_pooling2d_layer,
    batch_normalization_layer,
    fully_connected_layer,
    image_input_layer,
    max_pooling2d_layer,
    relu_layer,
    softmax_layer,
)
from fmtarray.ops.nn import batch_norm, cross_entropy, fully_connect, one_hot, softmax
from fmtarray.ops.pool import avg_pool, max_pool


def _np(a):
    from fmtarray import _backend

    return np.asarray(_backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


R = np.random.default_rng(0)
X4 = R.standard_normal((5, 6, 3, 2))  # SSCB
W4, B4 = R.standard_normal((4, 5 * 6 * 3)), R.standard_normal((4, 1))
OFF, SC = R.standard_normal((1, 1, 3)), R.uniform(0.5, 2, (1, 1, 3))


# ops on every backend ------------------------------------------------------------------------


def _ops_suite(make):
    """(name, function of formatted inputs built by ``make``) pairs used on every backend."""
    x = make(X4, "SSCB")
    w = make(W4, "")
    b = make(B4, "")
    t = make(np.eye(4)[:, [0, 3]], "CB")
    off = make(OFF, "")
    sc = make(SC, "")
    return {
        "max_pool": (lambda x: max_pool(x, 2, stride=2), (x,)),
        "max_pool_same": (lambda x: max_pool(x, 3, stride=2, padding="same"), (x,)),
        "avg_pool": (lambda x: avg_pool(x, (2, 3), stride=(1, 2), padding=1), (x,)),
        "avg_pool_mean": (lambda x: avg_pool(x, 3, padding=1, padding_value="mean"), (x,)),
        "fc_softmax_ce": (lambda x, w, b: cross_entropy(softmax(fully_connect(x, w, b)), t),
                          (x, w, b)),
        "batch_norm": (lambda x, o, s: batch_norm(x, o, s, training=True)[0], (x, off, sc)),
    }


def _loss(out):
    rng = np.random.default_rng(out.ndim)
    r = rng.standard_normal(out.shape)
    xp = out.xp
    R_ = FormattedArray._wrap(xp.asarray(r, dtype=out.dtype, device=out.device), out.format)
    return fa.sum(out * R_)


@pytest.mark.parametrize("op", ["max_pool", "max_pool_same", "avg_pool", "avg_pool_mean",
                                "fc_softmax_ce", "batch_norm"])
def test_ops_every_backend(xp, op):
    ref_suite = _ops_suite(lambda a, f: FormattedArray._wrap(np.asarray(a, np.float64), f))
    suite = _ops_suite(lambda a, f: FormattedArray._wrap(xp.asarray(a, np.float64), f))
    f_ref, args_ref = ref_suite[op]
    f, args = suite[op]
    y_ref, y = f_ref(*args_ref), f(*args)
    assert y.format == y_ref.format and y.shape == y_ref.shape
    np.testing.assert_allclose(_np(y), _np(y_ref), rtol=1e-10, atol=1e-12)
    n = tuple(range(len(args)))
    g_ref = fa.grad(lambda *a: _loss(f_ref(*a)), argnums=n)(*args_ref)
    g = fa.grad(lambda *a: _loss(f(*a)), argnums=n)(*args)
    for gi, gr, a in zip(g, g_ref, args):
        assert gi.format == a.format and gi.shape == a.shape
        assert gi.device == a.device
        np.testing.assert_allclose(_np(gi), _np(gr), rtol=1e-10, atol=1e-12)


def test_float32_stays_float32(xp):
    x = FormattedArray._wrap(xp.asarray(X4, np.float32), "SSCB")
    w = FormattedArray._wrap(xp.asarray(R.standard_normal((3, 90)), np.float32), "")
    y = softmax(fully_connect(max_pool(x, 1), w))
    assert y.dtype == x.dtype
    g = fa.grad(lambda w: fa.sum(fully_connect(x, w) ** 2.0))(w)
    assert g.dtype == w.dtype


# pooling ----------------------------------------------------------------------------------------


def test_pool_geometry_matches_matlab():
    # MATLAB: floor((n + pads - k) / s) + 1; 'same' → ceil(n / s), the odd pixel after
    assert kpool.pool_output_size(28, 2, 2, 0, 0) == 14
    assert kpool.pool_output_size(7, 2, 2, 0, 0) == 3  # what does not fit is ignored
    assert kpool.same_padding(7, 3, 2) == (1, 1)
    assert kpool.same_padding(6, 3, 2) == (0, 1)
    assert kpool.same_padding(5, 2, 1) == (0, 1)
    y = max_pool(FormattedArray(np.zeros((7, 5, 1, 1)), "SSCB"), 3, stride=2, padding="same")
    assert y.shape == (4, 3, 1, 1)


def test_max_pool_values_and_first_max_gradient():
    x = np.array([[1.0, 2.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    X = FormattedArray(x, "SS")
    y = max_pool(X, 2, stride=1)
    np.testing.assert_array_equal(y.data, [[2, 2], [2, 5]])
    g = fa.grad(lambda X: fa.sum(max_pool(X, 2, stride=1)))(X)
    # windows (0,0) and (1,0) tie: the first maximum in row-major window order wins
    np.testing.assert_array_equal(g.data, [[0, 2, 0], [1, 0, 0], [0, 0, 1]])


def test_max_pool_padding_never_wins():
    X = FormattedArray(-np.ones((2, 2)), "SS")
    y = max_pool(X, 2, stride=1, padding=1)
    np.testing.assert_array_equal(y.data, -np.ones((3, 3)))


def test_avg_pool_padding_values():
    X = FormattedArray(np.ones((2, 2)), "SS")
    y0 = avg_pool(X, 2, stride=1, padding=1)
    np.testing.assert_allclose(y0.data, [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]])
    ym = avg_pool(X, 2, stride=1, padding=1, padding_value="mean")
    np.testing.assert_allclose(ym.data, np.ones((3, 3)))


def test_pool_formats():
    x = R.standard_normal((4, 3, 2, 6))  # SCBT
    y = max_pool(FormattedArray(x, "SCBT"), 2, stride=2, dims="ST")
    assert y.format == "SCBT" and y.shape == (2, 3, 2, 3)
    ref = x.reshape(2, 2, 3, 2, 3, 2).max(axis=(1, 5))
    np.testing.assert_array_equal(y.data, ref)
    y = avg_pool(FormattedArray(R.standard_normal((4, 4, 3)), "SSB"), 2, stride=2)
    assert y.format == "SSB" and y.shape == (2, 2, 3)
    y = max_pool(FormattedArray(R.standard_normal((4, 4, 2, 3, 5)), "SSCBT"), 2, stride=2)
    assert y.format == "SSCBT" and y.shape == (2, 2, 2, 3, 5)


def test_pool_errors():
    X = FormattedArray(np.zeros((3, 3, 1, 1)), "SSCB")
    with pytest.raises(ValueError, match=r"output size \(0, 0\) < 1"):
        max_pool(X, 4)
    with pytest.raises(ValueError, match="smaller than the pool size"):
        max_pool(X, 2, padding=2)
    with pytest.raises(ValueError, match="no 'S' dim"):
        max_pool(FormattedArray(np.zeros((3, 2)), "CB"), 2)
    with pytest.raises(ValueError, match="unformatted.*data_format"):
        max_pool(np.zeros((3, 3)), 2)
    with pytest.raises(ValueError, match="padding_value must be 0 or 'mean'"):
        avg_pool(X, 2, padding_value="replicate")
    with pytest.raises(TypeError, match="real floating"):
        max_pool(FormattedArray(np.zeros((3, 3), dtype=np.int32), "SS"), 2)


def test_pool_layers():
    layer = max_pooling2d_layer(2, stride=2)
    assert isinstance(layer, MaxPooling2DLayer)
    assert layer.pool_size == (2, 2) and layer.stride == (2, 2) and layer.padding_size == (0, 0, 0, 0)
    assert layer.description() == "2\u00d72 max pooling with stride [2 2] and padding [0 0 0 0]"
    assert layer.type_name() == "2-D Max Pooling"
    assert max_pooling2d_layer(3).stride == (1, 1)  # MATLAB's default stride is 1
    lay = max_pooling2d_layer((3, 2), stride=(2, 1), padding=(1, 0))
    assert lay.padding_size == (1, 1, 0, 0) and lay.padding_mode == "manual"
    same = average_pooling2d_layer(3, stride=2, padding="same")
    assert isinstance(same, AveragePooling2DLayer) and same.padding_mode == "same"
    assert "padding 'same'" in same.description()
    x = FormattedArray(R.standard_normal((7, 5, 2, 3)), "SSCB")
    assert same.predict(x).shape == (4, 3, 2, 3)
    # ST formats pool over S (height) and T (width)
    y = max_pooling2d_layer((2, 3), stride=(2, 3)).predict(FormattedArray(np.zeros((4, 1, 2, 6)), "SCBT"))
    assert y.shape == (2, 1, 2, 2)
    # [t b l r] maps to (top, left) before and (bottom, right) after
    lay = average_pooling2d_layer(2, padding=(1, 0, 0, 1))
    y = lay.predict(FormattedArray(np.ones((2, 2)), "SS"))
    np.testing.assert_allclose(y.data, [[0.5, 0.25], [1.0, 0.5]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(pool_size=0), "pool_size"), (dict(pool_size=(2, 2, 2)), "pool_size"),
    (dict(pool_size=2, stride=0), "stride"), (dict(pool_size=2, padding=-1), "padding"),
    (dict(pool_size=2, padding="full"), "padding"), (dict(pool_size=2, padding=2), "smaller"),
    (dict(pool_size=2.5), "pool_size"), (dict(pool_size=2, name=3), "name"),
])
def test_pool_layer_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        max_pooling2d_layer(**kwargs)


def test_pool_layer_rejects_formats():
    with pytest.raises(ValueError, match="cannot take input of format 'CB'.*SSCB"):
        max_pooling2d_layer(2).predict(FormattedArray(np.zeros((3, 2)), "CB"))
    with pytest.raises(ValueError, match="'SSSCB'"):
        average_pooling2d_layer(2).predict(FormattedArray(np.zeros((3, 3, 3, 1, 1)), "SSSCB"))


# fully connected ------------------------------------------------------------------------------------


def test_fully_connect_matlab_order():
    # MATLAB flattens h×w×c column-major: index h + H*(w + W*c)
    x = R.standard_normal((2, 3, 4, 5))  # SSCB, H=2, W=3, C=4, N=5
    w = R.standard_normal((6, 24))
    b = R.standard_normal((6, 1))
    y = fully_connect(FormattedArray(x, "SSCB"), w, b)
    assert y.format == "CB" and y.shape == (6, 5)
    flat = x.reshape(24, 5, order="F")
    np.testing.assert_allclose(y.data, w @ flat + b, rtol=1e-12)


def test_fully_connect_formats():
    w = R.standard_normal((3, 4))
    y = fully_connect(FormattedArray(R.standard_normal((4, 2, 5)), "CBT"), w)
    assert y.format == "CBT" and y.shape == (3, 2, 5)
    y = fully_connect(FormattedArray(R.standard_normal((4,)), "C"), w)
    assert y.format == "C" and y.shape == (3,)
    y = fully_connect(R.standard_normal((5, 4)), w, data_format="BC")
    assert y.format == "" and y.shape == (5, 3)
    with pytest.raises(ValueError, match="InputSize 4.*'SSCB'.*24 features"):
        fully_connect(FormattedArray(np.zeros((2, 3, 4, 1)), "SSCB"), w)
    with pytest.raises(ValueError, match="OutputSize = 3"):
        fully_connect(FormattedArray(np.zeros((4, 1)), "CB"), w, np.zeros(2))


def test_fully_connected_layer():
    layer = fully_connected_layer(10)
    assert isinstance(layer, FullyConnectedLayer)
    assert layer.weight_l2_factor == 1 and layer.bias_l2_factor == 0
    assert layer.l2_factor("bias") == 0 and layer.l2_factor("weights") == 1
    assert layer.description() == "10 fully connected layer" and layer.type_name() == "Fully Connected"
    x = FormattedArray(np.zeros((4, 4, 2, 3), np.float32), "SSCB")
    layer.initialize(x, seed=0)
    assert layer.input_size == 32 and layer.weights.shape == (10, 32) and layer.bias.shape == (10, 1)
    assert layer.weights.dtype == np.float32 and layer.num_parameters == 330
    # glorot: uniform with variance 2 / (numIn + numOut)
    big = fully_connected_layer(400).initialize(FormattedArray(np.zeros((300, 1)), "CB"), seed=1)
    np.testing.assert_allclose(np.var(big.weights), 2 / 700, rtol=0.02)
    np.testing.assert_array_equal(big.bias, 0)
    assert np.abs(big.weights).max() <= np.sqrt(6 / 700)
    again = fully_connected_layer(400).initialize(FormattedArray(np.zeros((300, 1)), "CB"), seed=1)
    np.testing.assert_array_equal(again.weights, big.weights)
    y = layer.predict(x)
    assert y.format == "CB" and y.shape == (10, 3)
    given = fully_connected_layer(2, weights=np.ones((2, 3)), bias=np.array([1.0, 2.0]),
                                  weight_learn_rate_factor=0.5)
    assert given.input_size == 3 and given.bias.shape == (2, 1)
    assert given.learn_rate_factor("weights") == 0.5
    np.testing.assert_allclose(given.predict(FormattedArray(np.ones((3, 1)), "CB")).data, [[4], [5]])


def test_fully_connected_layer_errors():
    with pytest.raises(ValueError, match="output_size"):
        fully_connected_layer(0)
    with pytest.raises(ValueError, match="weights must be"):
        fully_connected_layer(3, weights=np.ones((2, 3)))
    with pytest.raises(ValueError, match="bias must have output_size = 3"):
        fully_connected_layer(3, bias=np.ones(2))
    with pytest.raises(ValueError, match="weights_initializer"):
        fully_connected_layer(3, weights_initializer="bogus")
    with pytest.raises(ValueError, match="weight_l2_factor"):
        fully_connected_layer(3, weight_l2_factor=-1)
    with pytest.raises(ValueError, match="cannot take input of format 'SSB'.*'C' dim"):
        fully_connected_layer(3).predict(FormattedArray(np.zeros((2, 2, 1)), "SSB"))
    lay = fully_connected_layer(3, input_size=5)
    with pytest.raises(ValueError, match="input_size 5.*4 features"):
        lay.initialize(FormattedArray(np.zeros((4, 1)), "CB"))


# softmax, cross entropy, one_hot ---------------------------------------------------------------


def test_softmax_and_layer():
    x = R.standard_normal((4, 3)) * 50
    y = softmax(FormattedArray(x, "CB"))
    e = np.exp(x - x.max(0))
    np.testing.assert_allclose(y.data, e / e.sum(0), rtol=1e-12)
    assert softmax_layer().predict(FormattedArray(x, "CB")).format == "CB"
    with pytest.raises(ValueError, match="'C'.*format 'SSB'"):
        softmax_layer().predict(FormattedArray(np.zeros((2, 2, 1)), "SSB"))
    with pytest.raises(ValueError, match="no 'C'"):
        softmax(FormattedArray(np.zeros((2, 2)), "SB"))
    assert softmax_layer().description() == "softmax" and relu_layer().type_name() == "ReLU"


def test_cross_entropy_matlab_definition():
    y = softmax(FormattedArray(R.standard_normal((4, 3)), "CB"))
    t = one_hot(np.array([0, 3, 1]), 4)
    assert t.format == "CB" and t.dtype == np.float32
    loss = cross_entropy(y, t)
    assert loss.format == "" and loss.shape == ()
    ref = -np.sum(np.asarray(t.data, np.float64) * np.log(y.data)) / 3
    np.testing.assert_allclose(float(loss.data), ref, rtol=1e-12)
    np.testing.assert_allclose(float(cross_entropy(y, t, normalization="none").data), 3 * ref)
    # zero probabilities stay finite
    z = FormattedArray(np.array([[0.0, 1.0], [1.0, 0.0]]), "CB")
    assert np.isfinite(float(cross_entropy(z, FormattedArray(np.eye(2), "CB")).data))
    # unformatted targets are read in the predictions' layout
    np.testing.assert_allclose(float(cross_entropy(y, np.asarray(t.data)).data), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        cross_entropy(y, t, normalization="mean")


# batch normalisation -------------------------------------------------------------------------------


def test_batch_norm_values():
    x = R.standard_normal((3, 3, 2, 4))
    off, sc = np.array([0.5, -1.0]), np.array([2.0, 3.0])
    y, m, v = batch_norm(FormattedArray(x, "SSCB"), off, sc, training=True)
    mu = x.mean(axis=(0, 1, 3), keepdims=True)
    var = x.var(axis=(0, 1, 3), keepdims=True)
    ref = sc.reshape(1, 1, 2, 1) * (x - mu) / np.sqrt(var + 1e-5) + off.reshape(1, 1, 2, 1)
    np.testing.assert_allclose(y.data, ref, rtol=1e-12)
    np.testing.assert_allclose(m, mu.ravel())
    np.testing.assert_allclose(v, var.ravel() * 36 / 35)  # unbiased running variance
    rm, rv = np.array([1.0, 1.0]), np.array([2.0, 2.0])
    _, m2, v2 = batch_norm(FormattedArray(x, "SSCB"), off, sc, rm, rv, training=True,
                           mean_decay=0.3, variance_decay=0.2)
    np.testing.assert_allclose(m2, 0.3 * mu.ravel() + 0.7 * rm)
    np.testing.assert_allclose(v2, 0.2 * var.ravel() * 36 / 35 + 0.8 * rv)
    yi = batch_norm(FormattedArray(x, "SSCB"), off, sc, rm, rv)
    np.testing.assert_allclose(
        yi.data, sc.reshape(1, 1, 2, 1) * (x - 1) / np.sqrt(2 + 1e-5) + off.reshape(1, 1, 2, 1))
    with pytest.raises(ValueError, match="inference.*trained mean"):
        batch_norm(FormattedArray(x, "SSCB"), off, sc)
    with pytest.raises(ValueError, match="one value per channel.*2 channels"):
        batch_norm(FormattedArray(x, "SSCB"), np.zeros(3), sc, training=True)


def test_batch_normalization_layer_state():
    layer = batch_normalization_layer(mean_decay=0.5, variance_decay=0.5)
    assert isinstance(layer, BatchNormalizationLayer)
    assert layer.description() == "Batch normalization"
    x = FormattedArray(R.standard_normal((3, 3, 2, 4)) * 3 + 1, "SSCB")
    layer.initialize(x)
    assert layer.offset.shape == (1, 1, 2) and layer.trained_variance.shape == (1, 1, 2)
    assert layer.description() == "Batch normalization with 2 channels"
    y, st = layer.forward(x)
    assert set(st) == {"trained_mean", "trained_variance"}
    mu = np.asarray(x.data).mean(axis=(0, 1, 3))
    np.testing.assert_allclose(np.ravel(st["trained_mean"]), 0.5 * mu)
    # training output is normalised per channel
    np.testing.assert_allclose(np.asarray(y.data).mean(axis=(0, 1, 3)), 0, atol=1e-12)
    before = layer.predict(x)
    layer.update_state(st)
    after = layer.predict(x)
    assert not np.allclose(before.data, after.data)
    cb = batch_normalization_layer().initialize(FormattedArray(np.zeros((5, 2)), "CB"))
    assert cb.offset.shape == (5, 1)
    with pytest.raises(ValueError, match="'C' dim"):
        batch_normalization_layer().predict(FormattedArray(np.zeros((2, 2, 3)), "SSB"))
    with pytest.raises(ValueError, match="num_channels 3.*2 channels"):
        batch_normalization_layer(num_channels=3).predict(x)
    with pytest.raises(ValueError, match="epsilon"):
        batch_normalization_layer(epsilon=0)


# image input -----------------------------------------------------------------------------------------


def test_image_input_conversion():
    layer = image_input_layer((4, 3), normalization="none")
    assert isinstance(layer, ImageInputLayer) and layer.input_size == (4, 3, 1)
    assert layer.description() == "4\u00d73\u00d71 images"
    raw = R.standard_normal((4, 3, 1, 5))
    y = layer.predict(raw)
    assert y.format == "SSCB" and y.shape == (4, 3, 1, 5)
    assert layer.predict(raw[:, :, 0, :]).shape == (4, 3, 1, 5)  # h×w×N for one channel
    assert layer.predict(raw[:, :, 0, 0]).shape == (4, 3, 1, 1)  # one image
    assert layer.predict(FormattedArray(raw, "SSCB")).shape == (4, 3, 1, 5)
    assert layer.predict(FormattedArray(raw[:, :, 0], "SSB")).shape == (4, 3, 1, 5)
    u8 = layer.predict((raw * 10 + 100).astype(np.uint8))
    assert u8.dtype == np.float32
    rgb = image_input_layer((4, 3, 3), normalization="none")
    assert rgb.predict(R.standard_normal((4, 3, 3))).shape == (4, 3, 3, 1)
    with pytest.raises(ValueError, match="does not match input_size 4\u00d73\u00d73"):
        rgb.predict(R.standard_normal((4, 4, 3, 2)))
    with pytest.raises(ValueError, match="format 'CB'"):
        layer.predict(FormattedArray(np.zeros((3, 2)), "CB"))
    with pytest.raises(ValueError, match="input_size"):
        image_input_layer((0, 3))
    with pytest.raises(ValueError, match="normalization"):
        image_input_layer((2, 3), normalization="minmax")


def test_image_input_statistics(xp):
    data = R.uniform(0, 255, (4, 3, 2, 6))
    x = FormattedArray(xp.asarray(data), "SSCB")
    zc = image_input_layer((4, 3, 2)).compute_statistics(x)
    assert zc.statistics_computed
    # MATLAB's 'auto' normalisation dimension: per channel, statistics 1×1×c
    assert tuple(zc.mean.shape) == (1, 1, 2)
    np.testing.assert_allclose(_np(zc.mean).ravel(), data.mean(axis=(0, 1, 3)))
    y = zc.predict(x)
    np.testing.assert_allclose(_np(y).mean(axis=(0, 1, 3)), 0, atol=1e-9)
    zs = image_input_layer((4, 3, 2), normalization="zscore").compute_statistics(x)
    np.testing.assert_allclose(_np(zs.predict(x)).std(axis=(0, 1, 3)), 1, rtol=1e-9)
    el = image_input_layer((4, 3, 2), normalization_dimension="element").compute_statistics(x)
    assert tuple(el.mean.shape) == (4, 3, 2)
    np.testing.assert_allclose(_np(el.predict(x)).mean(axis=3), 0, atol=1e-9)
    al = image_input_layer((4, 3, 2), normalization="rescale-zero-one",
                           normalization_dimension="all").compute_statistics(x)
    ya = _np(al.predict(x))
    np.testing.assert_allclose([ya.min(), ya.max()], [0, 1], atol=1e-12)
    sym = image_input_layer((4, 3, 2), normalization="rescale-symmetric").compute_statistics(x)
    ys = _np(sym.predict(x))
    np.testing.assert_allclose(ys.min(axis=(0, 1, 3)), -1, atol=1e-12)
    np.testing.assert_allclose(ys.max(axis=(0, 1, 3)), 1, atol=1e-12)


def test_image_input_given_statistics_and_callable():
    lay = image_input_layer((2, 2, 3), mean=np.array([1.0, 2.0, 3.0]))
    assert lay.mean.shape == (1, 1, 3)
    y = lay.predict(np.ones((2, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(y.data)[0, 0, :, 0], [0, -1, -2])
    with pytest.raises(ValueError, match="does not fit input_size"):
        image_input_layer((2, 2, 3), mean=np.ones(4))
    missing = image_input_layer((2, 2, 3), normalization="zscore")
    with pytest.raises(ValueError, match="compute_statistics"):
        missing.predict(np.ones((2, 2, 3, 1)))
    missing.initialize()
    np.testing.assert_allclose(missing.predict(np.ones((2, 2, 3, 1))).data, 1)
    f = image_input_layer((2, 2), normalization=lambda x: x * 2.0)
    np.testing.assert_allclose(f.predict(np.ones((2, 2, 1, 1))).data, 2)
    assert "custom normalization" in f.description()


# MATLAB names ----------------------------------------------------------------------------------------


def test_matlab_named_constructors():
    from fmtarray import matlab as ml

    assert ml.imageInputLayer([28, 28, 1]).description() == image_input_layer((28, 28, 1)).description()
    assert ml.imageInputLayer(np.array([[8, 8, 3]]), "Normalization", "zscore").normalization == "zscore"
    assert ml.reluLayer("Name", "r1").name == "r1"
    assert ml.softmaxLayer(Name="sm").name == "sm"
    mp = ml.maxPooling2dLayer(2, "Stride", 2)
    assert isinstance(mp, MaxPooling2DLayer) and mp.stride == (2, 2)
    ap = ml.averagePooling2dLayer(3, Padding="same", PaddingValue="mean")
    assert ap.padding_mode == "same" and ap.padding_value == "mean"
    fc = ml.fullyConnectedLayer(10, "BiasL2Factor", 1, "WeightLearnRateFactor", 2)
    assert fc.bias_l2_factor == 1 and fc.learn_rate_factor("weights") == 2
    bn = ml.batchNormalizationLayer(Epsilon=1e-3, MeanDecay=0.2, ScaleL2Factor=0)
    assert bn.epsilon == 1e-3 and bn.mean_decay == 0.2 and bn.l2_factor("scale") == 0
    net = ml.dlnetwork([ml.imageInputLayer([4, 4, 1]), ml.fullyConnectedLayer(3), ml.softmaxLayer()])
    assert net.initialized and net.learnables()["fc"]["weights"].shape == (3, 16)
    with pytest.raises(ValueError, match=r"maxPooling2dLayer: Stride \(stride\)"):
        ml.maxPooling2dLayer(2, "Stride", 0)
    with pytest.raises(ValueError, match=r"fullyConnectedLayer: OutputSize \(output_size\)"):
        ml.fullyConnectedLayer(0)
    with pytest.raises(TypeError, match="unknown option 'Strides'"):
        ml.maxPooling2dLayer(2, Strides=2)
