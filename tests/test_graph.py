"""Layer graphs (``Network`` as MATLAB's ``dlnetwork``): building, editing, connecting,
errors, display; a residual graph's predictions and gradients against the same network
written in torch (float64); several inputs and outputs; learnables-pure evaluation."""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray, Network
from fmtarray.layers import (
    Layer, addition_layer, concatenation_layer, convolution2d_layer, depth_concatenation_layer,
    flatten_layer, fully_connected_layer, image_input_layer, relu_layer, softmax_layer,
)


def _np(a):
    from fmtarray import _backend

    return np.asarray(_backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def residual_net(size=6, ch=2, k=4):
    """input → conv → relu_1 → c2 → add(c2, relu_1) → relu_2 → fc → softmax."""
    net = Network([
        image_input_layer((size, size, ch), normalization="none"),
        convolution2d_layer(3, k, padding="same", name="c1"),
        relu_layer(name="relu_1"),
        convolution2d_layer(3, k, padding="same", name="c2"),
        addition_layer(2, name="add"),
        relu_layer(name="relu_2"),
        fully_connected_layer(3, name="fc"),
        softmax_layer(),
    ])
    return net.connect_layers("relu_1", "add/in2")


# building ----------------------------------------------------------------------------------


def test_chain_is_unchanged_and_a_graph_shows_its_connections():
    chain = Network([image_input_layer((4, 4, 1)), relu_layer(), fully_connected_layer(2)])
    assert chain.is_chain()
    assert chain.connections == (("imageinput", "relu"), ("relu", "fc"))
    assert "Connections" not in repr(chain) and "connections" not in repr(chain)
    assert repr(chain).splitlines()[0] == "3x1 Layer array with layers:"
    net = residual_net()
    assert not net.is_chain()
    assert net.connections == (
        ("imageinput", "c1"), ("c1", "relu_1"), ("relu_1", "c2"), ("relu_1", "add/in2"),
        ("c2", "add/in1"), ("add", "relu_2"), ("relu_2", "fc"), ("fc", "softmax"))
    text = repr(net)
    assert "8x2 table of connections:" in text
    assert "    relu_1       add/in2" in text
    assert "  Inputs: 'imageinput'" in text and "  Outputs: 'softmax'" in text
    assert "    5   'add'          Addition          Element-wise addition of 2 inputs" in text


def test_empty_network_and_add_layers():
    net = Network()
    assert len(net) == 0 and net.input_names == () and net.connections == ()
    assert "no layers" in repr(net)
    with pytest.raises(ValueError, match="cannot initialize an empty network"):
        net.initialize()
    out = net.add_layers([image_input_layer((4, 4, 2)), relu_layer()])
    assert out is net
    net.add_layers(relu_layer())  # one layer; unconnected; the name avoids the taken 'relu'
    assert net.layer_names == ("imageinput", "relu", "relu_1")
    assert net.connections == (("imageinput", "relu"),)
    assert net.input_names == ("imageinput", "relu_1") and net.output_names == ("relu", "relu_1")
    assert Network([]).layer_names == ()
    with pytest.raises(ValueError, match="already the name of layer 2"):
        net.add_layers(relu_layer(name="relu"))
    with pytest.raises(ValueError, match="same ReLULayer object"):
        net.add_layers(net["relu"])
    with pytest.raises(TypeError, match="nested"):
        net.add_layers(Network([relu_layer()]))


def test_graph_built_by_editing_equals_the_chain_with_a_skip():
    a = residual_net().initialize(seed=5)
    b = Network()
    b.add_layers([image_input_layer((6, 6, 2), normalization="none"),
                  convolution2d_layer(3, 4, padding="same", name="c1"),
                  relu_layer(name="relu_1")])
    b.add_layers([convolution2d_layer(3, 4, padding="same", name="c2"), addition_layer(2, name="add"),
                  relu_layer(name="relu_2"), fully_connected_layer(3, name="fc"), softmax_layer()])
    fa.matlab.connectLayers(b, "relu_1", "c2")
    fa.matlab.connectLayers(b, "relu_1", "add/in2")
    assert b.connections == a.connections
    b.initialize(seed=5)  # same positions, same seeds: the same initial values
    x = np.random.default_rng(0).standard_normal((6, 6, 2, 3))
    np.testing.assert_array_equal(_np(a.predict(x)), _np(b.predict(x)))


def test_connect_errors_name_layer_port_and_legal_values():
    net = residual_net()
    with pytest.raises(ValueError, match=r"unknown source layer 'nope'; the layers are \("):
        net.connect_layers("nope", "fc")
    with pytest.raises(ValueError, match=r"layer 'add' has no input 'in3'; its inputs are 'in1', 'in2'"):
        net.connect_layers("c1", "add/in3")
    with pytest.raises(ValueError, match=r"layer 'add' has 2 inputs \(in1, in2\); name one"):
        net.add_layers(relu_layer(name="r")).connect_layers("r", "add")
    with pytest.raises(ValueError, match=r"input 'add/in1' is already connected to 'c2'; "
                                         r"disconnect it first"):
        net.connect_layers("r", "add/in1")
    with pytest.raises(ValueError, match=r"would make a cycle relu_2 -> fc -> softmax -> r -> relu_2"):
        net.disconnect_layers("add", "relu_2").connect_layers("softmax", "r").connect_layers(
            "r", "relu_2")
    with pytest.raises(ValueError, match=r"no connection from 'c1' to 'fc'; the connections are "
                                         r"imageinput -> c1"):
        net.disconnect_layers("c1", "fc")
    with pytest.raises(TypeError, match="source must be a str"):
        net.connect_layers(3, "fc")


def test_disconnect_remove_replace():
    net = residual_net().initialize()
    assert net.initialized
    net.disconnect_layers("relu_1", "add/in2")
    assert not net.initialized
    assert net.input_names == ("imageinput", "add/in2")
    with pytest.raises(ValueError) as e:
        net.initialize()
    assert ("Layer 'add': Unconnected input. Each layer input must be connected to the output "
            "of another layer.") in str(e.value)
    net.connect_layers("relu_1", "add/in2")
    net.remove_layers(["relu_2", "softmax"])
    assert ("add", "relu_2") not in net.connections and net.output_names == ("add", "fc")
    assert net.input_names == ("imageinput", "fc")
    net.connect_layers("add", "fc")
    net.replace_layer("c2", [convolution2d_layer(1, 4, name="p1"), relu_layer(name="p2")])
    assert net.layer_names[3:5] == ("p1", "p2")
    assert ("relu_1", "p1") in net.connections and ("p2", "add/in1") in net.connections
    assert ("p1", "p2") in net.connections
    fa.matlab.replaceLayer(net, "add", concatenation_layer("C", 2, name="cat"))
    assert ("p2", "cat/in1") in net.connections and ("relu_1", "cat/in2") in net.connections
    fa.matlab.removeLayers(net, "p2")
    assert net.input_names == ("imageinput", "cat/in1")
    with pytest.raises(ValueError, match="unknown layer 'p2'"):
        net.remove_layers("p2")
    with pytest.raises(ValueError, match="new first layer has no input"):
        net.replace_layer("cat", image_input_layer((6, 6, 2), name="x"))  # its in2 is connected
    net.connect_layers("p1", "cat/in1")
    net.replace_layer("fc", fully_connected_layer(3, name="fc"))  # the old one has 144 inputs
    assert ("cat", "fc") in net.connections
    net.initialize()
    assert net.predict(np.zeros((6, 6, 2, 2))).shape == (3, 2)


def test_format_errors_name_both_layers_and_formats():
    net = Network([image_input_layer((6, 6, 2)), convolution2d_layer(3, 4, name="conv"),
                   addition_layer(2, name="add")])
    net.add_layers(fully_connected_layer(4, name="fc"))
    net.connect_layers("imageinput", "fc").connect_layers("fc", "add/in2")
    with pytest.raises(ValueError) as e:
        net.initialize()
    msg = str(e.value)
    assert msg.startswith("layer 3 'add' (Addition) cannot take its inputs: 'in1' = the output of "
                          "layer 2 'conv' (2-D Convolution) (format 'SSCB'")
    assert "'in2' = the output of layer 4 'fc' (Fully Connected) (format 'CB'" in msg
    assert "input 'in1' has format 'SSCB' (shape (4, 4, 4, 1)) and input 'in2' has format 'CB'" in msg


# evaluation ----------------------------------------------------------------------------------


def _torch_residual(net, x):
    import torch
    import torch.nn.functional as F

    p = {k: {n: torch.tensor(_np(v), requires_grad=True) for n, v in d.items()}
         for k, d in net.learnables().items()}

    def conv(t, name):
        w = p[name]["weights"].permute(3, 2, 0, 1)  # h×w×C×F → F×C×h×w
        return F.conv2d(t, w, p[name]["bias"].reshape(-1), padding=1)

    t = torch.tensor(x).permute(3, 2, 0, 1)  # SSCB → NCHW
    r1 = torch.relu(conv(t, "c1"))
    r2 = torch.relu(conv(r1, "c2") + r1)
    feat = r2.permute(0, 1, 3, 2).reshape(r2.shape[0], -1)  # MATLAB order: h fastest, c slowest
    z = feat @ p["fc"]["weights"].T + p["fc"]["bias"].reshape(-1)
    return torch.softmax(z, dim=1).T, p  # CB


def test_residual_graph_predict_and_gradients_equal_torch_float64():
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 6, 2, 4))
    net = residual_net().initialize(x, seed=2)
    params = net.learnables()
    params["c1"]["bias"] = FormattedArray(rng.uniform(0.1, 0.3, (1, 1, 4)))
    net.set_learnables(params)
    w = rng.standard_normal((3, 4))
    W = FormattedArray(w, "CB")
    y = net.predict(x)
    ref_y, tp = _torch_residual(net, x)
    assert y.format == "CB" and _rel(_np(y), ref_y.detach().numpy()) <= 1e-12
    g = fa.grad(lambda p: fa.sum(net.forward(x, learnables=p)[0] * W))(net.learnables())
    (ref_y * __import__("torch").tensor(w)).sum().backward()
    worst = 0.0
    for lname, d in tp.items():
        for pname, t in d.items():
            worst = max(worst, _rel(_np(g[lname][pname]), t.grad.numpy()))
    assert worst <= 1e-9, worst


