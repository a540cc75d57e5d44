"""Transposed convolution (``fa.transposed_conv``, MATLAB ``dltranspconv``,
``TransposedConvolution2DLayer``): forward and gradients against torch's
``conv_transpose1d/2d/3d`` in float64 (cropping = slicing torch's uncropped output),
S+T against a direct-loop NumPy scatter, every library, the layer (display, network,
gradients) and argument errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray.matlab import dltranspconv, transposedConv2dLayer

torch = pytest.importorskip("torch")
Fn = torch.nn.functional
TOL = 1e-9


def rel(a, ref):
    a = np.asarray(a, dtype=np.float64)
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _np(a):
    if isinstance(a, FormattedArray):
        a = fa.extractdata(a)
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def torch_ref(x, w, b, stride, dil, cb, ca, gy=None, out_pad=None):
    """torch's transposed convolution of channels-last ``x`` ``(N, *sp, C)`` with MATLAB
    weights ``(*k, Fg, Cg, G)``, cropped ``cb``/``ca``; with ``gy`` also the gradients
    ``(gx, gw, gb)`` by torch autograd."""
    d = x.ndim - 2
    Fg, Cg, G = w.shape[d:]
    xt = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    # torch: (C_in, F/groups, *k) with C_in = G * Cg
    tw = wt.permute((d + 2, d + 1, d) + tuple(range(d))).reshape((G * Cg, Fg) + w.shape[:d])
    bt = torch.tensor(b, requires_grad=True)
    f = {1: Fn.conv_transpose1d, 2: Fn.conv_transpose2d, 3: Fn.conv_transpose3d}[d]
    y = f(xt, tw, bt, stride=stride, dilation=dil, groups=G, output_padding=out_pad or 0)
    sl = (slice(None), slice(None)) + tuple(slice(p, y.shape[2 + i] - q)
                                            for i, (p, q) in enumerate(zip(cb, ca)))
    y = y[sl]
    yn = np.moveaxis(y.detach().numpy(), 1, -1)
    if gy is None:
        return yn
    y.backward(torch.tensor(np.moveaxis(gy, -1, 1)))
    return yn, np.moveaxis(xt.grad.numpy(), 1, -1), wt.grad.numpy(), bt.grad.numpy()


def _per(v, d):
    return (v,) * d if np.isscalar(v) else tuple(v)


# d, input sizes, filter sizes, stride, dilation, cropping (fa form), (before, after), G, Cg, Fg
CASES = [
    (1, (7,), (3,), 2, 1, 0, ((0,), (0,)), 1, 2, 3),
    (1, (6,), (4,), 3, 2, [1, 2], ((1,), (2,)), 2, 2, 1),
    (2, (5, 4), (3, 2), (2, 3), (1, 2), [1, 2, 0, 1], ((1, 0), (2, 1)), 2, 2, 3),
    (2, (4, 5), (3, 3), 1, 1, 1, ((1, 1), (1, 1)), 1, 3, 2),
    (2, (3, 4), (2, 3), 2, 1, [[0, 1], [1, 0]], ((0, 1), (1, 0)), 3, 1, 1),  # channel-wise
    (2, (4, 3), (2, 2), (1, 2), 1, (1, 0), ((1, 0), (1, 0)), 1, 2, 2),
    (3, (3, 4, 2), (2, 2, 3), (2, 1, 2), (1, 2, 1), [1, 0, 0, 1, 1, 1], ((1, 0, 1), (0, 1, 1)),
     2, 1, 2),
    (3, (2, 3, 3), (2, 2, 2), 1, 1, 0, ((0, 0, 0), (0, 0, 0)), 1, 2, 2),
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_gradients_vs_torch(case):
    d, sp, k, stride, dil, crop, (cb, ca), G, Cg, Fg = case
    rng = np.random.default_rng(len(sp) * 100 + sum(sp))
    N = 2
    x = rng.standard_normal((N, *sp, G * Cg))
    w = rng.standard_normal((*k, Fg, Cg, G))
    b = rng.standard_normal(G * Fg)
    y_ref = torch_ref(x, w, b, _per(stride, d), _per(dil, d), cb, ca)
    gy = rng.standard_normal(y_ref.shape)
    y_ref, gx_ref, gw_ref, gb_ref = torch_ref(x, w, b, _per(stride, d), _per(dil, d), cb, ca, gy)
    fmt = "B" + "S" * d + "C"  # NHWC-like user order; canonical is S..SCB
    X = FormattedArray(x, fmt)
    W = w if G > 1 else w[..., 0]
    Wf = FormattedArray(W)
    Bf = FormattedArray(b)

    def loss(X, Wf, Bf):
        y = fa.transposed_conv(X, Wf, Bf, stride=stride, dilation_factor=dil, cropping=crop)
        return fa.sum(y * FormattedArray(gy, fmt))

    y = fa.transposed_conv(X, W, b, stride=stride, dilation_factor=dil, cropping=crop)
    assert y.format == "S" * d + "CB"
    yn = np.moveaxis(_np(y), -1, 0)  # canonical (*sp, C, B) -> (B, *sp, C)
    assert yn.shape == y_ref.shape
    assert rel(yn, y_ref) <= TOL
    gX, gW, gB = fa.grad(loss, argnums=(0, 1, 2))(X, Wf, Bf)
    assert rel(np.moveaxis(_np(gX), -1, 0), gx_ref) <= TOL
    assert rel(_np(gW), gw_ref if G > 1 else gw_ref[..., 0]) <= TOL
    assert rel(_np(gB), gb_ref) <= TOL


@pytest.mark.parametrize("sp,k,stride", [((4, 5), (3, 3), (2, 2)), ((3, 4), (4, 5), (3, 2)),
                                         ((5, 3), (2, 1), (3, 2)), ((2, 2), (1, 1), (2, 3))])
def test_same_cropping(sp, k, stride):
    """``"same"``: output = input · stride, cropping effective - stride (odd pixel after);
    where the filter is shorter than the stride, torch's ``output_padding`` zeros."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *sp, 3))
    w = rng.standard_normal((*k, 2, 3, 1))
    b = rng.standard_normal(2)
    total = [max(kk - s, 0) for kk, s in zip(k, stride)]
    cb = tuple(t // 2 for t in total)
    ca = tuple(t - t // 2 for t in total)
    out_pad = tuple(max(s - kk, 0) for kk, s in zip(k, stride))
    ref = torch_ref(x, w, b, stride, (1, 1), cb, ca, out_pad=out_pad)
    y = fa.transposed_conv(FormattedArray(x, "BSSC"), w[..., 0], b, stride=stride,
                           cropping="same")
    assert y.shape[:2] == tuple(n * s for n, s in zip(sp, stride))
    assert rel(np.moveaxis(_np(y), -1, 0), ref) <= TOL


def test_adjoint_of_conv():
    """<conv(u, W), v> = <u, transposed_conv(v, W)>: the op is conv's adjoint (same
    stride, dilation, padding = cropping, groups)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 2, 2, 2, 2))  # conv: Cg=2, Fg=2, G=2
    u = FormattedArray(rng.standard_normal((10, 7, 4, 2)), "SSCB")  # no remainder
    kw = dict(stride=(2, 3), dilation_factor=(2, 1))
    cu = fa.conv(u, w, padding=[[1, 0], [2, 1]], **kw)
    v = FormattedArray(rng.standard_normal(cu.shape), "SSCB")
    tv = fa.transposed_conv(v, w, cropping=[[1, 0], [2, 1]], **kw)
    assert tv.shape == u.shape
    lhs = float(_np(fa.sum(cu * v)))
    rhs = float(_np(fa.sum(u * tv)))
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def ref_st(x, w, b, stride, crop):
    """Direct-loop transposed convolution of ``x`` ``(S, C, B, T)`` over S and T with
    ``w`` ``(kh, kt, F, C)``: every input pixel scatters ``w[i, j, :, c] · x`` to
    ``(s·stride + i, t·stride + j)``, then the cropping."""
    S, C, B, T = x.shape
    kh, kt, F, _ = w.shape
    full = np.zeros(((S - 1) * stride[0] + kh, F, B, (T - 1) * stride[1] + kt))
    for s, t, c, n, i, j in itertools.product(range(S), range(T), range(C), range(B),
                                              range(kh), range(kt)):
        full[s * stride[0] + i, :, n, t * stride[1] + j] += w[i, j, :, c] * x[s, c, n, t]
    (t0, b0, l0, r0) = crop
    y = full[t0:full.shape[0] - b0, :, :, l0:full.shape[3] - r0]
    return y + b.reshape(1, -1, 1, 1)


def test_s_and_t_against_direct_loops():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 2, 5))  # SCBT
    w = rng.standard_normal((3, 2, 2, 3))  # h x w(T) x F x C
    b = rng.standard_normal(2)
    y = fa.transposed_conv(FormattedArray(x, "SCBT"), w, b, stride=(2, 3),
                           cropping=[1, 0, 0, 2], weights_format="STUC")
    assert y.format == "SCBT"
    assert rel(_np(y), ref_st(x, w, b, (2, 3), (1, 0, 0, 2))) <= TOL
    # the layer dispatches SCBT over S and T the same way
    layer = fa.layers.transposed_conv2d_layer((3, 2), 2, stride=(2, 3), cropping=[1, 0, 0, 2],
                                              weights=w, bias=b)
    assert rel(_np(layer.predict(FormattedArray(x, "SCBT"))),
               ref_st(x, w, b, (2, 3), (1, 0, 0, 2))) <= TOL


def test_every_library(xp):
    """Values and all three gradients on every library equal NumPy float64's."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 4, 2))  # SSCB, C = 4 = 2 groups x 2
    w = rng.standard_normal((2, 3, 3, 2, 2))  # Fg=3, Cg=2, G=2 -> F=6
    b = rng.standard_normal(6)
    gy_shape = ((3 - 1) * 2 + 2 - 1, (4 - 1) * 1 + 3 - 0, 6, 2)
    gy = rng.standard_normal(gy_shape)
    kw = dict(stride=(2, 1), cropping=[1, 0, 0, 0])

    def run(mk):
        X, W, B = (FormattedArray(mk(x), "SSCB"), FormattedArray(mk(w)), FormattedArray(mk(b)))

        def loss(X, W, B):
            return fa.sum(fa.transposed_conv(X, W, B, **kw) * FormattedArray(mk(gy), "SSCB"))

        y = fa.transposed_conv(X, W, B, **kw)
        return [y, *fa.grad(loss, argnums=(0, 1, 2))(X, W, B)]

    ref = [_np(a) for a in run(np.asarray)]
    got = run(lambda a: xp.asarray(a))
    assert got[0].format == "SSCB" and tuple(got[0].shape) == gy_shape
    for g, r in zip(got, ref):
        assert rel(xp.to_numpy(g), r) <= TOL


def test_unformatted_with_data_format_and_missing_c():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 4))  # B S S, no C
    w = rng.standard_normal((3, 3, 2, 1))
    y = fa.transposed_conv(x, w, 0.5, stride=2, data_format="BSS")
    assert y.format == "" and y.shape == (2, 11, 9, 2)  # C inserted after the last S
    ref = torch_ref(x[..., None], w[..., None], np.full(2, 0.5), (2, 2), (1, 1), (0, 0), (0, 0))
    assert rel(_np(y), ref) <= TOL


