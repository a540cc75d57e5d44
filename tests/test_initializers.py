"""Initialisers (SPEC §3.5): formulas, statistics, seeds, placement, callables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmtarray import FormattedArray, _backend
from fmtarray.layers import convolution2d_layer
from fmtarray.layers.initializers import (
    BIAS_INITIALIZERS,
    WEIGHTS_INITIALIZERS,
    check_initializer,
    initialize_array,
)


def _init(layer, shape, fmt="SSCB", seed=0, dtype=np.float32):
    layer.initialize(FormattedArray(np.zeros(shape, dtype=dtype), fmt), seed=seed)
    return np.asarray(layer.weights), np.asarray(layer.bias)


# statistics on a large layer: 3×3×64×128 = 73 728 weights ----------------------------

H, W, C, F = 3, 3, 64, 128
NUM_IN, NUM_OUT = H * W * C, H * W * F


def test_glorot_variance_and_bound():
    w, b = _init(convolution2d_layer((H, W), F), (8, 8, C, 1))
    assert w.shape == (H, W, C, F) and w.dtype == np.float32
    var = 2.0 / (NUM_IN + NUM_OUT)
    assert abs(w.var() / var - 1) < 0.05
    assert abs(w.mean()) < 0.05 * math.sqrt(var)
    bound = math.sqrt(6.0 / (NUM_IN + NUM_OUT))
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # uniform: fills the interval
    np.testing.assert_array_equal(b, np.zeros((1, 1, F), np.float32))  # default bias: zeros


def test_glorot_is_numpy_uniform_from_the_seed():
    w, _ = _init(convolution2d_layer(3, 4), (5, 5, 2, 1), seed=123)
    bound = math.sqrt(6.0 / (3 * 3 * 2 + 3 * 3 * 4))
    ref = np.random.default_rng(123).uniform(-bound, bound, size=(3, 3, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(w, ref)


def test_he_variance():
    w, _ = _init(convolution2d_layer((H, W), F, weights_initializer="he"), (8, 8, C, 1))
    var = 2.0 / NUM_IN
    assert abs(w.var() / var - 1) < 0.05
    assert abs(w.mean()) < 0.05 * math.sqrt(var)
    # normal, not uniform: some draws beyond the glorot-like bound sqrt(3 var)
    assert np.abs(w).max() > 2 * math.sqrt(var)


def test_narrownormal_weights_and_bias():
    layer = convolution2d_layer((H, W), F, weights_initializer="narrownormal",
                                bias_initializer="narrownormal")
    w, b = _init(layer, (8, 8, C, 1))
    assert abs(w.std() / 0.01 - 1) < 0.05
    assert b.shape == (1, 1, F) and 0 < b.std() < 0.02
    # weights and bias come from independent streams
    assert not np.allclose(w.reshape(-1)[:F], b.reshape(-1))


@pytest.mark.parametrize("name,value", [("zeros", 0.0), ("ones", 1.0)])
def test_constant_initializers(name, value):
    layer = convolution2d_layer(2, 3, weights_initializer=name, bias_initializer=name)
    w, b = _init(layer, (4, 4, 5, 2))
    np.testing.assert_array_equal(w, np.full((2, 2, 5, 3), value, np.float32))
    np.testing.assert_array_equal(b, np.full((1, 1, 3), value, np.float32))


def test_seed_reproducible_and_distinct():
    def draw(seed):
        return _init(convolution2d_layer(3, 8, bias_initializer="narrownormal"), (6, 6, 4, 1),
                     seed=seed)

    w1, b1 = draw(7)
    w2, b2 = draw(7)
    w3, b3 = draw(8)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(w1, w3) and not np.array_equal(b1, b3)


def test_generator_seed_advances():
    rng = np.random.default_rng(0)
    a = convolution2d_layer(3, 8)
    b = convolution2d_layer(3, 8)
    x = FormattedArray(np.zeros((6, 6, 4, 1), np.float32), "SSCB")
    a.initialize(x, seed=rng)
    b.initialize(x, seed=rng)
    assert not np.array_equal(np.asarray(a.weights), np.asarray(b.weights))


@pytest.mark.parametrize("init", ["glorot", "he", "narrownormal"])
def test_same_seed_same_weights_on_every_backend(xp, init):
    """Same seed → identical numbers on NumPy, array_api_strict (any device), torch, Dask."""
    layer_np = convolution2d_layer(3, 6, weights_initializer=init, bias_initializer="narrownormal")
    w_np, b_np = _init(layer_np, (5, 5, 2, 1), seed=42)
    layer = convolution2d_layer(3, 6, weights_initializer=init, bias_initializer="narrownormal")
    x = FormattedArray(xp.asarray(np.zeros((5, 5, 2, 1), np.float32)), "SSCB")
    layer.initialize(x, seed=42)
    # created in the input's library and on its device
    assert type(layer.weights) is type(x.data)
    assert _backend.device(layer.weights) == x.device
    assert _backend.device(layer.bias) == x.device
    np.testing.assert_array_equal(xp.to_numpy(layer.weights), w_np)
    np.testing.assert_array_equal(xp.to_numpy(layer.bias), b_np)


def test_dtype_follows_input():
    w, b = _init(convolution2d_layer(3, 2), (5, 5, 1, 1), dtype=np.float64)
    assert w.dtype == np.float64 and b.dtype == np.float64


def test_layout_initialisation_defaults_to_numpy_float32():
    layer = convolution2d_layer(3, 2).initialize(((5, 5, 4, 1), "SSCB"), seed=0)
    assert isinstance(layer.weights, np.ndarray) and layer.weights.dtype == np.float32
    assert layer.weights.shape == (3, 3, 4, 2) and layer.num_channels == 4
    layer = convolution2d_layer(3, 2).initialize(("SSB", (5, 5, 1)), seed=0, dtype=np.float64)
    assert layer.weights.shape == (3, 3, 1, 2) and layer.weights.dtype == np.float64


def test_callable_initializers_get_matlab_sizes(xp):
    """The seed's ``@(sz) rand(sz) * 0.0001``: a NumPy-returning callable works on any backend."""
    seen = []

    def f(sz):
        seen.append(sz)
        return np.random.default_rng(0).random(sz) * 0.0001

    layer = convolution2d_layer(5, 32, weights_initializer=f, bias_initializer=f)
    assert layer.weights is None and layer.bias is None
    x = FormattedArray(xp.asarray(np.zeros((8, 8, 3, 1), np.float32)), "SSCB")
    layer.initialize(x)
    assert seen == [(5, 5, 3, 32), (1, 1, 32)]
    w = xp.to_numpy(layer.weights)
    assert w.shape == (5, 5, 3, 32) and w.dtype == np.float32
    assert _backend.device(layer.weights) == x.device
    assert 0 <= w.min() and w.max() < 0.0001
    assert xp.to_numpy(layer.bias).shape == (1, 1, 32)


