"""The CNN layer family in use: dropout (identity in predict; inverted, seeded masks in
forward; gradient = mask · scale), every new layer inside a ``fmtarray.Network`` chain
on every library (forward and predict equal to NumPy's), and ``save``/``load`` round
trips of every layer type (see ``test_cnn_layers.py`` for the torch comparisons)."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray, Network
from fmtarray.layers import (
    DropoutLayer, convolution1d_layer, convolution3d_layer, dropout_layer,
    global_average_pooling2d_layer, grouped_conv2d_layer, leaky_relu_layer,
)
from fmtarray.layers._protocol import layer_seed


def _keep(seed_list, shape, p):
    """The mask the documented seeding rule gives: default_rng([seed..., k]) >= p."""
    return np.random.default_rng(seed_list).uniform(0.0, 1.0, size=shape) >= p


# dropout ------------------------------------------------------------------------------------


def test_dropout_predict_is_the_identity_forward_drops_and_scales():
    x = FormattedArray(np.ones((200, 250)), "CB")
    layer = dropout_layer(0.3, seed=7)
    assert layer.predict(x) is x
    y, state = layer.forward(x)
    assert state == {} and y.format == "CB"
    vals = np.unique(y.data)
    np.testing.assert_allclose(vals, [0.0, 1 / 0.7])
    frac = float(np.mean(y.data == 0))
    assert abs(frac - 0.3) < 0.01  # 50 000 draws: the standard error is 0.002
    assert abs(float(y.data.mean()) - 1.0) < 0.02  # inverted dropout keeps the mean
    np.testing.assert_array_equal(y.data != 0, _keep([7, 0], (200, 250), 0.3))


def test_dropout_reproducible_sequence_and_reset():
    x = FormattedArray(np.arange(1.0, 61.0).reshape(3, 4, 5), "SCB")
    a, b = DropoutLayer(0.5, seed=11), DropoutLayer(0.5, seed=11)
    a0, a1 = a.forward(x)[0].data, a.forward(x)[0].data
    assert np.array_equal(a0, b.forward(x)[0].data)  # same seed, same first mask
    assert not np.array_equal(a0, a1)  # a new mask per call
    np.testing.assert_array_equal(a1 != 0, _keep([11, 1], x.shape, 0.5))
    np.testing.assert_array_equal(a1[a1 != 0], 2 * x.data[a1 != 0])
    a.reset()
    assert np.array_equal(a.forward(x)[0].data, a0)
    # probability 0: forward is the identity too
    assert dropout_layer(0.0, seed=1).forward(x)[0] is x


def test_dropout_gradient_is_mask_times_scale():
    rng = np.random.default_rng(0)
    x = FormattedArray(rng.standard_normal((6, 5, 3, 4)), "SSCB")
    R = rng.standard_normal(x.shape)
    layer = dropout_layer(0.25, seed=3)

    def loss(v):
        return fa.sum(layer.forward(v)[0] * FormattedArray(R, "SSCB"))

    g = fa.grad(loss)(x)
    mask = _keep([3, 0], x.shape, 0.25) / 0.75
    np.testing.assert_allclose(g.data, R * mask, rtol=1e-15)


def test_dropout_takes_the_network_seed():
    x = FormattedArray(np.ones((4, 3, 2)), "SCB")

    def run(seed):
        net = Network([convolution1d_layer(1, 3, weights=np.eye(3)[None], bias=np.zeros((1, 3))),
                       dropout_layer(0.5)])
        net.initialize(x, seed=seed)
        return net.forward(x)[0].data

    y = run(5)
    np.testing.assert_array_equal(y, run(5))
    assert not np.array_equal(y, run(6))
    np.testing.assert_array_equal(y != 0, _keep([layer_seed(5, 1), 0], x.shape, 0.5))
    # the layer's own seed wins over the network's
    net = Network([dropout_layer(0.5, seed=2)])
    net.initialize(x, seed=5)
    np.testing.assert_array_equal(net.forward(x)[0].data != 0, _keep([2, 0], x.shape, 0.5))
    np.testing.assert_array_equal(net.predict(x).data, x.data)


@pytest.mark.parametrize("bad,exc", [(1.0, ValueError), (-0.1, ValueError), ("0.5", TypeError),
                                     (True, TypeError), (float("nan"), ValueError)])
def test_dropout_probability_validation(bad, exc):
    with pytest.raises(exc, match="probability must be a real number in \\[0, 1\\)"):
        dropout_layer(bad)


def test_dropout_seed_validation():
    with pytest.raises(ValueError, match="invalid seed=-1"):
        dropout_layer(0.5, seed=-1)
    with pytest.raises(TypeError, match="invalid seed=1.5"):
        dropout_layer(0.5, seed=1.5)


def test_dropout_mask_on_every_library(xp):
    x = np.random.default_rng(1).standard_normal((5, 4, 3))
    y = dropout_layer(0.4, seed=9).forward(FormattedArray(xp.asarray(x), "SCB"))[0]
    assert fa._backend.library_name(y.data) == fa._backend.library_name(xp.asarray(x))
    if xp.device is not None:
        assert y.device == xp.device
    np.testing.assert_allclose(xp.to_numpy(y), x * _keep([9, 0], x.shape, 0.4) / 0.6,
                               rtol=1e-15)


# the layers in networks, on every library -------------------------------------------------


def _chains():
    rng = np.random.default_rng(42)

    def w(*shape):
        return rng.standard_normal(shape)

    return {
        "SSCB": ((6, 5, 4, 2), lambda a: [
            grouped_conv2d_layer(3, 2, "channel-wise", padding="same", weights=a(w(3, 3, 1, 2, 4)),
                                 bias=a(w(1, 1, 2, 4))),
            leaky_relu_layer(0.2),
            grouped_conv2d_layer((2, 3), 3, 2, stride=2, weights=a(w(2, 3, 4, 3, 2)),
                                 bias=a(w(1, 1, 3, 2))),
            dropout_layer(0.5, seed=4),
            global_average_pooling2d_layer(),
        ]),
        "SCB": ((9, 3, 2), lambda a: [
            convolution1d_layer(3, 4, padding="same", weights=a(w(3, 3, 4)), bias=a(w(1, 4))),
            leaky_relu_layer(),
            dropout_layer(0.2, seed=1),
        ]),
        "CBT": ((3, 2, 8), lambda a: [
            convolution1d_layer(2, 2, dilation_factor=2, padding="causal", weights=a(w(2, 3, 2)),
                                bias=a(w(1, 2))),
        ]),
        "SSSCB": ((4, 5, 3, 2, 2), lambda a: [
            convolution3d_layer(2, 3, padding=[[1, 0, 0], [0, 1, 1]], weights=a(w(2, 2, 2, 2, 3)),
                                bias=a(w(1, 1, 1, 3))),
            leaky_relu_layer(0.1),
        ]),
        "SSCBT": ((4, 4, 2, 2, 5), lambda a: [
            convolution3d_layer((3, 3, 2), 2, padding="same", weights=a(w(3, 3, 2, 2, 2)),
                                bias=a(w(1, 1, 1, 2))),
            global_average_pooling2d_layer(),
        ]),
    }


@pytest.mark.parametrize("fmt", list(_chains()))
def test_network_chain_on_every_library(xp, fmt):
    shape, make = _chains()[fmt]
    x = np.random.default_rng(7).standard_normal(shape)
    ref_net = Network(make(np.asarray))
    ref_net.initialize(FormattedArray(x, fmt), seed=0)
    want = ref_net.predict(FormattedArray(x, fmt))
    want_fwd = ref_net.forward(FormattedArray(x, fmt))[0]
    shape2, make = _chains()[fmt]  # the same weights again, in xp's library
    net = Network(make(xp.asarray))
    xx = FormattedArray(xp.asarray(x), fmt)
    net.initialize(xx, seed=0)
    got = net.predict(xx)
    fwd = net.forward(xx)[0]
    assert got.format == want.format and tuple(got.shape) == tuple(want.shape)
    if xp.device is not None:
        assert got.device == xp.device
    np.testing.assert_allclose(xp.to_numpy(got), want.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xp.to_numpy(fwd), want_fwd.data, rtol=1e-12, atol=1e-12)


# save / load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(_chains()))
def test_save_load_round_trip(tmp_path, fmt):
    save = getattr(fa, "save", None)
    if save is None:
        pytest.skip("fmtarray.save is not in this tree")
    shape, make = _chains()[fmt]
    x = FormattedArray(np.random.default_rng(3).standard_normal(shape), fmt)
    net = Network(make(np.asarray))
    net.initialize(x, seed=0)
    path = tmp_path / "net.fmtnet"
    save(net, path)
    back = fa.load(path)
    assert np.array_equal(back.predict(x).data, net.predict(x).data)
    assert np.array_equal(back.forward(x)[0].data, net.forward(x)[0].data)  # same masks
    for a, b in zip(net.layers, back.layers):
        assert type(a) is type(b) and repr(a) == repr(b)
        for n in getattr(a, "learnable_names", ()):
            assert np.array_equal(getattr(a, n), getattr(b, n))


def test_constructor_properties_rebuild_an_equivalent_layer():
    import inspect

    layers = [grouped_conv2d_layer(3, 2, "channel-wise", padding="same", stride=2, name="g"),
              grouped_conv2d_layer((1, 3), 2, 3, padding=(1, 2, 0, 1), padding_value="replicate"),
              convolution1d_layer(4, 3, padding="causal", dilation_factor=3, num_channels=2),
              convolution3d_layer((1, 2, 3), 2, padding=[[0, 1, 2], [2, 1, 0]], stride=(1, 2, 1)),
              dropout_layer(0.3, seed=2, name="d"), leaky_relu_layer(0.5),
              global_average_pooling2d_layer(name="gap")]
    for layer in layers:
        params = list(inspect.signature(type(layer).__init__).parameters)[1:]
        again = type(layer)(**{p: getattr(layer, p) for p in params})
        assert repr(again) == repr(layer)
        assert again.description() == layer.description()
