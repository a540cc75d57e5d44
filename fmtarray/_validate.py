"""Argument normalisers shared by the ops, the layers and :mod:`fmtarray.matlab`.

One function per kind of argument; the op (:func:`fmtarray.conv`), pooling, the
layers and the MATLAB wrappers all call these, so a value accepted in one place is
accepted everywhere. Each returns the normalised value or raises a
``TypeError`` (wrong kind: a string, a bool, a list where a number goes) or a
``ValueError`` (right kind, illegal value: 2.5 for an integer, -1 for a size, an
unknown option) whose message names the argument, the value given and the legal
forms. Numbers may be Python or NumPy scalars, 0-d arrays, or (for vectors) lists,
tuples and 1-D-like arrays such as the ``1×n`` rows ``scipy.io.loadmat`` returns.
Option strings are matched case-insensitively, as MATLAB does.
"""

from __future__ import annotations

import math
import numbers
import operator

from . import _backend
from ._kernels.pad import check_pad_value

__all__ = ["numbers_list", "int_list", "ints", "to_int", "padding", "padding_value", "option",
           "is_int", "is_float", "check_float", "is_scalar_array", "scalar", "MAX_INT"]

#: the largest stride, dilation, padding or size accepted (a C ``int``: every kernel takes it)
MAX_INT = 2**31 - 1


def is_scalar_array(v) -> bool:
    return _backend.is_array(v) and getattr(v, "ndim", None) == 0


def scalar(v):
    """``v`` as a Python number when it is a Python/NumPy scalar or a 0-d array of
    any library, else ``None`` (bools stay bools, for the caller to refuse)."""
    if isinstance(v, numbers.Number):
        return v.item() if hasattr(v, "item") else v
    if getattr(v, "ndim", None) == 0 and _backend.is_array(v):
        try:
            return _backend.to_numpy(v).item()
        except Exception:  # a lazy or traced value: not a static number
            return None
    return None


def _is_bool(v) -> bool:
    return isinstance(v, bool) or type(v).__name__ in ("bool_", "bool")


def numbers_list(name, value, legal):
    """``value`` (a number, a list/tuple of numbers, or a 1-D-like array) as a flat list
    of Python numbers."""
    s = scalar(value)
    if s is not None:
        return [s]
    if isinstance(value, (list, tuple)):
        vals = [scalar(v) for v in value]
        if any(v is None for v in vals):
            raise TypeError(f"{name}={value!r}: expected {legal}")
        return vals
    if _backend.is_array(value):
        shape = tuple(value.shape)
        if sum(1 for n in shape if n != 1) > 1:
            raise ValueError(f"{name}: got an array of shape {shape}; expected {legal}")
        try:
            return _backend.to_numpy(value).reshape(-1).tolist()
        except Exception:
            raise TypeError(f"{name}: got a {type(value).__name__} whose values are not known "
                            f"here (lazy or traced); expected {legal}") from None
    raise TypeError(f"{name}={value!r} ({type(value).__name__}): expected {legal}")


def to_int(name, value, v, low, legal, high=MAX_INT):
    """One value ``v`` of argument ``name`` (given as ``value``) as an int in
    ``[low, high]``."""
    if _is_bool(v) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}={value!r}: {v!r} is not a number; expected {legal}")
    if not isinstance(v, numbers.Integral):
        f = float(v)
        if not (math.isfinite(f) and f.is_integer()):
            raise ValueError(f"{name}={value!r}: {v!r} is not an integer; expected {legal}")
    iv = int(v)
    if iv < low:
        raise ValueError(f"{name}={value!r}: values must be >= {low}; expected {legal}")
    if iv > high:
        raise ValueError(f"{name}={value!r}: values must be at most {high}; expected {legal}")
    return iv