def test_residual_graph_trains():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 6, 2, 16))
    labels = (x[:, :, 0, :].mean((0, 1)) > 0).astype(int)
    t = fa.one_hot(labels, 3, dtype=np.float64)
    net = residual_net().initialize(x, seed=0)
    p = net.learnables()

    def loss(params):
        return fa.cross_entropy(net.forward(x, learnables=params)[0], t)

    l0 = float(loss(p).data)
    for _ in range(20):
        val, g = fa.value_and_grad(loss)(p)
        p = {k: {n: v - 0.2 * g[k][n] for n, v in d.items()} for k, d in p.items()}
    assert float(loss(p).data) < 0.7 * l0


class Split(Layer):
    """Two outputs: the positive and the negative part."""

    output_names = ("pos", "neg")
    num_outputs = 2

    def __init__(self, name=""):
        self.name = name

    def predict(self, x):
        return fa.relu(x), fa.relu(-x)


def test_several_inputs_and_outputs():
    rng = np.random.default_rng(4)
    net = Network([image_input_layer((3, 3, 2), normalization="none", name="a"),
                   depth_concatenation_layer(2, name="cat"), flatten_layer(),
                   fully_connected_layer(2, name="fc")])
    net.add_layers([image_input_layer((3, 3, 1), normalization="none", name="b"), Split(name="split")])
    net.connect_layers("split/neg", "cat/in2")
    assert net.input_names == ("a", "b") and net.output_names == ("fc", "split/pos")
    with pytest.raises(ValueError, match=r"layer 'split' has 2 outputs \(pos, neg\)"):
        net.connect_layers("split", "fc")
    xa, xb = rng.standard_normal((3, 3, 2, 5)), rng.standard_normal((3, 3, 1, 5))
    net.initialize((xa, None), seed=1, dtype=np.float64)  # None: 'b' makes its own example
    fc_out, pos = net.predict(xa, xb)
    assert fc_out.format == "CB" and pos.format == "SSCB"
    np.testing.assert_array_equal(_np(pos), np.maximum(xb, 0))
    feat = np.concatenate([xa, np.maximum(-xb, 0)], axis=2).reshape(27, 5, order="F")
    p = net.learnables()["fc"]
    ref = _np(p["weights"]) @ feat + _np(p["bias"])
    np.testing.assert_allclose(_np(fc_out), ref, rtol=1e-12)
    (y1, y2), state = net.forward(xa, xb)
    assert state == {} and _np(y1).shape == (2, 5)
    with pytest.raises(TypeError, match=r"predict takes 2 input\(s\), one per network input "
                                        r"\('a', 'b'\), got 1"):
        net.predict(xa)
    # gradients through both outputs
    g = fa.grad(lambda q: fa.sum(net.predict(xa, xb, learnables=q)[0]))(net.learnables())
    np.testing.assert_allclose(_np(g["fc"]["weights"]), np.tile(feat.sum(1), (2, 1)), rtol=1e-12)
    # examples for inputs that are not input layers: a tuple in input_names order
    free = Network([addition_layer(2, name="add"), relu_layer()])
    assert free.input_names == ("add/in1", "add/in2")
    with pytest.raises(ValueError, match=r"got 1 example input\(s\) but the network has 2 inputs"):
        free.initialize(FormattedArray(np.ones((2, 1)), "CB"))
    free.initialize((FormattedArray(np.ones((2, 1)), "CB"), FormattedArray(np.ones((2, 1)), "CB")))
    out = free.predict(FormattedArray(np.array([[1.0], [-3.0]]), "CB"),
                       FormattedArray(np.array([[1.0], [1.0]]), "CB"))
    np.testing.assert_array_equal(_np(out), [[2.0], [0.0]])


