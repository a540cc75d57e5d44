"""Arguments: one set of normalisers for the op, the layers and ``fmtarray.matlab``
(issue 11, items 8, 9, 10, 12, 13, 14, 16), and a fuzz test over the public entry
points' arguments: every call succeeds with the reference's result or raises a
``ValueError``/``TypeError``/``MemoryError`` that names the argument."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from conv_reference import ref_conv
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fmtarray as fa
from fmtarray import FormattedArray, _validate, matlab
from fmtarray.layers import (
    AveragePooling2DLayer,
    Convolution2DLayer,
    ImageInputLayer,
    MaxPooling2DLayer,
)

RNG = np.random.default_rng(0)
XD = RNG.standard_normal((5, 6, 3, 2)).astype(np.float32)  # SSCB
WD = RNG.standard_normal((3, 2, 3, 4)).astype(np.float32)  # h w C F
BD = RNG.standard_normal(4).astype(np.float32)
X = FormattedArray(XD, "SSCB")


def reference(x, w, b=None, stride=(1, 1), dilation=(1, 1), before=(0, 0), after=(0, 0),
              value=0.0):
    """float64 reference for SSCB data and h×w×C×F weights, as SSCB."""
    y = ref_conv(np.moveaxis(x, 3, 0), w[..., None], b, stride, dilation, before, after, value)
    return np.moveaxis(y, 0, 3)


def close(y, ref, tol=1e-4):
    data = y.data if isinstance(y, FormattedArray) else y
    np.testing.assert_allclose(fa._backend.to_numpy(data), ref, rtol=tol, atol=tol)


# ---- item 8: dlconv's 2×d Padding matrix ---------------------------------------------


@pytest.mark.parametrize("pad", [[[1.5, 1], [1, 1]], [[-0.7, 1], [1, 1]],
                                 np.array([[1.5, 1.0], [1.0, 1.0]])])
def test_dlconv_padding_matrix_is_validated_not_truncated(pad):
    with pytest.raises(ValueError, match=r"(?s)dlconv: Padding \(padding\)=.*(not an integer|>= 0)"):
        matlab.dlconv(X, WD, 0, Padding=pad)


def test_dlconv_padding_matrix_is_before_after():
    y = matlab.dlconv(X, WD, 0, "Padding", np.array([[1, 0], [2, 1]]))  # [t l; b r]
    close(y, reference(XD, WD, before=(1, 0), after=(2, 1)))
    close(y, fa.conv(X, WD, padding=(1, 2, 0, 1)).data)


# ---- item 9: one dtype rule (array-API promotion) on every library ------------------


def _lib(name):
    if name == "numpy":
        return lambda a: a
    if name == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy
    if name == "jax":
        pytest.importorskip("jax")
        import jax.numpy as jnp

        return jnp.asarray
    if name == "dask":
        da = pytest.importorskip("dask.array")
        return lambda a: da.from_array(a, chunks=2)
    import array_api_strict

    return array_api_strict.asarray


LIBS = ["numpy", "array_api_strict", "torch", "jax", "dask"]


@pytest.mark.parametrize("lib", LIBS)
def test_result_dtype_is_array_api_promotion_on_every_library(lib):
    f = _lib(lib)
    x = FormattedArray(f(XD), "SSCB")
    b64 = BD.astype(np.float64)
    for w, b, want in [(WD, b64, "float64"), (WD.astype(np.float64), None, "float64"),
                       (WD, BD, "float32"), (WD, np.float64(0.5), "float32"),
                       (WD, 0.5, "float32")]:
        bb = f(b) if isinstance(b, np.ndarray) else b
        y = fa.conv(x, f(w), bb)
        assert str(y.dtype).endswith(want), (lib, w.dtype, b, y.dtype)
        close(y, reference(XD, w, None if b is None else np.broadcast_to(b, (4,))))


def test_gradients_keep_each_operands_dtype():
    x = FormattedArray(XD, "SSCB")
    b = BD.astype(np.float64)

    def loss(x, w, b):
        return fa.sum(fa.conv(x, w, b), "SSCB")

    gx, gw, gb = fa.grad(loss, argnums=(0, 1, 2))(x, FormattedArray(WD), FormattedArray(b))
    assert (gx.dtype, gw.dtype, gb.dtype) == (np.float32, np.float32, np.float64)


# ---- item 10: NumPy scalars wherever Python scalars go --------------------------------


@pytest.mark.parametrize("lib", ["torch", "jax", "array_api_strict", "dask"])
@pytest.mark.parametrize("bias", [np.float32(0.5), np.float64(0.5), np.int64(1), 0.5])
def test_numpy_scalar_bias_on_any_library(lib, bias):
    f = _lib(lib)
    y = fa.conv(FormattedArray(f(XD), "SSCB"), f(WD), bias, stride=np.int64(1),
                padding=np.int32(1), padding_value=np.float32(0))
    assert str(y.dtype).endswith("float32")
    close(y, reference(XD, WD, np.full(4, float(bias)), before=(1, 1), after=(1, 1)))


@pytest.mark.parametrize("bias", [True, np.bool_(True), 1j, "0.5"])
def test_bool_or_non_number_bias_is_refused(bias):
    with pytest.raises(TypeError, match="bias"):
        fa.conv(X, WD, bias)


# ---- item 12: NumPy / torch / len hand-offs ---------------------------------------------


def test_numpy_asarray_gives_the_data():
    a = np.asarray(X)
    assert a.dtype == np.float32 and a.shape == X.shape
    np.testing.assert_array_equal(a, XD)
    assert np.asarray(X, dtype=np.float64).dtype == np.float64
    assert np.array(X, copy=True) is not XD
    # arithmetic with an ndarray still uses fmtarray's label-aware operators
    assert isinstance(np.ones(2, np.float32) + X, FormattedArray)


def test_torch_as_tensor_and_dlpack():
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 3, 2)
    x = FormattedArray(t, "SCB")
    assert torch.equal(torch.as_tensor(x), t)
    assert torch.equal(torch.from_dlpack(x), t)
    np.testing.assert_array_equal(np.from_dlpack(FormattedArray(XD, "SSCB")), XD)
    np.testing.assert_array_equal(np.asarray(x), t.numpy())


def test_len():
    assert len(X) == 5
    with pytest.raises(TypeError, match="0-d"):
        len(FormattedArray(np.float32(1.0)))


def test_export_of_a_traced_array_says_how_to_get_the_data():
    def f(x):
        np.asarray(x)
        return fa.sum(x, "SSCB")

    with pytest.raises(TypeError, match="extractdata"):
        fa.grad(f)(X)


# ---- item 13: the same arguments accepted everywhere ---------------------------------


@pytest.mark.parametrize("stride", [2.0, (2.0, 2.0), np.int64(2), np.array([2, 2]), [2, 2.0]])
def test_stride_forms_agree_in_op_layer_and_matlab(stride):
    ref = reference(XD, WD, stride=(2, 2))
    close(fa.conv(X, WD, stride=stride), ref)
    close(matlab.dlconv(X, WD, 0, Stride=stride), ref)
    lay = Convolution2DLayer((3, 2), 4, stride=stride, weights=WD, bias=np.zeros((1, 1, 4)))
    assert lay.stride == (2, 2)
    close(lay.predict(X), ref)


@pytest.mark.parametrize("call", [
    lambda s: fa.conv(X, WD, stride=s),
    lambda s: matlab.dlconv(X, WD, 0, Stride=s),
    lambda s: Convolution2DLayer(3, 4, stride=s),
    lambda s: fa.max_pool(X, 2, stride=s),
    lambda s: MaxPooling2DLayer(2, stride=s),
])
@pytest.mark.parametrize("stride,exc", [(2.5, ValueError), (0, ValueError), (True, TypeError),
                                        ("2", TypeError), (10**30, ValueError)])
def test_bad_stride_is_refused_alike_everywhere(call, stride, exc):
    with pytest.raises(exc, match=r"(?i)stride.*(integer|>= 1|at most)"):
        call(stride)


@pytest.mark.parametrize("same", ["same", "Same", "SAME"])
def test_option_strings_are_case_insensitive(same):
    ref = fa.conv(X, WD, padding="same").data
    close(fa.conv(X, WD, padding=same), ref)
    close(matlab.dlconv(X, WD, 0, "Padding", same), ref)
    lay = Convolution2DLayer((3, 2), 4, padding=same, weights=WD, bias=np.zeros(4))
    close(lay.predict(X), ref)
    assert MaxPooling2DLayer(2, padding=same).padding == "same"
    close(fa.max_pool(X, 2, padding=same), fa.max_pool(X, 2, padding="same").data)


@pytest.mark.parametrize("mode", ["Replicate", "REPLICATE", "Symmetric-Include-Edge"])
def test_padding_value_modes_are_case_insensitive(mode):
    ref = fa.conv(X, WD, padding=1, padding_value=mode.lower()).data
    close(fa.conv(X, WD, padding=1, padding_value=mode), ref)
    close(matlab.dlconv(X, WD, 0, Padding=1, PaddingValue=mode), ref)
    assert Convolution2DLayer(3, 4, padding_value=mode).padding_value == mode.lower()


def test_valid_is_no_padding_and_mean_is_any_case():
    for v in ("valid", "VALID", "Valid"):
        close(fa.conv(X, WD, padding=v), reference(XD, WD))
        assert Convolution2DLayer(3, 4, padding=v).padding_size == (0, 0, 0, 0)
    ref = fa.avg_pool(X, 3, padding=1, padding_value="mean").data
    close(fa.avg_pool(X, 3, padding=1, padding_value="Mean"), ref)
    assert AveragePooling2DLayer(3, padding_value="MEAN").padding_value == "mean"


def test_format_given_as_a_list():
    x = FormattedArray(np.moveaxis(XD, 3, 0), ["B", "S", "S", "C"])
    assert x.format == "SSCB"
    close(fa.conv(np.moveaxis(XD, 3, 0), WD, data_format=list("BSSC")),
          np.moveaxis(reference(XD, WD), 3, 0))
    close(fa.conv(X, WD.transpose(3, 2, 0, 1), weights_format=("U", "C", "S", "S")),
          reference(XD, WD))
    assert fa.stripdims(X, list("BCSS")).shape == (2, 3, 5, 6)
    for bad in (5, ["SS", 3], {"S": 1}):
        with pytest.raises(TypeError, match="format"):
            FormattedArray(XD, bad)
    with pytest.raises(TypeError, match="data_format"):
        fa.conv(XD, WD, data_format=7)
    with pytest.raises(TypeError, match="label"):
        fa.finddim(X, ["S"])


def test_huge_values_are_refused_by_name_not_overflow():
    with pytest.raises(ValueError, match=r"stride=10{30}.*at most 2147483647"):
        fa.conv(X, WD, stride=10**30)
    with pytest.raises(ValueError, match=r"dilation_factor=10{12}.*at most"):
        fa.conv(X, WD, dilation_factor=10**12, padding="same")
    with pytest.raises(MemoryError, match=r"conv: .*padding='same'"):  # nothing allocated
        fa.conv(X, WD, dilation_factor=2**30, padding="same")


def test_max_pool_float_sizes():
    with pytest.raises(ValueError, match=r"max_pool: pool_size=2.5: 2.5 is not an integer"):
        fa.max_pool(X, 2.5)
    close(fa.max_pool(X, 2.0), fa.max_pool(X, 2).data)
    with pytest.raises(ValueError, match="pool_size"):
        MaxPooling2DLayer(2.5)


def test_non_integer_sizes_in_a_layout_are_refused():
    with pytest.raises(ValueError, match=r"shape=\(5, 5, 2.7, 2\).*2.7 is not an integer"):
        Convolution2DLayer(3, 4).initialize(((5, 5, 2.7, 2), "SSCB"))
    assert Convolution2DLayer(3, 4).initialize(((5, 5, 2.0, 2), "SSCB")).num_channels == 2
    assert ImageInputLayer((28.0, 28, np.int64(3))).input_size == (28, 28, 3)
    assert matlab.imageInputLayer(np.array([[28, 28, 3]])).input_size == (28, 28, 3)
    with pytest.raises(ValueError, match=r"input_size=\(8, 2.5\).*not an integer"):
        Convolution2DLayer(3, 4).output_size((8, 2.5))
    with pytest.raises(ValueError, match=r"stride=2.5.*not an integer"):
        fa._kernels.conv.ConvSpec.make((1, 5, 5, 1), (3, 3, 1, 1, 1), stride=2.5)
    with pytest.raises(ValueError, match=r"input_size=.*2.7 is not an integer"):
        ImageInputLayer((28, 28, 2.7))


# ---- item 14: enormous outputs are refused before anything is allocated --------------


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_enormous_output_is_refused_without_allocating(lib):
    f = _lib(lib)
    x = FormattedArray(f(np.ones((1, 1, 1, 1), np.float32)), "SSCB")
    w = f(np.ones((1, 1, 1, 1), np.float32))
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError, match=r"conv: the output 2000001x2000001 .*padding=1000000"):
            fa.conv(x, w, padding=10**6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


def test_padding_32000_is_refused_where_it_cannot_fit(monkeypatch):
    monkeypatch.setattr(_validate, "_host_available", lambda: 8 * 2**30)
    x = FormattedArray(np.ones((1, 1, 1, 1), np.float32), "SSCB")
    with pytest.raises(MemoryError, match=r"64001x64001.*need 30.5 GiB but 8 GiB"):
        fa.conv(x, np.ones((1, 1, 1, 1), np.float32), padding=32000)


def test_memory_limit_can_be_set_and_small_calls_pass(monkeypatch):
    close(fa.conv(X, WD, padding=3), reference(XD, WD, before=(3, 3), after=(3, 3)))
    monkeypatch.setattr(_validate, "memory_limit", 1000)
    with pytest.raises(MemoryError, match="1000 bytes are available"):
        fa.conv(X, WD, padding=5)


# ---- item 16: hints for likely mistakes -----------------------------------------------


def test_torch_layout_weights_get_a_hint():
    wt = RNG.standard_normal((8, 3, 5, 5)).astype(np.float32)  # torch (F, C, kh, kw)
    x = FormattedArray(RNG.standard_normal((9, 9, 3, 2)).astype(np.float32), "SSCB")
    with pytest.raises(ValueError, match=r"torch's layout.*weights_format='UCSS'"):
        fa.conv(x, wt)
    w_matlab = wt.transpose(2, 3, 1, 0)
    close(fa.conv(x, wt, weights_format="UCSS"), reference(x.data, w_matlab))


def test_scbt_input_with_4d_weights_hints_at_stcu():
    x = FormattedArray(RNG.standard_normal((7, 3, 2, 6)).astype(np.float32), "SCBT")
    w = RNG.standard_normal((3, 2, 3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"weights_format='STCU'"):
        fa.conv(x, w)
    assert fa.conv(x, w, weights_format="STCU").shape == (5, 4, 2, 5)


# ---- fuzz: every entry point, every argument ---------------------------------------------

#: (value, meaning) pairs; meaning None: illegal
STRIDES = [(1, (1, 1)), (2, (2, 2)), (2.0, (2, 2)), ((1, 2.0), (1, 2)), (np.int64(2), (2, 2)),
           (np.array([2, 1]), (2, 1)), (0, None), (2.5, None), (True, None), ("2", None),
           (10**30, None), ([1, 2, 3], None), (None, None), (-1, None)]
DILATIONS = [(1, (1, 1)), (2, (2, 2)), ((1, 2), (1, 2)), (1.0, (1, 1)), (0, None), (1.5, None),
             (False, None), ("x", None), ((1, 1, 1), None)]
#: meaning: ("same",) or (before, after)
PADDINGS = [(0, ((0, 0), (0, 0))), (1, ((1, 1), (1, 1))), ((1, 2), ((1, 2), (1, 2))),
            ((1, 0, 2, 1), ((1, 2), (0, 1))), ([[1, 2], [0, 1]], ((1, 2), (0, 1))),
            (np.array([[0, 1], [1, 0]]), ((0, 1), (1, 0))), ("same", ("same",)),
            ("SAME", ("same",)), ("Valid", ((0, 0), (0, 0))), (2.0, ((2, 2), (2, 2))),
            (-1, None), (1.5, None), ("full", None), ("causal", None), ([1, 2, 3], None),
            (True, None), (None, None), ([[1.5, 1], [1, 1]], None), (10**30, None)]
VALUES = [(0, 0.0), (1.5, 1.5), (np.float32(2), 2.0), ("replicate", "replicate"),
          ("Replicate", "replicate"), ("symmetric-exclude-edge", "symmetric-exclude-edge"),
          ("SYMMETRIC-INCLUDE-EDGE", "symmetric-include-edge"), ("mirror", None),
          (None, None), (True, None), ([1, 2], None)]
BIASES = [(None, np.zeros(4)), (0.5, np.full(4, 0.5)), (np.float32(0.25), np.full(4, 0.25)),
          (BD, BD), (BD.reshape(1, 1, 4), BD), (True, None), ("b", None),
          (np.zeros(3, np.float32), None)]


def _same(n, k, s, d):
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def _pads(meaning, sizes, ks, stride, dil):
    if meaning == ("same",):
        pairs = [_same(n, k, s, d) for n, k, s, d in zip(sizes, ks, stride, dil)]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    return meaning


def draw_args(data, table):
    """One ``(value, meaning)`` per argument of ``table`` ``{name: pairs}``: all legal
    in half the examples, else one or two arguments illegal."""
    names = list(table)
    bad = data.draw(st.one_of(st.just(()), st.lists(st.sampled_from(names), min_size=1,
                                                     max_size=2, unique=True)))
    out = {}
    for n in names:
        pairs = [q for q in table[n] if (q[1] is None) == (n in bad)]
        out[n] = data.draw(st.sampled_from(pairs), label=n)
    return out


def _names_in(err, names):
    msg = str(err).lower()
    return any(n.lower() in msg for n in names)


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(entry=st.sampled_from(["conv", "dlconv", "layer"]), data=st.data())
def test_fuzz_convolution_arguments(entry, data):
    a = draw_args(data, dict(stride=STRIDES, dilation_factor=DILATIONS, padding=PADDINGS,
                             padding_value=VALUES, bias=BIASES))
    s, d, p, v, b = (a[n] for n in ("stride", "dilation_factor", "padding", "padding_value",
                                    "bias"))
    bad = [n for n, (_, m) in (("stride", s), ("dilation_factor", d), ("padding", p),
                               ("padding_value", v), ("bias", b)) if m is None]
    if entry == "layer" and b[0] is not None and np.ndim(b[0]) == 0 and b[1] is not None:
        bad.append("bias")  # the layer's bias is an array (1×1×F or F values)
    kw = dict(stride=s[0], dilation_factor=d[0], padding=p[0], padding_value=v[0])
    try:
        if entry == "conv":
            y = fa.conv(X, WD, b[0], **kw)
        elif entry == "dlconv":
            y = matlab.dlconv(X, WD, b[0], Stride=s[0], DilationFactor=d[0], Padding=p[0],
                              PaddingValue=v[0])
        else:
            lay = Convolution2DLayer((3, 2), 4, weights=WD, bias=b[0], **kw)
            y = lay.predict(X)
    except (ValueError, TypeError, MemoryError) as e:
        names = bad or ["output size", "input of size"]
        assert _names_in(e, names), (entry, bad, e)
        if not bad:  # legal arguments: only a too-small output may be refused
            assert "output size" in str(e), e
        event(f"refused: {type(e).__name__}")
        return
    event("computed")
    assert not bad, (entry, bad, "accepted")
    stride, dil = s[1], d[1]
    before, after = _pads(p[1], XD.shape[:2], WD.shape[:2], stride, dil)
    close(y, reference(XD, WD, b[1], stride, dil, before, after, v[1]))


def _ref_pool(x, mode, k, stride, before, after, count_pad=True):
    fill = -np.inf if mode == "max" else 0.0
    widths = [(before[0], after[0]), (before[1], after[1]), (0, 0), (0, 0)]
    xp = np.pad(x.astype(np.float64), widths, constant_values=fill)
    inside = np.pad(np.ones(x.shape[:2]), widths[:2])
    out = [(xp.shape[i] - k[i]) // stride[i] + 1 for i in range(2)]
    y = np.zeros((out[0], out[1]) + x.shape[2:])
    for i in range(out[0]):
        for j in range(out[1]):
            win = xp[i * stride[0]:i * stride[0] + k[0], j * stride[1]:j * stride[1] + k[1]]
            if mode == "max":
                y[i, j] = win.max(axis=(0, 1))
            else:
                n = math.prod(k) if count_pad else inside[
                    i * stride[0]:i * stride[0] + k[0], j * stride[1]:j * stride[1] + k[1]].sum()
                y[i, j] = win.sum(axis=(0, 1)) / n
    return y


POOL_SIZES = [(2, (2, 2)), (3.0, (3, 3)), ((2, 3), (2, 3)), (np.int64(2), (2, 2)),
              (2.5, None), (0, None), ("2", None), (True, None), ((2, 2, 2), None)]
POOL_PADS = [(0, ((0, 0), (0, 0))), (1, ((1, 1), (1, 1))), ("same", ("same",)),
             ("Same", ("same",)), ("VALID", ((0, 0), (0, 0))), ((1, 0, 0, 1), ((1, 0), (0, 1))),
             (-1, None), (0.5, None), ("causal", None), ("full", None)]


@FUZZ
@given(entry=st.sampled_from(["max_pool", "avg_pool", "max_layer", "avg_layer"]),
       data=st.data())
def test_fuzz_pooling_arguments(entry, data):
    a = draw_args(data, dict(pool_size=POOL_SIZES, stride=STRIDES[:10], padding=POOL_PADS,
                             padding_value=[(0, True), ("mean", False), ("Mean", False),
                                            ("median", None), (None, None)]))
    k, s, p, mean = (a[n] for n in ("pool_size", "stride", "padding", "padding_value"))
    avg = entry.startswith("avg")
    bad = [n for n, (_, m) in (("pool_size", k), ("stride", s), ("padding", p)) if m is None]
    if avg and mean[1] is None:
        bad.append("padding_value")
    extra = dict(padding_value=mean[0]) if avg else {}
    try:
        if entry == "max_pool":
            y = fa.max_pool(X, k[0], stride=s[0], padding=p[0])
        elif entry == "avg_pool":
            y = fa.avg_pool(X, k[0], stride=s[0], padding=p[0], **extra)
        else:
            cls = AveragePooling2DLayer if avg else MaxPooling2DLayer
            y = cls(k[0], stride=s[0], padding=p[0], **extra).predict(X)
    except (ValueError, TypeError, MemoryError) as e:
        assert _names_in(e, bad or ["padding", "output size"]), (entry, bad, e)
        event(f"refused: {type(e).__name__}")
        return
    event("computed")
    assert not bad, (entry, bad, "accepted")
    before, after = _pads(p[1], XD.shape[:2], k[1], s[1], (1, 1))
    ref = _ref_pool(XD, "average" if avg else "max", k[1], s[1], before, after,
                    True if not avg else mean[1])
    close(y, ref)
