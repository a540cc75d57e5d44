"""A video larger than memory, processed lazily from a Zarr store with Dask.

1. A synthetic colour video (``SSCBT``: 256×256×3 frames, one sequence of 5600 frames,
   4.1 GiB of float32) is written chunk by chunk to a Zarr v3 store, with a progress bar;
   it is never whole in memory. The stores are written uncompressed: float video data
   compresses poorly, and Zarr's default compressor roughly halved the write rate here.
2. Frame-wise: a conv–relu–conv stack of ``Convolution2DLayer``s (a NumPy network) runs
   on every frame with ``net.predict``: the network runs once per block of frames, and
   the result is written to another Zarr array.
3. Row sequences: each image row over time is a 1-D image sequence (``SCBT``: S = the
   row's pixels, C = colour, B = the rows, T = time); ``fa.conv`` convolves over S and T
   on the Dask array itself, exchanging halos between T chunks, and the result goes to
   Zarr too.
4. A sample of frames is checked against the same computation in memory, and the
   throughput is compared with in-memory NumPy on the same frames.

    python examples/video_pipeline.py                  # threaded scheduler, 4.1 GiB
    python examples/video_pipeline.py --cluster        # a 2-worker dask.distributed LocalCluster
    python examples/video_pipeline.py --frames 300     # a quick run (236 MiB)

Peak resident memory (this process plus any worker processes, sampled) is printed at the
end; it stays far below the data size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import numpy as np

import fmtarray as fa
from fmtarray.layers import convolution2d_layer, relu_layer

H = W = 256
C = 3
FRAMES_PER_CHUNK = 16


# data ------------------------------------------------------------------------------------


def _frames(t0, t1):
    """Frames t0..t1-1 of the synthetic video (H×W×C×1×T float32): moving colour waves."""
    i = np.arange(H, dtype=np.float32)[:, None, None, None, None]
    j = np.arange(W, dtype=np.float32)[None, :, None, None, None]
    c = np.arange(C, dtype=np.float32)[None, None, :, None, None]
    t = np.arange(t0, t1, dtype=np.float32)[None, None, None, None, :]
    phase = 0.031 * i + 0.017 * j + 0.05 * t + 2.1 * c
    return (0.5 + 0.5 * np.sin(phase) * np.cos(0.013 * (i - j) + 0.02 * t)).astype(np.float32)


def synthetic_video(frames):
    """The video as a lazy Dask array, one block per FRAMES_PER_CHUNK frames."""
    import dask.array as da

    chunks = (H, W, C, 1, FRAMES_PER_CHUNK)

    def block(block_info=None):
        lo, hi = block_info[None]["array-location"][-1]
        return _frames(lo, hi)

    return da.map_blocks(block, chunks=da.core.normalize_chunks(chunks, (H, W, C, 1, frames)),
                         dtype=np.float32, meta=np.empty((0,) * 5, np.float32))


class _Progress:
    """A progress bar over Dask's tasks (tqdm when installed, else Dask's own)."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        try:
            from tqdm.dask import TqdmCallback

            self.cb = TqdmCallback(desc=self.what)
        except ImportError:
            from dask.diagnostics import ProgressBar

            print(self.what)
            self.cb = ProgressBar()
        self.cb.__enter__()
        return self

    def __exit__(self, *exc):
        return self.cb.__exit__(*exc)


class PeakMemory:
    """Samples the resident memory of this process and its children every 50 ms."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _rss(self):
        total = self.proc.memory_info().rss
        for ch in self.proc.children(recursive=True):
            try:
                total += ch.memory_info().rss
            except Exception:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


# the two computations ----------------------------------------------------------------------


def frame_network():
    """conv(3×3, 8, same) → relu → conv(3×3, 3, same), initialised with seed 0 (NumPy)."""
    net = fa.Network([convolution2d_layer(3, 8, padding="same"), relu_layer(),
                      convolution2d_layer(3, 3, padding="same")])
    return net.initialize(fa.FormattedArray(np.zeros((H, W, C, 1, 1), np.float32), "SSCBT"))


def row_weights():
    """A 5-tap (S) × 3-frame (T) filter from 3 colours to 4 features."""
    return (np.random.default_rng(1).standard_normal((5, 3, C, 4)) * 0.1).astype(np.float32)


def as_rows(x):
    """``SSCBT`` video (B = 1) → ``SCBT`` row sequences: S = a row's pixels, B = the rows."""
    data = x.data[:, :, :, 0, :]                     # H W C T
    return fa.FormattedArray(data, "BSCT")          # canonical SCBT, permuted lazily


def row_features(rows, w):
    """Conv over S and T ("same": the output keeps every frame), then relu."""
    return fa.relu(fa.conv(rows, w, padding="same", weights_format="STCU"))


# checks and throughput -----------------------------------------------------------------------


