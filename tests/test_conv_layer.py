"""Convolution2DLayer (SPEC §3.2–§3.5, issue 4): properties, the seed's examples with their
exact results, format dispatch, display, and the layer inside autodiff.

Expected convolution values come from ``_ref``: direct loops written here from the
definition (cross-correlation, padding with ``numpy.pad``), sharing no code with fmtarray.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray.layers import Convolution2DLayer, Layer, convolution2d_layer

# ---------------------------------------------------------------------------------------
# independent reference
# ---------------------------------------------------------------------------------------

_NP_MODE = {"symmetric-include-edge": "symmetric", "symmetric-exclude-edge": "reflect",
            "replicate": "edge"}


def _ref(x, W, b, stride=(1, 1), dil=(1, 1), pads=(0, 0, 0, 0), value=0.0):
    """Direct 2-D convolution. ``x``: ``(H, W, C, N)``; ``W``: ``(h, w, C, F)``; ``b``: ``(F,)``.

    Returns float64 ``(H', W', F, N)``.
    """
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    widths = ((pads[0], pads[1]), (pads[2], pads[3]), (0, 0), (0, 0))
    if isinstance(value, str):
        xp_ = np.pad(x, widths, mode=_NP_MODE[value])
    else:
        xp_ = np.pad(x, widths, mode="constant", constant_values=value)
    h, w, C, F = W.shape
    N = x.shape[3]
    oh = (xp_.shape[0] - ((h - 1) * dil[0] + 1)) // stride[0] + 1
    ow = (xp_.shape[1] - ((w - 1) * dil[1] + 1)) // stride[1] + 1
    y = np.zeros((oh, ow, F, N))
    for i in range(oh):
        for j in range(ow):
            for f in range(F):
                for n in range(N):
                    acc = float(np.asarray(b, np.float64).reshape(-1)[f])
                    for a in range(h):
                        for q in range(w):
                            for c in range(C):
                                acc += (W[a, q, c, f]
                                        * xp_[i * stride[0] + a * dil[0], j * stride[1] + q * dil[1], c, n])
                    y[i, j, f, n] = acc
    return y


def _expected(x, fmt, W, b, **kw):
    """Reference result for canonical data ``x`` of format ``fmt`` (SPEC §3.2 by hand)."""
    x = np.asarray(x, np.float64)
    if "C" not in fmt:
        k = fmt.count("S")
        x = np.expand_dims(x, k)
        fmt = fmt[:k] + "C" + fmt[k:]
    wdim = 1 if fmt.startswith("SS") else fmt.index("T")
    cdim = fmt.index("C")
    rest = [i for i in range(x.ndim) if i not in (0, wdim, cdim)]
    xt = np.transpose(x, [0, wdim, cdim] + rest)
    rshape = xt.shape[3:]
    y = _ref(xt.reshape(xt.shape[:3] + (-1,)), W, b, **kw)
    y = y.reshape(y.shape[:3] + rshape)
    return np.transpose(y, np.argsort([0, wdim, cdim] + rest)), fmt


def _np(a):
    return np.asarray(fa._backend.to_numpy(a.data if isinstance(a, FormattedArray) else a))


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------------------
# properties, defaults and validation (SPEC §3.4)
# ---------------------------------------------------------------------------------------


def test_defaults_match_spec():
    layer = convolution2d_layer(3, 16)
    assert isinstance(layer, Convolution2DLayer) and isinstance(layer, Layer)
    assert layer.properties() == {
        "name": "", "filter_size": (3, 3), "num_channels": "auto", "num_filters": 16,
        "stride": (1, 1), "dilation_factor": (1, 1), "padding_mode": "manual",
        "padding_size": (0, 0, 0, 0), "padding_value": 0, "weights_initializer": "glorot",
        "bias_initializer": "zeros", "weights": None, "bias": None,
        "weight_learn_rate_factor": 1, "bias_learn_rate_factor": 1, "weight_l2_factor": 1,
        "bias_l2_factor": 0, "num_inputs": 1, "input_names": ("in",), "num_outputs": 1,
        "output_names": ("out",),
    }
    assert layer.learnable_names == ("weights", "bias")
    assert layer.learn_rate_factor("weights") == 1.0 and layer.learn_rate_factor("bias") == 1.0
    assert layer.l2_factor("weights") == 1.0 and layer.l2_factor("bias") == 0.0
    assert layer.padding == (0, 0, 0, 0)


def test_factors_and_name_are_read_by_the_protocol():
    layer = convolution2d_layer(3, 4, weight_learn_rate_factor=2, bias_learn_rate_factor=0.5,
                                weight_l2_factor=0, bias_l2_factor=3, name="conv1")
    assert layer.learn_rate_factor("weights") == 2 and layer.learn_rate_factor("bias") == 0.5
    assert layer.l2_factor("weights") == 0 and layer.l2_factor("bias") == 3
    assert layer.name == "conv1"


@pytest.mark.parametrize("prop,value,expected", [
    ("stride", 2, (2, 2)), ("stride", [2, 3], (2, 3)), ("stride", np.array([[2, 3]]), (2, 3)),
    ("dilation_factor", 2, (2, 2)), ("dilation_factor", (2, 3), (2, 3)),
    ("stride", 2.0, (2, 2)), ("stride", np.int64(3), (3, 3)),
])
def test_scalar_to_pair_expansion(prop, value, expected):
    assert getattr(convolution2d_layer(3, 4, **{prop: value}), prop) == expected


@pytest.mark.parametrize("fs,expected", [(5, (5, 5)), ([6, 4], (6, 4)), (np.array([[6, 4]]), (6, 4))])
def test_filter_size_forms(fs, expected):
    assert convolution2d_layer(fs, 4).filter_size == expected


@pytest.mark.parametrize("padding,size,mode", [
    (0, (0, 0, 0, 0), "manual"),
    (1, (1, 1, 1, 1), "manual"),
    ([1, 2], (1, 1, 2, 2), "manual"),
    ((1, 2, 3, 4), (1, 2, 3, 4), "manual"),
    ("same", (0, 0, 0, 0), "same"),
    ("Same", (0, 0, 0, 0), "same"),
])
def test_padding_forms(padding, size, mode):
    layer = convolution2d_layer(3, 4, padding=padding)
    assert layer.padding_size == size and layer.padding_mode == mode
    assert layer.padding == ("same" if mode == "same" else size)


def test_padding_setters():
    layer = convolution2d_layer(3, 4, padding="same")
    layer.padding = [1, 2]
    assert layer.padding_size == (1, 1, 2, 2) and layer.padding_mode == "manual"
    layer.padding = "same"
    layer.padding_size = 3
    assert layer.padding_size == (3, 3, 3, 3) and layer.padding_mode == "manual"
    with pytest.raises(ValueError, match="padding_size"):
        layer.padding_size = "same"


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(filter_size=0), ValueError, ["filter_size", "0", "positive integer"]),
    (dict(filter_size=[3, 3, 3]), ValueError, ["filter_size", "(h, w)"]),
    (dict(filter_size=2.5), ValueError, ["filter_size", "2.5", "not an integer"]),
    (dict(filter_size="3"), TypeError, ["filter_size", "'3'"]),
    (dict(num_filters=0), ValueError, ["num_filters", "positive integer"]),
    (dict(num_filters=[2, 3]), ValueError, ["num_filters"]),
    (dict(stride=0), ValueError, ["stride", "positive integer"]),
    (dict(stride=-1), ValueError, ["stride", "-1"]),
    (dict(stride=True), TypeError, ["stride", "bool"]),
    (dict(dilation_factor=(1, 0)), ValueError, ["dilation_factor", "(1, 0)"]),
    (dict(padding=-1), ValueError, ["padding", "-1", "non-negative", "'same'"]),
    (dict(padding=[1, 2, 3]), ValueError, ["padding", "[t b l r]", "3 values"]),
    (dict(padding="full"), ValueError, ["padding", "'full'", "'same'"]),
    (dict(padding_value="mirror"), ValueError,
     ["padding_value", "'mirror'", "symmetric-include-edge", "symmetric-exclude-edge", "replicate"]),
    (dict(padding_value=[1, 2]), ValueError, ["padding_value", "2 values"]),
    (dict(num_channels=0), ValueError, ["num_channels", "'auto'"]),
    (dict(num_channels="manual"), ValueError, ["num_channels", "'auto'", "'manual'"]),
    (dict(num_channels=1.5), ValueError, ["num_channels"]),
    (dict(weights_initializer="xavier"), ValueError, ["weights_initializer", "'glorot'", "'he'"]),
    (dict(bias_initializer="he"), ValueError, ["bias_initializer", "'zeros'", "'he'"]),
    (dict(weight_learn_rate_factor=-1), ValueError, ["weight_learn_rate_factor", "nonnegative"]),
    (dict(bias_l2_factor="x"), TypeError, ["bias_l2_factor"]),
    (dict(weight_l2_factor=float("nan")), ValueError, ["weight_l2_factor"]),
    (dict(name=3), TypeError, ["name", "str"]),
    (dict(weights=np.zeros((3, 3, 2, 5))), ValueError, ["weights", "3×3×C×4", "(3, 3, 2, 5)"]),
    (dict(weights=np.zeros((2, 3, 2, 4))), ValueError, ["weights", "filter_size"]),
    (dict(weights=np.zeros((3, 3, 2, 4, 1))), ValueError, ["weights", "h×w×C×F"]),
    (dict(weights=np.zeros((3, 3, 2, 4), np.int32)), TypeError, ["weights", "floating"]),
    (dict(weights=[[1.0]]), TypeError, ["weights", "array"]),
    (dict(weights=np.zeros((3, 3, 2, 4)), num_channels=3), ValueError,
     ["num_channels is 3", "2 channels"]),
    (dict(bias=np.zeros(5)), ValueError, ["bias", "1×1×4", "(5,)"]),
    (dict(bias=np.zeros((1, 4))), ValueError, ["bias", "(1, 4)"]),
    (dict(bias=FormattedArray(np.zeros((1, 1, 4)), "SSC")), ValueError, ["bias", "unformatted"]),
])
def test_validation_names_property_value_and_legal_values(kwargs, exc, words):
    args = {"filter_size": 3, "num_filters": 4}
    args.update(kwargs)
    fs, nf = args.pop("filter_size"), args.pop("num_filters")
    with pytest.raises(exc) as info:
        convolution2d_layer(fs, nf, **args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_unknown_property_lists_legal_ones():
    with pytest.raises(TypeError, match="unknown property 'padding_mode'.*stride"):
        convolution2d_layer(3, 4, padding_mode="same")


@pytest.mark.parametrize("prop", ["num_filters", "num_channels", "num_inputs", "input_names",
                                  "num_outputs", "output_names"])
def test_read_only_properties(prop):
    layer = convolution2d_layer(3, 4)
    with pytest.raises(AttributeError):
        setattr(layer, prop, 2)


def test_setters_validate():
    layer = convolution2d_layer(3, 4)
    layer.stride = 2
    layer.filter_size = [5, 3]
    layer.padding_value = "replicate"
    assert (layer.stride, layer.filter_size, layer.padding_value) == ((2, 2), (5, 3), "replicate")
    with pytest.raises(ValueError, match="stride"):
        layer.stride = 0
    layer.weights = np.zeros((5, 3, 2, 4))
    with pytest.raises(ValueError, match="filter_size .* does not match the weights"):
        layer.filter_size = 3
    with pytest.raises(ValueError, match="padding_mode"):
        layer.padding_mode = "valid"


# ---------------------------------------------------------------------------------------
# the seed's examples, with their exact results
# ---------------------------------------------------------------------------------------

SEED_DISPLAY_11_96 = """\
Convolution2DLayer with properties:

              Name: ''

   Hyperparameters
        FilterSize: [11 11]
       NumChannels: 'auto'
        NumFilters: 96
            Stride: [4 4]
    DilationFactor: [1 1]
       PaddingMode: 'manual'
       PaddingSize: [0 0 0 0]
      PaddingValue: 0

   Learnable Parameters
           Weights: []
              Bias: []

  Use layer.properties() to see all properties."""


def test_seed_create_convolutional_layer():
    """``convolution2dLayer(11,96,'Stride',4)``."""
    layer = convolution2d_layer(11, 96, stride=4)
    assert repr(layer) == SEED_DISPLAY_11_96
    assert str(layer) == SEED_DISPLAY_11_96
    assert (layer.filter_size, layer.num_channels, layer.num_filters) == ((11, 11), "auto", 96)
    assert (layer.stride, layer.dilation_factor) == ((4, 4), (1, 1))
    assert (layer.padding_mode, layer.padding_size, layer.padding_value) == ("manual", (0, 0, 0, 0), 0)
    assert layer.weights is None and layer.bias is None


def test_seed_layer_array_description():
    """The layer-array line ``2-D Convolution  20 5×5 convolutions with stride [1 1] and padding [0 0 0 0]``."""
    layer = convolution2d_layer(5, 20)
    assert layer.type_name() == "2-D Convolution"
    assert layer.description() == "20 5×5 convolutions with stride [1 1] and padding [0 0 0 0]"
    assert (convolution2d_layer(3, 16, padding="same", stride=2).description()
            == "16 3×3 convolutions with stride [2 2] and padding 'same'")
    assert (convolution2d_layer([3, 2], 8, dilation_factor=2, padding=[1, 0]).description()
            == "8 3×2 convolutions with stride [1 1], dilation factor [2 2] and padding [1 1 0 0]")


def test_seed_he_initializer():
    layer = convolution2d_layer(5, 32, weights_initializer="he")
    assert layer.weights_initializer == "he"
    assert repr(layer) == SEED_DISPLAY_11_96.replace("[11 11]", "[5 5]").replace(
        "NumFilters: 96", "NumFilters: 32").replace("[4 4]", "[1 1]")
    layer.initialize(FormattedArray(np.zeros((28, 28, 3, 1), np.float32), "SSCB"), seed=0)
    assert layer.weights.shape == (5, 5, 3, 32)
    assert "Weights: [5×5×3×32 float32]" in repr(layer)
    assert "Bias: [1×1×32 float32]" in repr(layer)
    assert "NumChannels: 3" in repr(layer)


def test_seed_custom_initializers():
    """``@(sz) rand(sz) * 0.0001`` for weights and bias: empty until initialised."""
    f = lambda sz: np.random.default_rng(0).random(sz) * 0.0001  # noqa: E731
    layer = convolution2d_layer(5, 32, weights_initializer=f, bias_initializer=f)
    assert "Weights: []" in repr(layer) and "Bias: []" in repr(layer)
    assert layer.weights_initializer is f and layer.bias_initializer is f
    y = layer(FormattedArray(np.ones((5, 5, 3, 1), np.float32), "SSCB"))
    assert y.shape == (1, 1, 32, 1)
    assert np.all((layer.weights >= 0) & (layer.weights < 0.0001))
    assert np.all((layer.bias >= 0) & (layer.bias < 0.0001))


def test_seed_weights_and_bias_given_directly():
    """``convolution2dLayer(5,32,'Weights',W,'Bias',b)``: NumChannels 3, 5×5×3×32, 1×1×32."""
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((5, 5, 3, 32)), rng.standard_normal((1, 1, 32))
    layer = convolution2d_layer(5, 32, weights=W, bias=b)
    assert layer.num_channels == 3
    # used as they are, as the layer's own copies (issue 11: later edits of W do not reach it)
    np.testing.assert_array_equal(layer.weights, W)
    np.testing.assert_array_equal(layer.bias, b)
    assert layer.weights is not W
    text = repr(layer)
    assert "       NumChannels: 3\n" in text
    assert "           Weights: [5×5×3×32 float64]\n" in text
    assert "              Bias: [1×1×32 float64]\n" in text
    # the given values are used, not the initialisers
    x = _rand((6, 6, 3, 2))
    y = layer(FormattedArray(x, "SSCB"))
    np.testing.assert_array_equal(layer.weights, W)
    ref, _ = _expected(x, "SSCB", W, b)
    np.testing.assert_allclose(_np(y), ref, rtol=1e-12, atol=1e-12)


def test_bias_given_as_vector_is_stored_1x1xF():
    layer = convolution2d_layer(3, 4, bias=np.arange(4.0))
    assert layer.bias.shape == (1, 1, 4)
    np.testing.assert_array_equal(layer.bias.reshape(-1), np.arange(4.0))


def test_matlab_trimmed_singletons_are_accepted():
    """MATLAB drops trailing singleton dims: 5×5×3×1 weights load as 5×5×3, 1×1×1 bias as 1×1."""
    layer = convolution2d_layer(5, 1, weights=np.ones((5, 5, 3)), bias=np.ones((1, 1)))
    assert layer.weights.shape == (5, 5, 3, 1) and layer.bias.shape == (1, 1, 1)
    assert layer.num_channels == 3
    layer = convolution2d_layer(5, 1, weights=np.ones((5, 5)))
    assert layer.weights.shape == (5, 5, 1, 1) and layer.num_channels == 1


def test_seed_fully_covering_layer_28x28x1():
    """``convolution2dLayer([6 4],16,'Stride',4,'Padding',[1 0])`` on 28×28×1 → 7×7×16."""
    layer = convolution2d_layer([6, 4], 16, stride=4, padding=[1, 0])
    text = repr(layer)
    assert "        FilterSize: [6 4]\n" in text and "       PaddingSize: [1 1 0 0]\n" in text
    assert layer.padding_size == (1, 1, 0, 0)
    assert layer.output_size((28, 28)) == (7, 7)
    x = _rand((28, 28, 1, 2))
    y = layer(FormattedArray(x, "SSCB"))
    assert y.format == "SSCB" and y.shape == (7, 7, 16, 2)
    ref, _ = _expected(x, "SSCB", layer.weights, layer.bias, stride=(4, 4), pads=(1, 1, 0, 0))
    np.testing.assert_allclose(_np(y), ref, rtol=1e-5, atol=1e-5)


def test_seed_608_parameters_and_16x16x8():
    """32×32×3 input, eight 5×5 filters, stride 2, padding 2 → 16×16×8; 608 parameters."""
    layer = convolution2d_layer(5, 8, stride=2, padding=2)
    assert layer.num_parameters is None  # num_channels still 'auto'
    x = FormattedArray(_rand((32, 32, 3, 1)).astype(np.float32), "SSCB")
    y = layer(x)
    assert y.shape == (16, 16, 8, 1)
    assert math.prod(y.shape) == 2048  # neurons
    assert layer.num_parameters == 608
    assert sum(math.prod(v.shape) for v in layer.learnables().values()) == 608
    assert convolution2d_layer(5, 8, num_channels=3).num_parameters == 608
    ref, _ = _expected(_np(x), "SSCB", layer.weights, layer.bias, stride=(2, 2), pads=(2, 2, 2, 2))
    np.testing.assert_allclose(_np(y), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,k,stride,dil,pads", [
    ((7, 6), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((7, 6), (4, 2), (1, 1), (1, 1), (1, 2, 0, 1)),   # odd totals: the extra pixel bottom/right
    ((7, 6), (3, 3), (2, 2), (1, 1), (1, 1, 0, 1)),   # out = ceil(7/2)=4, ceil(6/2)=3
    ((7, 6), (3, 3), (3, 2), (1, 1), (1, 1, 0, 1)),   # out = 3, 3
    ((5, 5), (3, 3), (1, 1), (2, 2), (2, 2, 2, 2)),   # effective 5×5
    ((4, 4), (1, 1), (2, 2), (1, 1), (0, 0, 0, 0)),   # never negative padding
])
def test_same_padding_is_computed_per_input(size, k, stride, dil, pads):
    layer = convolution2d_layer(k, 2, stride=stride, dilation_factor=dil, padding="same")
    x = _rand(size + (1, 2))
    y = layer(FormattedArray(x, "SSCB"))
    expect_out = tuple(-(-n // s) for n, s in zip(size, stride))
    assert y.shape[:2] == expect_out
    # the padding the layer used: MATLAB's rule, recomputed here
    mine = []
    for n, kk, s, d in zip(size, k, stride, dil):
        total = max((-(-n // s) - 1) * s + (kk - 1) * d + 1 - n, 0)
        mine += [total // 2, total - total // 2]
    assert layer.padding_size == tuple(mine) == pads
    ref, _ = _expected(x, "SSCB", layer.weights, layer.bias, stride=stride, dil=dil, pads=tuple(mine))
    np.testing.assert_allclose(_np(y), ref, rtol=1e-5, atol=1e-5)


def test_same_padding_keeps_size_for_each_input_size():
    layer = convolution2d_layer(4, 3, padding="same")
    for size in [(8, 8), (5, 9), (1, 2)]:
        y = layer(FormattedArray(_rand(size + (2, 1)), "SSCB"))
        assert y.shape == size + (3, 1)
    # odd total padding (4-1 = 3): one before, two after
    assert layer._pads((8, 8)) == (1, 2, 1, 2)


PICTURE = np.array([[3, 1, 4], [1, 5, 9], [2, 6, 5]], dtype=np.float64)
PADDED = {
    0: [[0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 3, 1, 4, 0, 0],
        [0, 0, 1, 5, 9, 0, 0],
        [0, 0, 2, 6, 5, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0]],
    "symmetric-include-edge": [[5, 1, 1, 5, 9, 9, 5],
                               [1, 3, 3, 1, 4, 4, 1],
                               [1, 3, 3, 1, 4, 4, 1],
                               [5, 1, 1, 5, 9, 9, 5],
                               [6, 2, 2, 6, 5, 5, 6],
                               [6, 2, 2, 6, 5, 5, 6],
                               [5, 1, 1, 5, 9, 9, 5]],
    "symmetric-exclude-edge": [[5, 6, 2, 6, 5, 6, 2],
                               [9, 5, 1, 5, 9, 5, 1],
                               [4, 1, 3, 1, 4, 1, 3],
                               [9, 5, 1, 5, 9, 5, 1],
                               [5, 6, 2, 6, 5, 6, 2],
                               [9, 5, 1, 5, 9, 5, 1],
                               [4, 1, 3, 1, 4, 1, 3]],
    "replicate": [[3, 3, 3, 1, 4, 4, 4],
                  [3, 3, 3, 1, 4, 4, 4],
                  [3, 3, 3, 1, 4, 4, 4],
                  [1, 1, 1, 5, 9, 9, 9],
                  [2, 2, 2, 6, 5, 5, 5],
                  [2, 2, 2, 6, 5, 5, 5],
                  [2, 2, 2, 6, 5, 5, 5]],
}


@pytest.mark.parametrize("value", list(PADDED))
def test_seed_padding_value_pictures(xp, value):
    """The seed's four 3×3 pictures padded by 2, through a 1×1 identity filter."""
    layer = convolution2d_layer(1, 1, padding=2, padding_value=value,
                                weights=xp.asarray(np.ones((1, 1, 1, 1))),
                                bias=xp.asarray(np.zeros((1, 1, 1))))
    y = layer(FormattedArray(xp.asarray(PICTURE[:, :, None, None]), "SSCB"))
    assert y.format == "SSCB" and y.shape == (7, 7, 1, 1)
    np.testing.assert_array_equal(xp.to_numpy(y)[:, :, 0, 0], np.array(PADDED[value], np.float64))


