"""Moving a network to another array library or device (``Network.to``).

:func:`to_library` returns a **new** network whose every array (learnables, state
such as batch-norm statistics, the image input layer's normalisation statistics, and
any other array a layer holds) is a copy in the requested library, on the requested
device, in the same dtype.  The original network is not changed.

This is the user's explicit request to move, so the arrays are copied (through the
host, or within one library by its own device transfer); everything else
(hyperparameters, names, the graph) is deep-copied, so the two networks share
nothing mutable.  A dtype the target library cannot hold (JAX without
``jax_enable_x64`` for float64, ``bfloat16`` to NumPy) is an error, never a silent cast.
"""

from __future__ import annotations

import copy
import importlib
import re
import types

import numpy as _np

from . import _backend
from .array import FormattedArray

__all__ = ["to_library", "move_array", "KNOWN_LIBRARIES", "library_of"]

#: the libraries a network can be moved to (``to_library``'s ``library`` argument)
KNOWN_LIBRARIES = ("numpy", "torch", "jax", "array_api_strict", "dask", "cupy")

# module name (or its top-level package) -> library name
_MODULES = {
    "numpy": "numpy", "torch": "torch", "jax": "jax", "jax.numpy": "jax",
    "array_api_strict": "array_api_strict", "dask": "dask", "dask.array": "dask",
    "cupy": "cupy", "array_api_compat.numpy": "numpy", "array_api_compat.torch": "torch",
    "array_api_compat.cupy": "cupy", "array_api_compat.dask.array": "dask",
}
_IMPORT = {"numpy": "numpy", "torch": "torch", "jax": "jax.numpy",
           "array_api_strict": "array_api_strict", "dask": "dask.array", "cupy": "cupy"}


def library_of(library) -> str:
    """The library name for ``library`` (a name such as ``"torch"`` or a module such as
    ``torch``, ``jax.numpy``, ``dask.array``); anything else is an error listing them."""
    known = ", ".join(repr(k) for k in KNOWN_LIBRARIES)
    if isinstance(library, types.ModuleType):
        name = library.__name__
        lib = _MODULES.get(name) or _MODULES.get(name.split(".")[0])
        if lib is None:
            raise ValueError(
                f"library={name!r} (a module) is not a known array library; the known libraries "
                f"are {known} (as names or modules)"
            )
        return lib
    if isinstance(library, str):
        lib = library.strip().lower().replace("-", "_")
        lib = {"jax.numpy": "jax", "dask.array": "dask", "np": "numpy", "jnp": "jax"}.get(lib, lib)
        if lib not in KNOWN_LIBRARIES:
            raise ValueError(f"unknown library {library!r}; the known libraries are {known}")
        return lib
    raise TypeError(
        f"library must be a library name or module ({known}), got {type(library).__name__} "
        f"{library!r}"
    )


def _import(lib):
    try:
        return importlib.import_module(_IMPORT[lib])
    except ImportError as e:
        raise ImportError(
            f"cannot move to library {lib!r}: it is not installed ({e}); install it or choose "
            f"another of {', '.join(KNOWN_LIBRARIES)}"
        ) from e


def _dtype_name(dt) -> str:
    s = str(dt)
    for pre in ("torch.", "array_api_strict.", "jax.numpy."):
        s = s.replace(pre, "")
    m = re.fullmatch(r"dtype\('?([A-Za-z0-9_]+)'?\)", s)
    return m.group(1) if m else s


def _host(a, what):
    try:
        h = _backend.to_numpy(a)
    except (TypeError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"{what}: cannot copy a {_backend.library_name(a)} array of dtype {a.dtype} to the "
            f"host ({e}); convert it to a dtype NumPy has (e.g. float32) first"
        ) from e
    return _np.array(h, copy=True)


def _cuda_index(device, lib):
    s = str(device).lower()
    m = re.fullmatch(r"(cuda|gpu)(?::(\d+))?", s)
    if not m:
        raise ValueError(
            f"device={device!r} is not a device {lib} understands here; use 'cpu', 'cuda' or "
            "'cuda:N'"
        )
    return int(m.group(2) or 0)


def move_array(a, library, device=None, *, what="array"):
    """A copy of the raw array ``a`` in ``library`` (a name from :data:`KNOWN_LIBRARIES`)
    on ``device`` (None: the library's default device), in the same dtype."""
    lib = library_of(library)
    src = _backend.library_name(a)
    want = _dtype_name(a.dtype)
    try:
        out = _make(a, src, lib, device, what)
    except (RuntimeError, AssertionError, IndexError, OSError) as e:  # the library's own errors
        raise ValueError(
            f"{what}: cannot create a {lib} array on device {device!r}: {e}"
        ) from e
    got = _dtype_name(out.dtype)
    if got != want:
        hint = (" (JAX keeps float64 only with jax.config.update('jax_enable_x64', True))"
                if lib == "jax" else "")
        raise ValueError(
            f"{what}: {lib} turned dtype {want} into {got}{hint}; moving never changes the "
            "dtype, cast the network first or enable the dtype in the target library"
        )
    return out


