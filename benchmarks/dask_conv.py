"""The convolution gradient on a batch-chunked Dask array against NumPy on the same data.

Run on the benchmark machine with the OpenBLAS override unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/dask_conv.py

Case (the convolution issue's Dask target): ``SSCB`` float32 input 32×32×16, batch 64
in 4 chunks of 16 along ``B``, 3×3 filters 16→16, ``padding="same"``. Two measures:

* **kernel**: the registry's fused backward (input + weight gradient) for a given
  cotangent, ``fmtarray._kernels.conv.backward`` (what the conv's recorded VJP runs);
* **grad**: ``fa.grad`` of ``sum(conv(x, w)²) / 2`` with respect to ``x`` and ``w``
  (forward, loss and backward).

For Dask, **build** is the time to call the function (it only builds the lazy graph)
and **compute** the time of ``dask.compute`` of both gradients; NumPy runs eagerly.
Each figure is the median of interleaved repeats (NumPy, Dask build, Dask compute,
NumPy, ...), so each ratio compares timings taken under the same conditions. The
schedulers compared: Dask's threaded scheduler (default: one thread per core) as the
adapter runs it by default (with enough batch blocks, each block on its scheduler
thread alone; see :mod:`fmtarray._kernels.conv._dask`), the threaded scheduler with the
blocks taking turns, each spread over every core by the NumPy kernels' own pool (what
the adapter does with fewer blocks than cores), the threaded scheduler with one thread,
and the synchronous scheduler. Task counts are those of the graphs of both gradients
together.

Options: ``--repeats 9``, ``--batch 64``, ``--chunks 4``, ``--float64``,
``--no-variants`` (the default scheduler only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import dask
import dask.array as da
import numpy as np

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels import conv as K
from fmtarray._kernels.conv import _dask as dask_conv


def median_interleaved(fns, repeats):
    """Median seconds of each function (one untimed warm-up each, then round-robin)."""
    times = [[] for _ in fns]
    for f in fns:
        f()
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def n_tasks(*arrays):
    """Tasks in the merged graph of ``arrays`` (before Dask's optimisations)."""
    graph = {}
    for a in arrays:
        graph.update(dict(a.__dask_graph__()))
    return len(graph)


@contextlib.contextmanager
def turns():
    """Graphs built meanwhile have their blocks take turns, each over every core."""
    saved = dask_conv._one_per_core
    dask_conv._one_per_core = lambda cxp, n_blocks: False
    try:
        yield
    finally:
        dask_conv._one_per_core = saved


VARIANTS = {
    "threads (default)": (dict(scheduler="threads"), contextlib.nullcontext),
    "threads, blocks take turns": (dict(scheduler="threads"), turns),
    "threads, 1 worker": (dict(scheduler="threads", num_workers=1), contextlib.nullcontext),
    "synchronous": (dict(scheduler="synchronous"), contextlib.nullcontext),
}


def blas_threads():
    try:
        from threadpoolctl import threadpool_info

        return {i["filepath"]: i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas"}
    except ImportError:
        return {}


def blas_info():
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(f"{i.get('internal_api')} {i.get('version')} "
                         f"kernel={i.get('architecture')} threads={i.get('num_threads')}"
                         for i in info) or "unknown"
    except ImportError:
        return "threadpoolctl not installed"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--no-variants", action="store_true")
    args = ap.parse_args(argv)

    dtype = np.float64 if args.float64 else np.float32
    rng = np.random.default_rng(0)
    B, nb = args.batch, args.chunks
    xn = rng.standard_normal((32, 32, 16, B)).astype(dtype)
    wn = (rng.standard_normal((3, 3, 16, 16)) / 12).astype(dtype)
    gyn = rng.standard_normal((32, 32, 16, B)).astype(dtype)
    cb = -(-B // nb)
    xd = da.from_array(xn, chunks=(32, 32, 16, cb))
    wd = da.from_array(wn, chunks=-1)
    gyd = da.from_array(gyn, chunks=(32, 32, 16, cb))

    print(f"{platform.platform()} | {os.cpu_count()} CPUs | Python {platform.python_version()} "
          f"| NumPy {np.__version__} | Dask {dask.__version__} | {blas_info()}")
    print(f"SSCB 32x32x16 batch {B} in {len(xd.chunks[3])} chunks {xd.chunks[3]}, 3x3 16->16 "
          f"same, {np.dtype(dtype).name}; median of {args.repeats}")

    # ---- kernel-level fused backward
    spec = K.ConvSpec(B, (32, 32), 16, (3, 3), 16, 16, 1, (1, 1), (1, 1), (1, 1), (1, 1), 0.0,
                      (), np.dtype(dtype).name)
    w5 = wn[..., None]
    w5d = wd[..., None]
    nxp = fa._backend.namespace(xn)
    dxp = fa._backend.namespace(xd)

    def np_kernel():
        return K.backward(nxp, spec, K.Layout.of("01CN", xn, gyn), gyn, xn, w5,
                          (True, True, False))

    def dask_kernel_build():
        gx, gw, _ = K.backward(dxp, spec, K.Layout.of("01CN", xd, gyd), gyd, xd, w5d,
                               (True, True, False))
        return gx, gw

    # ---- fa.grad of a scalar loss
    def loss(x, w):
        y = fa.conv(x, w, padding="same")
        return fa.sum(y * y) * 0.5

    g = fa.grad(loss, argnums=(0, 1))
    Xn, Wn = FormattedArray(xn, "SSCB"), FormattedArray(wn)
    Xd, Wd = FormattedArray(xd, "SSCB"), FormattedArray(wd)

    def np_grad():
        return g(Xn, Wn)

    def dask_grad_build():
        gx, gw = g(Xd, Wd)
        return gx.data, gw.data

    # correctness first
    ref = np_kernel()
    got = dask.compute(*dask_kernel_build())
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a, r in zip(got, ref[:2]):
        err = float(np.max(np.abs(a - r)) / np.max(np.abs(r)))
        assert err < tol, err
    refg = np_grad()
    gotg = dask.compute(*dask_grad_build())
    for a, r in zip(gotg, refg):
        err = float(np.max(np.abs(a - r.data)) / np.max(np.abs(r.data)))
        assert err < tol, err

    print(f"\ntasks (both gradients' graphs together): kernel "
          f"{n_tasks(*dask_kernel_build())}, grad {n_tasks(*dask_grad_build())} "
          f"(inputs: {n_tasks(xd, wd, gyd)})")

    variants = VARIANTS if not args.no_variants else {
        k: v for k, v in VARIANTS.items() if k == "threads (default)"}
    header = (f"\n{'measure':8} {'scheduler':30} {'numpy ms':>9} {'build ms':>9} "
              f"{'compute ms':>11} {'dask/numpy':>11} {'(with build)':>13}")
    print(header)
    saved = blas_threads()
    for measure, np_fn, build in (("kernel", np_kernel, dask_kernel_build),
                                  ("grad", np_grad, dask_grad_build)):
        for vname, (cfg, ctx) in variants.items():
            with dask.config.set(**cfg), ctx():
                built = build()
                t_np, t_build, t_compute = median_interleaved(
                    [np_fn, build, lambda built=built: dask.compute(*built)], args.repeats)
            left = blas_threads()
            print(f"{measure:8} {vname:30} {t_np * 1e3:9.2f} {t_build * 1e3:9.2f} "
                  f"{t_compute * 1e3:11.2f} {t_compute / t_np:11.2f} "
                  f"{(t_compute + t_build) / t_np:13.2f}"
                  + ("" if left == saved else f"  (BLAS threads left at {sorted(set(left.values()))})"))
    print(f"\nafter the runs: {blas_info()}")


if __name__ == "__main__":
    main()
