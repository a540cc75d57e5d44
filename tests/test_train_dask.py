"""Training from Dask-backed (and Zarr-backed) data: one mini-batch computed at a time,
learnables in the network's own library, the same result as in-memory training."""

from __future__ import annotations

import numpy as np
import pytest

import fmtarray as fa
from fmtarray.layers import (
    convolution2d_layer, fully_connected_layer, image_input_layer, relu_layer, softmax_layer,
)
from fmtarray.training.data import SHUFFLE_WINDOW_CHUNKS, permutation

da = pytest.importorskip("dask.array")


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 6, 1, n))
    labels = rng.integers(0, 3, n)
    x[1:3, 1:3, 0, :] += labels[None, None, :]  # learnable signal
    return x, labels


def _net():
    return fa.Network([image_input_layer((6, 6, 1)), convolution2d_layer(3, 4), relu_layer(),
                       fully_connected_layer(3), softmax_layer()])


def _options(shuffle, iterations=50, bs=8, n=96):
    return fa.TrainingOptions("sgdm", initial_learn_rate=0.05, mini_batch_size=bs,
                              max_epochs=-(-iterations // (n // bs)), shuffle=shuffle, seed=3,
                              verbose=False)


def _learnables(net):
    return {(k, p): np.asarray(fa._backend.to_numpy(v.data))
            for k, ps in net.learnables().items() for p, v in ps.items()}


def _compare(a, b, tol):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=str(k))


@pytest.mark.parametrize("shuffle", ["never", "every-epoch"])
def test_one_chunk_dask_equals_numpy(shuffle):
    x, y = _data()
    ref, h_ref = fa.train(_net(), fa.FormattedArray(x, "SSCB"), y, _options(shuffle))
    net, h = fa.train(_net(), fa.FormattedArray(da.from_array(x, chunks=-1), "SSCB"), y,
                      _options(shuffle))
    assert len(h.training_loss) == len(h_ref.training_loss) >= 50
    _compare(_learnables(net), _learnables(ref), 1e-9)
    for v in _learnables(net).values():
        assert type(v) is np.ndarray
    w = net.learnables()["conv"]["weights"].data
    assert fa._backend.library_name(w) == "numpy"  # the learnables stay in NumPy


def test_many_chunks_in_order_equals_numpy():
    x, y = _data()
    ref, _ = fa.train(_net(), fa.FormattedArray(x, "SSCB"), y, _options("never"))
    net, _ = fa.train(_net(), fa.FormattedArray(da.from_array(x, chunks=(6, 6, 1, 10)), "SSCB"),
                      y, _options("never"))
    _compare(_learnables(net), _learnables(ref), 1e-9)


def test_chunked_float32_with_shuffle_trains_like_the_same_order_in_memory():
    x, y = _data()
    x = x.astype(np.float32)
    chunks = (10,) * 9 + (6,)
    order = permutation(np.random.default_rng(3), chunks)
    # the in-memory run sees the observations in the streamed run's first-epoch order
    opts = _options("once", iterations=12)  # one epoch: 12 mini-batches of 8
    net, _ = fa.train(_net(), fa.FormattedArray(da.from_array(x, chunks=(6, 6, 1, chunks)), "SSCB"),
                      y, opts)
    ref, _ = fa.train(_net(), fa.FormattedArray(x[..., order], "SSCB"), y[order],
                      opts.replace(shuffle="never"))
    _compare(_learnables(net), _learnables(ref), 1e-6)


def test_chunk_aware_permutation():
    rng = np.random.default_rng(0)
    chunks = (7, 7, 7, 7, 7, 7, 7, 7, 5)
    p = permutation(rng, chunks)
    assert sorted(p.tolist()) == list(range(sum(chunks)))
    owner = np.repeat(np.arange(len(chunks)), chunks)
    for s in range(0, len(p), 8):  # a mini-batch of 8 touches at most a window's chunks (+1)
        assert len(set(owner[p[s:s + 8]].tolist())) <= SHUFFLE_WINDOW_CHUNKS + 1
    assert not np.array_equal(p, np.sort(p))
    # one chunk: exactly the in-memory permutation
    np.testing.assert_array_equal(permutation(np.random.default_rng(5), (40,)),
                                  np.random.default_rng(5).permutation(40))


