"""Network.to / fmtarray._move.to_library: a copy of a network in another library or device.

Predictions are compared with the NumPy network's (float64: to rounding of the other
library's kernels, 1e-12 relative; float32: 1e-6), and a trip there and back is
bit-identical in learnables, state and predictions.
"""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import _backend
from fmtarray import layers as L
from fmtarray._move import KNOWN_LIBRARIES, to_library
from fmtarray.array import FormattedArray


def _np(v):
    return _backend.to_numpy(v.data if isinstance(v, FormattedArray) else v)


def _net(dtype):
    x = np.random.default_rng(0).standard_normal((8, 8, 2, 6)).astype(dtype)
    net = fa.Network([
        L.image_input_layer((8, 8, 2), normalization="zscore"),
        L.convolution2d_layer(3, 4, padding="same"), L.batch_normalization_layer(),
        L.relu_layer(), L.addition_layer(2, name="add"), L.max_pooling2d_layer(2, stride=2),
        L.fully_connected_layer(3), L.softmax_layer()])
    net.connect_layers("batchnorm", "add/in2")
    net[0].compute_statistics(x)
    net.initialize(dtype=dtype, seed=3)
    net.update_state(net.forward(x)[1])  # batch-norm statistics away from 0 and 1
    return net, x


def _arrays(net):
    out = {}
    for tree in ("learnables", "state"):
        for layer, d in getattr(net, tree)().items():
            for n, v in d.items():
                out[(tree, layer, n)] = v.data if isinstance(v, FormattedArray) else v
    return out


def _check_moved(net, moved, lib):
    a, b = _arrays(net), _arrays(moved)
    assert a.keys() == b.keys()
    assert ("state", "imageinput", "mean") in b and ("state", "batchnorm", "trained_mean") in b
    for k in a:
        assert _backend.library_name(b[k]) == lib, k
        assert str(_np(b[k]).dtype) == str(_np(a[k]).dtype), k
        np.testing.assert_array_equal(_np(b[k]), _np(a[k]), strict=True)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_to_torch(dtype, tol):
    torch = pytest.importorskip("torch")
    net, x = _net(dtype)
    before = _arrays(net)
    moved = net.to("torch")
    _check_moved(net, moved, "torch")
    y = _np(moved.predict(torch.from_numpy(x)))
    ref = _np(net.predict(x))
    assert y.dtype == dtype
    assert _rel(y, ref) <= tol
    # the original is untouched and shares nothing with the copy
    for k, v in _arrays(net).items():
        assert type(v) is np.ndarray and v is before[k]
    moved["conv"].weights[...] = 0
    assert np.abs(_np(net["conv"].weights)).max() > 0
    assert moved.layer_names == net.layer_names and moved.connections == net.connections
    assert repr(moved) == repr(net)
    # and back: bit-identical values and predictions
    back = moved.to("numpy")
    back["conv"].weights = _np(net["conv"].weights)
    _check_moved(net, back, "numpy")
    np.testing.assert_array_equal(_np(back.predict(x)), ref, strict=True)


def test_to_torch_module_and_jax():
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    net, x = _net(np.float64)
    ref = _np(net.predict(x))
    t = net.to(torch, device="cpu")
    _check_moved(net, t, "torch")
    assert _rel(_np(t.predict(torch.from_numpy(x))), ref) <= 1e-12
    j = net.to(jax.numpy)
    _check_moved(net, j, "jax")
    assert _rel(_np(j.predict(jax.numpy.asarray(x))), ref) <= 1e-12
    assert _rel(_np(net.to("jax").to("torch").predict(torch.from_numpy(x))), ref) <= 1e-12


def test_to_array_api_strict_and_dask():
    xps = pytest.importorskip("array_api_strict")
    pytest.importorskip("dask")
    net, x = _net(np.float64)
    ref = _np(net.predict(x))
    s = net.to("array_api_strict")
    _check_moved(net, s, "array_api_strict")
    assert _rel(_np(s.predict(xps.asarray(x))), ref) <= 1e-12
    d = net.to("dask")
    _check_moved(net, d, "dask")


def test_to_numpy_is_a_copy():
    net, x = _net(np.float32)
    same = net.to("numpy")
    _check_moved(net, same, "numpy")
    assert same["conv"].weights is not net["conv"].weights
    np.testing.assert_array_equal(_np(same.predict(x)), _np(net.predict(x)), strict=True)


def test_unknown_library_and_bad_devices():
    net, _ = _net(np.float32)
    with pytest.raises(ValueError, match=r"unknown library 'tensorflow'; the known libraries "
                                         r"are 'numpy', 'torch', 'jax', 'array_api_strict', "
                                         r"'dask', 'cupy'"):
        net.to("tensorflow")
    with pytest.raises(ValueError, match=r"library='json' \(a module\) is not a known array"):
        import json

        net.to(json)
    with pytest.raises(TypeError, match="library must be a library name or module"):
        net.to(3)
    with pytest.raises(ValueError, match="numpy arrays live on the host; device must be None"):
        net.to("numpy", device="cuda")
    assert set(KNOWN_LIBRARIES) == {"numpy", "torch", "jax", "array_api_strict", "dask", "cupy"}


def test_cupy_missing_is_an_import_error():
    pytest.importorskip("torch")
    try:
        import cupy  # noqa: F401
    except ImportError:
        net, _ = _net(np.float32)
        with pytest.raises(ImportError, match="cannot move to library 'cupy': it is not installed"):
            net.to("cupy")
    else:  # pragma: no cover - a machine with CuPy
        pytest.skip("CuPy is installed here")


def test_torch_cuda_unavailable_or_used():
    torch = pytest.importorskip("torch")
    net, x = _net(np.float32)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cannot create a torch array on device 'cuda'"):
            net.to("torch", device="cuda")
        return
    g = net.to("torch", device="cuda")
    for v in _arrays(g).values():
        assert v.device.type == "cuda"
    y = g.predict(torch.from_numpy(x).cuda())
    assert y.data.device.type == "cuda"
    assert _rel(_np(y), _np(net.predict(x))) <= 1e-6
    back = g.to("numpy")
    _check_moved(net, back, "numpy")


def test_float64_to_jax_without_x64_is_refused():
    jax = pytest.importorskip("jax")
    net, _ = _net(np.float64)
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"jax turned dtype float64 into float32.*"
                                             r"jax_enable_x64"):
            to_library(net, "jax")


def test_layer_state_outside_the_protocol_moves_too():
    torch = pytest.importorskip("torch")

    class Shift(L.Layer):
        def __init__(self, *, name=""):
            self.name = name
            self.table = {"shift": np.ones((2, 1))}

        def predict(self, x):
            return x + FormattedArray(self.table["shift"], "CB")

    net = fa.Network([Shift()])
    moved = net.to("torch")
    assert isinstance(moved[0].table["shift"], torch.Tensor)
    assert isinstance(net[0].table["shift"], np.ndarray)
