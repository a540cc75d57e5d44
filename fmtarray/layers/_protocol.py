"""Helpers for objects that follow only part of the layer protocol (used by
:class:`fmtarray.Network`): names, factors, seeds, pure evaluation with explicit
learnables, and the network's dtype.

A layer is any object with ``predict(x)``; everything else is optional (see
:mod:`fmtarray.layers.base`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import numbers

from .. import _backend
from ..array import FormattedArray
from ..ops.elementwise import astype
from .base import Layer, own_value

# default names of layers without a ``default_name`` attribute, by class name
_DEFAULT_NAMES = {"Convolution2DLayer": "conv"}


def learnable_names(layer) -> tuple[str, ...]:
    return tuple(getattr(layer, "learnable_names", ()) or ())


def state_names(layer) -> tuple[str, ...]:
    return tuple(getattr(layer, "state_names", ()) or ())


def type_name(layer) -> str:
    f = getattr(layer, "type_name", None)
    return str(f()) if callable(f) else type(layer).__name__


def description(layer) -> str:
    f = getattr(layer, "description", None)
    return str(f()) if callable(f) else type(layer).__name__


def default_name(layer) -> str:
    n = getattr(layer, "default_name", None)
    if isinstance(n, str) and n:
        return n
    cls = type(layer).__name__
    if cls in _DEFAULT_NAMES:
        return _DEFAULT_NAMES[cls]
    base = cls[:-5] if cls.endswith("Layer") and len(cls) > 5 else cls
    return base.lower()


def factor(layer, pname: str, kind: str) -> float:
    f = getattr(layer, kind, None)
    if callable(f):
        return float(f(pname))
    stem = pname[:-1] if pname.endswith("s") else pname
    for s in (pname, stem):
        v = getattr(layer, f"{s}_{kind}", None)
        if v is not None:
            return float(v)
    return 1.0


def as_fa(v):
    return v if isinstance(v, FormattedArray) else FormattedArray(v)


def detach(v):
    if isinstance(v, FormattedArray) and v._node is not None:
        return FormattedArray._wrap(v._data, v._fmt)
    return v


@contextlib.contextmanager
def swap(layer, params):
    """Generic ``using`` for layers that do not define it (an attribute swap)."""
    saved = {n: getattr(layer, n, None) for n in params}
    try:
        for n, v in params.items():
            setattr(layer, n, v)
        yield layer
    finally:
        for n, v in saved.items():
            setattr(layer, n, v)


_PLAIN_COPY: dict = {}  # class -> whether _shallow_copy may copy its __dict__ itself


def _shallow_copy(obj):
    """``copy.copy(obj)``, by its own two steps for an instance of a plain class (an
    instance ``__dict__``, no ``__slots__`` anywhere in its classes, no copy or pickle
    hooks): what the network does for each layer with learnables at every evaluation."""
    cls = type(obj)
    plain = _PLAIN_COPY.get(cls)
    if plain is None:
        plain = _PLAIN_COPY[cls] = (
            getattr(cls, "__copy__", None) is None
            and not any("__slots__" in k.__dict__ for k in cls.__mro__)
            and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
            and getattr(cls, "__getstate__", None) is getattr(object, "__getstate__", None))
    if plain and isinstance(getattr(obj, "__dict__", None), dict):
        new = cls.__new__(cls)
        new.__dict__.update(obj.__dict__)
        return new
    return copy.copy(obj)


def bound(layer, params):
    """A context giving the layer to evaluate with ``params`` (``{name: value}``) in place
    of its learnables.

    Pure: the values go into a shallow copy of the layer (through its ``using``, or an
    attribute swap), never into the shared layer object, so threads evaluating one
    network with different learnables do not see each other's values. The copy of a
    layer whose ``using`` is :class:`~.base.Layer`'s gets the values as ``using`` sets
    them and is dropped afterwards, with nothing to restore.
    """
    if not params:
        return contextlib.nullcontext(layer)
    clone = _shallow_copy(layer)
    u = getattr(clone, "using", None)
    if getattr(u, "__func__", None) is Layer.using:
        for n, v in params.items():
            object.__setattr__(clone, n, v)
        return contextlib.nullcontext(clone)
    return u(params) if callable(u) else swap(clone, params)


def set_values(layer, values: dict) -> None:
    """Store ``values`` in ``layer`` (its ``set_learnables``, else attributes), as copies."""
    f = getattr(layer, "set_learnables", None)
    if callable(f):
        f(values)  # Layer subclasses copy on set
        return
    for k, v in values.items():
        v = own_value(v)
        setattr(layer, k, v.data if isinstance(v, FormattedArray) and not v.format else v)


def layer_seed(seed, i):
    """An independent, reproducible int seed for layer ``i`` from the network seed."""
    if seed is None or not isinstance(seed, numbers.Integral):
        return seed  # None (fresh entropy) or a Generator shared along the layers
    z = (int(seed) * 0x9E3779B97F4A7C15 + (i + 1) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def takes_seed(f) -> bool:
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)


def fmt_of(x) -> str:
    if isinstance(x, FormattedArray):
        return f"format {x.format!r} and shape {x.shape}" if x.format else f"unformatted, shape {x.shape}"
    shape = getattr(x, "shape", None)
    return f"a raw {type(x).__name__} of shape {tuple(shape)}" if shape is not None else type(x).__name__


# the network's dtype ------------------------------------------------------------------------


def float_dtype(v):
    """``(library, dtype)`` of a real floating array value, else None."""
    d = v._data if isinstance(v, FormattedArray) else v
    if not _backend.is_array(d):
        return None
    try:
        if not _backend.isdtype(_backend.namespace(d), d.dtype, "real floating"):
            return None
    except (TypeError, ValueError):
        return None
    return _backend.library_name(d), d.dtype


def network_dtype(layers, names, learnables=None):
    """``(library, dtype)`` of the first floating learnable in use (``learnables``'
    values where given, else the layers'), or None when there is none."""
    for name, layer in zip(names, layers):
        given = (learnables or {}).get(name) or {}
        for n in learnable_names(layer):
            v = given.get(n)
            if v is None:
                v = getattr(layer, n, None)
            if v is not None:
                ld = float_dtype(v)
                if ld is not None:
                    return ld
    return None


def cast_input(x, lib_dtype):
    """``x`` cast to the network's floating dtype when it is a floating array of another
    float dtype in the same library (the documented input rule); else ``x`` unchanged."""
    if lib_dtype is None:
        return x
    have = float_dtype(x)
    if have is None or have[0] != lib_dtype[0] or have[1] == lib_dtype[1]:
        return x
    if isinstance(x, FormattedArray):
        return astype(x, lib_dtype[1])
    return _backend.namespace(x).astype(x, lib_dtype[1])
