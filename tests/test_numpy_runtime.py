"""The NumPy kernels' runtime under concurrency: BLAS's process-global thread limit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fmtarray as fa

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_concurrent_convolutions_leave_blas_threads_as_they_were():
    before = _blas_threads()
    rng = np.random.default_rng(0)
    x = fa.FormattedArray(rng.standard_normal((24, 24, 16, 8)).astype(np.float32), "SSCB")
    w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = fa.extractdata(fa.conv(x, w, padding=1))
    errors = []

    def run():
        for _ in range(15):
            y = fa.extractdata(fa.conv(x, w, padding=1))
            if not np.array_equal(y, ref):
                errors.append("result changed under concurrency")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _blas_threads() == before
