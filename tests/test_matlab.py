"""fmtarray.matlab: MATLAB-named constructors and aliases, and weights from .mat files."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray import matlab as ml
from fmtarray.layers import Convolution2DLayer, convolution2d_layer
from fmtarray.ops.convolution import conv


def _np(a):
    return np.asarray(fa._backend.to_numpy(a.data))


def test_convolution2dlayer_returns_the_same_layer_type():
    layer = ml.convolution2dLayer(11, 96, Stride=4)
    assert type(layer) is Convolution2DLayer
    assert layer.properties() == convolution2d_layer(11, 96, stride=4).properties()
    assert repr(layer) == repr(convolution2d_layer(11, 96, stride=4))


def test_every_matlab_option_maps_to_its_property():
    f = lambda sz: np.zeros(sz)  # noqa: E731
    layer = ml.convolution2dLayer(
        [3, 2], 4, Stride=[2, 1], Padding=[1, 0], PaddingValue="replicate", DilationFactor=2,
        NumChannels=3, WeightsInitializer="he", BiasInitializer=f,
        WeightLearnRateFactor=2, BiasLearnRateFactor=0.5, WeightL2Factor=0, BiasL2Factor=1,
        Name="conv1",
    )
    assert layer.properties() == {
        "name": "conv1", "filter_size": (3, 2), "num_channels": 3, "num_filters": 4,
        "stride": (2, 1), "dilation_factor": (2, 2), "padding_mode": "manual",
        "padding_size": (1, 1, 0, 0), "padding_value": "replicate", "weights_initializer": "he",
        "bias_initializer": f, "weights": None, "bias": None, "weight_learn_rate_factor": 2,
        "bias_learn_rate_factor": 0.5, "weight_l2_factor": 0, "bias_l2_factor": 1,
        "num_inputs": 1, "input_names": ("in",), "num_outputs": 1, "output_names": ("out",),
    }
    W, b = np.ones((3, 2, 3, 4)), np.ones((1, 1, 4))
    layer = ml.convolution2dLayer([3, 2], 4, Weights=W, Bias=b)
    np.testing.assert_array_equal(layer.weights, W)  # the layer's own copies (issue 11)
    np.testing.assert_array_equal(layer.bias, b)
    assert layer.num_channels == 3


def test_matlab_positional_pairs_and_case_insensitive_names():
    a = ml.convolution2dLayer([6, 4], 16, "Stride", 4, "Padding", [1, 0])
    b = ml.convolution2dLayer([6, 4], 16, stride=4, PADDING=[1, 0])
    assert a.properties() == b.properties()
    assert a.padding_size == (1, 1, 0, 0) and a.stride == (4, 4)
    assert ml.convolution2dLayer(3, 16, Padding="same").padding_mode == "same"


def test_matlab_option_errors():
    with pytest.raises(TypeError, match="unknown option 'Padd'.*Stride, DilationFactor, Padding"):
        ml.convolution2dLayer(3, 4, Padd=1)
    with pytest.raises(TypeError, match="Name, Value pairs"):
        ml.convolution2dLayer(3, 4, "Stride")
    with pytest.raises(TypeError, match="given twice"):
        ml.convolution2dLayer(3, 4, "Stride", 2, stride=3)
    with pytest.raises(ValueError, match=r"convolution2dLayer: Stride \(stride\)=0: .*expected a positive integer"):
        ml.convolution2dLayer(3, 4, Stride=0)
    with pytest.raises(ValueError, match=r"FilterSize \(filter_size\)"):
        ml.convolution2dLayer(0, 4)
    with pytest.raises(ValueError, match=r"PaddingValue \(padding_value\).*'replicate'"):
        ml.convolution2dLayer(3, 4, PaddingValue="circular")


def test_data_aliases():
    x = np.arange(24.0).reshape(2, 3, 4)
    X = ml.dlarray(x, "CBS")
    assert isinstance(X, FormattedArray) and ml.dims(X) == "SCB" == fa.dims(X)
    assert ml.finddim(X, "C") == (1,)
    assert ml.dims(ml.dlarray(x)) == ""
    np.testing.assert_array_equal(ml.extractdata(X), np.transpose(x, (2, 0, 1)))
    np.testing.assert_array_equal(_np(ml.stripdims(X, "CBS")), x)
    assert ml.dims is fa.dims and ml.finddim is fa.finddim
    assert ml.stripdims is fa.stripdims and ml.extractdata is fa.extractdata


def test_dlconv_alias():
    rng = np.random.default_rng(0)
    x = FormattedArray(rng.standard_normal((6, 5, 2, 3)), "SSCB")
    W, b = rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4)
    y = ml.dlconv(x, W, b, Stride=2, Padding=1, PaddingValue="replicate")
    ref = conv(x, W, b, stride=(2, 2), padding=(1, 1, 1, 1), padding_value="replicate")
    np.testing.assert_array_equal(_np(y), _np(ref))
    y = ml.dlconv(x, W, b, "DilationFactor", [1, 2], "Padding", [[1, 0], [2, 1]])  # [before; after]
    ref = conv(x, W, b, dilation_factor=(1, 2), padding=(1, 2, 0, 1))
    np.testing.assert_array_equal(_np(y), _np(ref))
    with pytest.raises(TypeError, match="unknown option 'Groups'"):
        ml.dlconv(x, W, b, Groups=2)


def test_weights_round_trip_through_a_mat_file(tmp_path):
    """MATLAB-layout W (h×w×C×F) and b (1×1×F) saved with savemat, loaded with loadmat,
    go straight into Weights=/Bias= and give the Python-named layer's output."""
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 5, 3, 32))
    b = rng.standard_normal((1, 1, 32))
    path = tmp_path / "Conv2dWeights.mat"
    sio.savemat(path, {"W": W, "b": b, "filterSize": np.array([[5, 5]]), "numFilters": 32.0})
    m = sio.loadmat(path)
    assert m["W"].shape == (5, 5, 3, 32) and m["b"].shape == (1, 1, 32)
    # MATLAB stores numbers as 1×1 / 1×2 doubles; they are accepted as they are
    layer_ml = ml.convolution2dLayer(m["filterSize"], m["numFilters"], Weights=m["W"], Bias=m["b"],
                                     Padding="same")
    layer_py = convolution2d_layer(5, 32, weights=W, bias=b.reshape(32), padding="same")
    assert layer_ml.filter_size == (5, 5) and layer_ml.num_filters == 32
    assert layer_ml.num_channels == 3
    text = repr(layer_ml)
    assert "Weights: [5×5×3×32 float64]" in text and "Bias: [1×1×32 float64]" in text
    x = FormattedArray(rng.standard_normal((9, 8, 3, 2)), "SSCB")
    np.testing.assert_array_equal(_np(layer_ml(x)), _np(layer_py(x)))


def test_single_filter_mat_round_trip(tmp_path):
    """A 5×5×3×1 MATLAB array is 5×5×3 in the file (trailing singleton dropped)."""
    sio = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(1)
    W = rng.standard_normal((5, 5, 3))
    path = tmp_path / "w.mat"
    sio.savemat(path, {"W": W, "b": np.array([[0.5]])})
    m = sio.loadmat(path)
    layer = ml.convolution2dLayer(5, 1, Weights=m["W"], Bias=m["b"])
    assert layer.weights.shape == (5, 5, 3, 1) and layer.bias.shape == (1, 1, 1)
    x = FormattedArray(rng.standard_normal((5, 5, 3)), "SSC")
    y = _np(layer(x))
    np.testing.assert_allclose(y.reshape(()), (W * x.data).sum() + 0.5, rtol=1e-12)
