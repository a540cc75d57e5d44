"""The backend seam: the only module that imports ``array_api_compat``.

It answers three questions about raw arrays: which array-API namespace they
belong to, which device they live on, and which named fast paths apply.
Random draws for initialisers are made here too (with NumPy's generator on the
host, so that a seed gives the same numbers on every backend) and moved to the
target namespace/device explicitly.
"""

from __future__ import annotations

import numbers
import sys as _sys

import array_api_compat as _compat
import numpy as _np

__all__ = [
    "namespace",
    "device",
    "library_name",
    "is_array",
    "is_numpy",
    "is_torch",
    "is_dask",
    "is_cupy",
    "is_strict",
    "is_jax",
    "library_key",
    "check_same_device",
    "to_device",
    "random_uniform",
    "random_normal",
    "to_numpy",
]


def is_array(x) -> bool:
    if _JAX_HOOKS and "jax" in _sys.modules:
        _run_jax_hooks()
    return _compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


_JAX_HOOKS: list = []


def on_jax_import(hook) -> None:
    """Run ``hook()`` now if JAX is imported, else once fmtarray first meets an array (a
    FormattedArray built, a new array type in :func:`namespace`) after JAX was imported.

    This is how ``FormattedArray`` becomes a JAX pytree without fmtarray importing JAX
    (``fmtarray._jax_pytree`` plugs in here; this module imports nothing above it)."""
    if "jax" in _sys.modules:
        hook()
    else:
        _JAX_HOOKS.append(hook)


def _run_jax_hooks():
    while _JAX_HOOKS:
        try:
            hook = _JAX_HOOKS.pop()
        except IndexError:  # another thread ran it
            return
        hook()


def library_name(x) -> str:
    """Short name of the array library holding ``x`` (for error messages)."""
    if _compat.is_numpy_array(x):
        return "numpy"
    if _compat.is_torch_array(x):
        return "torch"
    if _compat.is_cupy_array(x):
        return "cupy"
    if _compat.is_dask_array(x):
        return "dask"
    if _compat.is_jax_array(x):
        return "jax"
    if _compat.is_array_api_strict_namespace(getattr(x, "__array_namespace__", lambda: None)()):
        return "array_api_strict"
    return type(x).__module__.split(".")[0]


_NS_CACHE: dict[type, object] = {}


def namespace(*xs):
    """The array-API namespace of the raw arrays ``xs`` (Python scalars ignored).

    Mixing array libraries is a ``TypeError`` naming both.
    """
    if len(xs) == 1 or (len(xs) == 2 and type(xs[0]) is type(xs[1])):
        cached = _NS_CACHE.get(type(xs[0]))
        if cached is not None:
            return cached
    ns = None
    first = None
    for x in xs:
        if x is None or isinstance(x, numbers.Number):
            continue
        t = type(x)
        cur = _NS_CACHE.get(t)
        if cur is None:
            if not _compat.is_array_api_obj(x):
                raise TypeError(
                    f"expected an array of an array-API library (numpy, cupy, torch, dask, "
                    f"array_api_strict, ...), got {t.__module__}.{t.__name__}"
                )
            if _JAX_HOOKS and "jax" in _sys.modules:
                _run_jax_hooks()
            cur = _compat.array_namespace(x)
            if not _compat.is_array_api_strict_namespace(cur):
                _NS_CACHE[t] = cur
        if ns is None:
            ns, first = cur, x
        elif cur is not ns:
            raise TypeError(
                f"cannot mix array libraries in one operation: {library_name(first)} "
                f"({type(first).__name__}) and {library_name(x)} ({type(x).__name__}); "
                "convert one of them explicitly first"
            )
    if ns is None:
        return _compat.array_namespace(_np.asarray(0.0))
    return ns


_ISDTYPE: dict = {}