def test_constant_padding_value_other_than_zero():
    layer = convolution2d_layer(1, 1, padding=[1, 0], padding_value=-2.5,
                                weights=np.ones((1, 1, 1, 1)), bias=np.zeros(1))
    y = _np(layer(FormattedArray(PICTURE[:, :, None], "SSC")))[:, :, 0]
    np.testing.assert_array_equal(y, np.vstack([np.full(3, -2.5), PICTURE, np.full(3, -2.5)]))
    assert "PaddingValue: -2.5" in repr(layer)
    layer.padding_value = "replicate"
    assert "PaddingValue: 'replicate'" in repr(layer)
    layer.padding_value = 1.0
    assert "PaddingValue: 1\n" in repr(layer) and layer.padding_value == 1.0
    layer.padding_value = float("-inf")
    assert "PaddingValue: -inf\n" in repr(layer)


# ---------------------------------------------------------------------------------------
# format dispatch (SPEC §3.2)
# ---------------------------------------------------------------------------------------

SIZES = {"S": (5, 4), "C": 2, "B": 3, "T": 4}


def _shape(fmt):
    s_iter = iter(SIZES["S"])
    return tuple(next(s_iter) if ch == "S" else SIZES[ch] for ch in fmt)


DISPATCH = [
    ("SSCB", "SSCB"), ("SSC", "SSC"), ("SSCBT", "SSCBT"), ("SSCT", "SSCT"),
    ("SSB", "SSCB"), ("SS", "SSC"), ("SSBT", "SSCBT"),
    ("SCBT", "SCBT"), ("SCT", "SCT"), ("SBT", "SCBT"), ("ST", "SCT"),
]


