"""Training from a Zarr store (Dask-backed inputs) vs in memory: per-iteration time of the
first and last 10 iterations (flat = no task graph grows), and the learnables' agreement.

    python benchmarks/train_stream.py [--iterations 50] [--n 2048]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import fmtarray as fa
from fmtarray.layers import (
    convolution2d_layer, fully_connected_layer, image_input_layer, max_pooling2d_layer,
    relu_layer, softmax_layer,
)


def net():
    return fa.Network([image_input_layer((16, 16, 1)), convolution2d_layer(3, 8, padding="same"),
                       relu_layer(), max_pooling2d_layer(2, stride=2), fully_connected_layer(4),
                       softmax_layer()])


def run(x, y, iterations, shuffle):
    times = []
    last = [time.perf_counter()]

    def tick(info):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return False

    opts = fa.TrainingOptions("sgdm", initial_learn_rate=0.02, mini_batch_size=32,
                              max_epochs=-(-iterations * 32 // y.size), shuffle=shuffle, seed=1,
                              verbose=False, output_fcn=tick)
    last[0] = time.perf_counter()
    trained, _ = fa.train(net(), x, y, opts)
    return trained, np.asarray(times[:iterations])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--n", type=int, default=2048)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16, 1, a.n)).astype(np.float32)
    y = rng.integers(0, 4, a.n)
    x[4:8, 4:8, 0] += y
    with tempfile.TemporaryDirectory() as d:
        fa.to_zarr(fa.FormattedArray(x, "SSCB"), d + "/x.zarr", chunks=(16, 16, 1, 128))
        xz = fa.from_zarr(d + "/x.zarr")
        print(f"{a.n} images 16x16x1 float32, Zarr chunks of 128 along B, mini-batch 32, "
              f"{a.iterations} iterations")
        print(f"{'data':<26}{'first 10 (ms/it)':>18}{'last 10 (ms/it)':>18}{'ratio':>8}")
        for name, data, shuffle in [("in memory, never", fa.FormattedArray(x, "SSCB"), "never"),
                                    ("zarr/dask, never", xz, "never"),
                                    ("in memory, every-epoch", fa.FormattedArray(x, "SSCB"),
                                     "every-epoch"),
                                    ("zarr/dask, every-epoch", xz, "every-epoch")]:
            trained, t = run(data, y, a.iterations, shuffle)
            f, l_ = np.median(t[1:11]) * 1e3, np.median(t[-10:]) * 1e3
            print(f"{name:<26}{f:>18.2f}{l_:>18.2f}{l_ / f:>8.2f}")
            if name == "in memory, never":
                ref = trained
            if name == "zarr/dask, never":
                diff = max(float(np.max(np.abs(np.asarray(v.data) - np.asarray(
                    ref.learnables()[k][q].data)))) for k, ps in trained.learnables().items()
                    for q, v in ps.items())
                print(f"{'':<26}max |learnables - in-memory| = {diff:.1e}")


if __name__ == "__main__":
    main()
