"""Convolution throughput of ``fmtarray.conv`` (NumPy backend, float32) versus
``torch.nn.functional.conv2d``, forward and backward, plus the peak workspace.

Run on the benchmark machine with the OpenBLAS override unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv.py

For each case it prints the shape, our time and GFLOP/s, the fraction of the float32
GEMM rate measured in this process (a 2048³ ``matmul``), torch's time and the ratio
torch-time / our-time (> 1: we are faster). Both sides use the same thread count
and dtype; inputs are prepared outside the timed region (ours: a ``FormattedArray``
in its canonical layout, e.g. ``SSCB``; torch: contiguous ``NCHW``), and each
reported time is the median of interleaved repeats (ours, torch, ours, torch, ...).
Backward = input gradient + weight gradient: our recorded VJP (what
``fmtarray.grad`` runs) against ``torch.autograd.grad`` on the same graph.

Options: ``--quick`` (fewer repeats), ``--no-backward``, ``--no-memory``,
``--cases 0,3`` (indices), ``--gap 20`` (20 ms idle before each turn: no call
starts while the other library's threads still spin), ``--warm`` (an untimed call
first in each turn), ``--steady`` (``--block 5 --gap 30 --warm``: each library
timed in its own steady state, isolated from the other's after-effects),
``--block 5`` (5 consecutive calls per turn of the
interleaving: steady-state timings, see :func:`median_interleaved`).
"""

from __future__ import annotations

# torch first: imported after NumPy's BLAS has started its threads, torch's own thread
# pool runs several times slower on this machine, which would flatter us
try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional
    torch = None

import argparse  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

import fmtarray as fa  # noqa: E402
from fmtarray import FormattedArray, _tape  # noqa: E402


# name, format, canonical input shape, filter (kh, kw), C, F, groups, kwargs, weights_format
CASES = [
    ("b32 56x56 64->64 3x3 p1", "SSCB", (56, 56, 64, 32), (3, 3), 64, 64, 1, dict(padding=1), None),
    ("b32 224x224 3->64 7x7 s2 p3", "SSCB", (224, 224, 3, 32), (7, 7), 3, 64, 1,
     dict(stride=2, padding=3), None),
    ("b64 14x14 256->256 3x3 p1", "SSCB", (14, 14, 256, 64), (3, 3), 256, 256, 1, dict(padding=1), None),
    ("b128 28x28 1->20 5x5", "SSCB", (28, 28, 1, 128), (5, 5), 1, 20, 1, dict(), None),
    ("b8 7x7 512->512 3x3 p1", "SSCB", (7, 7, 512, 8), (3, 3), 512, 512, 1, dict(padding=1), None),
    ("depthwise b16 28x28 128 3x3 p1", "SSCB", (28, 28, 128, 16), (3, 3), 128, 128, 128,
     dict(padding=1), None),
    ("dilated b8 56x56 64->64 3x3 d2 p2", "SSCB", (56, 56, 64, 8), (3, 3), 64, 64, 1,
     dict(dilation_factor=2, padding=2), None),
    ("SCBT S64 T200 16->32 3x3 (S,T)", "SCBT", (64, 16, 8, 200), (3, 3), 16, 32, 1,
     dict(padding="same"), "STCU"),
    ("SSCBT 32x32 16->16 b4 T16 same", "SSCBT", (32, 32, 16, 4, 16), (3, 3), 16, 16, 1,
     dict(padding="same"), None),
]


#: calls per turn in :func:`median_interleaved` (``--block``)
BLOCK = 1
#: idle seconds before each turn (``--gap``)
GAP = 0.0
#: one untimed call at the start of each turn (``--warm``)
WARM = False


def median_interleaved(fns, repeats):
    """Median time of each function, running them round-robin ``repeats`` times.

    With ``BLOCK = b > 1`` each turn is ``b`` consecutive calls (ours ×b, torch ×b,
    ...; ``repeats`` turns each): steady-state timings of each library on its own,
    still interleaved against drift of the machine. With ``b = 1`` (default) the
    call right after the other library's carries its after-effects (torch's OpenMP
    threads keep spinning for a while after each call and take a core from the
    next, non-spinning, caller on a 2-core machine)."""
    times = [[] for _ in fns]
    for f in fns:
        f()  # warm-up
    for _ in range(repeats):
        for i, f in enumerate(fns):
            if GAP:
                time.sleep(GAP)
            if WARM:
                f()  # untimed: the turn's first call absorbs the switch of library
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                f()
                times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def gemm_rate(repeats):
    n = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    (t,) = median_interleaved([lambda: np.matmul(a, b, out=c)], repeats)
    return 2 * n**3 / t / 1e9


def blas_info():
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return ", ".join(f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
                         f"threads={i.get('num_threads')}" for i in info) or "unknown"
    except ImportError:
        return "threadpoolctl not installed"


