"""The CNN layer family against torch in float64: forward values and the gradients with
respect to the input and every learnable (through ``fmtarray.value_and_grad``), for
grouped (several group counts, channel-wise), 1-D (over S, over T, causal), 3-D
(SSSCB, SSCBT over S, S, T) convolution, leaky ReLU and global average pooling; the
MATLAB displays of default-constructed layers; property validation; the MATLAB
constructors' Name, Value parsing. Dropout, networks and save/load are in
``test_cnn_layers_network.py``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fmtarray as fa  # noqa: E402
from fmtarray import FormattedArray  # noqa: E402
from fmtarray import matlab  # noqa: E402
from fmtarray.layers import (  # noqa: E402
    Convolution1DLayer, Convolution3DLayer, GlobalAveragePooling2DLayer,
    GroupedConvolution2DLayer, LeakyReLULayer, convolution1d_layer, convolution3d_layer,
    global_average_pooling2d_layer, grouped_conv2d_layer, leaky_relu_layer,
)

RTOL = 1e-9


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _check(layer, x, fmt, torch_fn, seed=0):
    """Forward and gradients of ``sum(layer(x) * R)`` against ``torch_fn(X, *learnables)``
    (torch tensors in the same layouts as fmtarray's). Returns the max relative error."""
    rng = np.random.default_rng(seed)
    xf = FormattedArray(x, fmt)
    layer.initialize(xf, seed=seed)
    # non-trivial bias (the initialiser's zeros would hide a misplaced bias)
    for n in layer.learnable_names:
        if n == "bias" and getattr(layer, n) is not None:
            setattr(layer, n, rng.standard_normal(getattr(layer, n).shape))
    names = list(layer.learnable_names)
    params = layer.learnables()
    y = layer.predict(xf)
    R = rng.standard_normal(y.shape)

    def loss(xx, p):
        with layer.using(p):
            out = layer.predict(xx)
        return fa.sum(out * FormattedArray(R, out.format))

    _, (gx, gp) = fa.value_and_grad(loss, argnums=(0, 1))(xf, params)
    X = torch.tensor(x, requires_grad=True)
    T = [torch.tensor(np.asarray(getattr(layer, n)), requires_grad=True) for n in names]
    Y = torch_fn(X, *T)
    (Y * torch.tensor(R)).sum().backward()
    errs = [_rel(y.data, Y.detach().numpy()), _rel(gx.data, X.grad.numpy())]
    errs += [_rel(gp[n].data, t.grad.numpy()) for n, t in zip(names, T)]
    assert max(errs) <= RTOL, errs
    return max(errs)


# grouped convolution --------------------------------------------------------------------


def _grouped_torch(stride=1, dilation=1, padding=0):
    def fn(X, W, b):  # X: H W C N, W: h w cg fg g, b: 1 1 fg g
        h, w, cg, fg, g = W.shape
        wt = W.permute(4, 3, 2, 0, 1).reshape(g * fg, cg, h, w)
        bt = b.permute(3, 2, 0, 1).reshape(-1)
        y = F.conv2d(X.permute(3, 2, 0, 1), wt, bt, stride=stride, dilation=dilation,
                     padding=padding, groups=g)
        return y.permute(2, 3, 1, 0)
    return fn


@pytest.mark.parametrize("C,fg,groups", [(4, 3, 2), (6, 2, 3), (4, 1, 4), (3, 2, 1),
                                         (3, 1, "channel-wise"), (4, 3, "channel-wise")])
def test_grouped_against_torch(C, fg, groups):
    x = np.random.default_rng(1).standard_normal((7, 6, C, 2))
    layer = grouped_conv2d_layer((3, 2), fg, groups, stride=(2, 1), dilation_factor=(1, 2),
                                 padding=1)
    _check(layer, x, "SSCB", _grouped_torch((2, 1), (1, 2), 1))
    g = C if groups == "channel-wise" else groups
    assert layer.num_groups == g and layer.num_channels_per_group == C // g
    assert layer.weights.shape == (3, 2, C // g, fg, g) and layer.bias.shape == (1, 1, fg, g)
    assert layer.num_parameters == 3 * 2 * (C // g) * fg * g + fg * g
    assert (layer.num_filters, layer.num_channels) == (fg * g, C)


def test_grouped_same_padding_and_st_format():
    rng = np.random.default_rng(2)
    layer = grouped_conv2d_layer(3, 2, 2, padding="same")
    _check(layer, rng.standard_normal((5, 4, 4, 2)), "SSCB", _grouped_torch(padding=1))
    # SCBT: filter height over S, width over T (as Convolution2DLayer)
    x = rng.standard_normal((6, 4, 2, 5))  # S C B T

    def fn(X, W, b):
        return _grouped_torch()(X.permute(0, 3, 1, 2), W, b).permute(0, 2, 3, 1)

    _check(grouped_conv2d_layer((3, 2), 2, 2), x, "SCBT", fn)


def test_grouped_initialiser_fans_and_given_weights():
    layer = grouped_conv2d_layer(3, 5, 2, weights_initializer="he")
    layer.initialize(FormattedArray(np.zeros((9, 9, 8, 1)), "SSCB"), seed=3)
    # he: std sqrt(2 / numIn), numIn = h*w*channelsPerGroup = 3*3*4
    expected = np.random.default_rng(3).normal(0, np.sqrt(2 / 36), (3, 3, 4, 5, 2))
    np.testing.assert_allclose(layer.weights, expected)
    w = np.ones((3, 3, 1, 2, 6))
    given = grouped_conv2d_layer(3, 2, "channel-wise", weights=w)
    assert given.num_groups == 6 and given.num_channels_per_group == 1
    with pytest.raises(ValueError, match="num_groups is 6 but the input .* 4 channels"):
        given.predict(FormattedArray(np.zeros((5, 5, 4, 1)), "SSCB"))
    with pytest.raises(ValueError, match=r"num_groups is 3 but the weights .* have 6 groups"):
        grouped_conv2d_layer(3, 2, 3, weights=w)


# 1-D convolution ----------------------------------------------------------------------


def _conv1d_torch(stride=1, dilation=1, pad=(0, 0)):
    def core(X, W, b):  # X: N C L
        return F.conv1d(F.pad(X, pad), W.permute(2, 1, 0), b.reshape(-1), stride=stride,
                        dilation=dilation)
    return core


def test_conv1d_over_s_against_torch():
    x = np.random.default_rng(4).standard_normal((11, 3, 2))  # S C B
    core = _conv1d_torch(2, 2, (1, 2))
    _check(convolution1d_layer(3, 4, stride=2, dilation_factor=2, padding=(1, 2)), x, "SCB",
           lambda X, W, b: core(X.permute(2, 1, 0), W, b).permute(2, 1, 0))


def test_conv1d_over_t_causal_against_torch():
    x = np.random.default_rng(5).standard_normal((3, 2, 10))  # C B T
    layer = convolution1d_layer(3, 4, dilation_factor=2, padding="causal")
    core = _conv1d_torch(1, 2, (4, 0))  # causal: (k - 1) * dilation on the left only
    _check(layer, x, "CBT", lambda X, W, b: core(X.permute(1, 0, 2), W, b).permute(1, 0, 2))
    assert layer.padding_mode == "causal" and layer.padding_size == (4, 0)
    # causality: changing the last time step changes only the last output
    y0 = layer.predict(FormattedArray(x, "CBT")).data
    x2 = x.copy()
    x2[..., -1] += 1
    y1 = layer.predict(FormattedArray(x2, "CBT")).data
    assert np.array_equal(y0[..., :-1], y1[..., :-1]) and not np.array_equal(y0, y1)


def test_conv1d_scbt_convolves_s_same_padding():
    x = np.random.default_rng(6).standard_normal((9, 3, 2, 4))  # S C B T
    core = _conv1d_torch(2, 1, (1, 1))  # 'same' with k=3, stride 2, n=9: total 2 -> 1, 1

    def fn(X, W, b):
        L, C, N, T = X.shape
        y = core(X.permute(2, 3, 1, 0).reshape(N * T, C, L), W, b)
        return y.reshape(N, T, y.shape[1], y.shape[2]).permute(3, 2, 0, 1)

    layer = convolution1d_layer(3, 5, stride=2, padding="same")
    _check(layer, x, "SCBT", fn)
    assert layer.predict(FormattedArray(x, "SCBT")).shape == (5, 5, 2, 4)


# 3-D convolution ----------------------------------------------------------------------


def _conv3d_torch(stride, dilation, pad):
    (t, l, f), (b_, r, k) = pad

    def core(X, W, b):  # X: N C H W D
        return F.conv3d(F.pad(X, (f, k, l, r, t, b_)), W.permute(4, 3, 0, 1, 2), b.reshape(-1),
                        stride=stride, dilation=dilation)
    return core


def test_conv3d_sssc_against_torch():
    x = np.random.default_rng(7).standard_normal((6, 7, 5, 2, 2))  # S S S C B
    pad = ((1, 0, 2), (0, 1, 1))
    layer = convolution3d_layer((3, 2, 3), 3, stride=(1, 2, 1), dilation_factor=(2, 1, 1),
                                padding=[[1, 0, 2], [0, 1, 1]])
    core = _conv3d_torch((1, 2, 1), (2, 1, 1), pad)
    _check(layer, x, "SSSCB",
           lambda X, W, b: core(X.permute(4, 3, 0, 1, 2), W, b).permute(2, 3, 4, 1, 0))
    assert layer.padding_size == pad and layer.num_parameters == (3 * 2 * 3 * 2 + 1) * 3


def test_conv3d_sscbt_over_s_s_t():
    x = np.random.default_rng(8).standard_normal((5, 6, 2, 2, 7))  # S S C B T
    layer = convolution3d_layer(3, 4, padding="same")
    core = _conv3d_torch(1, 1, ((1, 1, 1), (1, 1, 1)))
    _check(layer, x, "SSCBT",
           lambda X, W, b: core(X.permute(3, 2, 0, 1, 4), W, b).permute(2, 3, 1, 0, 4))
    assert layer.weights.shape == (3, 3, 3, 2, 4) and layer.bias.shape == (1, 1, 1, 4)


def test_conv3d_padding_forms():
    assert Convolution3DLayer(3, 1, padding=2).padding_size == ((2, 2, 2), (2, 2, 2))
    assert Convolution3DLayer(3, 1, padding=(1, 2, 3)).padding_size == ((1, 2, 3), (1, 2, 3))
    six = Convolution3DLayer(3, 1, padding=(1, 2, 3, 4, 5, 6))  # before/after per dim
    assert six.padding_size == ((1, 3, 5), (2, 4, 6))
    assert Convolution3DLayer(3, 1, padding=np.array([[1, 3, 5], [2, 4, 6]])).padding_size \
        == ((1, 3, 5), (2, 4, 6))
    layer = Convolution3DLayer(3, 1, padding="same", stride=2)
    layer.initialize(((5, 6, 7, 1, 1), "SSSCB"))
    # out = ceil(n / 2); total = (out - 1) * 2 + 3 - n: 2, 1, 2 -> the odd one after
    assert layer.padding == "same" and layer.padding_size == ((1, 0, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="padding="):
        Convolution3DLayer(3, 1, padding=(1, 2))
    with pytest.raises(ValueError, match="'causal'"):
        Convolution3DLayer(3, 1, padding="causal")


# leaky ReLU and global average pooling -------------------------------------------------


@pytest.mark.parametrize("scale", [0.01, 0.3, -0.5, 2])
def test_leaky_relu_against_torch(scale):
    x = np.random.default_rng(9).standard_normal((4, 3, 2, 5))
    _check(leaky_relu_layer(scale), x, "SSCB", lambda X: F.leaky_relu(X, scale))


def test_leaky_relu_nan_and_dtype():
    x = np.array([np.nan, -2.0, 3.0, -np.inf], dtype=np.float32)
    y = fa.ops.leaky_relu(FormattedArray(x, "C"), 0.1)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.data, np.array([np.nan, -0.2, 3.0, -np.inf], np.float32))
    g = fa.grad(lambda v: fa.sum(fa.ops.leaky_relu(v, 0.1)))(FormattedArray(x, "C"))
    X = torch.tensor(x, requires_grad=True)
    F.leaky_relu(X, 0.1).sum().backward()
    np.testing.assert_array_equal(g.data, X.grad.numpy())
    assert matlab.leakyrelu(FormattedArray(x, "C")).data[1] == np.float32(-0.02)


@pytest.mark.parametrize("fmt,dims", [("SSCB", (0, 1)), ("SSCBT", (0, 1)), ("SCBT", (0, 3))])
def test_global_average_pooling_against_torch(fmt, dims):
    x = np.random.default_rng(10).standard_normal((4, 5, 3, 2, 3)[:len(fmt)])
    layer = global_average_pooling2d_layer()
    _check(layer, x, fmt, lambda X: X.mean(dim=dims, keepdim=True))
    y = layer.predict(FormattedArray(x, fmt))
    assert y.format == fmt and all(y.shape[d] == 1 for d in dims)
    if fmt == "SSCB":  # torch's own global pooling layer
        ref = F.adaptive_avg_pool2d(torch.tensor(x).permute(3, 2, 0, 1), 1)
        assert _rel(y.data, ref.permute(2, 3, 1, 0).numpy()) <= 1e-15
    with pytest.raises(ValueError, match="'CB'.*accepted formats are SSCB"):
        layer.predict(FormattedArray(np.zeros((3, 2)), "CB"))


# displays ------------------------------------------------------------------------------

DISPLAYS = {
    "groupedConvolution2dLayer(3, 8, 2)": """GroupedConvolution2DLayer with properties:

                   Name: ''

   Hyperparameters
             FilterSize: [3 3]
              NumGroups: 2
    NumChannelsPerGroup: 'auto'
     NumFiltersPerGroup: 8
                 Stride: [1 1]
         DilationFactor: [1 1]
            PaddingMode: 'manual'
            PaddingSize: [0 0 0 0]
           PaddingValue: 0

   Learnable Parameters
                Weights: []
                   Bias: []""",
    "convolution1dLayer(3, 16)": """Convolution1DLayer with properties:

              Name: ''

   Hyperparameters
        FilterSize: 3
       NumChannels: 'auto'
        NumFilters: 16
            Stride: 1
    DilationFactor: 1
       PaddingMode: 'manual'
       PaddingSize: [0 0]
      PaddingValue: 0

   Learnable Parameters
           Weights: []
              Bias: []""",
    "convolution3dLayer(3, 16)": """Convolution3DLayer with properties:

              Name: ''

   Hyperparameters
        FilterSize: [3 3 3]
       NumChannels: 'auto'
        NumFilters: 16
            Stride: [1 1 1]
    DilationFactor: [1 1 1]
       PaddingMode: 'manual'
       PaddingSize: [0 0 0; 0 0 0]
      PaddingValue: 0

   Learnable Parameters
           Weights: []
              Bias: []""",
    "dropoutLayer()": """DropoutLayer with properties:

           Name: ''

   Hyperparameters
    Probability: 0.5000""",
    "leakyReluLayer()": """LeakyReLULayer with properties:

     Name: ''

   Hyperparameters
    Scale: 0.0100""",
    "globalAveragePooling2dLayer()": """GlobalAveragePooling2DLayer with properties:

    Name: ''""",
}


@pytest.mark.parametrize("call", list(DISPLAYS))
def test_matlab_display_of_default_layers(call):
    layer = eval("matlab." + call)  # noqa: S307  (the fixed calls above)
    assert repr(layer) == DISPLAYS[call] + "\n\n  Use layer.properties() to see all properties."
    assert set(layer.properties()) >= {"name", "num_inputs", "output_names"}


def test_network_display_names():
    assert grouped_conv2d_layer(3, 2, "channel-wise").description() \
        == "channel-wise 3×3 convolutions (2 per channel) with stride [1 1] and padding [0 0 0 0]"
    assert grouped_conv2d_layer(3, 2, 4).description().startswith("4 groups of 2 3×3 conv")
    assert convolution1d_layer(5, 8, padding="causal").description() \
        == "8 5 convolutions with stride 1 and padding 'causal'"
    assert convolution3d_layer(3, 2).type_name() == "3-D Convolution"
    assert leaky_relu_layer(0.2).description() == "Leaky ReLU with scale 0.2"
    assert GlobalAveragePooling2DLayer().type_name() == "2-D Global Average Pooling"


# MATLAB constructors and validation ------------------------------------------------------


def test_matlab_name_value_parsing():
    g = matlab.groupedConvolution2dLayer(3, 4, "channel-wise", "Stride", 2, Padding="same",
                                         name="dw", biaslearnratefactor=2)
    assert isinstance(g, GroupedConvolution2DLayer) and g.stride == (2, 2)
    assert (g.padding, g.name, g.bias_learn_rate_factor, g.num_groups) \
        == ("same", "dw", 2, "channel-wise")
    c1 = matlab.convolution1dLayer(5, 8, "Padding", "causal", "NumChannels", 3,
                                   "DilationFactor", 2)
    assert isinstance(c1, Convolution1DLayer) and c1.num_channels == 3
    assert (c1.filter_size, c1.dilation_factor, c1.padding) == (5, 2, "causal")
    c3 = matlab.convolution3dLayer([3, 3, 1], 4, Padding=[[1, 1, 0], [1, 1, 0]], WeightL2Factor=0)
    assert c3.filter_size == (3, 3, 1) and c3.padding_size == ((1, 1, 0), (1, 1, 0))
    assert c3.weight_l2_factor == 0
    assert matlab.dropoutLayer(0.2, "Name", "drop").probability == 0.2
    assert matlab.dropoutLayer(Name="d", Seed=4).seed == 4
    lr = matlab.leakyReluLayer(0.1, "Name", "lr")
    assert isinstance(lr, LeakyReLULayer) and (lr.scale, lr.name) == (0.1, "lr")
    assert matlab.globalAveragePooling2dLayer("Name", "gap").name == "gap"
    with pytest.raises(TypeError, match="unknown option 'NumChannels'.*Stride"):
        matlab.groupedConvolution2dLayer(3, 4, 2, NumChannels=4)
    with pytest.raises(TypeError, match="unknown option 'Probability'"):
        matlab.dropoutLayer("Probability", 0.3)
    with pytest.raises(ValueError, match=r"convolution3dLayer: Stride \(stride\)=\(1, 2\)"):
        matlab.convolution3dLayer(3, 4, Stride=(1, 2))
    with pytest.raises(ValueError, match=r"leakyReluLayer: Scale \(scale\)"):
        matlab.leakyReluLayer(float("inf"))


@pytest.mark.parametrize("make,exc,words", [
    (lambda: grouped_conv2d_layer(3, 0, 2), ValueError, "num_filters_per_group"),
    (lambda: grouped_conv2d_layer(3, 2, 0), ValueError, "num_groups=0"),
    (lambda: grouped_conv2d_layer(3, 2, "depthwise"), ValueError, "'channel-wise'"),
    (lambda: grouped_conv2d_layer(3, 2, 2, weights=np.ones((3, 3, 2, 3, 2))), ValueError,
     "num_filters_per_group 2"),
    (lambda: grouped_conv2d_layer(3, 2, 2, bias=np.ones((1, 1, 2, 3))), ValueError,
     "bias must have shape 1×1×2×2"),
    (lambda: convolution1d_layer((3, 3), 4), ValueError, "filter_size"),
    (lambda: convolution1d_layer(3, 4, padding=(1, 2, 3)), ValueError, "padding="),
    (lambda: convolution1d_layer(3, 4, weights=np.ones((3, 2, 5))), ValueError,
     "weights must have shape 3×C×4"),
    (lambda: convolution1d_layer(3, 4, bias=np.ones((2, 4))), ValueError,
     r"bias must have shape 1×4 or \(4,\)"),
    (lambda: convolution1d_layer(3, 4, num_channels=2, weights=np.ones((3, 3, 4))), ValueError,
     "num_channels is 2"),
    (lambda: convolution3d_layer((3, 3), 4), ValueError, "filter_size"),
    (lambda: convolution3d_layer(3, 4, padding_value="circular"), ValueError, "padding_value"),
    (lambda: convolution3d_layer(3, 4, weights_initializer="xavier"), ValueError,
     "weights_initializer"),
    (lambda: convolution3d_layer(3, 4, bias_l2_factor=-1), ValueError, "bias_l2_factor"),
    (lambda: convolution3d_layer(3, 4, stride=1.5), ValueError, "stride"),
    (lambda: convolution3d_layer(3, 4, paddings=1), TypeError, "unknown property 'paddings'"),
    (lambda: leaky_relu_layer("0.1"), TypeError, "scale must be a finite real number"),
    (lambda: LeakyReLULayer(0.1, name=3), TypeError, "name must be a str"),
])
def test_property_validation(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_format_errors_list_the_accepted_formats():
    x = FormattedArray(np.zeros((5, 5, 2, 1)), "SSCB")
    with pytest.raises(ValueError, match="1-D convolution layer .* 'SSCB'.*SCB, SC, SB"):
        convolution1d_layer(3, 2).predict(x)
    with pytest.raises(ValueError, match="3-D convolution layer .* 'SSCB'.*SSSCB"):
        convolution3d_layer(3, 2).predict(x)
    with pytest.raises(ValueError, match="2-D convolution layer .* 'SCB'"):
        grouped_conv2d_layer(3, 2, 2).predict(FormattedArray(np.zeros((5, 2, 1)), "SCB"))
    with pytest.raises(ValueError, match=r"input of size \(2,\).*output size \(0,\)"):
        convolution1d_layer(3, 2).predict(FormattedArray(np.zeros((2, 1, 1)), "SCB"))
    with pytest.raises(ValueError, match="num_channels is 3 .* has 2 channels"):
        convolution1d_layer(3, 2, num_channels=3).predict(
            FormattedArray(np.zeros((5, 2, 1)), "SCB"))


def test_setters_keep_the_rules():
    layer = Convolution1DLayer(3, 2)
    layer.padding_size = (2, 0)
    assert (layer.padding_mode, layer.padding) == ("manual", (2, 0))
    with pytest.raises(ValueError, match="padding_size must be numbers"):
        layer.padding_size = "causal"
    layer.padding_mode = "causal"
    with pytest.raises(ValueError, match="padding_mode must be 'manual' or 'same' or 'causal'"):
        layer.padding_mode = "full"
    layer.initialize(((6, 2, 1), "SCB"), seed=0)
    with pytest.raises(ValueError, match="filter_size 5 does not match the weights"):
        layer.filter_size = 5
    assert layer.filter_size == 3 and layer.stride == 1 and layer.num_parameters == 14
