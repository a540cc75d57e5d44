"""Per-call overhead of fmtarray on tiny arrays versus the same raw NumPy call.

Prints a table in microseconds (median of repeated timings).  Run with
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/overhead.py``.
"""

from __future__ import annotations

import platform
import statistics
import timeit

import numpy as np

import fmtarray as fa


def per_call_us(fn, number=20000, repeat=15):
    times = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(times) / number * 1e6


def main():
    a = np.random.default_rng(0).standard_normal((4, 4, 2, 2)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((4, 4, 2, 2)).astype(np.float32)
    x = fa.FormattedArray(a, "SSCB")
    y = fa.FormattedArray(b, "SSCB")
    c = fa.FormattedArray(np.ones((2,), np.float32), "C")
    zero = np.float32(0)
    cases = [
        ("x + y (same format)", lambda: x + y, lambda: a + b),
        ("x + c (label broadcast C)", lambda: x + c, lambda: a + np.ones((2,), np.float32)[None, None, :, None]),
        ("relu(x)", lambda: fa.relu(x), lambda: np.where(a > zero, a, np.zeros_like(a))),
        ('sum(x, "S")', lambda: fa.sum(x, "S"), lambda: np.sum(a, axis=(0, 1))),
    ]
    print(f"fmtarray {fa.__version__} overhead, numpy {np.__version__}, Python {platform.python_version()}")
    print(f"{'operation':30s} {'fmtarray µs':>12s} {'numpy µs':>10s} {'added µs':>10s}")
    for name, f_fa, f_np in cases:
        t_fa = per_call_us(f_fa)
        t_np = per_call_us(f_np)
        print(f"{name:30s} {t_fa:12.2f} {t_np:10.2f} {t_fa - t_np:10.2f}")


if __name__ == "__main__":
    main()
