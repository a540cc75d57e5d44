"""Network.predict on Dask-backed inputs: lazy, blockwise over B (and T when the network
treats frames independently), equal to the in-memory prediction."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray.layers import (
    batch_normalization_layer, convolution2d_layer, fully_connected_layer, relu_layer,
    softmax_layer,
)

da = pytest.importorskip("dask.array")


def _conv_stack(c=3):
    x = fa.FormattedArray(np.zeros((12, 10, c, 1, 1), np.float32), "SSCBT")
    return fa.Network([convolution2d_layer(3, 4, padding="same"), relu_layer(),
                       convolution2d_layer(3, 2, padding="same")]).initialize(x, seed=1)


def _video(shape=(12, 10, 3, 2, 9), seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class _Counter:
    """Counts Dask computations (``dask.callbacks``)."""

    def __init__(self):
        from dask.callbacks import Callback

        self.n = 0
        outer = self

        class C(Callback):
            def _start(self, dsk):
                outer.n += 1

        self.cb = C()


def test_frame_wise_stack_keeps_b_and_t_chunks_and_is_lazy():
    net = _conv_stack()
    v = _video()
    x = fa.FormattedArray(da.from_array(v, chunks=(6, 5, 3, 1, 4)), "SSCBT")
    c = _Counter()
    with c.cb:
        y = net.predict(x)
        assert c.n == 0  # nothing computed to build the graph
    assert y.format == "SSCBT" and y.shape == (12, 10, 2, 2, 9)
    assert y.data.chunks[3] == (1, 1) and y.data.chunks[4] == (4, 4, 1)  # B and T kept
    assert y.data.chunks[0] == (12,) and y.data.chunks[2] == (2,)       # S, C one chunk
    # one task per block (plus the input's rechunk of S): linear in the chunks
    ref = net.predict(fa.FormattedArray(v, "SSCBT"))
    np.testing.assert_allclose(np.asarray(y.data.compute()), np.asarray(ref.data), rtol=1e-5,
                               atol=1e-5)


def test_graph_grows_linearly_with_chunks():
    net = _conv_stack()
    v = _video((12, 10, 3, 1, 32))

    def tasks(tc):
        y = net.predict(fa.FormattedArray(da.from_array(v, chunks=(12, 10, 3, 1, tc)), "SSCBT"))
        return len(y.data.__dask_graph__())

    assert tasks(2) <= 2.2 * tasks(4)


def test_time_mixing_network_gets_whole_t():
    # a 2-D convolution over SCBT convolves over S and T: T must not be split
    net = fa.Network([convolution2d_layer(3, 2, padding="same")]).initialize(
        fa.FormattedArray(np.zeros((8, 3, 1, 6), np.float64), "SCBT"), seed=0)
    v = _video((8, 3, 2, 6), dtype=np.float64)
    x = fa.FormattedArray(da.from_array(v, chunks=(4, 3, 1, 2)), "SCBT")
    y = net.predict(x)
    assert y.data.chunks[-1] == (6,) and y.data.chunks[2] == (1, 1)
    np.testing.assert_allclose(np.asarray(y.data.compute()),
                               np.asarray(net.predict(fa.FormattedArray(v, "SCBT")).data),
                               rtol=1e-12, atol=1e-12)


def test_classifier_with_batch_norm_float64():
    x0 = fa.FormattedArray(np.zeros((6, 6, 2, 1)), "SSCB")
    net = fa.Network([convolution2d_layer(3, 4), batch_normalization_layer(), relu_layer(),
                      fully_connected_layer(5), softmax_layer()]).initialize(x0, seed=2)
    net.update_state({"batchnorm": {"trained_mean": np.linspace(-1, 1, 4).reshape(1, 1, 4),
                                    "trained_variance": np.linspace(0.5, 2, 4).reshape(1, 1, 4)}})
    v = _video((6, 6, 2, 11), dtype=np.float64)
    y = net.predict(fa.FormattedArray(da.from_array(v, chunks=(6, 6, 2, 4)), "SSCB"))
    assert y.format == "CB" and y.data.chunks == ((5,), (4, 4, 3))
    np.testing.assert_allclose(np.asarray(y.data.compute()),
                               np.asarray(net.predict(fa.FormattedArray(v, "SSCB")).data),
                               rtol=1e-12, atol=1e-14)


def test_graph_keeps_the_network_as_it_was():
    net = _conv_stack()
    v = _video((12, 10, 3, 1, 2))
    before = net.predict(fa.FormattedArray(v, "SSCBT"))
    lazy = net.predict(fa.FormattedArray(da.from_array(v), "SSCBT"))
    w = net.learnables()
    net.set_learnables({"conv_1": {"weights": w["conv_1"]["weights"] * 0.0}})
    np.testing.assert_allclose(np.asarray(lazy.data.compute()), np.asarray(before.data),
                               rtol=1e-6, atol=1e-6)


def test_library_mismatch_is_named():
    torch = pytest.importorskip("torch")
    net = fa.Network([convolution2d_layer(3, 2)]).initialize(
        fa.FormattedArray(torch.zeros(5, 5, 1, 1), "SSCB"))
    x = fa.FormattedArray(da.zeros((5, 5, 1, 4), chunks=(5, 5, 1, 2)), "SSCB")
    with pytest.raises(TypeError, match=r"chunks are numpy arrays and the network's learnables "
                                        r"are torch arrays; move the network"):
        net.predict(x)


def test_no_batch_dim_is_refused():
    net = fa.Network([relu_layer()])
    with pytest.raises(ValueError, match="batch dim 'B'"):
        net.predict(fa.FormattedArray(da.zeros((4, 4, 2), chunks=2), "SSC"))
