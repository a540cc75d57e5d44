"""First-call latency of the compiled (Numba) convolution kernels.

Runs one float32 training step of a 3×3 16→16 convolution on NHWC data (``"BSSC"``:
the forward, both gradients; ``numba.direct`` / ``numba.direct_input_grad``), one of a
channel-wise 3×3 convolution (``numba.depthwise``) and one of a 3×3 64→64 convolution
(``numba.winograd`` / ``numba.winograd_input_grad``, the weight gradient by
``numba.direct``), in that order, in fresh processes: first with an
empty Numba cache (``NUMBA_CACHE_DIR`` a new temporary directory: the kernels are
compiled), then again with that cache (loaded), and prints the seconds of each first
step, the next step's milliseconds and the cache's size::

    python benchmarks/compile_latency.py
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fmtarray as fa
from fmtarray import FormattedArray
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = FormattedArray(rng.standard_normal((4, 16, 16, 16)).astype(np.float32), "BSSC")
x64 = FormattedArray(rng.standard_normal((4, 16, 16, 64)).astype(np.float32), "BSSC")
ws = {"dense": (x, rng.standard_normal((3, 3, 16, 16))),
      "depthwise": (x, rng.standard_normal((3, 3, 1, 1, 16))),
      "winograd": (x64, rng.standard_normal((3, 3, 64, 64)))}
out = [f"import {t1 - t0:.2f} s"]
for name, (x, w) in ws.items():
    w = FormattedArray(w.astype(np.float32))
    step = fa.grad(lambda x, w: fa.sum(fa.conv(x, w, padding=1) ** 2), argnums=(0, 1))
    a = time.perf_counter(); step(x, w); b = time.perf_counter(); step(x, w)
    c = time.perf_counter()
    plan = fa.conv_plan(x, w.data, padding=1).chosen()
    out.append(f"{name} ({plan['forward']}) first step {b - a:.2f} s, next "
               f"{(c - b) * 1e3:.1f} ms")
print("; ".join(out))
"""


def main():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("empty cache", "with cache"):
            r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                               text=True, check=True)
            print(f"{label}: {r.stdout.strip()}")
        size = sum(p.stat().st_size for p in pathlib.Path(cache).rglob("*") if p.is_file())
        print(f"cache: {size / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
