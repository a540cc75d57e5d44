"""The convolution registry: spec rules, layouts, selection, conv_plan, force, tuning."""

from __future__ import annotations

import dataclasses
import pathlib
import threading

import numpy as np
import pytest

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels import conv as K
from fmtarray._kernels.conv import registry
from fmtarray._kernels.conv.spec import (ConvSpec, Layout, causal_padding, output_size,
                                         resolve_padding, same_padding)

from conv_reference import ref_conv


def test_output_size_and_same_rules_match_the_spec_formulas():
    for n in range(1, 12):
        for k in range(1, 5):
            for s in range(1, 4):
                for dl in range(1, 3):
                    eff = (k - 1) * dl + 1
                    b, a = same_padding(n, k, s, dl)
                    assert b + a == max((-(-n // s) - 1) * s + eff - n, 0)
                    assert b == (b + a) // 2  # the odd pixel goes after
                    if n + b + a >= eff:
                        assert output_size(n, k, s, dl, b, a) == -(-n // s)
                    assert output_size(n, k, s, dl, 1, 2) == (n + 3 - eff) // s + 1
    assert causal_padding(3, 2) == (4, 0)
    assert resolve_padding((5,), (3,), (1,), (2,), "causal") == ((5,), (4,), (0,))
    # input dilation: 4 inputs dilated by 3 are 10 values
    assert output_size(4, 1, 1, 1, 0, 0, lhs_dilation=3) == 10


def test_spec_is_frozen_hashable_and_checks_sizes():
    a = ConvSpec.make((2, 8, 8, 4), (3, 3, 2, 5, 2), stride=2, pad_before=1, pad_after=1)
    b = ConvSpec.make((2, 8, 8, 4), (3, 3, 2, 5, 2), stride=(2, 2), pad_before=(1, 1),
                      pad_after=1)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert (a.out, a.F, a.K, a.G, a.padded) == ((4, 4), 10, 9, 2, (10, 10))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.N = 3
    with pytest.raises(ValueError, match="output size"):
        ConvSpec.make((1, 2, 2, 1), (5, 5, 1, 1, 1))
    with pytest.raises(ValueError, match="channels"):
        ConvSpec.make((1, 6, 6, 3), (3, 3, 2, 1, 1))


@pytest.mark.parametrize("fmt,shape,wfmt,dims", [
    ("SSCB", (6, 7, 2, 3), None, "01CN"),
    ("SSCBT", (6, 7, 2, 3, 4), None, "01CN"),
    ("SSC", (6, 7, 2), None, "01CN"),
    ("SS", (6, 7), None, "01CN"),
    ("SSB", (6, 7, 3), None, "01CN"),
    ("SCB", (6, 2, 3), None, "0CN"),
    ("SSSCB", (5, 6, 7, 2, 3), None, "012CN"),
    ("SCBT", (6, 2, 3, 8), "STCU", "0CN1"),
    ("ST", (6, 8), "STCU", "0CN1"),
    ("SSCBT", (5, 6, 2, 3, 8), "SSTCU", "01CN2"),
])
def test_kernel_layout_follows_the_format_without_permuting(fmt, shape, wfmt, dims):
    x = FormattedArray(np.ones(shape, np.float32), fmt)
    nconv = fmt.count("S") + (1 if wfmt else 0)
    c = shape[fmt.index("C")] if "C" in fmt else 1
    w = np.ones((2,) * nconv + (c, 3), np.float32)
    plan = fa.conv_plan(x, w, weights_format=wfmt)
    assert plan.layout.dims == dims
    assert plan.layout.x_memory == dims  # canonical contiguous data: memory = logical order


def test_memory_order_comes_from_the_strides():
    nchw = np.zeros((2, 3, 5, 6), np.float32)
    plan = fa.conv_plan(FormattedArray(nchw, "BCSS"), np.ones((3, 3, 3, 4), np.float32))
    assert plan.layout.dims == "01CN" and plan.layout.x_memory == "NC01"
    assert plan.layout.strides_in("NC01") == (90, 30, 6, 1)
    lay = Layout.of("N01C", np.zeros((2, 1, 4, 3)))  # a size-1 dim keeps its logical place
    assert lay.x_memory == "N01C"


def test_conv_plan_names_the_choice_and_the_reasons():
    x = FormattedArray(np.ones((8, 8, 3, 2), np.float32), "SSCB")
    w = np.ones((3, 3, 3, 4), np.float32)
    plan = fa.conv_plan(x, w, padding=1)
    chosen = plan.chosen()
    assert set(chosen) == {"forward", "input_grad", "weight_grad"}
    assert all(name.startswith(("numpy.", "numba.")) for name in chosen.values())
    rejected = dict(plan.forward.rejected)
    assert "portable.im2col" in rejected and rejected["portable.im2col"]
    text = str(plan)
    assert "forward: " + chosen["forward"] in text and "not portable.im2col" in text


def test_array_api_strict_runs_the_portable_entry():
    xp = pytest.importorskip("array_api_strict")
    x = FormattedArray(xp.ones((6, 6, 2, 2)), "SSCB")
    plan = fa.conv_plan(x, xp.ones((3, 3, 2, 2)))
    assert plan.library == "portable"
    assert plan.chosen() == dict.fromkeys(("forward", "input_grad", "weight_grad"),
                                          "portable.im2col")


def test_force_by_name_gives_the_same_values_and_explains_refusals():
    rng = np.random.default_rng(0)
    xd = rng.standard_normal((7, 6, 3, 2))
    w = rng.standard_normal((3, 2, 3, 4))
    x = FormattedArray(xd, "SSCB")
    ref = np.moveaxis(ref_conv(np.moveaxis(xd, -1, 0), w[..., None], None, 1, 1, (1, 0),
                               (1, 0), 0.0), 0, -1)
    for algo in (None, "portable.im2col", {"forward": "portable.im2col"}):
        y = fa.conv(x, w, padding=[[1, 0], [1, 0]], algorithm=algo)
        np.testing.assert_allclose(fa.extractdata(y), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="not a registered convolution algorithm.*portable.im2col"):
        fa.conv(x, w, algorithm="no.such")
    with pytest.raises(ValueError, match="unknown op"):
        fa.conv(x, w, algorithm={"backward": "portable.im2col"})
    with pytest.raises(TypeError, match="algorithm="):
        fa.conv(x, w, algorithm=3)
    xs = pytest.importorskip("array_api_strict")
    numpy_entry = next(a.name for a in registry.algorithms("numpy") if a.library == "numpy")
    with pytest.raises(ValueError, match="runs on numpy arrays"):
        fa.conv(FormattedArray(xs.asarray(xd), "SSCB"), xs.asarray(w), algorithm=numpy_entry)


def test_register_rejects_bad_entries():
    ok = lambda spec, layout: None  # noqa: E731
    with pytest.raises(ValueError, match="legal ops"):
        registry.register(registry.Algo("t.bad", "numpy", ("sideways",), ok))
    with pytest.raises(ValueError, match="no forward"):
        registry.register(registry.Algo("t.bad", "numpy", ("forward",), ok))
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.Algo("portable.im2col", "portable", ("forward",), ok,
                                        forward=lambda *a: None))


def test_remembered_selection_follows_values_tuning_switches_and_registrations(monkeypatch):
    """select() remembers which entries apply per op, spec, layout, tuning and adapter
    switch, but still asks each candidate's ``accepts`` of the values (Winograd refuses
    non-finite ones every time), follows a new tuning and FMTARRAY_NUMBA at once, and
    forgets everything when an entry registers."""
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")
    small = dict(winograd_min_c=1, winograd_min_f=1, winograd_min_n=2,
                 winograd_min_total_cols=1)
    x = np.random.default_rng(1).standard_normal((6, 6, 2, 4))  # canonical SSCB
    w = np.random.default_rng(2).standard_normal((3, 3, 2, 3, 1))
    spec = ConvSpec(4, (6, 6), 2, (3, 3), 2, 3, 1, (1, 1), (1, 1), (1, 1), (1, 1), 0.0,
                    (1, 1), "float64")
    lay = Layout.of("01CN", x)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan

    def pick(arr):
        return registry.select("forward", spec, lay, "numpy", None, (arr, w)).name

    with K.tuning(**small):
        picks = [pick(x), pick(bad), pick(x)]
    assert picks[0] == picks[2] == "numpy.winograd" != picks[1]
    assert pick(x) != "numpy.winograd"  # default tuning: too small for Winograd
    monkeypatch.delenv("FMTARRAY_NUMBA")
    if _numba_runs():
        assert pick(x).startswith("numba.")
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")
    assert not pick(x).startswith("numba.")
    assert registry._applicable
    ok = lambda spec, layout: None  # noqa: E731
    try:
        registry.register(registry.Algo("t.memo", "t-lib", ("forward",), ok,
                                        forward=lambda *a: None))
        assert not registry._applicable
    finally:
        registry._entries.pop("t-lib", None)


def _numba_runs():
    from fmtarray._kernels.conv._numba import unavailable

    return unavailable() is None


def test_tuning_is_scoped_to_the_block_and_the_thread():
    base = K.current()
    with K.tuning(tile_bytes=123) as t:
        assert t.tile_bytes == 123 and K.current().tile_bytes == 123
        seen = []
        th = threading.Thread(target=lambda: seen.append(K.current().tile_bytes))
        th.start()
        th.join()
        assert seen == [base.tile_bytes]  # another thread keeps its own settings
    assert K.current() == base
    with pytest.raises(TypeError, match="unknown setting.*tile_bytes"):
        with K.tuning(tile_byte=1):
            pass


def test_docs_table_is_the_registry():
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    start = doc.index("<!-- algorithms:start -->") + len("<!-- algorithms:start -->")
    end = doc.index("<!-- algorithms:end -->")
    assert doc[start:end].strip() == registry.markdown_table(), (
        "docs/architecture.md is stale: run `python -m fmtarray._kernels.conv` and paste "
        "its table between the markers")


@pytest.mark.parametrize("make", [
    lambda g: g,                                                  # canonical, C-contiguous
    lambda g: np.ascontiguousarray(g.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0),  # NHWC
    lambda g: np.ascontiguousarray(g.transpose(2, 0, 1, 3)).transpose(1, 2, 0, 3),  # C outer
    lambda g: np.concatenate([g, g], axis=1)[:, ::2],             # strided: the plain sum
    lambda g: g[::-1],                                            # negative strides
    lambda g: g[:, :1],                                           # a size-1 dim
])
def test_bias_gradient_sums_every_dim_but_c_in_any_memory_order(make):
    """The bias gradient reduces a NumPy cotangent in its memory order (outer dims as
    one reduction over rows): the same sums as the definition, whatever the strides."""
    g = np.random.default_rng(4).standard_normal((5, 6, 7, 3)).astype(np.float32)
    gy = make(g)
    lay = Layout.of("01CN", gy, gy)
    gb = registry._bias_grad(np, gy, lay)
    ref = np.asarray(gy, np.float64).sum(axis=(0, 1, 3))
    assert gb.shape == (7,) and gb.dtype == np.float32
    np.testing.assert_allclose(gb, ref, rtol=1e-5, atol=1e-5)
