"""MATLAB's ``net.Learnables`` / ``net.State`` tables, ``fmtarray.to_numpy``, ``dlnetwork()``
with no layers, and the split of the custom-loop names into two modules."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import layers as L
from fmtarray import matlab as ml
from fmtarray.network import ParameterTable

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(7)


def _np(a):
    return np.asarray(fa._backend.to_numpy(a.data if isinstance(a, fa.FormattedArray) else a))


def _mlp(dtype="float64"):
    import array_api_compat.numpy as xnp

    layers = [L.image_input_layer((1, 1, 3), normalization="none"), L.fully_connected_layer(4),
              L.relu_layer(), L.fully_connected_layer(2), L.softmax_layer()]
    return fa.Network(layers).initialize(xp=xnp, dtype=getattr(xnp, dtype), seed=3)


def _conv_bn(dtype="float32"):
    import array_api_compat.numpy as xnp

    layers = [L.image_input_layer((6, 6, 2), normalization="none"),
              L.convolution2d_layer(3, 4, name="conv"), L.batch_normalization_layer(name="bn"),
              L.relu_layer(), L.fully_connected_layer(3, name="fc"), L.softmax_layer()]
    return fa.Network(layers).initialize(xp=xnp, dtype=getattr(xnp, dtype))


# the table view -------------------------------------------------------------------------------


def test_learnables_is_the_tree_and_a_table():
    net = _conv_bn()
    tree = net.learnables()
    t = net.Learnables
    assert isinstance(t, ParameterTable) and isinstance(t, dict)
    assert list(t) == ["conv", "bn", "fc"] and len(t) == 3  # dict semantics: layers
    for k in tree:
        assert list(t[k]) == list(tree[k])
        for p in tree[k]:
            assert t[k][p].data is tree[k][p].data  # the layer's arrays, not copies
    want = [("conv", "weights"), ("conv", "bias"), ("bn", "offset"), ("bn", "scale"),
            ("fc", "weights"), ("fc", "bias")]
    assert list(zip(t.Layer, t.Parameter)) == want
    assert t.height == t.num_rows == 6 and t.width == 3
    assert [v is t[lay][p] for v, (lay, p) in zip(t.Value, want)] == [True] * 6
    r = t.row(4)
    assert (r.Layer, r.Parameter) == ("fc", "weights") and r.Value is t["fc"]["weights"]
    assert t[4] is not r and tuple(t[4]) == tuple(r)
    assert t[-1].Parameter == "bias" and t[-1].Layer == "fc"
    assert tuple(t[0]) == ("conv", "weights", t["conv"]["weights"])
    with pytest.raises(IndexError, match="row index 6 is out of range: the table has 6 rows"):
        t.row(6)
    with pytest.raises(IndexError, match="out of range"):
        t[-7]
    with pytest.raises(TypeError, match="row index must be an int, got str"):
        t.row("conv")
    with pytest.raises(KeyError):
        t["nope"]
    assert type(t.copy()) is ParameterTable and t.copy() == t


def test_learnables_display_is_matlabs_table():
    t = _conv_bn().Learnables
    lines = str(t).splitlines()
    assert lines[0] == "  6\u00d73 table"
    assert lines[2].split() == ["Layer", "Parameter", "Value"]
    assert set(lines[3].replace(" ", "")) == {"_"}
    body = [ln.split() for ln in lines[5:]]
    assert body == [
        ['"conv"', '"weights"', "{3\u00d73\u00d72\u00d74", "dlarray}"],
        ['"conv"', '"bias"', "{1\u00d71\u00d74", "dlarray}"],
        ['"bn"', '"offset"', "{1\u00d71\u00d74", "dlarray}"],
        ['"bn"', '"scale"', "{1\u00d71\u00d74", "dlarray}"],
        ['"fc"', '"weights"', "{3\u00d764", "dlarray}"],
        ['"fc"', '"bias"', "{3\u00d71", "dlarray}"],
    ]
    # the columns line up: each header starts where its column's values start
    starts = [lines[2].index(h) for h in ("Layer", "Parameter", "Value")]
    for ln in lines[5:]:
        quotes = [i for i, c in enumerate(ln) if c == '"']
        assert [quotes[0], quotes[2], ln.index("{")] == starts
    assert repr(ParameterTable()) == "  0\u00d73 empty table (Layer, Parameter, Value)"
    assert ParameterTable().height == 0


def test_state_table_and_assignment():
    net = _conv_bn()
    st = net.State
    assert isinstance(st, ParameterTable) and st == net.state()
    assert list(zip(st.Layer, st.Parameter)) == [("bn", "trained_mean"), ("bn", "trained_variance")]
    assert '"trained_variance"' in str(st) and "{1\u00d71\u00d74" in str(st)
    X = fa.FormattedArray(RNG.random((6, 6, 2, 5)).astype(np.float32) * 3 + 1, "SSCB")
    _, state = net.forward(X)
    before = _np(net.state()["bn"]["trained_mean"]).copy()
    net.State = state  # MATLAB's net.State = state
    after = _np(net.state()["bn"]["trained_mean"])
    np.testing.assert_array_equal(after, _np(state["bn"]["trained_mean"]))
    assert not np.array_equal(after, before)
    with pytest.raises(ValueError, match="state has an unknown layer 'nope'"):
        net.State = {"nope": {}}


def test_learnables_assignment_takes_a_tree_or_a_table():
    a, b = _mlp(), _mlp()
    b.set_learnables({k: {p: v * 2.0 for p, v in d.items()} for k, d in b.learnables().items()})
    a.Learnables = b.Learnables  # a table
    for k, d in b.learnables().items():
        for p, v in d.items():
            np.testing.assert_array_equal(_np(a.learnables()[k][p]), _np(v))
    a.Learnables = {"fc_2": {"bias": fa.FormattedArray(np.full((2, 1), 5.0))}}  # a subtree
    np.testing.assert_array_equal(_np(a.learnables()["fc_2"]["bias"]), [[5.0], [5.0]])
    with pytest.raises(ValueError, match=r"new bias has shape \(3, 1\), the current one \(2, 1\)"):
        a.Learnables = {"fc_2": {"bias": fa.FormattedArray(np.zeros((3, 1)))}}
    with pytest.raises(TypeError, match="learnables must be a dict"):
        a.Learnables = [1, 2]
    x = fa.FormattedArray(RNG.random((1, 1, 3, 4)), "SSCB")
    np.testing.assert_array_equal(_np(b.predict(x)), _np(a.predict(x, learnables=b.Learnables)))


# gradients come back as a table ------------------------------------------------------------


def _torch_mlp_loss(net, x, t):
    p = {k: {q: torch.tensor(_np(v), requires_grad=True) for q, v in d.items()}
         for k, d in net.learnables().items()}
    xt = torch.tensor(_np(x).reshape(3, -1).T)  # N × C
    h = torch.relu(xt @ p["fc_1"]["weights"].T + p["fc_1"]["bias"].T)
    y = torch.softmax(h @ p["fc_2"]["weights"].T + p["fc_2"]["bias"].T, dim=1)
    loss = -(torch.tensor(t.T) * torch.log(y)).sum() / xt.shape[0]
    loss.backward()
    return float(loss.detach()), {k: {q: v.grad.numpy() for q, v in d.items()} for k, d in p.items()}


def test_dlgradient_of_the_learnables_table_is_a_table_matching_torch():
    net = _mlp()
    x = fa.FormattedArray(RNG.random((1, 1, 3, 6)), "SSCB")
    labels = np.array([0, 1, 1, 0, 1, 0])
    T = ml.onehotencode(labels, 1, "double", ClassNames=[0, 1])

    def model_loss(net, X, T):
        Y, state = ml.forward(net, X)
        loss = ml.crossentropy(Y, T)
        return loss, ml.dlgradient(loss, net.Learnables)

    loss, grads = ml.dlfeval(model_loss, net, x, T)
    ref_loss, ref = _torch_mlp_loss(net, x, T)
    assert isinstance(grads, ParameterTable)
    assert list(zip(grads.Layer, grads.Parameter)) == list(zip(net.Learnables.Layer,
                                                               net.Learnables.Parameter))
    assert abs(float(_np(loss)) - ref_loss) <= 1e-12 * abs(ref_loss)
    worst = 0.0
    for r in grads.rows:
        g, want = _np(r.Value), ref[r.Layer][r.Parameter]
        assert g.shape == want.shape and r.Value._node is None
        worst = max(worst, float(np.max(np.abs(g - want)) / np.max(np.abs(want))))
    assert worst <= 1e-12, worst
    # fa.grad over a table also returns a table, with the same values
    g2 = fa.grad(lambda p: ml.crossentropy(net.forward(x, learnables=p)[0], T))(net.Learnables)
    assert isinstance(g2, ParameterTable)
    for r, r2 in zip(grads.rows, g2.rows):
        np.testing.assert_array_equal(_np(r.Value), _np(r2.Value))


def test_sgdmupdate_on_a_network_returns_the_velocity_as_a_table():
    net = _mlp()
    x = fa.FormattedArray(RNG.random((1, 1, 3, 6)), "SSCB")
    T = ml.onehotencode(np.array([0, 1, 1, 0, 1, 0]), 1, "double", ClassNames=[0, 1])
    _, grads = ml.dlfeval(lambda n, X: (lambda loss: (loss, ml.dlgradient(loss, n.Learnables)))(
        ml.crossentropy(ml.forward(n, X)[0], T)), net, x)
    new, vel = ml.sgdmupdate(net, grads, None, 0.1, 0.9)
    assert isinstance(vel, ParameterTable) and vel.Parameter == grads.Parameter
    for rv, rg, rw, rn in zip(vel.rows, grads.rows, net.Learnables.rows, new.Learnables.rows):
        np.testing.assert_allclose(_np(rv.Value), -0.1 * _np(rg.Value), rtol=1e-15, atol=0)
        np.testing.assert_allclose(_np(rn.Value), _np(rw.Value) - 0.1 * _np(rg.Value),
                                   rtol=1e-15, atol=1e-17)
    new2, vel2 = ml.sgdmupdate(new, grads, vel, 0.1, 0.9)  # the table goes back in
    for rv2, rg in zip(vel2.rows, grads.rows):
        np.testing.assert_allclose(_np(rv2.Value), -0.19 * _np(rg.Value), rtol=1e-14, atol=0)


# to_numpy ------------------------------------------------------------------------------------


def test_to_numpy_on_every_library(xp):
    host = RNG.random((2, 3, 4, 5))  # B C S S (torch's NCHW)
    x = fa.FormattedArray(xp.asarray(host), "BCSS")
    a = fa.to_numpy(x)
    assert type(a) is np.ndarray and a.shape == (4, 5, 3, 2)  # canonical S S C B
    np.testing.assert_array_equal(a, host.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(a, xp.to_numpy(x.data))  # the order of x.data
    np.testing.assert_array_equal(fa.to_numpy(x, "BCSS"), host)
    np.testing.assert_array_equal(fa.to_numpy(x, "CBSS"), host.transpose(1, 0, 2, 3))
    raw = fa.to_numpy(xp.asarray(host))
    assert type(raw) is np.ndarray
    np.testing.assert_array_equal(raw, host)


def test_to_numpy_of_a_traced_array_gives_its_values():
    x = fa.FormattedArray(RNG.random((3, 2)), "CB")
    seen = []

    def f(x):
        seen.append(fa.to_numpy(x))
        return fa.sum(x * x)

    g = fa.grad(f)(x)
    np.testing.assert_array_equal(seen[0], x.data)
    np.testing.assert_array_equal(_np(g), 2 * x.data)


def test_to_numpy_copies_a_torch_tensor_that_requires_grad_to_the_host():
    t = torch.arange(6.0, dtype=torch.float64).reshape(2, 3).requires_grad_()
    a = fa.to_numpy(fa.FormattedArray(t, "CB"))
    np.testing.assert_array_equal(a, np.arange(6.0).reshape(2, 3))


def test_to_numpy_errors():
    with pytest.raises(TypeError, match=r"to_numpy: x must be a FormattedArray or an array.*"
                                        r"got builtins\.list"):
        fa.to_numpy([1, 2])
    with pytest.raises(ValueError, match=r"to_numpy: fmt='CB' needs a formatted x"):
        fa.to_numpy(np.zeros((2, 3)), "CB")
    with pytest.raises(ValueError):
        fa.to_numpy(fa.FormattedArray(np.zeros((2, 3)), "CB"), "SB")


# dlnetwork -----------------------------------------------------------------------------------


def test_dlnetwork_without_layers_is_empty_and_can_be_built():
    net = ml.dlnetwork()
    assert isinstance(net, fa.Network) and len(net) == 0 and net.Initialized is False
    assert net.Learnables == {} and net.Learnables.height == 0
    assert len(ml.dlnetwork([])) == 0
    net.add_layers([L.image_input_layer((4, 4, 1)), L.fully_connected_layer(3)])
    net.initialize()
    assert net.Initialized and net.Learnables.Parameter == ["weights", "bias"]


def test_dlnetwork_initialize_options_and_examples():
    def layers():
        return [L.image_input_layer((4, 4, 1)), L.fully_connected_layer(3), L.softmax_layer()]

    assert ml.dlnetwork(layers()).Initialized is True
    for off in (ml.dlnetwork(layers(), Initialize=False),
                ml.dlnetwork(layers(), "Initialize", False),
                ml.dlnetwork(layers(), initialize=False)):
        assert off.Initialized is False and off.Learnables == {}
    # no input layer: uninitialised unless examples are given
    bare = [L.fully_connected_layer(3), L.softmax_layer()]
    assert ml.dlnetwork(bare).Initialized is False
    x = fa.FormattedArray(RNG.random((5, 2)).astype(np.float32), "CB")
    net = ml.dlnetwork([L.fully_connected_layer(3), L.softmax_layer()], x)
    assert net.Initialized and net.Learnables[0].Value.shape == (3, 5)
    with pytest.raises(TypeError, match="dlnetwork: Initialize must be true or false"):
        ml.dlnetwork(layers(), Initialize="yes")
    with pytest.raises(TypeError, match="dlnetwork: unknown option 'OutputNames'"):
        ml.dlnetwork(layers(), OutputNames=["fc"])
    with pytest.raises(ValueError, match="example inputs were given with Initialize=False"):
        ml.dlnetwork([L.fully_connected_layer(3)], x, Initialize=False)


# the module split ----------------------------------------------------------------------------


def test_loop_and_data_functions_live_in_their_modules():
    from fmtarray.matlab import _dataops, _functions

    assert set(_functions.__all__) == {"dlfeval", "dlgradient", "predict", "forward",
                                       "sgdmupdate", "adamupdate", "rmspropupdate"}
    assert set(_dataops.__all__) == {"onehotencode", "onehotdecode", "crossentropy", "mse",
                                     "relu", "softmax", "fullyconnect", "mean"}
    for n in [*_functions.__all__, *_dataops.__all__]:
        assert n in ml.__all__ and getattr(ml, n).__module__ in (_functions.__name__,
                                                                 _dataops.__name__)