def test_learnables_evaluation_is_pure_and_thread_safe():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 6, 2, 2))
    net = residual_net().initialize(x, seed=0)
    base = net.learnables()
    trees = [{k: {n: v * (1 + 0.1 * i) for n, v in d.items()} for k, d in base.items()}
             for i in range(4)]
    expected = [_np(net.predict(x, learnables=t)) for t in trees]
    before = _np(net.predict(x))
    results = [None] * 4

    def run(i):
        for _ in range(3):
            results[i] = _np(net.predict(x, learnables=trees[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r, e in zip(results, expected):
        np.testing.assert_array_equal(r, e)
    np.testing.assert_array_equal(_np(net.predict(x)), before)
    assert not np.array_equal(expected[0], expected[3])


def test_matlab_aliases_and_to(monkeypatch):
    net = residual_net().initialize()
    assert net.Layers == net.layers and net.Connections == net.connections
    assert net.InputNames == ("imageinput",) and net.OutputNames == ("softmax",)
    assert net.Initialized is True and net.State == {}
    assert set(net.Learnables) == {"c1", "c2", "fc"}
    calls = []
    fake = types.ModuleType("fmtarray._move")
    fake.to_library = lambda n, lib, dev: calls.append((n, lib, dev)) or "moved"
    monkeypatch.setitem(sys.modules, "fmtarray._move", fake)
    monkeypatch.setattr(fa, "_move", fake, raising=False)
    assert net.to("torch", device="cpu") == "moved" and calls == [(net, "torch", "cpu")]


def test_matlab_editing_functions():
    m = fa.matlab
    net = Network()
    assert m.addLayers(net, [relu_layer(name="a"), relu_layer(name="b")]) is net
    m.addLayers(net, m.additionLayer(2, Name="add"))
    m.connectLayers(net, "b", "add/in1")
    m.connectLayers(net, "a", "add/in2")
    assert net.connections == (("a", "b"), ("a", "add/in2"), ("b", "add/in1"))
    m.disconnectLayers(net, "a", "add/in2")
    assert net.input_names == ("a", "add/in2")
    with pytest.raises(TypeError, match="connectLayers: net must be a dlnetwork"):
        m.connectLayers([relu_layer()], "a", "b")
