"""``Network``: naming, initialisation, format validation, learnables, state, gradients,
user-defined layers, display."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray, Network
from fmtarray.layers import (
    Layer,
    average_pooling2d_layer,
    batch_normalization_layer,
    fully_connected_layer,
    image_input_layer,
    max_pooling2d_layer,
    relu_layer,
    softmax_layer,
)

HAS_CONV = importlib.util.find_spec("fmtarray.ops.convolution") is not None
needs_conv = pytest.mark.skipif(not HAS_CONV, reason="fmtarray.ops.convolution not available yet")


def _np(a):
    from fmtarray import _backend

    return np.asarray(_backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


def small_net(normalization="none", **kw):
    """No convolution: input → batch norm → relu → pool → fc → softmax."""
    return Network([
        image_input_layer((6, 5, 2), normalization=normalization),
        batch_normalization_layer(),
        relu_layer(),
        max_pooling2d_layer(2, stride=2),
        fully_connected_layer(4, **kw),
        softmax_layer(),
    ])


def data(n=3, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 5, 2, n)).astype(dtype)
    t = fa.one_hot(rng.integers(0, 4, n), 4, dtype=dtype)
    return x, t


# the seed's layer array ---------------------------------------------------------------------


def seed_layers():
    from fmtarray.layers import convolution2d_layer

    return [
        image_input_layer((28, 28, 1)),
        convolution2d_layer(5, 20),
        relu_layer(),
        max_pooling2d_layer(2, stride=2),
        fully_connected_layer(10),
        softmax_layer(),
    ]


def test_seed_display():
    from fmtarray.layers import convolution2d_layer

    layers = [image_input_layer((28, 28, 1)), convolution2d_layer(5, 20), relu_layer(),
              max_pooling2d_layer(2, stride=2), fully_connected_layer(10), softmax_layer()]
    text = repr(Network(layers))
    lines = text.splitlines()
    assert lines[0] == "6x1 Layer array with layers:"
    assert lines[1] == ""
    rows = [[c for c in ln.split("   ") if c.strip()] for ln in lines[2:]]
    assert [r[0].strip() for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert all(r[1].strip() == "''" for r in rows)
    assert [c.strip() for c in rows[0][2:]] == ["Image Input", "28\u00d728\u00d71 images with 'zerocenter' normalization"]
    assert [c.strip() for c in rows[2][2:]] == ["ReLU", "ReLU"]
    assert [c.strip() for c in rows[3][2:]] == [
        "2-D Max Pooling", "2\u00d72 max pooling with stride [2 2] and padding [0 0 0 0]"]
    assert [c.strip() for c in rows[4][2:]] == ["Fully Connected", "10 fully connected layer"]
    assert [c.strip() for c in rows[5][2:]] == ["Softmax", "softmax"]
    # the type and description columns are aligned
    starts = {ln.rindex(r[3].strip()) for ln, r in zip(lines[2:], rows)}
    assert len(starts) == 1


@needs_conv
def test_seed_network_builds_and_predicts():
    net = Network(seed_layers()).initialize()
    assert net.layer_names == ("imageinput", "conv", "relu", "maxpool", "fc", "softmax")
    table = net.learnables_table()
    assert [(r.layer, r.parameter, r.shape) for r in table] == [
        ("conv", "weights", (5, 5, 1, 20)), ("conv", "bias", (1, 1, 20)),
        ("fc", "weights", (10, 2880)), ("fc", "bias", (10, 1))]
    assert table.num_values == 520 + 28810
    y = net.predict(np.random.default_rng(0).random((28, 28, 1, 2), dtype=np.float32))
    assert y.format == "CB" and y.shape == (10, 2)
    np.testing.assert_allclose(_np(y).sum(0), 1, rtol=1e-5)


@needs_conv
def test_conv_after_fully_connected_is_a_clear_error():
    from fmtarray.layers import convolution2d_layer

    net = Network([image_input_layer((8, 8, 1)), fully_connected_layer(10),
                   convolution2d_layer(3, 4)])
    with pytest.raises(ValueError, match=r"layer 3 'conv' \(2-D Convolution\) cannot take the "
                                         r"output of layer 2 'fc' \(Fully Connected\).*'CB'"):
        net.initialize()


def test_pool_after_fully_connected_is_a_clear_error():
    net = Network([image_input_layer((8, 8, 1)), fully_connected_layer(10),
                   max_pooling2d_layer(2)])
    with pytest.raises(ValueError) as e:
        net.initialize()
    msg = str(e.value)
    assert "layer 3 'maxpool' (2-D Max Pooling)" in msg
    assert "layer 2 'fc' (Fully Connected)" in msg
    assert "format 'CB'" in msg and "SSCB" in msg
    assert not net.initialized


def test_bad_first_input_is_named():
    net = small_net()
    with pytest.raises(ValueError, match="layer 1 'imageinput'.*network input.*does not match"):
        net.initialize(np.zeros((4, 4, 2, 1)))


# naming -----------------------------------------------------------------------------------------


def test_auto_names_like_matlab():
    net = Network([image_input_layer((8, 8, 1)), batch_normalization_layer(), relu_layer(),
                   max_pooling2d_layer(2), batch_normalization_layer(), relu_layer(),
                   average_pooling2d_layer(2), fully_connected_layer(3), softmax_layer()])
    assert net.layer_names == ("imageinput", "batchnorm_1", "relu_1", "maxpool", "batchnorm_2",
                               "relu_2", "avgpool", "fc", "softmax")
    # the layers keep their own (empty) names
    assert net[1].name == ""
    assert net["fc"] is net[7]


def test_given_names_and_collisions():
    net = Network([image_input_layer((4, 4)), relu_layer(name="relu_1"), relu_layer(),
                   relu_layer(), fully_connected_layer(2, name="relu")])
    assert net.layer_names == ("imageinput", "relu_1", "relu_2", "relu_3", "relu")
    with pytest.raises(ValueError, match="unique.*'a'.*layers 1 and 3"):
        Network([relu_layer(name="a"), relu_layer(), relu_layer(name="a")])
    r = relu_layer()
    with pytest.raises(ValueError, match="same ReLULayer object"):
        Network([r, r])
    with pytest.raises(TypeError, match="layer 2.*predict"):
        Network([relu_layer(), object()])
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        Network([relu_layer()])["nope"]


# initialisation, learnables, factors ------------------------------------------------------------------


def test_initialize_without_input_layer_needs_x():
    net = Network([fully_connected_layer(3), softmax_layer()])
    with pytest.raises(ValueError, match="needs an example input"):
        net.initialize()
    net.initialize(FormattedArray(np.zeros((5, 2), np.float32), "CB"))
    assert net.learnables()["fc"]["weights"].shape == (3, 5)


def test_initialize_is_reproducible_and_seeded():
    a = small_net().initialize(seed=3).learnables()
    b = small_net().initialize(seed=3).learnables()
    c = small_net().initialize(seed=4).learnables()
    np.testing.assert_array_equal(_np(a["fc"]["weights"]), _np(b["fc"]["weights"]))
    assert not np.array_equal(_np(a["fc"]["weights"]), _np(c["fc"]["weights"]))
    assert a["fc"]["weights"].dtype == np.float32  # default example: float32
    x, _ = data(dtype=np.float64)
    d = small_net().initialize(x, seed=3).learnables()
    assert d["fc"]["weights"].dtype == np.float64


def test_learnables_factors_and_table():
    net = small_net(weight_learn_rate_factor=2, bias_l2_factor=0.5).initialize()
    lr, l2 = net.learn_rate_factors(), net.l2_factors()
    assert lr == {"batchnorm": {"offset": 1.0, "scale": 1.0}, "fc": {"weights": 2.0, "bias": 1.0}}
    assert l2 == {"batchnorm": {"offset": 1.0, "scale": 1.0}, "fc": {"weights": 1.0, "bias": 0.5}}
    p = net.learnables()
    assert set(p) == set(lr) and all(set(p[k]) == set(lr[k]) for k in p)
    assert all(isinstance(v, FormattedArray) for d in p.values() for v in d.values())
    table = net.learnables_table()
    assert len(table) == 4
    assert table[2] == ("fc", "weights", (4, 12), 2.0, 1.0)
    text = str(table)
    assert "Layer" in text and "LearnRateFactor" in text and "L2Factor" in text
    assert "4\u00d712" in text and "batchnorm" in text
    assert net.num_learnables == 2 + 2 + 48 + 4


def test_set_learnables_and_predict_with_tree():
    net = small_net().initialize()
    x, _ = data(dtype=np.float32)
    p = net.learnables()
    new = {"fc": {"weights": FormattedArray(_np(p["fc"]["weights"]) * 2)}}
    y_tree = net.predict(x, learnables=new)
    assert np.array_equal(_np(net.learnables()["fc"]["weights"]), _np(p["fc"]["weights"]))
    net.set_learnables(new)
    np.testing.assert_array_equal(_np(net.predict(x)), _np(y_tree))
    with pytest.raises(ValueError, match="shape"):
        net.set_learnables({"fc": {"weights": FormattedArray(np.zeros((2, 2)))}})
    with pytest.raises(ValueError, match="unknown layer 'conv'"):
        net.set_learnables({"conv": {}})
    with pytest.raises(ValueError, match="no learnable 'gamma'"):
        net.predict(x, learnables={"batchnorm": {"gamma": p["batchnorm"]["scale"]}})


# forward, state ---------------------------------------------------------------------------------------


def test_forward_state_and_predict():
    net = small_net().initialize()
    x, _ = data(n=5, dtype=np.float32)
    before = _np(net.predict(x))
    y, state = net.forward(x)
    assert y.format == "CB" and set(state) == {"batchnorm"}
    assert set(state["batchnorm"]) == {"trained_mean", "trained_variance"}
    np.testing.assert_array_equal(_np(net.predict(x)), before)  # forward changes nothing
    snap = net.state()
    net.update_state(state)
    assert not np.allclose(_np(net.predict(x)), before)
    net.set_state(snap)
    np.testing.assert_allclose(_np(net.predict(x)), before)
    with pytest.raises(ValueError, match="unknown layer"):
        net.update_state({"nope": {}})


# gradients -------------------------------------------------------------------------------------------


def _fd_check(loss, params, rtol=1e-6, h=1e-6):
    g = fa.grad(loss)(params)
    for lname, d in params.items():
        for pname, v in d.items():
            base = np.array(v.data, dtype=np.float64)
            num = np.zeros_like(base)
            for idx in np.ndindex(base.shape):
                vals = []
                for s in (h, -h):
                    a = base.copy()
                    a[idx] += s
                    p2 = {k: dict(dd) for k, dd in params.items()}
                    p2[lname][pname] = FormattedArray._wrap(a, v.format)
                    vals.append(float(loss(p2).data))
                num[idx] = (vals[0] - vals[1]) / (2 * h)
            ga = np.asarray(g[lname][pname].data)
            err = np.linalg.norm(ga - num) / max(np.linalg.norm(num), 1e-8)
            assert err <= rtol, f"{lname}.{pname}: relative error {err:.3g}"
    return g


def test_network_gradients_vs_finite_differences():
    net = small_net(normalization="zscore")
    x, t = data(n=3)
    net[0].compute_statistics(x)
    net.initialize(x, seed=1)
    # move the batch-norm parameters off their defaults so all paths matter
    p = net.learnables()
    rng = np.random.default_rng(5)
    p["batchnorm"] = {k: FormattedArray(np.asarray(v.data) + rng.uniform(0.1, 0.5, v.shape))
                      for k, v in p["batchnorm"].items()}

    def loss(params):
        y, _ = net.forward(x, params)
        return fa.cross_entropy(y, t)

    g = _fd_check(loss, p)
    assert g["fc"]["weights"].shape == (4, 12)

    def loss_predict(params):
        return fa.cross_entropy(net.predict(x, params), t)

    _fd_check(loss_predict, p)


@needs_conv
def test_seed_like_network_gradients_vs_finite_differences():
    from fmtarray.layers import convolution2d_layer

    net = Network([image_input_layer((6, 6, 1)), convolution2d_layer(3, 3, padding=1),
                   relu_layer(), max_pooling2d_layer(2, stride=2), fully_connected_layer(3),
                   softmax_layer()])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 6, 1, 2))
    t = fa.one_hot(np.array([0, 2]), 3, dtype=np.float64)
    net[0].compute_statistics(x)
    net.initialize(x, seed=0)
    p = net.learnables()
    p["conv"]["bias"] = FormattedArray(rng.uniform(0.1, 0.3, (1, 1, 3)))

    def loss(params):
        return fa.cross_entropy(net.forward(x, params)[0], t)

    _fd_check(loss, p)


def test_network_every_backend(xp):
    x, t = data(n=3)
    ref = small_net().initialize(x, seed=2)
    net = small_net().initialize(FormattedArray(xp.asarray(x), "SSCB"), seed=2)
    X = FormattedArray(xp.asarray(x), "SSCB")
    T = FormattedArray._wrap(xp.asarray(_np(t)), "CB")
    np.testing.assert_allclose(_np(net.predict(X)), _np(ref.predict(x)), rtol=1e-10)

    def loss(net_, xx, tt):
        return lambda p: fa.cross_entropy(net_.forward(xx, p)[0], tt)

    g = fa.grad(loss(net, X, T))(net.learnables())
    g_ref = fa.grad(loss(ref, FormattedArray(x, "SSCB"), t))(ref.learnables())
    for lname in g_ref:
        for pname in g_ref[lname]:
            assert g[lname][pname].device == net.learnables()[lname][pname].device
            np.testing.assert_allclose(_np(g[lname][pname]), _np(g_ref[lname][pname]),
                                       rtol=1e-9, atol=1e-12)


# user-defined layers -------------------------------------------------------------------------------


class ChannelScale:
    """A user layer that is not a Layer subclass: ``y = x * alpha`` per channel."""

    learnable_names = ("alpha",)

    def __init__(self):
        self.alpha = None

    def initialize(self, x):  # no seed argument: the network copes
        c = x.size("C")
        self.alpha = FormattedArray(x.xp.ones((c,), dtype=x.dtype, device=x.device), "C")

    def predict(self, x):
        return x * self.alpha


class Square(Layer):
    """A Layer subclass with a scalar learnable ``p``: ``y = p * x**2``."""

    learnable_names = ("p",)
    p_learn_rate_factor = 0.25

    def __init__(self, name=""):
        self.name = name
        self.p = None

    def initialize(self, x, *, seed=None):
        if self.p is None:
            self.p = x.xp.asarray(0.5, dtype=x.dtype)

    def predict(self, x):
        return fa.square(x) * self.p


def test_user_defined_layers_get_correct_gradients():
    net = Network([image_input_layer((6, 5, 2), normalization="none"), ChannelScale(), Square(),
                   max_pooling2d_layer(2, stride=2), fully_connected_layer(4), softmax_layer()])
    x, t = data(n=2)
    net.initialize(x, seed=0)
    assert net.layer_names[1:3] == ("channelscale", "square")
    p = net.learnables()
    assert p["channelscale"]["alpha"].format == "C"
    assert p["square"]["p"].shape == ()
    assert net.learn_rate_factors()["square"] == {"p": 0.25}
    p["channelscale"]["alpha"] = FormattedArray(np.array([0.7, 1.3]), "C")

    def loss(params):
        return fa.cross_entropy(net.forward(x, params)[0], t)

    g = _fd_check(loss, p)
    assert g["channelscale"]["alpha"].format == "C"
    # a few plain gradient steps lower the loss, with no backward code in the layers
    l0 = float(loss(p).data)
    for _ in range(5):
        g = fa.grad(loss)(p)
        p = {k: {n: v - 0.1 * g[k][n] for n, v in d.items()} for k, d in p.items()}
    net.set_learnables(p)
    assert float(fa.cross_entropy(net.predict(x), t).data) < l0
    assert net["channelscale"].alpha.format == "C"  # a formatted learnable stays formatted
    assert net["channelscale"].alpha._node is None  # and is stored detached


def test_user_layer_display_defaults():
    net = Network([ChannelScale()])
    assert "ChannelScale" in repr(net)


def test_layer_copies_keep_slots_and_copy_hooks():
    """The network evaluates a layer with learnables on a shallow copy: a plain class's
    ``__dict__`` is copied directly, and a class with ``__slots__`` (here a mixin's) or
    its own ``__copy__`` goes through ``copy.copy``, keeping what it holds."""
    from fmtarray.layers._protocol import _shallow_copy

    class Slotted:
        __slots__ = ("tag",)

    class Plain(fa.layers.Layer):
        pass

    class WithSlots(Plain, Slotted):
        pass

    class Hooked(Plain):
        def __copy__(self):
            out = Hooked.__new__(Hooked)
            out.__dict__.update(self.__dict__, copied_by_hook=True)
            return out

    p = Plain()
    p.extra = [1]
    c = _shallow_copy(p)
    assert type(c) is Plain and c is not p and c.extra is p.extra
    s = WithSlots()
    s.tag, s.extra = "kept", 2
    c = _shallow_copy(s)
    assert c.tag == "kept" and c.extra == 2
    h = Hooked()
    assert _shallow_copy(h).copied_by_hook