def test_nothing_but_mini_batches_is_computed(monkeypatch):
    import dask.array.core as dac

    x, y = _data()
    d = da.from_array(x, chunks=(6, 6, 1, 8))
    computed = []
    real = dac.Array.compute

    def counting(self, *a, **k):
        out = real(self, *a, **k)
        computed.append(int(np.prod(out.shape)) if hasattr(out, "shape") else 1)
        return out

    monkeypatch.setattr(dac.Array, "compute", counting)
    fa.train(_net(), fa.FormattedArray(d, "SSCB"), y, _options("every-epoch", iterations=24))
    whole = x.size
    assert computed and max(computed) <= whole // 8  # never the whole data set at once


def test_validation_and_targets_on_dask():
    x, y = _data()
    onehot = np.eye(3)[y].T  # C×B
    xd = fa.FormattedArray(da.from_array(x, chunks=(6, 6, 1, 16)), "SSCB")
    td = fa.FormattedArray(da.from_array(onehot, chunks=(3, 16)), "CB")
    opts = _options("never", iterations=24).replace(
        validation_data=(xd, td), validation_frequency=6)
    net, h = fa.train(_net(), xd, td, opts)
    ref, h_ref = fa.train(_net(), fa.FormattedArray(x, "SSCB"), fa.FormattedArray(onehot, "CB"),
                          opts.replace(validation_data=(fa.FormattedArray(x, "SSCB"),
                                                        fa.FormattedArray(onehot, "CB"))))
    _compare(_learnables(net), _learnables(ref), 1e-9)
    np.testing.assert_allclose(h.final_validation_loss, h_ref.final_validation_loss, rtol=1e-9)


def test_input_statistics_from_dask_are_computed_once():
    x, y = _data()
    net, _ = fa.train(_net(), fa.FormattedArray(da.from_array(x, chunks=(6, 6, 1, 16)), "SSCB"),
                      y, _options("never", iterations=12))
    mean = net["imageinput"].mean
    assert fa._backend.library_name(mean) == "numpy"
    np.testing.assert_allclose(np.asarray(mean).ravel(), [x.mean()], rtol=1e-12)


def test_zarr_backed_training(tmp_path):
    pytest.importorskip("zarr")
    x, y = _data()
    fa.to_zarr(fa.FormattedArray(x, "SSCB"), tmp_path / "x.zarr", chunks=(6, 6, 1, 12))
    xz = fa.from_zarr(tmp_path / "x.zarr")
    net, _ = fa.train(_net(), xz, y, _options("never"))
    ref, _ = fa.train(_net(), fa.FormattedArray(x, "SSCB"), y, _options("never"))
    _compare(_learnables(net), _learnables(ref), 1e-9)


def test_torch_network_trains_from_dask_batches():
    torch = pytest.importorskip("torch")
    x, y = _data()
    net = _net().initialize(fa.FormattedArray(torch.from_numpy(x[..., :1].copy()), "SSCB"))
    ref = _net().initialize(fa.FormattedArray(x[..., :1].copy(), "SSCB"))
    opts = _options("never", iterations=12)
    net, _ = fa.train(net, fa.FormattedArray(da.from_array(x, chunks=(6, 6, 1, 16)), "SSCB"), y,
                      opts)
    ref, _ = fa.train(ref, fa.FormattedArray(x, "SSCB"), y, opts)
    assert fa._backend.library_name(net.learnables()["fc"]["weights"].data) == "torch"
    _compare(_learnables(net), _learnables(ref), 1e-9)
