"""fmtarray.matlab's custom-training-loop names (dlfeval, dlgradient, the solver updates,
one-hot encoding, losses, mean "all") and MATLAB property names on layers.

References: torch autograd and torch.optim in float64, fmtarray.value_and_grad, and
hand-written NumPy update formulas.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import threading

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray import layers as L
from fmtarray import matlab as ml

torch = pytest.importorskip("torch")
F = torch.nn.functional
RNG = np.random.default_rng(7)


def _np(a):
    return np.asarray(fa._backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


def _small_net(dtype="float32", bn=True):
    layers = [L.image_input_layer((6, 6, 2), normalization="none"), L.convolution2d_layer(3, 4)]
    layers += [L.batch_normalization_layer()] if bn else []
    layers += [L.relu_layer(), L.fully_connected_layer(3), L.softmax_layer()]
    import array_api_compat.numpy as xnp
    return fa.Network(layers).initialize(xp=xnp, dtype=getattr(xnp, dtype))


# dlfeval / dlgradient ----------------------------------------------------------------------


def _torch_conv_loss(x, w, b):
    # x: N C H W, w: F C h w (torch layout); loss = sum(relu(conv)^2) / 2 + sum(x)
    y = F.conv2d(x, w, b)
    return (torch.relu(y) ** 2).sum() / 2 + x.sum()


def test_dlgradient_matches_torch_autograd_and_value_and_grad_in_float64():
    x = RNG.standard_normal((5, 6, 2, 3))  # SSCB
    w = RNG.standard_normal((3, 3, 2, 4))  # h w C F
    b = RNG.standard_normal(4)

    def model_loss(X, W, B):
        y = fa.conv(X, W, B)
        loss = ml.mean(fa.square(fa.relu(y)), "all") * (y.shape[0] * y.shape[1] * 4 * 3) / 2 \
            + fa.sum(X, "all")
        return (loss, *ml.dlgradient(loss, X, W, B))

    X, W = ml.dlarray(x, "SSCB"), ml.dlarray(w, "SSCU")
    B = ml.dlarray(b, "C")
    loss, gx, gw, gb = ml.dlfeval(model_loss, X, W, B)
    tx = torch.tensor(x.transpose(3, 2, 0, 1), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    tl = _torch_conv_loss(tx, tw, tb)
    tl.backward()
    rel = lambda a, r: np.max(np.abs(a - r)) / np.max(np.abs(r))  # noqa: E731
    assert abs(float(_np(loss)) - tl.item()) <= 1e-12 * abs(tl.item())
    assert gx.format == "SSCB" and gw.format == "SSCU" and gb.format == "C"
    assert rel(_np(gx), tx.grad.numpy().transpose(2, 3, 1, 0)) < 1e-12
    assert rel(_np(gw), tw.grad.numpy().transpose(2, 3, 1, 0)) < 1e-12
    assert rel(_np(gb), tb.grad.numpy()) < 1e-12
    # the same tape as fmtarray.value_and_grad: identical values
    ref = fa.grad(lambda X, W, B: model_loss(X, W, B)[0] if False else
                  (lambda y: ml.mean(fa.square(fa.relu(y)), "all") * (y.shape[0] * y.shape[1]
                   * 4 * 3) / 2 + fa.sum(X, "all"))(fa.conv(X, W, B)), argnums=(0, 1, 2))(X, W, B)
    for g, r in zip((gx, gw, gb), ref):
        np.testing.assert_array_equal(_np(g), _np(r))


def test_dlgradient_of_network_learnables_equals_value_and_grad():
    net = _small_net("float64")
    X = ml.dlarray(RNG.random((6, 6, 2, 5)), "SSCB")
    T = ml.onehotencode(np.array([0, 1, 2, 1, 0]), 1, "double", ClassNames=[0, 1, 2])

    def model_loss(net, X, T):
        Y, state = ml.forward(net, X)
        loss = ml.crossentropy(Y, T)
        return loss, ml.dlgradient(loss, net.Learnables), state

    loss, grads, state = ml.dlfeval(model_loss, net, X, T)
    (ref_loss, ref), = [fa.value_and_grad(
        lambda p: ml.crossentropy(net.forward(X, learnables=p)[0], T))(net.learnables())]
    assert float(_np(loss)) == float(_np(ref_loss))
    assert list(grads) == ["conv", "batchnorm", "fc"] and list(grads) == list(ref)
    for k in ref:
        for p in ref[k]:
            np.testing.assert_array_equal(_np(grads[k][p]), _np(ref[k][p]))
            assert grads[k][p].format == ref[k][p].format
            assert grads[k][p]._node is None  # dlfeval returns untraced values
    assert set(state) == {"batchnorm"}
    assert getattr(state["batchnorm"]["trained_mean"], "_node", None) is None
    assert net.learnables()["conv"]["weights"]._node is None  # the given network untouched


def test_dlgradient_with_respect_to_an_intermediate_value_and_unused_inputs():
    def f(x, u):
        z = x * 3.0
        y = fa.sum(z * z)
        gz, gx, gu = ml.dlgradient(y, z, x, u)
        return gz, gx, gu

    x = ml.dlarray(np.array([1.0, -2.0, 0.5]), "C")
    u = ml.dlarray(np.array([4.0, 5.0]), "B")
    gz, gx, gu = ml.dlfeval(f, x, u)
    np.testing.assert_allclose(_np(gz), 2 * 3 * _np(x), rtol=0, atol=0)  # dy/dz = 2z
    np.testing.assert_allclose(_np(gx), 18 * _np(x), rtol=0, atol=0)
    np.testing.assert_array_equal(_np(gu), [0.0, 0.0])
    assert gu.format == "B"


def test_dlgradient_errors():
    x = ml.dlarray(np.array([1.0, 2.0]), "C")
    with pytest.raises(RuntimeError, match="inside a function evaluated by dlfeval"):
        ml.dlgradient(fa.sum(x), x)
    with pytest.raises(ValueError, match=r"must be a scalar.*shape \(2,\)"):
        ml.dlfeval(lambda x: ml.dlgradient(x * 2.0, x), x)
    with pytest.raises(ValueError, match="y is not traced"):
        ml.dlfeval(lambda x: ml.dlgradient(fa.sum(ml.dlarray(np.ones(2))), x), x)
    with pytest.raises(ValueError, match="x2 is not traced"):
        ml.dlfeval(lambda x: ml.dlgradient(fa.sum(x), x, ml.dlarray(np.ones(2))), x)
    with pytest.raises(TypeError, match="not a FormattedArray"):
        ml.dlfeval(lambda x: ml.dlgradient(fa.sum(x), np.ones(2)), x)
    with pytest.raises(ValueError, match="EnableHigherDerivatives"):
        ml.dlfeval(lambda x: ml.dlgradient(fa.sum(x), x, EnableHigherDerivatives=True), x)
    # MATLAB's Name, Value pairs after the values; RetainData is accepted
    g = ml.dlfeval(lambda x: ml.dlgradient(fa.sum(x * x), x, "RetainData", True), x)
    np.testing.assert_array_equal(_np(g), [2.0, 4.0])
    with pytest.raises(TypeError, match="dlfeval: fun must be a function"):
        ml.dlfeval(3, x)


def test_dlgradient_only_inside_dlfeval_per_thread():
    x = ml.dlarray(np.array([1.0]), "C")
    errors = []
    inside = threading.Event()
    release = threading.Event()

    def fun(x):
        inside.set()
        release.wait(5)
        return ml.dlgradient(fa.sum(x), x)

    t = threading.Thread(target=lambda: ml.dlfeval(fun, x))
    t.start()
    inside.wait(5)
    try:
        ml.dlgradient(fa.sum(x), x)
    except RuntimeError as e:
        errors.append(e)
    release.set()
    t.join()
    assert len(errors) == 1  # another thread's dlfeval does not open this thread's


# predict / forward ---------------------------------------------------------------------------


def test_predict_and_forward_match_the_network_methods():
    net = _small_net()
    X = ml.dlarray(RNG.random((6, 6, 2, 4)).astype(np.float32), "SSCB")
    np.testing.assert_array_equal(_np(ml.predict(net, X)), _np(net.predict(X)))
    Y, state = ml.forward(net, X, Acceleration="auto")
    Yr, sr = net.forward(X)
    np.testing.assert_array_equal(_np(Y), _np(Yr))
    np.testing.assert_array_equal(_np(state["batchnorm"]["trained_mean"]),
                                  _np(sr["batchnorm"]["trained_mean"]))
    with pytest.raises(TypeError, match="unknown option 'Outputs'"):
        ml.predict(net, X, Outputs=["fc"])
    with pytest.raises(TypeError, match="must be a dlnetwork"):
        ml.predict([L.relu_layer()], X)


# solver updates ------------------------------------------------------------------------------


def _tree(seed):
    r = np.random.default_rng(seed)
    return {"a": {"w": ml.dlarray(r.standard_normal((3, 2)), "SC"),
                  "b": ml.dlarray(r.standard_normal(2), "C")},
            "c": {"w": ml.dlarray(r.standard_normal(4), "C")}}


def _leaves(t):
    return [_np(t[k][p]) for k in t for p in t[k]]


def test_sgdmupdate_formula_and_torch_sgd_over_iterations():
    params = _tree(1)
    w0 = _leaves(params)
    grads = [_tree(10 + i) for i in range(4)]
    vel, ref_w, ref_v = None, [w.copy() for w in w0], [np.zeros_like(w) for w in w0]
    tp = [torch.tensor(w, requires_grad=True) for w in w0]
    opt = torch.optim.SGD(tp, lr=0.05, momentum=0.8)
    for g in grads:
        params, vel = ml.sgdmupdate(params, g, vel, 0.05, 0.8)
        for i, gi in enumerate(_leaves(g)):
            ref_v[i] = 0.8 * ref_v[i] - 0.05 * gi  # MATLAB: vel = momentum*vel - lr*grad
            ref_w[i] = ref_w[i] + ref_v[i]
            tp[i].grad = torch.tensor(gi)
        opt.step()
        for got, r, t in zip(_leaves(params), ref_w, tp):
            np.testing.assert_allclose(got, r, rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(got, t.detach().numpy(), rtol=1e-12, atol=1e-14)
        for got, r in zip(_leaves(vel), ref_v):
            np.testing.assert_allclose(got, r, rtol=1e-14, atol=1e-15)
    assert params["a"]["w"].format == "SC" and vel["a"]["w"].format == "SC"


def test_adamupdate_formula_and_torch_adam_over_iterations():
    params = _tree(2)
    w0 = _leaves(params)
    m = [np.zeros_like(w) for w in w0]
    v = [np.zeros_like(w) for w in w0]
    ref = [w.copy() for w in w0]
    tp = [torch.tensor(w, requires_grad=True) for w in w0]
    opt = torch.optim.Adam(tp, lr=0.01, betas=(0.75, 0.95), eps=1e-14)
    avg, avg_sq = None, None
    for it in range(1, 6):
        g = _tree(20 + it)
        params, avg, avg_sq = ml.adamupdate(params, g, avg, avg_sq, it, 0.01, 0.75, 0.95, 1e-14)
        for i, gi in enumerate(_leaves(g)):
            m[i] = 0.75 * m[i] + 0.25 * gi
            v[i] = 0.95 * v[i] + 0.05 * gi * gi
            mhat, vhat = m[i] / (1 - 0.75 ** it), v[i] / (1 - 0.95 ** it)
            ref[i] = ref[i] - 0.01 * mhat / (np.sqrt(vhat) + 1e-14 / np.sqrt(1 - 0.95 ** it))
            tp[i].grad = torch.tensor(gi)
        opt.step()
        for got, r, t in zip(_leaves(params), ref, tp):
            np.testing.assert_allclose(got, r, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(got, t.detach().numpy(), rtol=1e-9, atol=1e-12)
        for got, r in zip(_leaves(avg_sq), v):
            np.testing.assert_allclose(got, r, rtol=1e-14, atol=0)


def test_adamupdate_epsilon_is_added_to_the_uncorrected_root():
    # MATLAB (and fmtarray's Adam solver): lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)
    p = ml.dlarray(np.array([1.0]), "C")
    g = ml.dlarray(np.array([1e-3]), "C")
    new, m, v = ml.adamupdate(p, g, None, None, 1, 0.1, 0.9, 0.999, 1e-3)
    mm, vv = 0.1 * 1e-3, 0.001 * 1e-6
    expect = 1.0 - 0.1 * np.sqrt(1 - 0.999) / (1 - 0.9) * mm / (np.sqrt(vv) + 1e-3)
    np.testing.assert_allclose(_np(new), [expect], rtol=1e-14)


def test_rmspropupdate_formula_and_torch_rmsprop():
    params = _tree(3)
    w0 = _leaves(params)
    ref, v = [w.copy() for w in w0], [np.zeros_like(w) for w in w0]
    tp = [torch.tensor(w, requires_grad=True) for w in w0]
    opt = torch.optim.RMSprop(tp, lr=0.02, alpha=0.85, eps=1e-6)
    avg_sq = None
    for it in range(4):
        g = _tree(30 + it)
        params, avg_sq = ml.rmspropupdate(params, g, avg_sq, 0.02, 0.85, 1e-6)
        for i, gi in enumerate(_leaves(g)):
            v[i] = 0.85 * v[i] + 0.15 * gi * gi
            ref[i] = ref[i] - 0.02 * gi / (np.sqrt(v[i]) + 1e-6)
            tp[i].grad = torch.tensor(gi)
        opt.step()
        for got, r, t in zip(_leaves(params), ref, tp):
            np.testing.assert_allclose(got, r, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(got, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_updates_on_raw_arrays_and_defaults():
    p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    new, vel = ml.sgdmupdate(p, g, [])  # MATLAB's vel = [] and default 0.01, 0.9
    np.testing.assert_allclose(new, p - 0.01 * g, rtol=1e-15)
    new2, vel2 = ml.sgdmupdate(new, g, vel)
    np.testing.assert_allclose(vel2, 0.9 * (-0.01 * g) - 0.01 * g, rtol=1e-15)
    np.testing.assert_array_equal(p, [1.0, 2.0])  # the input is not modified
    assert isinstance(new, np.ndarray)


def test_network_updates_return_a_new_network_with_learn_rate_factors():
    net = _small_net("float64", bn=False)
    net["conv"].weight_learn_rate_factor = 0  # frozen
    net["fc"].bias_learn_rate_factor = 2.0
    before = {k: {p: _np(v) for p, v in d.items()} for k, d in net.learnables().items()}
    grads = {k: {p: ml.dlarray(np.ones(v.shape), v.format) for p, v in d.items()}
             for k, d in net.learnables().items()}
    new, vel = ml.sgdmupdate(net, grads, None, 0.1, 0.9)
    assert isinstance(new, fa.Network) and new is not net
    assert all(a is not b for a, b in zip(new.layers, net.layers))
    after = new.learnables()
    for k in before:  # the given network keeps its values (MATLAB value semantics)
        for p in before[k]:
            np.testing.assert_array_equal(_np(net.learnables()[k][p]), before[k][p])
    np.testing.assert_array_equal(_np(after["conv"]["weights"]), before["conv"]["weights"])
    np.testing.assert_allclose(_np(after["conv"]["bias"]), before["conv"]["bias"] - 0.1)
    np.testing.assert_allclose(_np(after["fc"]["bias"]), before["fc"]["bias"] - 0.2)
    np.testing.assert_array_equal(_np(vel["conv"]["weights"]), 0.0)
    X = ml.dlarray(RNG.random((6, 6, 2, 2)), "SSCB")
    assert not np.array_equal(_np(new.predict(X)), _np(net.predict(X)))
    new2, m, v = ml.adamupdate(new, grads, None, None, 1)
    assert new2.layer_names == net.layer_names and new2 is not new


def test_update_argument_errors():
    p = _tree(4)
    with pytest.raises(ValueError, match="grad does not have the structure"):
        ml.sgdmupdate(p, {"a": p["a"]}, None)
    with pytest.raises(ValueError, match=r"sgdmupdate: invalid momentum=2"):
        ml.sgdmupdate(p, p, None, 0.1, 2)
    with pytest.raises(ValueError, match=r"adamupdate: invalid learnRate=-1"):
        ml.adamupdate(p, p, None, None, 1, -1)
    with pytest.raises(ValueError, match="iteration must be a positive integer"):
        ml.adamupdate(p, p, None, None, 0)
    with pytest.raises(ValueError, match="vel does not have the structure"):
        ml.sgdmupdate(p, p, {"a": 1})
    with pytest.raises(ValueError, match=r"gradient of \['a'\]\['w'\] has shape"):
        bad = {**p, "a": {"w": ml.dlarray(np.ones((2, 2)), "SC"), "b": p["a"]["b"]}}
        ml.rmspropupdate(p, bad, None)


# one-hot, losses, reductions -------------------------------------------------------------------


def test_onehotencode_and_decode_round_trip():
    labels = RNG.integers(0, 5, 40)
    T = ml.onehotencode(labels, 1, ClassNames=range(5))
    assert T.shape == (5, 40) and T.dtype == np.float32
    np.testing.assert_array_equal(np.argmax(T, axis=0), labels)
    np.testing.assert_array_equal(T.sum(axis=0), 1.0)
    np.testing.assert_array_equal(ml.onehotdecode(T, range(5), 1), labels)
    T2 = ml.onehotencode(labels[:, None], 2, "double", classes=list(range(5)))
    assert T2.shape == (40, 5) and T2.dtype == np.float64
    np.testing.assert_array_equal(ml.onehotdecode(T2, range(5), 2), labels)
    # strings; classes default to the sorted distinct labels
    words = ["cat", "dog", "ant", "dog"]
    W = ml.onehotencode(words, 1)
    np.testing.assert_array_equal(W, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1]])
    assert list(ml.onehotdecode(W, ["ant", "cat", "dog"], 1)) == words
    # torch in, torch out; decode of a formatted CB score array by label
    tt = ml.onehotencode(torch.tensor([2, 0]), 1, ClassNames=[0, 1, 2])
    assert isinstance(tt, torch.Tensor) and tt.tolist() == [[0, 1], [0, 0], [1, 0]]
    scores = ml.dlarray(np.array([[0.1, 0.7], [0.8, 0.2], [0.1, 0.1]]), "CB")
    np.testing.assert_array_equal(ml.onehotdecode(scores, [10, 20, 30], "C"), [20, 10])


def test_onehot_errors():
    with pytest.raises(ValueError, match="label 7 is not one of the classes"):
        ml.onehotencode(np.array([1, 7]), 1, ClassNames=[0, 1, 2])
    with pytest.raises(ValueError, match="featureDim=2 of the labels has size 3"):
        ml.onehotencode(np.zeros((2, 3), dtype=int), 2, ClassNames=[0])
    with pytest.raises(ValueError, match="featureDim must be a positive integer"):
        ml.onehotencode(np.array([0]), 0, ClassNames=[0])
    with pytest.raises(ValueError, match="unknown typename 'half'"):
        ml.onehotencode(np.array([0]), 1, "half", ClassNames=[0])
    with pytest.raises(ValueError, match="2 classes but dimension featureDim=1 of B has size 3"):
        ml.onehotdecode(np.zeros((3, 2)), [0, 1], 1)


def test_crossentropy_matches_torch_value_and_gradient():
    logits = RNG.standard_normal((4, 6))
    labels = RNG.integers(0, 4, 6)
    T = ml.onehotencode(labels, 1, "double", ClassNames=range(4))

    def f(Z):
        loss = ml.crossentropy(ml.softmax(Z), T)
        return loss, ml.dlgradient(loss, Z)

    loss, g = ml.dlfeval(f, ml.dlarray(logits, "CB"))
    tz = torch.tensor(logits.T, requires_grad=True)
    tl = F.nll_loss(torch.log(torch.softmax(tz, dim=1)), torch.tensor(labels))  # mean over B
    tl.backward()
    assert abs(float(_np(loss)) - tl.item()) < 1e-14 * tl.item() * 10
    np.testing.assert_allclose(_np(g), tz.grad.numpy().T, rtol=1e-12, atol=1e-15)
    none = ml.crossentropy(ml.softmax(ml.dlarray(logits, "CB")), T, NormalizationFactor="none")
    np.testing.assert_allclose(float(_np(none)), tl.item() * 6, rtol=1e-13)
    with pytest.raises(ValueError, match="NormalizationFactor='mask-included'"):
        ml.crossentropy(ml.dlarray(logits, "CB"), T, NormalizationFactor="mask-included")


def test_mse_is_half_mean_squared_error_per_observation():
    y, t = RNG.standard_normal((3, 5)), RNG.standard_normal((3, 5))

    def f(Y):
        loss = ml.mse(Y, t)
        return loss, ml.dlgradient(loss, Y)

    loss, g = ml.dlfeval(f, ml.dlarray(y, "CB"))
    ty = torch.tensor(y, requires_grad=True)
    tl = F.mse_loss(ty, torch.tensor(t), reduction="sum") / (2 * 5)
    tl.backward()
    np.testing.assert_allclose(float(_np(loss)), tl.item(), rtol=1e-14)
    np.testing.assert_allclose(_np(g), ty.grad.numpy(), rtol=1e-14)
    np.testing.assert_allclose(float(_np(ml.mse(ml.dlarray(y, "CB"), t,
                                                NormalizationFactor="all-elements"))),
                               np.sum((y - t) ** 2) / 30, rtol=1e-14)


def test_reductions_take_all():
    x = RNG.standard_normal((4, 3, 2, 5))
    X = ml.dlarray(x, "SSCB")
    for f, r in ((fa.mean, np.mean), (fa.sum, np.sum), (fa.max, np.max), (fa.min, np.min)):
        y = f(X, "all")
        assert y.format == "" and y.shape == ()
        np.testing.assert_allclose(float(_np(y)), r(x), rtol=1e-14)
    assert fa.mean(X, "ALL", keepdims=True).shape == (1, 1, 1, 1)
    g = fa.grad(lambda X: fa.mean(X, "all"))(X)
    np.testing.assert_allclose(_np(g), np.full(x.shape, 1 / x.size), rtol=1e-15)


def test_matlab_mean_dims():
    x = RNG.standard_normal((3, 1, 4))
    X = ml.dlarray(x)
    np.testing.assert_allclose(_np(ml.mean(X, "all")), x.mean(), rtol=1e-14)
    np.testing.assert_allclose(_np(ml.mean(X)), x.mean(axis=0), rtol=1e-14)  # first non-1
    np.testing.assert_allclose(_np(ml.mean(X, 3)), x.mean(axis=2), rtol=1e-14)  # 1-based
    np.testing.assert_allclose(_np(ml.mean(X, [1, 3])), x.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(_np(ml.mean(ml.dlarray(x, "SCB"), "SB")), x.mean(axis=(0, 2)))
    with pytest.raises(ValueError, match="1-based dimension numbers in 1..3"):
        ml.mean(X, 0)


def test_relu_softmax_fullyconnect_are_the_fmtarray_ops():
    x = ml.dlarray(RNG.standard_normal((4, 3)), "CB")
    np.testing.assert_array_equal(_np(ml.relu(x)), _np(fa.relu(x)))
    np.testing.assert_array_equal(_np(ml.softmax(x)), _np(fa.softmax(x)))
    np.testing.assert_array_equal(_np(ml.softmax(x.data, DataFormat="CB")), _np(fa.softmax(x)))
    w, b = RNG.standard_normal((2, 4)), RNG.standard_normal(2)
    np.testing.assert_allclose(_np(ml.fullyconnect(x, w, b)), w @ x.data + b[:, None],
                               rtol=1e-14)


# MATLAB property names on layers -----------------------------------------------------------

_ARGS = {  # positional arguments of layer constructors that need some
    "Convolution2DLayer": (3, 4), "TransposedConvolution2DLayer": (3, 4),
    "FullyConnectedLayer": (3,), "ImageInputLayer": ((8, 8, 1),),
    "MaxPooling2DLayer": (2,), "AveragePooling2DLayer": (2,), "ConcatenationLayer": (3, 2),
    "AdditionLayer": (2,), "MultiplicationLayer": (2,), "DepthConcatenationLayer": (2,),
    "GroupedConvolution2DLayer": (3, 2, 2), "Convolution1DLayer": (3, 4),
    "Convolution3DLayer": (3, 4),
}


def _builtin_layers():
    out = []
    for name, cls in sorted(vars(L).items()):
        if inspect.isclass(cls) and issubclass(cls, L.Layer) and cls is not L.Layer \
                and not name.endswith("Base"):
            try:
                out.append(cls(*_ARGS.get(name, ())))
            except TypeError:  # a layer added later with required arguments: build with them
                continue
    return out


def _same(a, b):
    if a is None or isinstance(a, (str, int, float, tuple)):
        return a == b
    return a is b or np.array_equal(_np(a), _np(b))


def test_every_builtin_layer_answers_its_matlab_property_names():
    layers = _builtin_layers()
    assert {"Convolution2DLayer", "BatchNormalizationLayer", "ImageInputLayer",
            "FullyConnectedLayer", "ReLULayer", "AdditionLayer", "MaxPooling2DLayer"} <= \
        {type(x).__name__ for x in layers}
    for layer in layers:
        names = fa.layers.base.matlab_names(layer)
        assert "Name" in names
        for ml_name in names:
            py = fa.layers.base.snake_case(ml_name)
            assert _same(getattr(layer, ml_name), getattr(layer, py)), (layer, ml_name)
        with pytest.raises(AttributeError, match="has no property 'Wieghts'.*Name"):
            layer.Wieghts  # noqa: B018
        layer.Name = "renamed"
        assert layer.name == "renamed"
        assert layer.Type == layer.type_name() and layer.Description == layer.description()


def test_conv_layer_matlab_properties_read_and_set():
    c = ml.convolution2dLayer(5, 8, Padding=[1, 2], Name="c")
    assert (c.FilterSize, c.NumFilters, c.Stride, c.PaddingSize, c.PaddingMode) == \
        ((5, 5), 8, (1, 1), (1, 1, 2, 2), "manual")
    assert (c.WeightL2Factor, c.BiasL2Factor, c.WeightLearnRateFactor) == (1, 0, 1)
    net = fa.Network([L.image_input_layer((9, 9, 3)), c]).initialize()
    assert c.Weights.shape == (5, 5, 3, 8) and c.Bias.shape == (1, 1, 8)
    w = np.zeros((5, 5, 3, 8), dtype=np.float32)
    c.Weights = w
    np.testing.assert_array_equal(_np(c.weights), 0.0)
    w[0, 0, 0, 0] = 1.0  # the layer stored a copy
    assert float(_np(c.weights)[0, 0, 0, 0]) == 0.0
    c.WeightLearnRateFactor = 0.5
    assert c.weight_learn_rate_factor == 0.5
    with pytest.raises(AttributeError, match="no settable property 'Type'"):
        c.Type = "x"
    with pytest.raises(AttributeError, match="use a lowercase name"):
        c.Wieghts = w
    assert not hasattr(c, "Wieghts") and getattr(c, "nothing_here", 7) == 7
    assert net.Layers[1] is c


# a short custom loop ---------------------------------------------------------------------------


def test_custom_loop_decreases_the_loss():
    net = _small_net()
    # its own generator: the same data whichever tests ran before (with the module's
    # shared RNG, this test alone drew data whose predict() missed one of 12 after the
    # 15 steps, batch normalisation's running statistics still settling)
    X = ml.dlarray(np.random.default_rng(0).random((6, 6, 2, 12)).astype(np.float32), "SSCB")
    labels = np.arange(12) % 3
    T = ml.onehotencode(labels, 1, ClassNames=[0, 1, 2])

    def model_loss(net, X, T):
        Y, state = ml.forward(net, X)
        loss = ml.crossentropy(Y, T)
        return loss, ml.dlgradient(loss, net.Learnables), state

    vel, losses = None, []
    for _ in range(15):
        loss, grads, state = ml.dlfeval(model_loss, net, X, T)
        net.update_state(state)
        net, vel = ml.sgdmupdate(net, grads, vel, 0.05, 0.9)
        losses.append(float(_np(loss)))
    assert losses[-1] < 0.3 * losses[0]
    pred = ml.onehotdecode(ml.predict(net, X), [0, 1, 2], 1)
    assert np.mean(pred == labels) == 1.0


# the name table ------------------------------------------------------------------------------


def test_every_matlab_name_is_in_the_docs_table():
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "matlab.md").read_text()
    listed = set(re.findall(r"^\|\s*`([A-Za-z0-9_]+)", doc, flags=re.M))
    missing = [n for n in ml.__all__ if n not in listed]
    assert not missing, f"docs/matlab.md's table lacks {missing}"