def int_list(name, value, lengths, low, legal, high=MAX_INT):
    """A scalar or vector of integers in ``[low, high]`` as a tuple whose length is in
    ``lengths``; a single value expands to ``lengths[0]`` values when 1 is not legal."""
    if _is_bool(value):
        raise TypeError(f"{name}={value!r}: a bool is not a number; expected {legal}")
    out = [to_int(name, value, v, low, legal, high) for v in numbers_list(name, value, legal)]
    if len(out) == 1 and 1 not in lengths:
        out = out * lengths[0]
    if len(out) not in lengths:
        raise ValueError(f"{name}={value!r} has {len(out)} values; expected {legal}")
    return tuple(out)


def ints(name, value, n, what, low):
    """``value`` (one int, or ``n`` ints) as a tuple of ``n`` ints ``>= low``."""
    word = "positive" if low == 1 else f">= {low}"
    legal = f"a {word} integer or {n} {word} integers (one per {what})"
    return int_list(name, value, (n,), low, legal)


def is_int(v) -> bool:
    if isinstance(v, numbers.Integral):
        return True
    if isinstance(v, numbers.Real):
        return float(v).is_integer()
    try:
        operator.index(v)
        return True
    except TypeError:
        return False


def option(name, value, legal, *, allow_other=False):
    """A case-insensitive option string: the lower-case legal spelling of ``value``.

    ``allow_other``: return non-strings unchanged (for arguments that take a number
    or a string)."""
    if not isinstance(value, str):
        if allow_other:
            return value
        raise TypeError(f"{name}={value!r}: expected one of {', '.join(map(repr, legal))}")
    v = value.lower()
    if v not in legal:
        raise ValueError(f"{name}={value!r} is not an option; use one of "
                         f"{', '.join(map(repr, legal))} (any case)")
    return v


def _padding_legal(n, labels, strings, per="convolved dim"):
    return (
        f"a non-negative integer, {n} integers (one per {per}{' ' + labels if labels else ''})"
        + (f", {2 * n} integers (before/after per dim, like MATLAB's [t b l r])" if n > 1
           else ", 2 integers (before, after)")
        + f", a 2-by-{n} matrix [[before...], [after...]], or "
        + ", ".join(repr(s) for s in strings) + " (any case)"
    )


def padding(value, n, labels, *, strings=("same", "valid", "causal"), name="padding",
            per="convolved dim"):
    """``(before, after)`` tuples of ``n`` ints, or the string ``"same"`` / ``"causal"``.

    Forms: ``p``; ``n`` values (both sides of each dim); ``2n`` values (before/after per
    dim, MATLAB's ``[t b l r]``); a ``2×n`` nested sequence or array (MATLAB ``dlconv``'s
    ``[before; after]`` matrix); ``"same"``; ``"valid"`` (no padding); ``"causal"``
    (one convolved dim: everything before). ``strings`` limits the strings accepted."""
    legal = _padding_legal(n, labels, strings, per)
    if isinstance(value, str):
        v = value.lower()
        if v not in strings:
            raise ValueError(f"{name}={value!r} is not a padding form; use {legal}")
        if v == "valid":
            return (0,) * n, (0,) * n
        if v == "causal" and n != 1:
            raise ValueError(
                f"{name}={value!r} needs exactly one convolved dim, but {n} are convolved "
                f"({labels}); use an explicit padding or 'same'"
            )
        return v
    rows = _matrix_rows(value)
    if rows is not None and len(rows[0]) == len(rows[1]) and (n > 1 or len(rows[0]) == 1):
        if len(rows[0]) != n:
            what = "convolved" if per == "convolved dim" else per.split()[0]
            raise ValueError(f"{name}={value!r} is a 2-by-{len(rows[0])} matrix but {n} dim(s) "
                             f"are {what}{f' ({labels})' if labels else ''}; use {legal}")
        vals = [v for pair in zip(*rows) for v in pair]
    else:
        vals = numbers_list(name, value, legal)
    vals = [to_int(name, value, v, 0, legal) for v in vals]
    if len(vals) == 1:
        return (vals[0],) * n, (vals[0],) * n
    if len(vals) == n:
        return tuple(vals), tuple(vals)
    if len(vals) == 2 * n:
        return tuple(vals[0::2]), tuple(vals[1::2])
    raise ValueError(f"{name}={value!r} has {len(vals)} values, which fits no padding form; "
                     f"use {legal}")