def test_callable_returning_wrong_shape_or_type():
    layer = convolution2d_layer(3, 4, weights_initializer=lambda sz: np.zeros((3, 3)))
    with pytest.raises(ValueError, match="weights must have shape 3×3×C×4"):
        layer.initialize(((5, 5, 2, 1), "SSCB"))
    layer = convolution2d_layer(3, 4, bias_initializer=lambda sz: "zeros")
    with pytest.raises(TypeError, match="bias_initializer"):
        layer.initialize(((5, 5, 2, 1), "SSCB"))


def test_callable_returning_list():
    layer = convolution2d_layer(1, 2, weights_initializer=lambda sz: [[[[1.0, 2.0]]]])
    layer.initialize(((3, 3, 1), "SSC"))
    np.testing.assert_array_equal(layer.weights, np.array([[[[1.0, 2.0]]]], np.float32))


def test_initializers_only_fill_empty_properties():
    W = np.ones((3, 3, 2, 4))
    layer = convolution2d_layer(3, 4, weights=W, bias_initializer="ones")
    layer.initialize(((5, 5, 2, 1), "SSCB"), seed=0)
    w = layer.weights
    np.testing.assert_array_equal(w, W)  # used as it is (the layer's own copy, issue 11)
    np.testing.assert_array_equal(layer.bias, np.ones((1, 1, 4), np.float32))
    b = layer.bias
    layer.initialize(((5, 5, 2, 1), "SSCB"), seed=1)  # nothing empty: nothing changes
    assert layer.weights is w and layer.bias is b


def test_initializer_names_and_errors():
    assert WEIGHTS_INITIALIZERS == ("glorot", "he", "narrownormal", "zeros", "ones")
    assert BIAS_INITIALIZERS == ("zeros", "ones", "narrownormal")
    assert convolution2d_layer(3, 4, weights_initializer="He").weights_initializer == "he"
    with pytest.raises(ValueError, match=r"weights_initializer must be one of 'glorot'.*'xavier'"):
        convolution2d_layer(3, 4, weights_initializer="xavier")
    with pytest.raises(ValueError, match=r"bias_initializer must be one of 'zeros', 'ones', "
                                         r"'narrownormal'.*'glorot'"):
        convolution2d_layer(3, 4, bias_initializer="glorot")
    with pytest.raises(TypeError, match="weights_initializer"):
        check_initializer(3, "weights_initializer", WEIGHTS_INITIALIZERS)


def test_initialize_array_direct():
    a = initialize_array("he", (100, 100), fan_in=50, seed=0)
    assert a.shape == (100, 100) and a.dtype == np.float32
    assert abs(a.var() / (2 / 50) - 1) < 0.05
