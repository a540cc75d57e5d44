"""Dask: convolution and pooling keep the input's chunks along the batch-like dims they
merge for the kernels (B and a batch-like T of SSCBT), forward and input gradient
(SPEC §6: a chunked T is never collapsed, nor rechunked)."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa

da = pytest.importorskip("dask.array")

CHUNKS = (8, 8, 3, 2, (8, 8, 5, 11))  # B in chunks of 2, T unevenly


def _x():
    v = np.random.default_rng(0).standard_normal((8, 8, 3, 4, 32))
    return v, fa.FormattedArray(da.from_array(v, chunks=CHUNKS), "SSCBT")


@pytest.mark.parametrize("op", ["conv", "max_pool", "avg_pool"])
def test_sscbt_keeps_b_and_t_chunks(op):
    v, x = _x()
    w = np.random.default_rng(1).standard_normal((3, 3, 3, 5))
    if op == "conv":
        def f(a, wd):
            return fa.conv(a, wd, padding="same")
        args = (da.from_array(w), w)
    else:
        def f(a, _):
            return getattr(fa, op)(a, 2, stride=2)
        args = (None, None)
    y = f(x, args[0])
    assert y.data.chunks[3:] == x.data.chunks[3:]
    ref = f(fa.FormattedArray(v, "SSCBT"), args[1])
    np.testing.assert_allclose(np.asarray(y.data.compute()), np.asarray(ref.data), rtol=1e-12,
                               atol=1e-12)
    g = fa.grad(lambda a: fa.sum(fa.square(f(a, args[0]))))(x)
    assert g.data.chunks == x.data.chunks
    gref = fa.grad(lambda a: fa.sum(fa.square(f(a, args[1]))))(fa.FormattedArray(v, "SSCBT"))
    np.testing.assert_allclose(np.asarray(g.data.compute()), np.asarray(gref.data), rtol=1e-11,
                               atol=1e-11)


def test_input_without_c_gains_c_and_keeps_chunks():
    v = np.random.default_rng(2).standard_normal((6, 6, 4, 10))
    x = fa.FormattedArray(da.from_array(v, chunks=(6, 6, 2, (3, 7))), "SSBT")
    w = np.random.default_rng(3).standard_normal((3, 3, 1, 2))
    y = fa.conv(x, da.from_array(w), padding="same")
    assert y.format == "SSCBT" and y.data.chunks[3:] == ((2, 2), (3, 7))
    ref = fa.conv(fa.FormattedArray(v, "SSBT"), w, padding="same")
    np.testing.assert_allclose(np.asarray(y.data.compute()), np.asarray(ref.data), rtol=1e-12,
                               atol=1e-12)


def test_lazy_pipeline_graph_grows_linearly_and_computes_nothing():
    from dask.callbacks import Callback

    runs = []

    class Count(Callback):
        def _start(self, dsk):
            runs.append(1)

    w = da.from_array(np.random.default_rng(4).standard_normal((3, 3, 3, 4)))
    c = da.from_array(np.linspace(0.5, 2.0, 4))

    def pipeline(t_chunk):
        v = np.random.default_rng(5).standard_normal((8, 8, 3, 2, 64))
        x = fa.FormattedArray(da.from_array(v, chunks=(8, 8, 3, 1, t_chunk)), "SSCBT")
        y = fa.relu(fa.conv(x, w, padding="same"))           # conv, elementwise
        y = fa.max_pool(y, 2, stride=2) * fa.FormattedArray(c, "C")  # pooling, broadcast
        return fa.mean(fa.square(y), "S"), v                  # reduction

    with Count():
        small, v = pipeline(8)
        large, _ = pipeline(4)
    assert not runs  # building the graphs computed nothing
    n_small = len(small.data.__dask_graph__())
    n_large = len(large.data.__dask_graph__())
    assert n_large <= 2.2 * n_small, (n_small, n_large)
    assert small.data.chunks[-1] == (8,) * 8 and large.data.chunks[-1] == (4,) * 16
    x = fa.FormattedArray(v, "SSCBT")
    ref = fa.mean(fa.square(fa.max_pool(fa.relu(fa.conv(x, w.compute(), padding="same")), 2,
                                        stride=2) * fa.FormattedArray(c.compute(), "C")), "S")
    np.testing.assert_allclose(np.asarray(large.data.compute()), np.asarray(ref.data),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("red", ["sum", "mean"])
@pytest.mark.parametrize("dims", [None, "S", "B"])
def test_reduction_gradient_broadcasts_in_the_input_chunks(red, dims):
    """The VJP of a reduction broadcasts the cotangent in the input's chunks: no rechunk
    of a one-chunk broadcast (which would materialise the whole shape in one task)."""
    v, x = _x()
    g = fa.grad(lambda a: getattr(fa, red)(fa.square(a), dims) if dims is None
                else fa.sum(getattr(fa, red)(fa.square(a), dims)))(x)
    assert g.data.chunks == x.data.chunks
    layers = g.data.__dask_graph__().layers
    assert not [k for k in layers if "rechunk" in k], list(layers)
    n = {"S": v.shape[0] * v.shape[1], "B": v.shape[3], None: v.size}[dims]
    want = 2 * v / (n if red == "mean" else 1)
    np.testing.assert_allclose(np.asarray(g.data.compute()), want, rtol=1e-12)
