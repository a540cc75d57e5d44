"""Convolution throughput of ``fmtarray.conv`` (NumPy backend) versus torch's
``conv2d`` / ``conv3d``: forward, training step and VJP, per input memory layout.

Run on the benchmark machine with the OpenBLAS override unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv.py [--steady]

Cases (:mod:`_conv_cases`): the nine earlier ones plus a 1×1 GEMM case, a 5×5 stride-2
case, a grouped case (4 groups), a 3-D case (``SSSCB``, against ``conv3d``) and the
first case in float64. Each runs in both input layouts (``--layout``):

* ``nhwc`` — NumPy data in channels-last memory (batch outermost), formatted
  ``"BSSC"`` (``"BSSSC"``, ``"BSTC"``, ``"BTSSC"``);
* ``canonical`` — fmtarray's canonical, C-contiguous layout (``SSCB``, ...).

torch always gets contiguous ``NCHW`` (``NCDHW``) tensors with the same values; both
libraries use the same thread count and dtype; inputs are prepared outside the timed
region, and every case is checked against torch first (output and gradients). Columns,
each the median of interleaved repeats (ours, torch, ours, ...), ratio = torch-time /
our-time (> 1: we are faster):

* **fwd** — ``fa.conv(x, w, b)`` against ``conv2d(x, w, b)``; GFLOP/s counts
  direct-method FLOPs (``2·outputs·taps·C/groups``, whatever algorithm ran) and %GEMM
  is that rate over the 2048³ ``matmul`` rate of the same dtype in this process;
* **step** — what a training step pays: ``fa.grad`` of ``sum(conv(x, w, b) * g)`` with
  respect to x and w (forward included), against torch autograd's forward,
  ``(y * g).sum()`` and ``backward()`` to x and w, on the same data;
* **vjp** — the conv's recorded VJP alone (input + weight gradient, what ``fa.grad``
  runs after the forward) against ``torch.autograd.grad`` of the same graph: the
  earlier benchmark's backward figure.

Regimes: default, one call per turn (each call starts right after the other library's,
whose threads may still spin: torch's OpenMP worker spins for milliseconds after a call,
and fmtarray's phases run on that same libgomp team while it is awake); ``--steady`` (``--block 5 --gap 30 --warm``: per turn
30 ms idle, one untimed call, 5 timed calls: each library in its own steady state).
Every case is measured in ``--rounds`` rounds (default 3) that each go over all the
cases, its medians taken over the turns of all its rounds: a burst of load from other
tenants of the VM, or a state of the scheduler that lasts a second or two (torch's
spinning worker sharing a vCPU with ours), then falls on a third of a case's turns,
not on all of them. The summary per layout gives the geometric means and minima and the issue's targets
(forward geomean ≥ 1.0 and no case below 0.7; training step geomean ≥ 1.0 and no case
below 0.6) as met / not met, with the BLAS kernel (threadpoolctl), the numba version
and whether the compiled kernels are on (``FMTARRAY_NUMBA``).

Options: ``--quick`` (3 repeats, the cases marked quick, no memory: under a minute),
``--cases 0,3,depthwise`` (indices or name substrings), ``--layout nhwc|canonical|both``,
``--no-backward``, ``--no-vjp``, ``--no-memory``, ``--chain`` (also time
``conv → relu → conv`` and show the intermediate's memory order), ``--markdown`` (the tables again as
Markdown at the end), ``--repeats N`` (turns per case over all rounds), ``--rounds R``,
``--block``/``--gap``/``--warm`` (see :func:`median_interleaved`).
"""

from __future__ import annotations

# torch first: imported after NumPy's BLAS has started its threads, torch's own thread
# pool runs several times slower on this machine, which would flatter us
try:
    import torch
except ImportError:  # pragma: no cover - torch is optional for the import, not the run
    torch = None

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fmtarray as fa  # noqa: E402
from _conv_cases import CASES as ALL_CASES, LAYOUTS, LEGACY_CASES, Chain, Data, select  # noqa: E402

#: the nine earlier cases as 9-tuples, for ``benchmarks/backends.py``
CASES = LEGACY_CASES

#: calls per turn in :func:`median_interleaved` (``--block``)
BLOCK = 1
#: idle seconds before each turn (``--gap``)
GAP = 0.0
#: one untimed call at the start of each turn (``--warm``)
WARM = False

