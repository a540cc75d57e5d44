"""fmtarray's convolution on each array library against that library's own call.

For numpy, torch and jax (plus torch-cuda and cupy when a GPU is present), the nine
cases of ``benchmarks/conv.py``, forward and backward (input + weight gradient), in
one process, interleaved (fmtarray, native, fmtarray, native, ...), medians::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/backends.py [--steady]

What is compared, per library (the data in the layout a user of that library holds):

* **torch**: NCHW tensors (``(B, C, S, T)`` for the SCBT case, ``(B, T, C, H, W)`` for
  SSCBT) formatted ``"BCSS"`` / ``"BCST"`` / ``"BTCSS"``, weights in MATLAB's layout (as the
  layers hold them) — against ``F.conv2d`` on the same tensors with torch-layout weights.
  Backward: the op's recorded VJP (what ``fmtarray.grad`` runs after the forward:
  format handling + the registry's backward) against ``torch.autograd.grad`` of the
  same graph (input and weight gradients).
* **jax**: NHWC arrays formatted ``"BSSC"`` (``"BSTC"``, ``"BTSSC"``), fmtarray's call
  inside ``jax.jit`` returning the user's order (``stripdims``), against a jitted
  ``lax.conv_general_dilated`` (``NHWC``/``HWIO``) plus bias. Backward: jitted
  ``jax.vjp`` of each with respect to ``x`` and ``w``.
* **numpy**: the canonical ``SSCB`` FormattedArray (as ``benchmarks/conv.py``) against
  torch's ``F.conv2d`` on contiguous NCHW copies (NumPy has no convolution of its own).
* **torch-cuda** / **cupy** (only with a GPU): as torch, on CUDA tensors / CuPy arrays,
  against ``F.conv2d`` on CUDA tensors; timed with device synchronisation.

Threads: 2 for torch (``--threads``); JAX/XLA and NumPy's BLAS use the machine's cores
(2 on the project machine). Each library is imported before fmtarray touches NumPy's
BLAS (see ``benchmarks/conv.py``). ``--steady``: 5 timed calls per turn, 30 ms idle and
one untimed call before each turn (each library in its own steady state). The ratio
column is native-time / fmtarray-time (> 1: fmtarray faster); GFLOP/s counts
direct-method FLOPs at fmtarray's (median) time; ``algo`` is the registry's forward
choice. Each row also gives the ratio of the two fastest turns ("best-turn"): on a
shared machine other processes only add time, so it is the least disturbed estimate;
``--repeats`` raises the number of turns.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "")
try:  # torch first (see benchmarks/conv.py)
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - optional
    torch = None
try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError:  # pragma: no cover - optional
    jax = None

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmtarray as fa  # noqa: E402
from conv import CASES  # noqa: E402  (the nine cases: one table for both benchmarks)
from fmtarray import FormattedArray, _tape  # noqa: E402

BLOCK, GAP, WARM = 1, 0.0, False

# per case: the user's format and the permutation taking the canonical data to it
USER = {  # library family -> {canonical format: (user format, canonical -> user perm)}
    "nchw": {"SSCB": ("BCSS", (3, 2, 0, 1)), "SCBT": ("BCST", (2, 1, 0, 3)),
             "SSCBT": ("BTCSS", (3, 4, 2, 0, 1))},
    "nhwc": {"SSCB": ("BSSC", (3, 0, 1, 2)), "SCBT": ("BSTC", (2, 0, 3, 1)),
             "SSCBT": ("BTSSC", (3, 4, 0, 1, 2))},
}


def median_interleaved(fns, repeats, sync=None):
    """``(median, min)`` seconds of each function, run round-robin (see
    benchmarks/conv.py). The minimum is printed too: on a shared machine other
    processes only ever add time, so the fastest turn is the least disturbed one."""
    sync = sync or (lambda r: r)
    times = [[] for _ in fns]
    for f in fns:
        sync(f())
        sync(f())
    for _ in range(repeats):
        for i, f in enumerate(fns):
            if GAP:
                time.sleep(GAP)
            if WARM:
                sync(f())
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                sync(f())
                times[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), min(t)) for t in times]


def case_data(case):
    """NumPy data: canonical x, MATLAB weights (*k, Cg, Fg, G), bias; FLOPs."""
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((*k, C // G, Fo // G, G), dtype=np.float32) / math.sqrt(
        k[0] * k[1] * C / G)
    b = rng.standard_normal(Fo, dtype=np.float32)
    sp = [shape[i] for i, c in enumerate(fmt) if c == "S"]
    if fmt == "SCBT":
        sp.append(shape[3])
    n = math.prod(s for s, c in zip(shape, fmt) if c == "B" or (c == "T" and fmt != "SCBT"))
    st = kwargs.get("stride", 1)
    pad = kwargs.get("padding", 0)
    dl = kwargs.get("dilation_factor", 1)
    out = [(s + 2 * pad - (kk - 1) * dl - 1) // st + 1 if pad != "same" else s
           for s, kk in zip(sp, k)]
    flops = 2 * n * math.prod(out) * Fo * k[0] * k[1] * (C // G)
    return x, w, b, flops


def matlab_user_weights(w, G):
    return w[..., 0] if G == 1 else w


def torch_weights(w, case):
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    return np.ascontiguousarray(np.moveaxis(w, (-1, -2, -3), (0, 1, 2)).reshape(Fo, C // G, *k))


def native_kwargs(case):
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    return dict(stride=kwargs.get("stride", 1), padding=kwargs.get("padding", 0),
                dilation=kwargs.get("dilation_factor", 1), groups=G)


def nchw_of(case, xd):
    """The torch user's tensor data and the (N, C, H, W) view handed to F.conv2d."""
    fmt = case[1]
    ufmt, perm = USER["nchw"][fmt]
    user = np.ascontiguousarray(np.transpose(xd, perm))
    return ufmt, user