def test_layer_display_and_properties():
    layer = transposedConv2dLayer(11, 96, "Stride", 4)
    assert repr(layer) == "\n".join([
        "TransposedConvolution2DLayer with properties:", "",
        "            Name: ''", "", "   Hyperparameters",
        "      FilterSize: [11 11]", "     NumChannels: 'auto'", "      NumFilters: 96",
        "          Stride: [4 4]", "    CroppingMode: 'manual'", "    CroppingSize: [0 0 0 0]",
        "", "   Learnable Parameters", "         Weights: []", "            Bias: []", "",
        "  Use layer.properties() to see all properties."])
    d = fa.layers.transposed_conv2d_layer(3, 8)
    assert d.stride == (1, 1) and d.cropping == (0, 0, 0, 0) and d.cropping_mode == "manual"
    assert d.weights_initializer == "glorot" and d.bias_initializer == "zeros"
    assert (d.weight_l2_factor, d.bias_l2_factor) == (1, 0)
    assert d.type_name() == "2-D Transposed Convolution"
    # save/load contract: constructor parameters read back and rebuild an equal layer
    la = fa.layers.transposed_conv2d_layer((3, 2), 4, stride=(2, 1), cropping="same",
                                           num_channels=3, weight_l2_factor=0.5, name="up")
    params = ("filter_size", "num_filters", "stride", "cropping", "num_channels",
              "weights_initializer", "bias_initializer", "weights", "bias",
              "weight_learn_rate_factor", "bias_learn_rate_factor", "weight_l2_factor",
              "bias_l2_factor", "name")
    lb = type(la)(**{p: getattr(la, p) for p in params})
    assert repr(lb) == repr(la) and lb.weight_l2_factor == 0.5