def check_sample(x_store, framewise, rows_out, net, w, frames):
    """Frames at the start, middle and end against the in-memory computation."""
    worst = 0.0
    for t in sorted({0, 1, frames // 2, frames - 1}):
        lo, hi = max(0, t - 1), min(frames, t + 2)   # the frames the T filter reaches
        clip = _frames(lo, hi)
        ref1 = np.asarray(net.predict(fa.FormattedArray(clip, "SSCBT")).data)[..., t - lo]
        got1 = np.asarray(framewise[..., t])
        ref2 = np.asarray(row_features(as_rows(fa.FormattedArray(clip, "SSCBT")), w).data)
        if lo > 0 or hi < frames:  # interior clip: only frame t saw its true neighbours
            ref2 = ref2[..., t - lo]
        else:
            ref2 = ref2[..., t]
        got2 = np.asarray(rows_out[..., t])
        stored = np.asarray(x_store[..., 0, t])
        np.testing.assert_array_equal(stored, clip[..., 0, t - lo])
        for got, ref in ((got1, ref1), (got2, ref2)):
            err = float(np.max(np.abs(got - ref)) / max(1e-30, float(np.max(np.abs(ref)))))
            worst = max(worst, err)
    return worst


def in_memory_fps(net, w, n=64):
    clip = fa.FormattedArray(_frames(0, n), "SSCBT")
    net.predict(clip)
    t0 = time.perf_counter()
    net.predict(clip)
    t1 = time.perf_counter()
    row_features(as_rows(clip), w)
    t2 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=5600, help="video length (default 5600: 4.1 GiB)")
    p.add_argument("--cluster", action="store_true", help="run on a 2-worker LocalCluster")
    p.add_argument("--dir", default=None, help="where to put the Zarr stores (default a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    args = p.parse_args(argv)

    import dask
    import dask.array  # noqa: F401  (dask.array.from_array below)

    client = None
    if args.cluster:
        from dask.distributed import Client, LocalCluster

        # one process per core, each computing on its one thread: fmtarray's kernels
        # there use one thread too (FMTARRAY_NUM_THREADS), so the cores are not shared
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1GiB",
                               dashboard_address=None, env={"FMTARRAY_NUM_THREADS": "1"})
        client = Client(cluster)
        where = "a 2-worker LocalCluster (1 thread each)"
    else:
        dask.config.set(scheduler="threads")
        where = f"the threaded scheduler ({os.cpu_count()} threads)"

    root = args.dir or tempfile.mkdtemp(prefix="fmtarray-video-")
    gib = args.frames * H * W * C * 4 / 2**30
    print(f"video: {args.frames} frames of {H}x{W}x{C} float32 = {gib:.2f} GiB, SSCBT, "
          f"chunks of {FRAMES_PER_CHUNK} frames; stores in {root}; running on {where}")
    net, w = frame_network(), row_weights()
    try:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            with _Progress("writing the video"):
                fa.to_zarr(fa.FormattedArray(synthetic_video(args.frames), "SSCBT"),
                           f"{root}/video.zarr", overwrite=True,
                           compressors=None)
            t_write = time.perf_counter() - t0

            x = fa.from_zarr(f"{root}/video.zarr")          # lazy, format restored
            t0 = time.perf_counter()
            with _Progress("frame-wise conv-relu-conv"):
                fa.to_zarr(net.predict(x), f"{root}/framewise.zarr", overwrite=True,
                           compressors=None)
            t_frames = time.perf_counter() - t0

            rows = as_rows(x).data.rechunk({0: W, 1: C, 2: H, 3: FRAMES_PER_CHUNK})
            t0 = time.perf_counter()
            with _Progress("row sequences: conv over S and T"):
                # the weights join the data's library (Dask), one block
                wd = dask.array.from_array(w, chunks=-1)
                fa.to_zarr(row_features(fa.FormattedArray(rows, "SCBT"), wd),
                           f"{root}/rows.zarr", overwrite=True,
                           compressors=None)
            t_rows = time.perf_counter() - t0

        import zarr

        err = check_sample(zarr.open_array(f"{root}/video.zarr", mode="r"),
                           zarr.open_array(f"{root}/framewise.zarr", mode="r"),
                           zarr.open_array(f"{root}/rows.zarr", mode="r"), net, w, args.frames)
        fps1, fps2 = args.frames / t_frames, args.frames / t_rows
        mem1, mem2 = in_memory_fps(net, w)
        print(f"\nwrite: {t_write:.1f} s ({gib / t_write * 1024:.0f} MiB/s)")
        print(f"frame-wise stack: {fps1:.0f} frames/s ({t_frames:.1f} s); in-memory NumPy on "
              f"64 frames: {mem1:.0f} frames/s; fraction {fps1 / mem1:.2f}")
        print(f"row sequences (S+T conv, halos over T): {fps2:.0f} frames/s ({t_rows:.1f} s); "
              f"in-memory: {mem2:.0f} frames/s; fraction {fps2 / mem2:.2f}")
        print(f"sample frames vs in-memory: max relative error {err:.1e}")
        print(f"peak resident memory: {mem.peak / 2**30:.2f} GiB (data {gib:.2f} GiB)")
    finally:
        if client is not None:
            client.close()
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