def setup(case, batch=None):
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    shape = list(shape)
    if batch is not None:
        shape[fmt.index("B")] = batch
    rng = np.random.default_rng(0)
    xd = rng.standard_normal(shape, dtype=np.float32)
    w = (rng.standard_normal((*k, C // G, Fo // G, G), dtype=np.float32) / math.sqrt(k[0] * k[1] * C / G))
    b = rng.standard_normal(Fo, dtype=np.float32)
    x = FormattedArray(xd, fmt)
    w_user = w[..., 0] if G == 1 else w
    call = dict(kwargs, weights_format=wfmt)
    y = fa.conv(x, w_user, b, **call)
    # FLOPs: 2 * outputs * taps * channels per group
    out_elems = int(np.prod(y.shape))
    flops = 2 * out_elems * k[0] * k[1] * (C // G)
    return x, w_user, w, b, call, y, flops


def torch_inputs(case, x, w, b):
    """Same data for torch: NCHW contiguous, (F, C/G, kh, kw) weights; conv kwargs."""
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    xd = x.data
    if fmt == "SSCB":  # (H, W, C, N) -> (N, C, H, W)
        tx = np.ascontiguousarray(np.transpose(xd, (3, 2, 0, 1)))
    elif fmt == "SCBT":  # (S, C, B, T) -> (B, C, S, T): convolve S and T
        tx = np.ascontiguousarray(np.transpose(xd, (2, 1, 0, 3)))
    elif fmt == "SSCBT":  # (H, W, C, B, T) -> (B*T, C, H, W)
        tx = np.ascontiguousarray(np.transpose(xd, (3, 4, 2, 0, 1))).reshape(-1, C, xd.shape[0], xd.shape[1])
    else:
        raise AssertionError(fmt)
    tw = np.ascontiguousarray(np.moveaxis(w, (-1, -2, -3), (0, 1, 2)).reshape(Fo, C // G, *k))
    pad = kwargs.get("padding", 0)
    if pad == "same":
        pad = "same"  # stride 1 in these cases: torch's 'same' matches ours (k odd)
    kw = dict(stride=kwargs.get("stride", 1), padding=pad, dilation=kwargs.get("dilation_factor", 1),
              groups=G)
    return torch.from_numpy(tx), torch.from_numpy(tw), torch.from_numpy(b), kw


def traced_vjp(x, w_user, b, call):
    """Run the forward with x and w traced; return the recorded VJP closure and g."""
    xt = FormattedArray._wrap(x.data, x.format)
    xt._node = _tape.leaf(x.shape, x.dtype, "x")
    wt = FormattedArray._wrap(w_user, "")
    wt._node = _tape.leaf(w_user.shape, w_user.dtype, "w")
    y = fa.conv(xt, wt, b, **call)
    g = np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32)
    return y._node.vjp, g


def check_against_torch(case, x, w_user, w, b, call, y):
    tx, tw, tb, kw = torch_inputs(case, x, w, b)
    ty = F.conv2d(tx, tw, tb, **kw).numpy()
    fmt = case[1]
    if fmt == "SSCB":
        mine = np.transpose(y.data, (3, 2, 0, 1))
    elif fmt == "SCBT":
        mine = np.transpose(y.data, (2, 1, 0, 3))
    else:
        mine = np.transpose(y.data, (3, 4, 2, 0, 1)).reshape(ty.shape)
    err = np.max(np.abs(mine - ty)) / np.max(np.abs(ty))
    assert err < 1e-4, f"{case[0]}: mismatch with torch, rel err {err:.2e}"


def peak_extra_memory(case, batch):
    """Peak traced allocation of one forward and one backward, minus the results."""
    x, w_user, w, b, call, y, _ = setup(case, batch)
    vjp, g = traced_vjp(x, w_user, b, call)
    out_bytes = y.data.nbytes
    del y
    gc.collect()
    # scratch buffers kept from earlier calls would otherwise escape the measurement
    from fmtarray._kernels.conv._numpy import release_scratch

    release_scratch()
    tracemalloc.start()
    y = fa.conv(x, w_user, b, **call)
    fwd_peak = tracemalloc.get_traced_memory()[1] - out_bytes
    del y
    release_scratch()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    gx, gw, _ = vjp(g, (True, True, False))
    bwd_peak = tracemalloc.get_traced_memory()[1] - base - gx.nbytes - gw.nbytes
    tracemalloc.stop()
    return fwd_peak, bwd_peak, x.data.nbytes


def run_case(case, rate, repeats, backward):
    x, w_user, w, b, call, y, flops = setup(case)
    fns = [lambda: fa.conv(x, w_user, b, **call)]
    if torch is not None:
        check_against_torch(case, x, w_user, w, b, call, y)
        tx, tw, tb, kw = torch_inputs(case, x, w, b)
        fns.append(lambda: F.conv2d(tx, tw, tb, **kw))
    del y
    ts = median_interleaved(fns, repeats)
    t_ours = ts[0]
    row = dict(case=case[0], ours=t_ours, gflops=flops / t_ours / 1e9,
               torch=ts[1] if torch is not None else None)
    line = (f"{case[0]:36s} {t_ours * 1e3:8.2f} {row['gflops']:8.1f} "
            f"{100 * row['gflops'] / rate:5.0f}% ")
    line += (f"{ts[1] * 1e3:9.2f} {ts[1] / t_ours:10.2f}" if torch is not None
             else f"{'-':>9s} {'-':>10s}")
    if backward:
        vjp, g = traced_vjp(x, w_user, b, call)
        bfns = [lambda: vjp(g, (True, True, False))]
        if torch is not None:
            txr = tx.clone().requires_grad_(True)
            twr = tw.clone().requires_grad_(True)
            ty = F.conv2d(txr, twr, tb, **kw)
            tg = torch.randn(ty.shape)
            bfns.append(lambda: torch.autograd.grad(ty, (txr, twr), tg, retain_graph=True))
        bts = median_interleaved(bfns, max(3, repeats // 2))
        row["bwd"] = bts[0]
        row["bwd_torch"] = bts[1] if torch is not None else None
        line += f" | {bts[0] * 1e3:9.2f} "
        line += (f"{bts[1] * 1e3:9.2f} {bts[1] / bts[0]:10.2f}" if torch is not None
                 else f"{'-':>9s} {'-':>10s}")
    return row, line


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--cases", default="")
    ap.add_argument("--block", type=int, default=1,
                    help="consecutive calls per turn of the interleaving (default 1)")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="milliseconds idle before each turn (default 0)")
    ap.add_argument("--warm", action="store_true",
                    help="one untimed call at the start of each turn")
    ap.add_argument("--steady", action="store_true",
                    help="each library in its own steady state: --block 5 --gap 30 --warm")
    args = ap.parse_args(argv)
    global BLOCK, GAP, WARM
    if args.steady:
        args.block, args.gap, args.warm = max(args.block, 5), max(args.gap, 30.0), True
    BLOCK = max(1, args.block)
    GAP = max(0.0, args.gap) / 1e3
    WARM = args.warm
    repeats = 5 if args.quick else 11
    nthreads = None
    try:
        from threadpoolctl import threadpool_info

        nthreads = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    except Exception:
        nthreads = os.cpu_count()
    if torch is not None:
        torch.set_num_threads(nthreads)
    print(f"fmtarray {fa.__version__} | numpy {np.__version__} | torch "
          f"{torch.__version__ if torch else 'not installed'} | Python {platform.python_version()}")
    print(f"BLAS: {blas_info()}")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"WARNING: {var}={os.environ[var]} is set; run with env -u {var}")
    print(f"threads: {nthreads} (numpy workers/BLAS and torch), cpus: {os.cpu_count()}; "
          f"interleaving: {BLOCK} timed call(s) per turn, {GAP * 1e3:g} ms idle before each turn"
          + (", one untimed call first" if WARM else ""))
    rate = gemm_rate(repeats)
    print(f"float32 GEMM rate (2048^3 matmul): {rate:.1f} GFLOP/s")
    # OpenBLAS's own threads (used by that multi-threaded matmul, never by fmtarray's
    # conv, which holds BLAS at one thread) spin for a while after a call and would
    # slow torch's first measurements: let them go to sleep
    time.sleep(1.0)
    sel = [int(i) for i in args.cases.split(",") if i] or range(len(CASES))
    rows = []
    hdr = (f"{'case':36s} {'ours ms':>8s} {'GFLOP/s':>8s} {'%GEMM':>6s} {'torch ms':>9s} "
           f"{'torch/ours':>10s}")
    if not args.no_backward:
        hdr += f" | {'bwd ours':>9s} {'bwd torch':>9s} {'torch/ours':>10s}"
    print(hdr)
    for i in sel:
        row, line = run_case(CASES[i], rate, repeats, not args.no_backward)
        print(line, flush=True)
        rows.append(row)
        gc.collect()
    if torch is not None and rows:
        r = [row["torch"] / row["ours"] for row in rows]
        gm = math.exp(sum(math.log(v) for v in r) / len(r))
        print(f"forward  geomean torch/ours = {gm:.2f} (min {min(r):.2f})")
        if not args.no_backward:
            rb = [row["bwd_torch"] / row["bwd"] for row in rows]
            gmb = math.exp(sum(math.log(v) for v in rb) / len(rb))
            print(f"backward geomean torch/ours = {gmb:.2f} (min {min(rb):.2f})")
    if not args.no_memory:
        from fmtarray._kernels.conv import current

        WORKSPACE_BYTES = current().workspace_bytes

        print(f"peak extra memory (tracemalloc; beyond input, output/gradients and weights), "
              f"workspace budget {WORKSPACE_BYTES / 2**20:.0f} MiB per buffer:")
        for batch in (32, 256):
            fwd, bwd, xin = peak_extra_memory(CASES[0], batch)
            print(f"  {CASES[0][0].replace('b32', f'b{batch}'):36s} input {xin / 2**20:7.1f} MiB | "
                  f"forward +{fwd / 2**20:6.1f} MiB | backward +{bwd / 2**20:6.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