def test_layer_initializer_fans_and_parameters():
    layer = fa.layers.transposed_conv2d_layer((3, 2), 5, weights_initializer="he")
    layer.initialize(((4, 4, 7, 1), "SSCB"), seed=0)
    assert layer.weights.shape == (3, 2, 5, 7) and layer.bias.shape == (1, 1, 5)
    # "he": normal with variance 2 / numIn, numIn = h*w*F (MATLAB's fan for this layer)
    ref = np.random.default_rng(0).normal(0.0, np.sqrt(2 / (3 * 2 * 5)), (3, 2, 5, 7))
    np.testing.assert_allclose(np.asarray(layer.weights), ref.astype(np.float32), rtol=1e-6)
    assert layer.num_parameters == (3 * 2 * 7 + 1) * 5


def test_layer_in_network_predicts_and_differentiates():
    """input -> conv -> transposed conv -> relu: predictions equal the ops composed,
    gradients of every learnable equal torch autograd's."""
    rng = np.random.default_rng(6)
    conv = fa.layers.convolution2d_layer(3, 4, stride=2, padding=1, name="down",
                                         weights=rng.standard_normal((3, 3, 2, 4)),
                                         bias=rng.standard_normal(4))
    up = fa.layers.transposed_conv2d_layer(4, 3, stride=2, cropping="same", name="up",
                                           weights=rng.standard_normal((4, 4, 3, 4)),
                                           bias=rng.standard_normal(3))
    net = fa.Network([conv, up, fa.layers.relu_layer()])
    x = rng.standard_normal((8, 8, 2, 3))
    X = FormattedArray(x, "SSCB")
    y = net.predict(X)
    assert y.format == "SSCB" and y.shape == (8, 8, 3, 3)
    # torch: conv2d (padding 1, stride 2) -> conv_transpose2d (same: crop 1 each side)
    xt = torch.tensor(np.transpose(x, (3, 2, 0, 1)))
    params = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in
              (("cw", conv.weights), ("cb", conv.bias), ("uw", up.weights), ("ub", up.bias))}
    h = Fn.conv2d(xt, params["cw"].permute(3, 2, 0, 1), params["cb"].reshape(-1), stride=2,
                  padding=1)
    u = Fn.conv_transpose2d(h, params["uw"].permute(3, 2, 0, 1), params["ub"].reshape(-1),
                            stride=2)[:, :, 1:-1, 1:-1]
    yt = torch.relu(u)
    assert rel(_np(y), np.transpose(yt.detach().numpy(), (2, 3, 1, 0))) <= TOL
    yt.sum().backward()
    grads = fa.grad(lambda p: fa.sum(net.predict(X, learnables=p)))(net.learnables())
    got = {("down", "weights"): "cw", ("down", "bias"): "cb", ("up", "weights"): "uw",
           ("up", "bias"): "ub"}
    for key, name in got.items():
        g = grads[key] if key in grads else grads[key[0]][key[1]]
        assert rel(_np(g), params[name].grad.numpy()) <= TOL