#: the issue's targets: (geomean at least, no case below)
TARGETS = {"fwd": (1.0, 0.7), "step": (1.0, 0.6)}
COLUMNS = {"fwd": "forward", "step": "training step (fa.grad, forward included)",
           "vjp": "VJP only (input + weight gradient)"}


def timed_interleaved(fns, repeats):
    """The times of each function, running them round-robin ``repeats`` times.

    With ``BLOCK = b > 1`` each turn is ``b`` consecutive calls (ours ×b, torch ×b,
    ...; ``repeats`` turns each): steady-state timings of each library on its own,
    still interleaved against drift of the machine. With ``b = 1`` (default) the
    call right after the other library's carries its after-effects (torch's OpenMP
    threads keep spinning for a while after each call and take a core from the
    next, non-spinning, caller on a 2-core machine)."""
    times = [[] for _ in fns]
    for f in fns:
        f()  # warm-up (and, for a compiled kernel, its first-call compile or cache load)
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
    return times


def median_interleaved(fns, repeats):
    """Median time of each function over :func:`timed_interleaved`'s turns."""
    return [statistics.median(t) for t in timed_interleaved(fns, repeats)]


def gemm_rate(repeats, dtype):
    n = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
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


def numba_info():
    """numba's version (without importing it) and whether fmtarray's compiled kernels run."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("numba")
    except PackageNotFoundError:
        ver = "not installed"
    env = os.environ.get("FMTARRAY_NUMBA")
    try:
        from fmtarray._kernels.conv._numba import unavailable
    except ImportError:
        state = "no compiled kernels in this fmtarray"
    else:
        why = unavailable()
        state = "compiled kernels ON" if why is None else f"compiled kernels OFF ({why})"
    return f"numba {ver}; FMTARRAY_NUMBA={'unset' if env is None else env}: {state}"


def peak_extra_memory(case, batch):
    """Peak traced allocation of one forward and one VJP, minus the results."""
    shape = list(case.shape)
    shape[case.fmt.index("B")] = batch
    d = Data(replace(case, shape=tuple(shape)), "canonical")
    vjp = d.vjp_closure()
    out_bytes = d.y.data.nbytes
    d.y = None
    gc.collect()
    # scratch buffers kept from earlier calls would otherwise escape the measurement
    from fmtarray._kernels.conv._numpy import release_scratch

    release_scratch()
    tracemalloc.start()
    y = d.forward()
    fwd_peak = tracemalloc.get_traced_memory()[1] - out_bytes
    del y
    release_scratch()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    gx, gw, _ = vjp()
    bwd_peak = tracemalloc.get_traced_memory()[1] - base - gx.nbytes - gw.nbytes
    tracemalloc.stop()
    return fwd_peak, bwd_peak, d.x.data.nbytes


class CaseRun:
    """One case in one layout, timed a part of its turns per round (:meth:`measure`);
    :meth:`row` gives the medians over all of them (seconds, ratios, algorithms)."""

    def __init__(self, case, layout, kinds):
        self.d = d = Data(case, layout)
        d.check("step" in kinds)
        self.case, self.kinds = case, kinds
        self.fns = {"fwd": (d.forward, d.torch_forward)}
        if "step" in kinds:
            self.fns["step"] = (d.train_step, d.torch_train_step)
        if "vjp" in kinds:
            self.fns["vjp"] = (d.vjp_closure(), d.torch_vjp_closure())
        self.times = {k: ([], []) for k in self.fns}
        self.base = dict(case=case.name, layout=layout, algos=d.algorithms(),
                         dtype=case.dtype)

    def measure(self, repeats):
        """``repeats`` turns of the forward, about half as many of the others."""
        for k, (ours, theirs) in self.fns.items():
            n = repeats if k == "fwd" else max(1, (repeats + 1) // 2)
            a, b = timed_interleaved([ours, theirs], n)
            self.times[k][0].extend(a)
            self.times[k][1].extend(b)

    def row(self, rates):
        row = dict(self.base)
        for k, (a, b) in self.times.items():
            row[k] = (statistics.median(a), statistics.median(b))
        row["gflops"] = self.d.flops / row["fwd"][0] / 1e9
        row["pct_gemm"] = 100 * row["gflops"] / rates[self.case.dtype]
        return row


def run_chain(layout, repeats):
    """The conv → relu → conv chain: forward and training step, and its intermediate layout."""
    c = Chain(layout)
    c.check()
    fwd = median_interleaved([c.forward, c.torch_forward], repeats)
    step = median_interleaved([c.train_step, c.torch_train_step], max(3, repeats // 2 + 1))
    return (f"  {layout:9s} fwd {fwd[0] * 1e3:7.2f} ms, torch {fwd[1] * 1e3:7.2f} ms, "
            f"ratio {_ratio(fwd):.2f} | step {step[0] * 1e3:7.2f} ms, torch {step[1] * 1e3:7.2f} "
            f"ms, ratio {_ratio(step):.2f} | first output stored {c.intermediate_layout()} "
            f"(outermost first)")


def _ratio(pair):
    return pair[1] / pair[0]


def header(kinds):
    h = f"{'case':34s} {'ours ms':>8s} {'GFLOP/s':>7s} {'%GEMM':>5s} {'torch ms':>8s} {'ratio':>5s}"
    for k in kinds[1:]:
        h += f" | {k + ' ours':>9s} {k + ' torch':>10s} {'ratio':>5s}"
    return h


def line(row, kinds):
    o, t = row["fwd"]
    s = (f"{row['case']:34s} {o * 1e3:8.2f} {row['gflops']:7.1f} {row['pct_gemm']:4.0f}% "
         f"{t * 1e3:8.2f} {t / o:5.2f}")
    for k in kinds[1:]:
        o, t = row[k]
        s += f" | {o * 1e3:9.2f} {t * 1e3:10.2f} {t / o:5.2f}"
    return s


def _pretty(name):
    return name.replace("->", "→").replace("x", "×").replace("^3", "³")


def markdown(rows, kinds):
    cols = ["case", "ours ms", "GFLOP/s", "% GEMM", "torch ms", "torch/ours"]
    for k in kinds[1:]:
        cols += [f"{k} ours ms", f"{k} torch ms", "torch/ours"]
    out = ["| " + " | ".join(cols) + " |", "| --- |" + " ---: |" * (len(cols) - 1)]
    for r in rows:
        o, t = r["fwd"]
        cells = [_pretty(r["case"]), f"{o * 1e3:.2f}", f"{r['gflops']:.1f}",
                 f"{r['pct_gemm']:.0f}%", f"{t * 1e3:.2f}", f"**{t / o:.2f}**"]
        for k in kinds[1:]:
            o, t = r[k]
            cells += [f"{o * 1e3:.2f}", f"{t * 1e3:.2f}", f"**{t / o:.2f}**"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary(rows, kinds):
    """Geometric mean and minimum of torch/ours per column, and the targets."""
    out = []
    for k in kinds:
        r = [_ratio(row[k]) for row in rows]
        gm = math.exp(sum(math.log(v) for v in r) / len(r))
        worst = min(rows, key=lambda row: _ratio(row[k]))
        s = f"{COLUMNS[k]}: geomean torch/ours {gm:.2f}, min {min(r):.2f} ({worst['case']})"
        if k in TARGETS:
            g_min, floor = TARGETS[k]
            met = gm >= g_min and min(r) >= floor
            s += (f"; target geomean >= {g_min:g} and none below {floor:g}: "
                  f"{'MET' if met else 'NOT MET'}")
        out.append(s)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 repeats, the cases marked quick, no memory measurement")
    ap.add_argument("--cases", default="", help="comma-separated indices or name substrings")
    ap.add_argument("--layout", default="both", choices=(*LAYOUTS, "both"))
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--no-vjp", action="store_true", help="skip the VJP-only column")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--chain", action="store_true",
                    help="also time conv -> relu -> conv (forward and training step)")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables at the end")
    ap.add_argument("--repeats", type=int, default=0,
                    help="turns per case over all rounds (default 12, quick 3)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="rounds over all the cases, each timing a share of every case's "
                         "turns (default 3, quick 1)")
    ap.add_argument("--block", type=int, default=1,
                    help="consecutive calls per turn of the interleaving (default 1)")
    ap.add_argument("--gap", type=float, default=0.0,
                    help="milliseconds idle before each turn (default 0)")
    ap.add_argument("--warm", action="store_true",
                    help="one untimed call at the start of each turn")
    ap.add_argument("--steady", action="store_true",
                    help="each library in its own steady state: --block 5 --gap 30 --warm")
    args = ap.parse_args(argv)
    if torch is None:
        ap.error("torch is needed: this benchmark compares against torch's convolution")
    global BLOCK, GAP, WARM
    if args.steady:
        args.block, args.gap, args.warm = max(args.block, 5), max(args.gap, 30.0), True
    BLOCK = max(1, args.block)
    GAP = max(0.0, args.gap) / 1e3
    WARM = args.warm
    repeats = args.repeats or (3 if args.quick else 12)
    rounds = max(1, min(repeats, args.rounds or (1 if args.quick else 3)))
    cases = select(args.cases, args.quick)
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    kinds = ["fwd"] + ([] if args.no_backward else ["step"] + ([] if args.no_vjp else ["vjp"]))
    try:
        from threadpoolctl import threadpool_info

        nthreads = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    except Exception:
        nthreads = os.cpu_count()
    torch.set_num_threads(nthreads)
    mode = ("steady" if args.steady else "one call per turn" if BLOCK == 1 and not GAP
            and not WARM else "custom")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{now} | fmtarray {fa.__version__} | numpy {np.__version__} | torch {torch.__version__}"
          f" | Python {platform.python_version()}")
    print(f"BLAS: {blas_info()}")
    print(numba_info())
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"WARNING: {var}={os.environ[var]} is set; run with env -u {var}")
    if "OMP_WAIT_POLICY" in os.environ:  # a diagnostic: torch's OpenMP workers changed
        print(f"NOTE: OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} is set: torch's "
              "OpenMP workers do not run as they do by default")
    print(f"threads: {nthreads} (numpy workers/BLAS and torch), cpus: {os.cpu_count()}; "
          f"mode: {mode} ({BLOCK} timed call(s) per turn, {GAP * 1e3:g} ms idle before each "
          f"turn{', one untimed call first' if WARM else ''}), {repeats} turns per case in "
          f"{rounds} round(s) over the cases")
    rates = {dt: gemm_rate(repeats, dt) for dt in sorted({c.dtype for c in cases})}
    print("GEMM rate (2048^3 matmul): "
          + ", ".join(f"{dt} {r:.1f} GFLOP/s" for dt, r in rates.items()))
    # OpenBLAS's own threads (used by that multi-threaded matmul, never by fmtarray's
    # conv, which holds BLAS at one thread) spin for a while after a call and would
    # slow torch's first measurements: let them go to sleep
    time.sleep(1.0)
    results = {}
    for layout in layouts:
        print(f"\nlayout {layout}: input "
              + ("in channels-last memory (BSSC, BSSSC, BSTC, BTSSC)" if layout == "nhwc"
                 else "canonical and C-contiguous (SSCB, SSSCB, SCBT, SSCBT)")
              + "; torch: contiguous NCHW / NCDHW; ratio = torch/ours")
        runs = [CaseRun(case, layout, kinds) for case in cases]
        gc.collect()
        for r in range(rounds):  # each round times its share of every case's turns
            share = repeats // rounds + (r < repeats % rounds)
            for run in runs:
                run.measure(share)
            print(f"  round {r + 1}/{rounds} done", flush=True)
        print(header(kinds))
        rows = results[layout] = [run.row(rates) for run in runs]
        for row in rows:
            print(line(row, kinds), flush=True)
        del runs
        gc.collect()
    if args.chain:
        print(f"\n{Chain.name} (not in the geomeans; ratio = torch/ours):")
        for layout in layouts:
            print(run_chain(layout, repeats), flush=True)
    print(f"\nsummary ({mode}; BLAS {blas_info()}; {numba_info()}):")
    for layout, rows in results.items():
        for s in summary(rows, kinds):
            print(f"  {layout:9s} {s}")
    print("\nalgorithms (forward/input grad/weight grad):")
    for layout, rows in results.items():
        for r in rows:
            print(f"  {layout:9s} {r['case']:34s} {r['algos']}")
    if args.markdown:
        for layout, rows in results.items():
            print(f"\n{layout} ({mode}):\n\n{markdown(rows, kinds)}\n")
            for s in summary(rows, kinds):
                print(f"* {s}")
    if not (args.no_memory or args.quick):
        from fmtarray._kernels.conv import current

        print(f"\npeak extra memory (tracemalloc; beyond input, output/gradients and weights), "
              f"workspace budget {current().workspace_bytes / 2**20:.0f} MiB per buffer:")
        first = ALL_CASES[0]
        for batch in (32, 256):
            fwd, bwd, xin = peak_extra_memory(first, batch)
            print(f"  {first.name.replace('b32', f'b{batch}'):34s} input {xin / 2**20:7.1f} MiB | "
                  f"forward +{fwd / 2**20:6.1f} MiB | backward +{bwd / 2**20:6.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
