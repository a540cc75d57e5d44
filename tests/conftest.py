"""Shared test fixtures: the ``xp`` fixture runs a test over every available backend."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from fmtarray import _backend

if importlib.util.find_spec("jax") is not None:
    # float64 tests must really run in float64 on the jax backend (JAX defaults to float32)
    import jax

    jax.config.update("jax_enable_x64", True)


class Backend:
    """A backend under test: makes arrays from NumPy data and reads them back."""

    def __init__(self, name, ns, device=None, readonly=False):
        self.name = name
        self.ns = ns  # the array-API namespace (compat-wrapped where needed)
        self.device = device
        self.readonly = readonly

    def asarray(self, a, dtype=None):
        a = np.asarray(a)
        if dtype is not None:
            a = a.astype(dtype)
        if self.name.startswith("numpy"):
            a = np.array(a)
            if self.readonly:
                a.flags.writeable = False
            return a
        if self.name.startswith("array_api_strict"):
            return self.ns.asarray(a, device=self.device)
        if self.name == "torch":
            import torch

            return torch.from_numpy(np.array(a))
        if self.name == "dask":
            import dask.array as da

            return da.from_array(a, chunks=tuple(max(1, (n + 1) // 2) for n in a.shape) or ())
        if self.name == "cupy":
            import cupy

            return cupy.asarray(a)
        if self.name == "jax":
            import jax.numpy as jnp

            return jnp.asarray(a)
        raise AssertionError(self.name)

    def to_numpy(self, a):
        from fmtarray import FormattedArray

        if isinstance(a, FormattedArray):
            a = a.data
        return np.asarray(_backend.to_numpy(a))

    def __repr__(self):
        return self.name


def _backends():
    out = [pytest.param("numpy", id="numpy"), pytest.param("numpy-readonly", id="numpy-readonly")]
    out += [pytest.param("array_api_strict", id="strict"), pytest.param("array_api_strict-device1", id="strict-device1")]
    if importlib.util.find_spec("dask") is not None:
        out.append(pytest.param("dask", id="dask"))
    if importlib.util.find_spec("torch") is not None and not os.environ.get("FMTARRAY_NO_TORCH"):
        out.append(pytest.param("torch", id="torch"))
    if importlib.util.find_spec("jax") is not None:
        out.append(pytest.param("jax", id="jax"))
    if importlib.util.find_spec("cupy") is not None:
        out.append(pytest.param("cupy", id="cupy"))
    return out


def make_backend(name) -> Backend:
    if name.startswith("numpy"):
        import array_api_compat.numpy as ns

        return Backend(name, ns, readonly=name.endswith("readonly"))
    if name.startswith("array_api_strict"):
        import array_api_strict as ns

        dev = ns.Device("device1") if name.endswith("device1") else None
        return Backend(name, ns, device=dev)
    if name == "dask":
        import array_api_compat.dask.array as ns

        return Backend(name, ns)
    if name == "torch":
        import array_api_compat.torch as ns

        return Backend(name, ns)
    if name == "cupy":
        import array_api_compat.cupy as ns

        return Backend(name, ns)
    if name == "jax":
        import jax.numpy as ns

        return Backend(name, ns)
    raise AssertionError(name)


@pytest.fixture(params=_backends())
def xp(request) -> Backend:
    """A :class:`Backend` for each available array library (and device)."""
    return make_backend(request.param)


@pytest.fixture(autouse=True)
def _parallel_even_when_small():
    """The NumPy conv runs small problems on the calling thread alone; the tests' small
    problems must still exercise the multi-worker code (dynamic hand-out, per-worker
    buffers, ordered sums)."""
    from fmtarray._kernels.conv import tuning

    with tuning(serial_macs=0):
        yield


@pytest.fixture
def python_pool(monkeypatch):
    """The NumPy conv's own thread pool for every parallel phase (``FMTARRAY_POOL=python``),
    not libgomp's team: for tests of that pool's scheduling."""
    from fmtarray._kernels.conv._numpy import _omp

    monkeypatch.setattr(_omp, "_lib", [False])


@pytest.fixture
def openmp_team(monkeypatch):
    """Every parallel phase of the NumPy conv on libgomp's team, awake or not, libgomp
    loaded first as torch would (skipped where there is none, or ``FMTARRAY_POOL=python``)."""
    import ctypes

    from fmtarray._kernels.conv._numpy import _omp

    try:
        ctypes.CDLL("libgomp.so.1")  # loaded, as torch or numba's omp layer would
    except OSError:
        pytest.skip("no libgomp here")
    monkeypatch.setattr(_omp, "_lib", [])  # look again now
    if _omp.team() is None:
        pytest.skip("no libgomp team here (not Linux, or FMTARRAY_POOL=python)")
    monkeypatch.setattr(_omp, "awake", lambda n: True)


@pytest.fixture
def numpy_entries(monkeypatch):
    """The BLAS/NumPy convolution entries only (``FMTARRAY_NUMBA=0``), for tests of a
    NumPy path whose domain the compiled ``numba.*`` entries also cover."""
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")
