"""Elementwise ops and reductions: fmtarray against each library's own call.

Run on the benchmark machine with the OpenBLAS override unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/elementwise.py

On 4 M float32 values (``x``: ``SSCB`` 64×64×32×32, canonical layout; ``c``: one
value per channel, format ``C``) it times, for NumPy, torch and JAX (each when
installed):

* ``relu``: ``numpy.maximum(x, 0)`` / ``torch.relu`` / ``jax.nn.relu`` against
  ``fmtarray.relu``;
* ``sigmoid``: ``1 / (1 + exp(-x))`` / ``torch.sigmoid`` / ``jax.nn.sigmoid``;
* ``exp``;
* ``x * c`` with label broadcasting: the library's ``x * c[:, None]`` against
  ``x * c`` on FormattedArrays (``c`` aligned to ``C`` by its label);
* ``sum(x, "S")``: the library's sum over axes 0 and 1.

Each time is the median of interleaved repeats (library, fmtarray, library, ...,
the order flipped every turn), taken in rounds over all cases (so that a burst of
load from other processes does not fall on one case), in one process, with 2
threads for torch (and for XLA's CPU client, unless ``XLA_FLAGS`` says otherwise). JAX results are waited for
(``block_until_ready``) inside the timed region on both sides. The ratio is
library-time / fmtarray-time (1.0: no cost for the labels; the target is ≥ 0.67).

Options: ``--repeats N`` (per case, default 60), ``--rounds R`` (default 6),
``--libs numpy,torch``, ``--threads N``
(torch's thread count, default 2: on a busy 2-core machine a 2-thread torch call
waits for its second thread, so ``--threads 1`` shows the ratio without that wait).
"""

from __future__ import annotations

import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2"
)

# torch first: imported after NumPy's BLAS has started its threads, torch's own
# thread pool runs several times slower on this machine (see benchmarks/conv.py)
try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import fmtarray as fa  # noqa: E402
from fmtarray import FormattedArray  # noqa: E402

SHAPE = (64, 64, 32, 32)  # SSCB, 4 194 304 values


def interleaved(f_native, f_ours, repeats, tn, to):
    """Append ``repeats`` timings (seconds) of each to ``tn`` / ``to``, taken
    alternately (the order flips every turn)."""
    for i in range(repeats):
        pair = ((f_native, tn), (f_ours, to)) if i % 2 == 0 else ((f_ours, to), (f_native, tn))
        for f, acc in pair:
            t0 = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t0)


def _cases(lib, a, c):
    """``(op, native call, fmtarray call)`` for the library ``lib``."""
    if lib == "numpy":
        x, cv = a, c
        ready = _identity
        relu, sigmoid = (lambda v: np.maximum(v, 0)), (lambda v: 1 / (1 + np.exp(-v)))
        exp, total = np.exp, (lambda v: np.sum(v, axis=(0, 1)))
    elif lib == "torch":
        x, cv = torch.from_numpy(a.copy()), torch.from_numpy(c.copy())
        ready = _identity
        relu, sigmoid, exp = torch.relu, torch.sigmoid, torch.exp
        total = lambda v: torch.sum(v, dim=(0, 1))  # noqa: E731
    else:
        import jax
        import jax.numpy as jnp

        x, cv = jnp.asarray(a), jnp.asarray(c)
        ready = _block
        relu, sigmoid, exp = jax.nn.relu, jax.nn.sigmoid, jnp.exp
        total = lambda v: jnp.sum(v, axis=(0, 1))  # noqa: E731
    fx, fc = FormattedArray(x, "SSCB"), FormattedArray(cv, "C")
    c_col = cv[:, None]
    return [
        ("relu", lambda: ready(relu(x)), lambda: ready(fa.relu(fx).data)),
        ("sigmoid", lambda: ready(sigmoid(x)), lambda: ready(fa.sigmoid(fx).data)),
        ("exp", lambda: ready(exp(x)), lambda: ready(fa.exp(fx).data)),
        ("x * c (label broadcast)", lambda: ready(x * c_col), lambda: ready((fx * fc).data)),
        ('sum(x, "S")', lambda: ready(total(x)), lambda: ready(fa.sum(fx, "S").data)),
    ]


def _identity(v):
    return v


def _block(v):
    return v.block_until_ready()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--libs", default="numpy,torch,jax")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    libs = [lib for lib in args.libs.split(",") if lib]
    if torch is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal(SHAPE, dtype=np.float32)
    c = rng.standard_normal(SHAPE[2], dtype=np.float32)
    versions = [f"numpy {np.__version__}"]
    if torch is not None:
        versions.append(f"torch {torch.__version__}")
    if importlib.util.find_spec("jax") is not None:
        import jax

        versions.append(f"jax {jax.__version__}")
    print(f"fmtarray {fa.__version__}, {', '.join(versions)}, Python {platform.python_version()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"{np.prod(SHAPE)} float32 values (SSCB {'x'.join(map(str, SHAPE))}), "
          f"median of {args.rounds} rounds x {-(-args.repeats // args.rounds)} interleaved "
          f"repeats, {args.threads} torch threads, "
          f"{os.cpu_count()} CPUs, "
          f"load average {load} (other processes skew the medians: rerun on a quiet machine)")
    print()
    cases = []
    for lib in libs:
        if lib == "torch" and torch is None or lib == "jax" and importlib.util.find_spec("jax") is None:
            print(f"({lib} is not installed)")
            continue
        cases += [(lib, op, fn, fo, [], []) for op, fn, fo in _cases(lib, a, c)]
    for _, _, fn, fo, _, _ in cases:  # warm-up: compilation caches, allocator, thread pools
        for _ in range(3):
            fn()
            fo()
    # rounds over all cases, so that a burst of load from other processes spreads over
    # every case instead of falling on one
    per = max(1, -(-args.repeats // args.rounds))
    for _ in range(args.rounds):
        for _, _, fn, fo, tn, to in cases:
            interleaved(fn, fo, per, tn, to)
    print("| library | op | native ms | fmtarray ms | native / fmtarray |")
    print("| --- | --- | ---: | ---: | ---: |")
    for lib, op, _, _, tn, to in cases:
        mn, mo = statistics.median(tn), statistics.median(to)
        print(f"| {lib} | {op} | {mn * 1e3:.2f} | {mo * 1e3:.2f} | {mn / mo:.2f} |")

if __name__ == "__main__":
    main()