def traced(x, w, b, call):
    """Forward with x and w traced; the recorded VJP closure and the output."""
    xt = FormattedArray._wrap(x._data, x._fmt)
    xt._node = _tape.leaf(x.shape, x.dtype, "x")
    wt = FormattedArray._wrap(w, "")
    wt._node = _tape.leaf(tuple(w.shape), w.dtype, "w")
    y = fa.conv(xt, wt, b, **call)
    return y._node.vjp, y


# ---------------------------------------------------------------------------------------
# one library


def bench_torch_like(case, device, repeats, backward, wrap=None, label="torch"):
    """torch on ``device`` (``wrap`` converts the fmtarray side's arrays, e.g. to CuPy)."""
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    xd, w, b, flops = case_data(case)
    ufmt, user = nchw_of(case, xd)
    tx = torch.from_numpy(user).to(device)
    nchw = tx.reshape(-1, *tx.shape[-3:]) if fmt == "SSCBT" else tx
    tw = torch.from_numpy(torch_weights(w, case)).to(device)
    tb = torch.from_numpy(b).to(device)
    mw = torch.from_numpy(np.ascontiguousarray(matlab_user_weights(w, G))).to(device)
    kw = native_kwargs(case)
    call = dict(kwargs, weights_format=wfmt)
    conv = wrap or (lambda a: a)
    X = FormattedArray(conv(tx), ufmt)
    W, B = conv(mw), conv(tb)
    cuda = device != "cpu"
    sync = (lambda r: (torch.cuda.synchronize(), r)[1]) if cuda else None
    y = fa.conv(X, W, B, **call)
    ty = F.conv2d(nchw, tw, tb, **kw)
    mine = fa.stripdims(y, ufmt).data
    mine = (torch.from_dlpack(mine) if wrap else mine).reshape(ty.shape)
    err = float((mine - ty).abs().max() / ty.abs().max())
    assert err < 1e-4, f"{label} {name}: fmtarray differs from F.conv2d, rel err {err:.1e}"
    algo = fa.conv_plan(X, W, B, **call).chosen()["forward"]
    fwd = median_interleaved([lambda: fa.conv(X, W, B, **call),
                              lambda: F.conv2d(nchw, tw, tb, **kw)], repeats, sync)
    row = dict(lib=label, case=name, algo=algo, flops=flops, fwd=fwd)
    if backward:
        vjp, yt = traced(X, W, B, call)
        # the cotangent stored like the output (as a downstream op would give it)
        g = wrap(torch.randn(tuple(yt.shape), device=device)) if wrap else \
            torch.randn_like(yt.data)
        txr = nchw.detach().clone().requires_grad_(True)
        twr = tw.detach().clone().requires_grad_(True)
        tyr = F.conv2d(txr, twr, tb, **kw)
        tg = torch.randn_like(tyr)
        row["bwd"] = median_interleaved(
            [lambda: vjp(g, (True, True, False)),
             lambda: torch.autograd.grad(tyr, (txr, twr), tg, retain_graph=True)],
            max(3, repeats // 2 + 1), sync)
    return row


def bench_numpy(case, repeats, backward):
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    xd, w, b, flops = case_data(case)
    X = FormattedArray(xd, fmt)
    W = matlab_user_weights(w, G)
    call = dict(kwargs, weights_format=wfmt)
    ufmt, user = nchw_of(case, xd)
    tx = torch.from_numpy(user)
    nchw = tx.reshape(-1, *tx.shape[-3:]) if fmt == "SSCBT" else tx
    tw, tb = torch.from_numpy(torch_weights(w, case)), torch.from_numpy(b)
    kw = native_kwargs(case)
    algo = fa.conv_plan(X, W, b, **call).chosen()["forward"]
    fwd = median_interleaved([lambda: fa.conv(X, W, b, **call),
                              lambda: F.conv2d(nchw, tw, tb, **kw)], repeats)
    row = dict(lib="numpy", case=name, algo=algo, flops=flops, fwd=fwd)
    if backward:
        vjp, yt = traced(X, W, b, call)
        g = np.random.default_rng(1).standard_normal(yt.shape, dtype=np.float32)
        txr = nchw.clone().requires_grad_(True)
        twr = tw.clone().requires_grad_(True)
        tyr = F.conv2d(txr, twr, tb, **kw)
        tg = torch.randn_like(tyr)
        row["bwd"] = median_interleaved(
            [lambda: vjp(g, (True, True, False)),
             lambda: torch.autograd.grad(tyr, (txr, twr), tg, retain_graph=True)],
            max(3, repeats // 2 + 1))
    return row


def bench_jax(case, repeats, backward):
    name, fmt, shape, k, C, Fo, G, kwargs, wfmt = case
    xd, w, b, flops = case_data(case)
    ufmt, perm = USER["nhwc"][fmt]
    jx = jnp.asarray(np.ascontiguousarray(np.transpose(xd, perm)))
    jw_m = jnp.asarray(np.ascontiguousarray(matlab_user_weights(w, G)))
    # HWIO: (*k, Cg, F) with output channel g * Fg + j
    jw = jnp.asarray(np.ascontiguousarray(np.moveaxis(w, -1, -2).reshape(*k, C // G, Fo)))
    jb = jnp.asarray(b)
    st = kwargs.get("stride", 1)
    dl = kwargs.get("dilation_factor", 1)
    p = kwargs.get("padding", 0)
    padding = "SAME" if p == "same" else [(p, p), (p, p)]
    call = dict(kwargs, weights_format=wfmt)

    def native(x, w, b):
        x4 = x.reshape(-1, *x.shape[-3:]) if fmt == "SSCBT" else x
        y = lax.conv_general_dilated(x4, w, (st, st), padding, rhs_dilation=(dl, dl),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=G)
        return (y + b).reshape(*x.shape[:-3], *y.shape[1:])

    def ours(x, w, b):
        y = fa.conv(FormattedArray(x, ufmt), w, b, **call)
        return fa.stripdims(y, ufmt).data

    fn, fo = jax.jit(native), jax.jit(ours)
    yn, yo = fn(jx, jw, jb), fo(jx, jw_m, jb)
    err = float(jnp.max(jnp.abs(yn - yo)) / jnp.max(jnp.abs(yn)))
    assert err < 1e-4, f"jax {name}: fmtarray differs from lax, rel err {err:.1e}"
    algo = fa.conv_plan(FormattedArray(jx, ufmt), jw_m, jb, **call).chosen()["forward"]
    sync = lambda r: jax.block_until_ready(r)  # noqa: E731
    fwd = median_interleaved([lambda: fo(jx, jw_m, jb), lambda: fn(jx, jw, jb)], repeats, sync)
    row = dict(lib="jax", case=name, algo=algo, flops=flops, fwd=fwd)
    if backward:
        g = jnp.asarray(np.random.default_rng(1).standard_normal(yn.shape, dtype=np.float32))

        def vjp_of(f):
            return jax.jit(lambda x, w, b, g: jax.vjp(lambda x, w: f(x, w, b), x, w)[1](g))

        bn, bo = vjp_of(native), vjp_of(ours)
        gn, go = bn(jx, jw, jb, g), bo(jx, jw_m, jb, g)
        err = float(jnp.max(jnp.abs(gn[0] - go[0])) / jnp.max(jnp.abs(gn[0])))
        assert err < 1e-4, f"jax {name}: input gradients differ, rel err {err:.1e}"
        row["bwd"] = median_interleaved([lambda: bo(jx, jw_m, jb, g), lambda: bn(jx, jw, jb, g)],
                                        max(3, repeats // 2 + 1), sync)
    return row


# ---------------------------------------------------------------------------------------
# report


def geomean(v):
    return math.exp(sum(math.log(a) for a in v) / len(v)) if v else float("nan")


def print_table(rows, backward):
    native = {"numpy": "torch", "torch": "torch", "jax": "lax", "torch-cuda": "torch",
              "cupy": "torch"}
    print(f"\n{'library':10s} {'dir':4s} {'case':36s} {'native':>7s} {'ms':>8s} "
          f"{'fmtarray ms':>11s} {'native/fa':>9s} {'GFLOP/s':>8s} {'best-turn ratio':>15s}  algo")
    summary = []
    for lib in dict.fromkeys(r["lib"] for r in rows):
        for d in ("fwd", "bwd") if backward else ("fwd",):
            ratios, best = [], []
            for r in (r for r in rows if r["lib"] == lib and d in r):
                (ours, ours_min), (nat, nat_min) = r[d]
                ratios.append(nat / ours)
                best.append(nat_min / ours_min)
                gf = r["flops"] * (1 if d == "fwd" else 2) / ours / 1e9
                print(f"{lib:10s} {d:4s} {r['case']:36s} {native[lib]:>7s} {nat * 1e3:8.2f} "
                      f"{ours * 1e3:11.2f} {ratios[-1]:9.2f} {gf:8.1f} {best[-1]:15.2f}  "
                      f"{r['algo']}")
            if ratios:
                summary.append((lib, d, geomean(ratios), min(ratios), geomean(best), min(best)))
    print("\ngeomean native/fmtarray (lowest case): medians | best turns")
    for lib, d, gm, mn, gb, mb in summary:
        print(f"  {lib:10s} {d}: {gm:.2f} ({mn:.2f}) | {gb:.2f} ({mb:.2f})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", default="numpy,torch,jax,torch-cuda,cupy")
    ap.add_argument("--cases", default="", help="indices into benchmarks/conv.py's CASES")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block", type=int, default=1)
    ap.add_argument("--gap", type=float, default=0.0, help="ms idle before each turn")
    ap.add_argument("--warm", action="store_true")
    ap.add_argument("--steady", action="store_true", help="--block 5 --gap 30 --warm")
    args = ap.parse_args(argv)
    global BLOCK, GAP, WARM
    if args.steady:
        args.block, args.gap, args.warm = max(args.block, 5), max(args.gap, 30.0), True
    BLOCK, GAP, WARM = max(1, args.block), args.gap / 1e3, args.warm
    repeats = args.repeats or (5 if args.quick else 11)
    libs = [s for s in args.libs.split(",") if s]
    if torch is not None:
        torch.set_num_threads(args.threads)
    gpu = torch is not None and torch.cuda.is_available()
    try:
        import cupy
        has_cupy = gpu and cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        cupy, has_cupy = None, False
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | fmtarray "
          f"{fa.__version__} | numpy {np.__version__} | torch "
          f"{torch.__version__ if torch else '-'} | jax {jax.__version__ if jax else '-'} | "
          f"Python {platform.python_version()} | cpus {os.cpu_count()} | load "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"torch threads {args.threads}; GPU: "
          f"{torch.cuda.get_device_name() if gpu else 'none'}; interleaving: {BLOCK} call(s) "
          f"per turn, {GAP * 1e3:g} ms gap{', warm call' if WARM else ''}; {repeats} turns")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"WARNING: {var}={os.environ[var]} is set; run with env -u {var}")
    sel = [int(i) for i in args.cases.split(",") if i] or range(len(CASES))
    runners = {
        "numpy": (torch is not None, lambda c, r, b: bench_numpy(c, r, b)),
        "torch": (torch is not None, lambda c, r, b: bench_torch_like(c, "cpu", r, b)),
        "jax": (jax is not None, bench_jax),
        "torch-cuda": (gpu, lambda c, r, b: bench_torch_like(c, "cuda", r, b,
                                                             label="torch-cuda")),
        "cupy": (has_cupy, lambda c, r, b: bench_torch_like(
            c, "cuda", r, b, wrap=lambda t: cupy.from_dlpack(t), label="cupy")),
    }
    rows = []
    for lib in libs:
        ok, run = runners[lib]
        if not ok:
            print(f"{lib}: skipped (not available)")
            continue
        for i in sel:
            row = run(CASES[i], repeats, not args.no_backward)
            rows.append(row)
            line = (f"{lib:10s} {CASES[i][0]:36s} fwd {row['fwd'][0][0] * 1e3:8.2f} / "
                    f"{row['fwd'][1][0] * 1e3:8.2f} ms")
            if "bwd" in row:
                line += (f" | bwd {row['bwd'][0][0] * 1e3:8.2f} / "
                         f"{row['bwd'][1][0] * 1e3:8.2f} ms")
            print(line + f" (fmtarray / native) {row['algo']}", flush=True)
            gc.collect()
    print_table(rows, not args.no_backward)
    return 0


if __name__ == "__main__":
    sys.exit(main())