def isdtype(xp, dtype, kind) -> bool:
    """``xp.isdtype(dtype, kind)``, remembered per namespace, dtype and kind (several
    calls of every training step ask it of the same few dtypes)."""
    key = (id(xp), dtype, kind)
    try:
        return _ISDTYPE[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable dtype object
        return bool(xp.isdtype(dtype, kind))
    if len(_ISDTYPE) > 1024:
        _ISDTYPE.clear()
    hit = _ISDTYPE[key] = bool(xp.isdtype(dtype, kind))
    return hit


def device(x):
    return _compat.device(x)


_SINGLE_DEVICE_TYPES = (_np.ndarray, _np.generic)


def check_same_device(*xs) -> None:
    """Raise ``ValueError`` when the raw arrays ``xs`` live on different devices."""
    for x in xs:  # NumPy has a single device: nothing to check
        if not isinstance(x, _SINGLE_DEVICE_TYPES) and x is not None and not isinstance(x, numbers.Number):
            break
    else:
        return
    d0 = None
    for x in xs:
        if x is None or isinstance(x, numbers.Number):
            continue
        d = _compat.device(x)
        if d is None:  # not known yet: a JAX tracer inside jax.jit (JAX places it itself)
            continue
        if d0 is None:
            d0 = d
        elif d != d0:
            raise ValueError(
                f"arrays are on different devices: {d0!r} and {d!r}; fmtarray never moves data "
                "between devices silently, call to_device() first"
            )


def to_device(x, dev):
    return _compat.to_device(x, dev)


def is_numpy(xp) -> bool:
    return _compat.is_numpy_namespace(xp)


def is_torch(xp) -> bool:
    return _compat.is_torch_namespace(xp)


def is_dask(xp) -> bool:
    return _compat.is_dask_namespace(xp)


def is_cupy(xp) -> bool:
    return _compat.is_cupy_namespace(xp)


def is_strict(xp) -> bool:
    return _compat.is_array_api_strict_namespace(xp)


def is_jax(xp) -> bool:
    return _compat.is_jax_namespace(xp)


_LIB_KEYS: dict = {}


def library_key(xp) -> str:
    """``"numpy"``, ``"torch"``, ``"jax"``, ``"cupy"``, ``"dask"`` or ``"portable"``: which
    library's native kernels can serve arrays of the namespace ``xp``."""
    try:
        return _LIB_KEYS[xp]
    except (KeyError, TypeError):
        pass
    key = next((k for k, test in (("numpy", is_numpy), ("torch", is_torch), ("jax", is_jax),
                                  ("cupy", is_cupy), ("dask", is_dask)) if test(xp)), "portable")
    try:
        _LIB_KEYS[xp] = key
    except TypeError:  # pragma: no cover - unhashable namespace
        pass
    return key


def is_writeable_numpy(x) -> bool:
    return isinstance(x, _np.ndarray) and x.flags.writeable


def to_numpy(x):
    """Host NumPy copy of a raw array (for display, file I/O and tests)."""
    if isinstance(x, _np.ndarray):
        return x
    if _compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if _compat.is_cupy_array(x):
        return x.get()
    if _compat.is_dask_array(x):
        return _np.asarray(x.compute())
    try:
        return _np.asarray(x)
    except Exception:  # array_api_strict on a non-default device refuses __array__
        xp = namespace(x)
        cpu = getattr(xp, "Device", None)
        return _np.asarray(xp.asarray(x, device=cpu("CPU_DEVICE")) if cpu else x)


# Random draws ----------------------------------------------------------------


def _rng(seed):
    if isinstance(seed, _np.random.Generator):
        return seed
    return _np.random.default_rng(seed)


def _from_host(a, xp, dtype, dev):
    arr = xp.asarray(a)
    if dtype is not None:
        arr = xp.astype(arr, dtype)
    if dev is not None:
        arr = _compat.to_device(arr, dev)
    return arr


def random_uniform(shape, low, high, *, seed=None, xp=None, dtype=None, device=None):
    """Uniform draws in ``[low, high)`` made on the host from ``seed`` (int or
    ``numpy.random.Generator``), returned as an ``xp`` array on ``device``."""
    a = _rng(seed).uniform(low, high, size=tuple(shape))
    xp = xp if xp is not None else namespace()
    return _from_host(a, xp, dtype, device)


def random_normal(shape, mean, std, *, seed=None, xp=None, dtype=None, device=None):
    """Normal draws made on the host from ``seed``, returned as an ``xp`` array."""
    a = _rng(seed).normal(mean, std, size=tuple(shape))
    xp = xp if xp is not None else namespace()
    return _from_host(a, xp, dtype, device)