BAD = [
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=1.5), (TypeError, ValueError), "stride"),
    (dict(cropping=-1), ValueError, "cropping"),
    (dict(cropping="causal"), ValueError, "cropping"),
    (dict(cropping=[1, 2, 3]), ValueError, "cropping"),
    (dict(dilation_factor=(1, 0)), ValueError, "dilation_factor"),
    (dict(cropping=9), ValueError, "output size"),
    (dict(weights_format="SSBU"), ValueError, "weights_format"),
    (dict(weights_format="SSCU"), ValueError, "dlconv's layout"),
]


@pytest.mark.parametrize("kw,exc,needle", BAD)
def test_bad_arguments(kw, exc, needle):
    x = FormattedArray(np.ones((3, 3, 2, 1)), "SSCB")
    w = np.ones((2, 2, 4, 2))
    with pytest.raises(exc, match=needle):
        fa.transposed_conv(x, w, **kw)


def test_bad_weights_and_bias():
    x = FormattedArray(np.ones((3, 3, 2, 1)), "SSCB")
    with pytest.raises(ValueError, match="channel mismatch.*3 input channels.*has 2"):
        fa.transposed_conv(x, np.ones((2, 2, 4, 3)))
    with pytest.raises(ValueError, match="rank 5"):
        fa.transposed_conv(x, np.ones((2, 2, 4, 2, 1, 1)))
    with pytest.raises(ValueError, match="one value per output channel"):
        fa.transposed_conv(x, np.ones((2, 2, 4, 2)), np.ones(3))
    with pytest.raises(ValueError, match="unformatted"):
        fa.transposed_conv(np.ones((3, 3, 2, 1)), np.ones((2, 2, 4, 2)))
    with pytest.raises(ValueError, match="'U'"):
        fa.transposed_conv(FormattedArray(np.ones((3, 2, 1)), "SCU"), np.ones((2, 4, 2)))
    with pytest.raises(ValueError, match=r"dltranspconv: Cropping \(cropping\)"):
        dltranspconv(x, np.ones((2, 2, 4, 2)), 0, Cropping=-2)
    with pytest.raises(TypeError, match="unknown option"):
        dltranspconv(x, np.ones((2, 2, 4, 2)), 0, Padding=1)


def test_bad_layer_properties():
    with pytest.raises(ValueError, match="num_filters"):
        fa.layers.transposed_conv2d_layer(3, 0)
    with pytest.raises(ValueError, match="cropping"):
        fa.layers.transposed_conv2d_layer(3, 2, cropping="full")
    with pytest.raises(TypeError, match="unknown property 'padding'"):
        fa.layers.transposed_conv2d_layer(3, 2, padding=1)
    with pytest.raises(ValueError, match=r"3\u00d73\u00d72\u00d7C"):
        fa.layers.transposed_conv2d_layer(3, 2, weights=np.ones((3, 3, 4, 2)))
    with pytest.raises(ValueError, match=r"transposedConv2dLayer: Stride \(stride\)"):
        transposedConv2dLayer(3, 2, Stride=0)
    layer = fa.layers.transposed_conv2d_layer(2, 2, weights=np.ones((2, 2, 2, 3)))
    with pytest.raises(ValueError, match="num_channels is 3"):
        layer.predict(FormattedArray(np.ones((3, 3, 2, 1)), "SSCB"))
    with pytest.raises(ValueError, match="SCB"):
        layer.predict(FormattedArray(np.ones((3, 3, 1)), "SCB"))
