"""fmtarray.save / fmtarray.load (no pickle) and the MATLAB .mat learnables export.

A round trip must give bit-identical predictions, learnables, state, properties,
names, factors and display; every damaged file is a ValueError naming the file.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import zipfile

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import layers as L
from fmtarray import persistence
from fmtarray.array import FormattedArray


def _np(v):
    v = v.data if isinstance(v, FormattedArray) else v
    return fa._backend.to_numpy(v)


def _same_value(a, b):
    if isinstance(a, FormattedArray) or fa._backend.is_array(a):
        assert isinstance(b, FormattedArray) == isinstance(a, FormattedArray)
        if isinstance(a, FormattedArray):
            assert a.format == b.format
        na, nb = _np(a), _np(b)
        assert na.dtype == nb.dtype and na.shape == nb.shape
        np.testing.assert_array_equal(na, nb, strict=True)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same_value(x, y)
    else:
        assert type(a) is type(b) and a == b, (a, b)


def _ctor_params(layer):
    sig = inspect.signature(type(layer).__init__)
    return [p for p in list(sig.parameters)[1:]]


def _outputs(y):
    return y if isinstance(y, tuple) else (y,)


def assert_same_network(a, b, *xs):
    """b is a faithful copy of a: names, graph, display, learnables, state, predictions."""
    assert a.layer_names == b.layer_names
    assert tuple(a.connections) == tuple(b.connections)
    assert repr(a) == repr(b)
    assert str(a.learnables_table()) == str(b.learnables_table())
    assert a.initialized == b.initialized
    for la, lb in zip(a.layers, b.layers):
        assert type(la) is type(lb)
        assert repr(la) == repr(lb)
        for p in _ctor_params(la):
            _same_value(getattr(la, p), getattr(lb, p))
    for tree in ("learnables", "state"):
        ta, tb = getattr(a, tree)(), getattr(b, tree)()
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].keys() == tb[k].keys()
            for n in ta[k]:
                _same_value(_np(ta[k][n]), _np(tb[k][n]))
    if xs:
        for ya, yb in zip(_outputs(a.predict(*xs)), _outputs(b.predict(*xs))):
            assert ya.format == yb.format
            np.testing.assert_array_equal(_np(ya), _np(yb), strict=True)


def roundtrip(net, tmp_path, *xs, name="net.fmtnet"):
    path = tmp_path / name
    fa.save(net, path)
    back = fa.load(path)
    assert_same_network(net, back, *xs)
    return back


# one case per layer class: (layer with non-default properties, example inputs) --------------

RNG = np.random.default_rng(0)


def _sscb(h=6, w=5, c=3, n=2, dtype=np.float64):
    return FormattedArray(RNG.standard_normal((h, w, c, n)).astype(dtype), "SSCB")


def _cb(c=4, n=3):
    return FormattedArray(RNG.standard_normal((c, n)), "CB")


def _image_input():
    layer = L.image_input_layer((6, 5, 3), normalization="zscore", name="in")
    layer.compute_statistics(RNG.standard_normal((6, 5, 3, 7)))
    return layer, (RNG.standard_normal((6, 5, 3, 2)),)


def _batchnorm():
    layer = L.batch_normalization_layer(epsilon=1e-3, mean_decay=0.3, scale_l2_factor=0.5)
    x = _sscb()
    layer.initialize(x)
    layer.trained_mean = RNG.standard_normal((1, 1, 3))
    layer.trained_variance = RNG.uniform(0.5, 2, (1, 1, 3))
    layer.offset = RNG.standard_normal((1, 1, 3))
    return layer, (x,)


CASES = {
    "ImageInputLayer": _image_input,
    "Convolution2DLayer": lambda: (
        L.convolution2d_layer((3, 2), 4, stride=(2, 1), dilation_factor=(1, 2), padding="same",
                              padding_value="replicate", weight_learn_rate_factor=0.5,
                              bias_l2_factor=2, weights_initializer="he", name="c"),
        (_sscb(),)),
    "FullyConnectedLayer": lambda: (
        L.fully_connected_layer(5, bias_initializer="narrownormal", weight_l2_factor=0.25),
        (_sscb(),)),
    "BatchNormalizationLayer": _batchnorm,
    "ReLULayer": lambda: (L.relu_layer(name="r"), (_cb(),)),
    "SoftmaxLayer": lambda: (L.softmax_layer(), (_cb(),)),
    "MaxPooling2DLayer": lambda: (L.max_pooling2d_layer((3, 2), stride=(1, 2), padding=1),
                                  (_sscb(),)),
    "AveragePooling2DLayer": lambda: (
        L.average_pooling2d_layer(2, stride=2, padding="same", padding_value="mean"), (_sscb(),)),
}


def _case(name, make):
    """Register a case whose layer class may not exist in every checkout yet."""
    CASES[name] = make


_case("AdditionLayer", lambda: (L.addition_layer(3, name="add"), (_sscb(), _sscb(), _sscb())))
_case("MultiplicationLayer", lambda: (L.multiplication_layer(2), (_sscb(), _sscb())))
_case("ConcatenationLayer", lambda: (L.concatenation_layer(3, 2), (_sscb(c=2), _sscb(c=3))))
_case("DepthConcatenationLayer", lambda: (L.depth_concatenation_layer(2), (_sscb(c=1), _sscb())))
_case("FlattenLayer", lambda: (L.flatten_layer(name="flat"), (_sscb(),)))
_case("TransposedConvolution2DLayer", lambda: (
    L.transposed_conv2d_layer((3, 2), 4, stride=(2, 1), cropping=1, bias_learn_rate_factor=2,
                              weight_l2_factor=0.5), (_sscb(),)))


_case("Convolution1DLayer", lambda: (
    L.convolution1d_layer(3, 4, padding="causal", dilation_factor=2, weight_l2_factor=0),
    (FormattedArray(RNG.standard_normal((9, 3, 2)), "SCB"),)))
_case("Convolution3DLayer", lambda: (
    L.convolution3d_layer((2, 3, 2), 2, stride=(1, 2, 1), padding="same"),
    (FormattedArray(RNG.standard_normal((5, 6, 4, 2, 2)), "SSSCB"),)))
_case("GroupedConvolution2DLayer", lambda: (
    L.GroupedConvolution2DLayer(3, 2, 3, padding=1, bias_initializer="ones"), (_sscb(c=6),)))
_case("DropoutLayer", lambda: (L.dropout_layer(0.3, seed=5), (_sscb(),)))
_case("LeakyReLULayer", lambda: (L.leaky_relu_layer(0.2), (_cb(),)))
_case("GlobalAveragePooling2DLayer", lambda: (L.global_average_pooling2d_layer(), (_sscb(),)))

#: exported base classes (not layers themselves); their subclasses have cases
BASES = {"ConvolutionLayerBase": ("Convolution1DLayer", "Convolution2DLayer",
                                  "Convolution3DLayer")}


def _layer_classes():
    return sorted(n for n, c in vars(L).items()
                  if isinstance(c, type) and issubclass(c, L.Layer) and c is not L.Layer)


@pytest.mark.parametrize("cls", _layer_classes())
def test_every_layer_class_round_trips(cls, tmp_path):
    # every class fmtarray.layers exports is covered: a new class without a case fails here
    if cls in BASES:
        assert all(issubclass(getattr(L, sub), getattr(L, cls)) for sub in BASES[cls])
        return
    assert cls in CASES, f"add a round-trip case for {cls} to tests/test_persistence.py CASES"
    layer, xs = CASES[cls]()
    assert type(layer).__name__ == cls
    net = fa.Network([layer]).initialize(xs if len(xs) > 1 else xs[0])
    roundtrip(net, tmp_path, *xs)


VARIANTS = {
    "channel-wise": lambda: (L.grouped_conv2d_layer(3, 2, "channel-wise", stride=2),
                             (_sscb(c=4),)),
    "conv1d over T": lambda: (L.convolution1d_layer(2, 3, padding="causal"),
                              (FormattedArray(RNG.standard_normal((3, 2, 7)), "CBT"),)),
    "conv3d SSCBT": lambda: (L.convolution3d_layer(2, 2),
                             (FormattedArray(RNG.standard_normal((4, 4, 2, 2, 3)), "SSCBT"),)),
    "concat by label": lambda: (L.concatenation_layer("B", 3), (_sscb(), _sscb(), _sscb())),
}


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_layer_variants_round_trip(case, tmp_path):
    layer, xs = VARIANTS[case]()
    net = fa.Network([layer]).initialize(xs if len(xs) > 1 else xs[0])
    roundtrip(net, tmp_path, *xs)


# networks ---------------------------------------------------------------------------------


def _digits_like(n=60, dtype=np.float64):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((8, 8, 1, n)) * 0.3
    for k in range(3):
        x[2 * k:2 * k + 3, :, 0, y == k] += 1.0
    return x.astype(dtype), y


def _cnn():
    return fa.Network([
        L.image_input_layer((8, 8, 1), normalization="zscore"),
        L.convolution2d_layer(3, 4, padding="same"), L.batch_normalization_layer(),
        L.relu_layer(), L.max_pooling2d_layer(2, stride=2),
        L.convolution2d_layer(3, 4, padding=1, weight_learn_rate_factor=0.5), L.relu_layer(),
        L.fully_connected_layer(3, bias_l2_factor=0.1), L.softmax_layer()])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_trained_network_round_trip(tmp_path, dtype):
    x, y = _digits_like(dtype=dtype)
    net = _cnn()
    opts = fa.TrainingOptions(solver="adam", max_epochs=2, mini_batch_size=20, verbose=False,
                              plots="none")
    net, _ = fa.train(net, x, y, opts)
    assert net.state()["batchnorm"]["trained_mean"] is not None
    back = roundtrip(net, tmp_path, x)
    assert back["batchnorm"].trained_mean.dtype == dtype
    assert back[0].statistics_computed
    # the reloaded network trains on exactly as the original does
    net2, _ = fa.train(net, x, y, opts)
    back2, _ = fa.train(back, x, y, opts)
    np.testing.assert_array_equal(_np(net2.predict(x)), _np(back2.predict(x)))


def _residual():
    net = fa.Network([
        L.image_input_layer((8, 8, 2), normalization="zerocenter"),
        L.convolution2d_layer(3, 2, padding="same"), L.batch_normalization_layer(),
        L.relu_layer(), L.addition_layer(2, name="add"), L.relu_layer(),
        L.flatten_layer(), L.fully_connected_layer(3), L.softmax_layer()])
    net.connect_layers("imageinput", "add/in2")
    return net


def test_graph_network_round_trip(tmp_path):
    x = np.random.default_rng(2).standard_normal((8, 8, 2, 3))
    net = _residual()
    net[0].compute_statistics(x)
    net.initialize(dtype=np.float64, seed=4)
    net.update_state(net.forward(x)[1])  # batch-norm statistics off their defaults
    assert ("imageinput", "add/in2") in net.connections
    back = roundtrip(net, tmp_path, x)
    assert back.input_names == net.input_names and back.output_names == net.output_names


def test_graph_built_in_several_additions_keeps_its_names(tmp_path):
    # unnamed layers added by separate add_layers calls are named per call: conv, conv_1
    net = fa.Network([L.convolution2d_layer(3, 2, padding=1), L.relu_layer()])
    net.add_layers([L.convolution2d_layer(1, 3), L.relu_layer(), L.depth_concatenation_layer(2)])
    net.connect_layers("relu", "conv_1")
    net.connect_layers("relu", "depthcat/in2")
    assert net.layer_names == ("conv", "relu", "conv_1", "relu_1", "depthcat")
    x = _sscb(c=2)
    net.initialize(x)
    back = roundtrip(net, tmp_path, x)
    assert all(layer.name == "" for layer in back.layers)


def test_manifest_describes_the_network(tmp_path):
    net = _cnn().initialize(dtype=np.float64)
    fa.save(net, tmp_path / "n.fmtnet")
    with zipfile.ZipFile(tmp_path / "n.fmtnet") as z:
        m = json.loads(z.read("manifest.json"))
        names = z.namelist()
    assert m["format"] == "fmtarray.network" and m["format_version"] == persistence.FORMAT_VERSION
    info = m["network"]
    assert info["layer_names"] == list(net.layer_names)
    assert info["library"] == "numpy" and info["dtype"] == "float64" and info["initialized"]
    assert info["connections"] == [list(c) for c in net.connections]
    conv = m["layers"][1]
    assert conv["class"] == "Convolution2DLayer" and conv["properties"]["padding"] == "same"
    assert conv["factors"] == {"weights": [1, 1], "bias": [1, 0]}
    w = conv["properties"]["weights"]["array"]
    assert m["arrays"][w] == {"dtype": "float64", "shape": [3, 3, 1, 4]}
    assert set(names) == {"manifest.json", *m["arrays"]}
    # the statistics of the image input layer are saved as its state
    assert set(m["layers"][0]["state"]) == {"mean", "standard_deviation"}


def test_save_overwrites_atomically_and_leaves_nothing_on_failure(tmp_path):
    net = _cnn().initialize()
    path = tmp_path / "n.fmtnet"
    fa.save(net, path)
    before = path.read_bytes()
    bad = _cnn()
    bad[1].weights_initializer = lambda shape: np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=r"layer 'conv_1' \(Convolution2DLayer\) property "
                                         r"'weights_initializer'.*callable"):
        fa.save(bad, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["n.fmtnet"]  # no temporary file left


def test_user_layer_needs_registration(tmp_path):
    class Scale(L.Layer):
        learnable_names = ("factor",)

        def __init__(self, factor=None, *, name=""):
            self.name = name
            self.factor = factor

        def initialize(self, x, *, seed=None):
            if self.factor is None:
                self.factor = np.full((1,), 2.0)

        def predict(self, x):
            return x * FormattedArray(self.factor)

        def __repr__(self):
            return f"Scale(name={self.name!r})"

    x = _cb()
    net = fa.Network([L.relu_layer(), Scale(name="s")]).initialize(x)
    with pytest.raises(ValueError, match=r"layer 's' \(Scale\).*register_layer"):
        fa.save(net, tmp_path / "n.fmtnet")
    persistence.register_layer(Scale, "tests.Scale")
    try:
        roundtrip(net, tmp_path, x, name="n.fmtnet")
    finally:
        persistence._USER_LAYERS.pop("tests.Scale")
    with pytest.raises(ValueError, match=r"n\.fmtnet.*no layer class 'tests\.Scale'"):
        fa.load(tmp_path / "n.fmtnet")


# damaged files -----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    net = _cnn().initialize(dtype=np.float64)
    path = tmp_path / "good.fmtnet"
    fa.save(net, path)
    return path


def _rewrite(src, dst, manifest=None, drop=(), replace=None):
    with zipfile.ZipFile(src) as z:
        items = {n: z.read(n) for n in z.namelist()}
    if manifest is not None:
        items["manifest.json"] = manifest(json.loads(items["manifest.json"]))
    for n in drop:
        del items[n]
    items.update(replace or {})
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in items.items():
            z.writestr(n, data if isinstance(data, bytes) else json.dumps(data))
    return dst


def _fails(path, match):
    with pytest.raises(ValueError, match=match) as e:
        fa.load(path)
    assert str(path) in str(e.value)  # names the file
    assert type(e.value) is ValueError


def test_empty_garbage_and_truncated_files(saved, tmp_path):
    empty = tmp_path / "empty.fmtnet"
    empty.write_bytes(b"")
    _fails(empty, "not a readable ZIP")
    garbage = tmp_path / "garbage.fmtnet"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    _fails(garbage, "not a readable ZIP")
    data = saved.read_bytes()
    for frac in (0.01, 0.3, 0.6, 0.9, 0.999):
        cut = tmp_path / f"cut{frac}.fmtnet"
        cut.write_bytes(data[: int(len(data) * frac)])
        _fails(cut, "not a readable ZIP|truncated")
    # a flipped byte inside an array: the ZIP checksum catches it
    i = data.index(b"\x93NUMPY") + 200
    flipped = tmp_path / "flipped.fmtnet"
    flipped.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    _fails(flipped, "not a readable ZIP|Bad CRC")
    with pytest.raises(FileNotFoundError):
        fa.load(tmp_path / "missing.fmtnet")


def test_any_flipped_byte_is_an_error_or_changes_nothing(saved, tmp_path):
    data = saved.read_bytes()
    x, _ = _digits_like(n=3)
    ref = fa.load(saved)
    rng = np.random.default_rng(7)
    errors = 0
    for k, i in enumerate(rng.choice(len(data), size=60, replace=False)):
        path = tmp_path / f"flip{k}.fmtnet"
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])
        try:
            back = fa.load(path)
        except ValueError as e:
            assert type(e) is ValueError and str(path) in str(e)
            errors += 1
        else:  # a byte nothing reads (a timestamp): the very same network
            assert_same_network(ref, back, x)
    assert errors > 30


def test_newer_version_and_foreign_files(saved, tmp_path):
    def newer(m):
        m["format_version"] = persistence.FORMAT_VERSION + 1
        return m

    _fails(_rewrite(saved, tmp_path / "v2.fmtnet", newer),
           r"format version 2, newer than this fmtarray reads \(up to 1\); upgrade")

    def other(m):
        m["format"] = "something.else"
        return m

    _fails(_rewrite(saved, tmp_path / "other.fmtnet", other), "not an fmtarray network file")
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("readme.txt", "hello")
    _fails(plain, "holds no manifest.json")


def test_missing_member_and_tampered_manifest(saved, tmp_path):
    with zipfile.ZipFile(saved) as z:
        member = sorted(n for n in z.namelist() if n.endswith(".npy"))[2]
    _fails(_rewrite(saved, tmp_path / "m.fmtnet", drop=[member]),
           f"lists array '{member}', which the file does not hold")
    _fails(_rewrite(saved, tmp_path / "j.fmtnet", replace={"manifest.json": b"{\"format\": "}),
           "manifest.json is not valid JSON")

    def bad_prop(m):
        m["layers"][1]["properties"]["num_filters"] = -3
        return m

    _fails(_rewrite(saved, tmp_path / "p.fmtnet", bad_prop),
           r"layer 'conv_1' \(Convolution2DLayer\) cannot be rebuilt.*num_filters")

    def bad_ref(m):
        m["layers"][1]["properties"]["weights"]["array"] = "arrays/9999.npy"
        return m

    _fails(_rewrite(saved, tmp_path / "r.fmtnet", bad_ref), "refers to array 'arrays/9999.npy'")

    def bad_type(m):
        m["layers"] = "nothing"
        return m

    _fails(_rewrite(saved, tmp_path / "t.fmtnet", bad_type), "'layers' field has the wrong type")

    def bad_shape(m):
        m["arrays"][member]["shape"] = [7]
        return m

    _fails(_rewrite(saved, tmp_path / "s.fmtnet", bad_shape), "the manifest says")

    def bad_factor(m):
        m["layers"][1]["factors"]["weights"] = [3, 1]
        return m

    _fails(_rewrite(saved, tmp_path / "f.fmtnet", bad_factor), "factors .* differ")


class _Trap:
    """Unpickling this sets a flag: loading must never get that far."""

    sprung = False

    def __reduce__(self):
        return (_spring, ())


def _spring():
    _Trap.sprung = True
    return 0


def test_pickled_object_array_is_refused_without_unpickling(saved, tmp_path):
    with zipfile.ZipFile(saved) as z:
        member = sorted(n for n in z.namelist() if n.endswith(".npy"))[0]
    buf = io.BytesIO()
    np.save(buf, np.array([_Trap(), 1], dtype=object), allow_pickle=True)
    path = _rewrite(saved, tmp_path / "pickle.fmtnet", replace={member: buf.getvalue()})
    _fails(path, "not a readable .npy array without pickle")
    assert not _Trap.sprung


def test_source_has_no_pickle():
    src = inspect.getsource(persistence)
    assert "import pickle" not in src and "allow_pickle=True" not in src


# libraries ---------------------------------------------------------------------------------


def test_torch_network_saves_and_loads_where_asked(tmp_path):
    torch = pytest.importorskip("torch")
    x, _ = _digits_like(n=4)
    net = _cnn().initialize(dtype=np.float64).to("torch")
    path = tmp_path / "t.fmtnet"
    fa.save(net, path)
    with zipfile.ZipFile(path) as z:
        info = json.loads(z.read("manifest.json"))["network"]
    assert info["library"] == "torch" and info["device"] == "cpu"
    back = fa.load(path)  # NumPy unless asked
    assert isinstance(back["conv_1"].weights, np.ndarray)
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(_np(back.predict(x)), _np(fa.load(path).predict(x)))
    again = fa.load(path, library="torch")
    assert isinstance(again["conv_1"].weights, torch.Tensor)
    assert_same_network(net, again, xt)


# MATLAB .mat learnables --------------------------------------------------------------------


def test_mat_learnables_layout_and_round_trip(tmp_path):
    sio = pytest.importorskip("scipy.io")
    from fmtarray.matlab import loadLearnables, saveLearnables

    x, y = _digits_like(n=6)
    net = _cnn()
    net[0].compute_statistics(x)
    net.initialize(dtype=np.float64, seed=1)
    path = tmp_path / "l.mat"
    saveLearnables(net, path)
    m = sio.loadmat(path)
    t = m["Learnables"][0, 0]
    rows = [(str(t["Layer"][i, 0][0]), str(t["Parameter"][i, 0][0]), t["Value"][i, 0])
            for i in range(t["Layer"].shape[0])]
    table = {(a, b): v for a, b, v in rows}
    # MATLAB's layouts: conv weights h x w x C x F, bias 1 x 1 x F; fc OutputSize x InputSize
    assert table[("conv_1", "Weights")].shape == (3, 3, 1, 4)
    assert table[("conv_1", "Bias")].shape == (1, 1, 4)
    assert table[("fc", "Weights")].shape == (3, 4 * 4 * 4)
    assert table[("fc", "Bias")].shape == (3, 1)
    assert table[("batchnorm", "Offset")].shape == (1, 1, 4)
    np.testing.assert_array_equal(table[("conv_2", "Weights")], _np(net["conv_2"].weights))
    assert [(a, b) for a, b, _ in rows] == [(r.layer, _pascal(r.parameter))
                                            for r in net.learnables_table()]
    s = m["State"][0, 0]
    state = {(str(s["Layer"][i, 0][0]), str(s["Parameter"][i, 0][0])) for i in range(s["Layer"].shape[0])}
    assert state == {("imageinput", "Mean"), ("imageinput", "StandardDeviation"),
                     ("batchnorm", "TrainedMean"), ("batchnorm", "TrainedVariance")}
    other = _cnn().initialize(dtype=np.float64, seed=9)
    assert not np.array_equal(_np(other.predict(x)), _np(net.predict(x)))
    assert loadLearnables(other, path) is other
    np.testing.assert_array_equal(_np(other.predict(x)), _np(net.predict(x)))


def _pascal(p):
    return "".join(w.capitalize() for w in p.split("_"))


def test_mat_from_matlab_with_dropped_singletons_and_errors(tmp_path):
    sio = pytest.importorskip("scipy.io")
    from fmtarray.matlab import loadLearnables

    net = fa.Network([L.image_input_layer((5, 5, 3), normalization="none"),
                      L.convolution2d_layer(3, 1), L.fully_connected_layer(2)])
    net.initialize(dtype=np.float64)
    w = np.arange(27, dtype=np.float64).reshape(3, 3, 3)  # MATLAB saves 3x3x3x1 as 3x3x3

    def write(name, layer, param, value):
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = value
        sio.savemat(tmp_path / name, {"Learnables": {
            "Layer": np.array([[layer]], dtype=object), "Parameter": np.array([[param]], dtype=object),
            "Value": cell}})
        return tmp_path / name

    loadLearnables(net, write("ok.mat", "conv", "Weights", w))
    np.testing.assert_array_equal(_np(net["conv"].weights)[..., 0], w)
    with pytest.raises(ValueError, match=r"bad\.mat.*conv/Weights has shape \(2, 2\)"):
        loadLearnables(net, write("bad.mat", "conv", "Weights", np.zeros((2, 2))))
    with pytest.raises(ValueError, match=r"row conv/Gain is not a learnables entry"):
        loadLearnables(net, write("name.mat", "conv", "Gain", w))
    with pytest.raises(ValueError, match=r"float32, the network's is float64; nothing is cast"):
        loadLearnables(net, write("dt.mat", "conv", "Weights", w.astype(np.float32)))
    np.testing.assert_array_equal(_np(net["conv"].weights)[..., 0], w)  # failures changed nothing