@pytest.mark.parametrize("fmt,out_fmt", DISPATCH)
def test_dispatch_formats_against_reference(fmt, out_fmt):
    x = _rand(_shape(fmt), seed=len(fmt))
    c = SIZES["C"] if "C" in fmt else 1
    W, b = _rand((3, 2, c, 3), seed=1), _rand(3, seed=2)
    layer = convolution2d_layer([3, 2], 3, weights=W, bias=b, stride=[2, 1], padding=[1, 1, 0, 1],
                                padding_value="symmetric-exclude-edge")
    y = layer(FormattedArray(x, fmt))
    ref, ref_fmt = _expected(x, fmt, W, b, stride=(2, 1), pads=(1, 1, 0, 1),
                             value="symmetric-exclude-edge")
    assert y.format == out_fmt == ref_fmt
    assert y.shape == ref.shape
    np.testing.assert_allclose(_np(y), ref, rtol=1e-12, atol=1e-12)


def test_dispatch_accepts_permuted_input_orders():
    """Formats are canonicalised first: 'CBTS' data is SCBT input."""
    x = _rand((2, 3, 4, 5))  # C B T S
    W, b = _rand((3, 2, 2, 3), 1), _rand(3, 2)
    layer = convolution2d_layer([3, 2], 3, weights=W, bias=b)
    y = layer(FormattedArray(x, "CBTS"))
    ref, _ = _expected(np.transpose(x, (3, 0, 1, 2)), "SCBT", W, b)
    assert y.format == "SCBT"
    np.testing.assert_allclose(_np(y), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", ["SCB", "CBT", "SSSCB", "SSCU", "SCBU", "CB", "S", "UU", "SSSC"])
def test_other_formats_are_rejected(fmt):
    layer = convolution2d_layer(1, 2)
    x = FormattedArray(np.zeros((2,) * len(fmt)), fmt)
    with pytest.raises(ValueError) as info:
        layer(x)
    msg = str(info.value)
    assert repr(x.format) in msg
    for accepted in ("SSCB", "SSCBT", "SCBT", "ST"):
        assert accepted in msg
    assert layer.weights is None  # nothing initialised from a rejected input


def test_unformatted_input_is_rejected():
    layer = convolution2d_layer(1, 2)
    for x in (np.zeros((4, 4, 1, 1)), FormattedArray(np.zeros((4, 4, 1, 1)))):
        with pytest.raises(ValueError, match="unformatted.*accepted formats are SSCB"):
            layer(x)


def test_sscbt_equals_per_time_step_sscb():
    x = _rand((6, 5, 3, 2, 4))  # S S C B T
    layer = convolution2d_layer(3, 4, padding="same", stride=[1, 2])
    y = layer(FormattedArray(x, "SSCBT"))
    assert y.format == "SSCBT" and y.shape == (6, 3, 4, 2, 4)
    steps = [_np(layer(FormattedArray(x[..., t], "SSCB"))) for t in range(x.shape[-1])]
    np.testing.assert_array_equal(_np(y), np.stack(steps, axis=-1))


def test_scbt_is_a_2d_convolution_of_the_s_t_plane():
    """Height over S, width over T, checked element by element against direct loops."""
    S, C, B, T = 7, 2, 2, 6
    x = _rand((S, C, B, T), seed=5)
    W, b = _rand((3, 2, C, 4), seed=6), _rand(4, seed=7)
    layer = convolution2d_layer([3, 2], 4, weights=W, bias=b, dilation_factor=[2, 1],
                                stride=[1, 2], padding=[1, 0, 1, 1])
    y = _np(layer(FormattedArray(x, "SCBT")))
    # out: S' = (7+1-5)//1+1 = 4, T' = (6+2-2)//2+1 = 4
    assert y.shape == (4, 4, B, 4)  # S F B T'
    xpad = np.zeros((S + 1, C, B, T + 2))
    xpad[1:S + 1, :, :, 1:T + 1] = x
    for s in range(4):
        for t in range(4):
            for f in range(4):
                for n in range(B):
                    acc = b[f]
                    for i in range(3):
                        for j in range(2):
                            for c in range(C):
                                acc += W[i, j, c, f] * xpad[s + 2 * i, c, n, 2 * t + j]
                    assert abs(y[s, f, n, t] - acc) < 1e-12


def test_st_input_gets_a_channel_dim():
    x = _rand((6, 5))
    layer = convolution2d_layer(2, 3)
    y = layer(FormattedArray(x, "ST"))
    assert y.format == "SCT" and y.shape == (5, 3, 4)
    assert layer.num_channels == 1


def test_each_call_checks_the_channel_count():
    layer = convolution2d_layer(3, 2, num_channels=3)
    with pytest.raises(ValueError, match="num_channels is 3 .* has 4 channels"):
        layer(FormattedArray(np.zeros((5, 5, 4, 1)), "SSCB"))
    assert layer.weights is None
    layer(FormattedArray(np.zeros((5, 5, 3, 1)), "SSCB"))
    with pytest.raises(ValueError, match="num_channels is 3 .* has 1 channels"):
        layer(FormattedArray(np.zeros((5, 5, 1)), "SSB"))
    layer = convolution2d_layer(3, 2, weights=np.zeros((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="num_channels is 2 .* has 3 channels.*weights fix"):
        layer(FormattedArray(np.zeros((5, 5, 3, 1)), "SSCB"))


def test_auto_num_channels_resolved_on_first_call_and_then_fixed():
    layer = convolution2d_layer(3, 2)
    y1 = layer(FormattedArray(_rand((5, 5, 3, 1)), "SSCB"))
    assert layer.num_channels == 3 and layer.weights.shape == (3, 3, 3, 2)
    W = layer.weights
    y2 = layer(FormattedArray(_rand((5, 5, 3, 1)), "SSCB"))
    assert layer.weights is W and y1.shape == y2.shape
    with pytest.raises(ValueError, match="num_channels is 3"):
        layer(FormattedArray(_rand((5, 5, 2, 1)), "SSCB"))


def test_input_too_small_gives_the_numbers():
    layer = convolution2d_layer(5, 2, stride=2)
    with pytest.raises(ValueError, match=r"input of size \(3, 8\).*filter_size \(5, 5\).*output size \(0, 2\)"):
        layer(FormattedArray(np.zeros((3, 8, 1, 1)), "SSCB"))


def test_layout_initialisation_checks_format():
    with pytest.raises(ValueError, match="'SCB'.*accepted formats"):
        convolution2d_layer(3, 2).initialize(((5, 2, 1), "SCB"))
    with pytest.raises(TypeError, match="example input"):
        convolution2d_layer(3, 2).initialize(5)


@pytest.mark.parametrize("fmt", ["SSCB", "SCBT"])
def test_every_backend_matches_reference(xp, fmt):
    shape = (6, 5, 2, 3) if fmt == "SSCB" else (6, 2, 3, 5)
    x = _rand(shape, 11)
    W, b = _rand((3, 2, 2, 4), 12), _rand((1, 1, 4), 13)
    layer = convolution2d_layer([3, 2], 4, weights=xp.asarray(W), bias=xp.asarray(b),
                                padding="same", stride=[2, 1], padding_value="replicate")
    xf = FormattedArray(xp.asarray(x), fmt)
    y = layer(xf)
    assert y.format == fmt and y.device == xf.device
    assert fa._backend.library_name(y.data) == fa._backend.library_name(xf.data)
    pads = layer._pads((6, 5))
    assert pads == (0, 1, 0, 1)
    ref, _ = _expected(x, fmt, W, b, stride=(2, 1), pads=pads, value="replicate")
    np.testing.assert_allclose(xp.to_numpy(y), ref, rtol=1e-10, atol=1e-10)


def test_initialised_on_first_call_on_the_inputs_backend(xp):
    layer = convolution2d_layer(3, 2, bias_initializer="ones")
    x = FormattedArray(xp.asarray(np.ones((5, 5, 2), np.float32)), "SSB")
    y = layer(x)
    assert y.dtype == x.dtype and y.device == x.device
    assert fa._backend.device(layer.weights) == x.device
    assert layer.weights.dtype == x.dtype


# ---------------------------------------------------------------------------------------
# the layer inside autodiff (Layer.using swaps in traced learnables)
# ---------------------------------------------------------------------------------------


def test_gradients_through_the_layer():
    x = _rand((6, 5, 2, 3))
    layer = convolution2d_layer([3, 2], 4, stride=[2, 1], padding=[1, 0, 0, 1])
    layer.initialize(FormattedArray(x, "SSCB"), seed=0)
    xf = FormattedArray(x, "SSCB")

    def loss(params):
        with layer.using(params):
            return fa.sum(layer(xf))

    g = fa.grad(loss)(layer.learnables())
    assert set(g) == {"weights", "bias"}
    out = layer.output_size((6, 5))
    n_out = out[0] * out[1] * 3
    np.testing.assert_allclose(_np(g["bias"]), np.full((1, 1, 4), float(n_out)))
    # d sum / dW[a, q, c, f] = sum over windows of the padded input
    xpad = np.pad(x, ((1, 0), (0, 1), (0, 0), (0, 0)))
    gw = np.zeros((3, 2, 2))
    for a in range(3):
        for q in range(2):
            gw[a, q] = xpad[a:a + 2 * out[0] - 1:2, q:q + out[1], :, :].sum(axis=(0, 1, 3))
    np.testing.assert_allclose(_np(g["weights"]), np.repeat(gw[..., None], 4, axis=3), rtol=1e-10)
    # the layer's own learnables are restored after tracing
    assert isinstance(layer.weights, np.ndarray) and layer.weights.shape == (3, 2, 2, 4)


def test_seed_examples_script_runs(capsys):
    import pathlib
    import runpy

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "seed_examples.py"
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert SEED_DISPLAY_11_96 in out
    assert "20 5×5 convolutions with stride [1 1] and padding [0 0 0 0]" in out
    assert "28×28×1 input → output 7×7×16 (SSCB)" in out
    assert "feature maps 16×16×8, neurons 2048, parameters 608" in out
    assert "Weights: [5×5×3×32 float64]" in out