def _make(a, src, lib, device, what):
    if lib == "torch":
        torch = _import("torch")
        dev = torch.device(device) if device is not None else None
        if src == "torch":  # within torch: its own device transfer, always a copy
            return a.detach().to(device=dev if dev is not None else a.device, copy=True)
        return torch.tensor(_host(a, what), device=dev)
    if lib == "jax":
        jnp = _import("jax")
        import jax

        if device is None:
            dev = None
        elif isinstance(device, str):
            kind = "cpu" if device.lower() == "cpu" else "gpu"
            idx = 0 if kind == "cpu" else _cuda_index(device, "jax")
            dev = jax.devices(kind)[idx]
        else:
            dev = device  # a jax Device
        out = jnp.array(_host(a, what), copy=True)
        return jax.device_put(out, dev) if dev is not None else out
    if lib == "cupy":
        cupy = _import("cupy")
        idx = 0 if device is None else (device if isinstance(device, int)
                                        else _cuda_index(device, "cupy"))
        with cupy.cuda.Device(idx):
            return cupy.array(_host(a, what), copy=True)
    if lib == "array_api_strict":
        xp = _import("array_api_strict")
        dev = device
        if isinstance(device, str):
            dev = xp.Device(device)
        host = _host(a, what)
        return xp.asarray(host, device=dev) if dev is not None else xp.asarray(host)
    # numpy, dask: host libraries
    if device is not None and str(device).lower() != "cpu":
        raise ValueError(f"{what}: {lib} arrays live on the host; device must be None or 'cpu', "
                         f"got {device!r}")
    host = _host(a, what)
    if lib == "dask":
        da = _import("dask")
        return da.from_array(host, chunks=host.shape or ())
    return host


# the network ------------------------------------------------------------------------------

_ATOMS = (str, bytes, int, float, complex, bool, type(None), types.ModuleType, types.FunctionType,
          types.BuiltinFunctionType, type)


def _collect(obj, found, seen, path):
    """Every raw array reachable from ``obj`` (attributes, containers), by id -> (array, path)."""
    if isinstance(obj, _ATOMS) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, FormattedArray):
        _collect(obj._data, found, seen, path)
        return
    if _backend.is_array(obj):
        found.setdefault(id(obj), (obj, path))
        return
    if isinstance(obj, _np.generic):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _collect(v, found, seen, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            _collect(v, found, seen, f"{path}[{i}]")
    else:
        for k, v in getattr(obj, "__dict__", {}).items():
            _collect(v, found, seen, f"{path}.{k}")
        for cls in type(obj).__mro__:
            for k in getattr(cls, "__slots__", ()):
                if k not in ("__weakref__", "__dict__") and hasattr(obj, k):
                    _collect(getattr(obj, k), found, seen, f"{path}.{k}")


def to_library(net, library, device=None):
    """A copy of ``net`` whose arrays live in ``library`` on ``device``.

    Parameters
    ----------
    net
        A :class:`fmtarray.Network`.
    library
        ``"numpy"``, ``"torch"``, ``"jax"``, ``"array_api_strict"``, ``"dask"``,
        ``"cupy"``, or the module itself (``torch``, ``jax.numpy``...).
    device
        ``None`` (the library's default device), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or
        the library's own device object.

    Returns a new network: learnables, state (batch-norm statistics), the image
    input layer's statistics and every other array a layer holds are copies in
    ``library`` with their dtype kept; the original is untouched.  An unknown
    library is a ``ValueError`` listing the known ones; a library that is not
    installed an ``ImportError``; a device the library cannot use a ``ValueError``.
    """
    lib = library_of(library)
    _import(lib)
    found: dict = {}
    _collect(net, found, set(), "net")
    memo = {}
    for key, (a, path) in found.items():
        memo[key] = move_array(a, lib, device, what=_where(net, path))
    try:
        out = copy.deepcopy(net, memo)
    except (TypeError, copy.Error) as e:
        raise TypeError(
            f"cannot copy the network to move it: {e} (a layer holds an object that cannot be "
            "copied)"
        ) from e
    return out


def _where(net, path):
    """``layer 'conv' (weights)`` style location of an array path for error messages."""
    m = re.match(r"net\.\w*layers\w*\[(\d+)\]\.?(.*)", path)
    names = getattr(net, "layer_names", None)
    if m and names is not None and int(m.group(1)) < len(names):
        return f"layer {names[int(m.group(1))]!r} ({m.group(2).lstrip('_') or 'value'})"
    return path