def _matrix_rows(value):
    """The two rows of a ``2×d`` nested sequence or 2-D array, else ``None``."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(r, (list, tuple)) or _backend.is_array(r)
                                   and getattr(r, "ndim", 0) == 1 for r in value):
            return [numbers_list("padding", r, "numbers") for r in value]
        return None
    shape = getattr(value, "shape", None)
    if _backend.is_array(value) and shape is not None and len(shape) == 2 and shape[0] == 2 \
            and shape[1] > 1:
        a = _backend.to_numpy(value)
        return [a[0].tolist(), a[1].tolist()]
    return None


def padding_value(v, name="padding_value"):
    """A float, or one of :data:`~fmtarray._kernels.pad.PAD_MODES` (any case; NumPy
    scalars and 0-d arrays accepted)."""
    if isinstance(v, str):
        v = v.lower()
    elif scalar(v) is not None and not _is_bool(v):
        v = scalar(v)
    elif isinstance(v, (list, tuple)) or _backend.is_array(v):  # MATLAB's 1x1 from loadmat
        vals = numbers_list(name, v, "one number")
        if len(vals) != 1:
            raise ValueError(f"{name}={v!r} has {len(vals)} values; expected a real number "
                             "or a padding mode")
        v = vals[0]
    try:
        return check_pad_value(v)
    except (TypeError, ValueError) as e:
        if name == "padding_value":
            raise
        raise type(e)(str(e).replace("padding_value", name, 1)) from None


_FLOAT_OK: dict = {}


def is_float(xp, dtype) -> bool:
    """float32/float64 (not float16), cached per (namespace, dtype): the array-API
    ``isdtype`` and the dtype's name cost microseconds per call."""
    try:
        return _FLOAT_OK[(xp, dtype)]
    except KeyError:
        ok = bool(xp.isdtype(dtype, "real floating")) and not str(dtype).endswith("float16")
        _FLOAT_OK[(xp, dtype)] = ok
        return ok
    except TypeError:  # an unhashable dtype object
        return bool(xp.isdtype(dtype, "real floating")) and not str(dtype).endswith("float16")


def check_float(xp, a, name):
    if not is_float(xp, a.dtype):
        raise TypeError(
            f"conv: {name} has dtype {a.dtype}; convolution needs float32 or float64 "
            "(convert with astype first)"
        )


# memory: refuse what cannot fit before allocating it --------------------------------

#: bytes one op may allocate at once; ``None`` (default): what the device offers
#: (:func:`available_bytes`). Tests and users with other limits may set it.
memory_limit = None
#: below this many bytes no check is made (the allocation is simply attempted)
_CHECK_FROM = 1 << 28


def _host_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(a):
    """Memory the device holding the array ``a`` can offer: the host's available memory
    (``MemAvailable``) for CPU arrays, the GPU's total memory for torch / CuPy / JAX
    arrays on a GPU; ``None`` when unknown (no check)."""
    lib = _backend.library_name(a)
    try:
        if lib == "torch" and a.device.type == "cuda":
            import torch

            return torch.cuda.get_device_properties(a.device).total_memory
        if lib == "cupy":
            return a.device.mem_info[1]
        if lib == "jax":
            dev = next(iter(a.devices()))
            if dev.platform != "cpu":
                stats = dev.memory_stats() or {}
                return stats.get("bytes_limit")
    except Exception:  # a device that does not say: no check
        return None
    return _host_available()


def _human(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "bytes" else f"{n} bytes"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def check_memory(fn, nbytes, detail, a):
    """``MemoryError`` when ``nbytes`` exceed :data:`memory_limit` (or what the device
    holding ``a`` offers); ``detail`` says what needs them (sizes and arguments)."""
    if memory_limit is None and nbytes < _CHECK_FROM:
        return
    limit = memory_limit if memory_limit is not None else available_bytes(a)
    if limit is not None and nbytes > limit:
        raise MemoryError(
            f"{fn}: {detail} need {_human(nbytes)} but {_human(limit)} are available; "
            "nothing was allocated (reduce the padding, dilation or input size)"
        )
