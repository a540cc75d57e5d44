"""Argument normalisers shared by the ops, the layers and :mod:`fmtarray.matlab`.

Each returns the normalised value or raises a ``TypeError``/``ValueError`` whose
message names the argument, the value given and the legal values.
"""

from __future__ import annotations

import numbers
import operator

from . import _backend
from ._kernels.pad import check_pad_value

__all__ = ["ints", "is_int", "padding", "padding_value", "is_float", "check_float",
           "is_scalar_array"]


def ints(name, value, n, what, low):
    """``value`` (int or sequence of ``n`` ints) as a tuple of ``n`` ints ``>= low``."""
    legal = f"a positive integer or {n} positive integers (one per {what})" if low == 1 else ""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected {legal}")
    if isinstance(value, numbers.Integral):
        vals = (int(value),) * n
    else:
        try:
            vals = tuple(value)
        except TypeError:
            raise TypeError(f"{name}={value!r}: expected {legal}") from None
        if len(vals) == 1:
            vals = vals * n
        if len(vals) != n:
            raise ValueError(f"{name}={value!r} has {len(vals)} values; expected {legal}")
        out = []
        for v in vals:
            if isinstance(v, bool) or not is_int(v):
                raise TypeError(f"{name}={value!r}: {v!r} is not an integer; expected {legal}")
            out.append(int(v))
        vals = tuple(out)
    if any(v < low for v in vals):
        raise ValueError(f"{name}={value!r}: values must be >= {low}; expected {legal}")
    return vals


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


def padding(padding, n, labels):
    """``(before, after)`` tuples of ``n`` ints, or the strings ``"same"`` / ``"causal"``."""
    legal = (
        f"a non-negative integer, {n} integers (one per convolved dim {labels})"
        + (f", {2 * n} integers (before/after per dim, like MATLAB's [t b l r])" if n > 1
           else ", 2 integers (before, after)")
        + ", 'same' or 'causal' (one convolved dim only)"
    )
    if isinstance(padding, str):
        if padding == "same":
            return "same"
        if padding == "causal":
            if n != 1:
                raise ValueError(
                    f"padding='causal' needs exactly one convolved dim, but {n} are convolved "
                    f"({labels}); use an explicit padding or 'same'"
                )
            return "causal"
        raise ValueError(f"padding={padding!r} is not a padding form; use {legal}")
    if isinstance(padding, bool):
        raise TypeError(f"padding={padding!r}: expected {legal}")
    if isinstance(padding, numbers.Number) or is_scalar_array(padding):
        vals = [padding]
    else:
        try:
            vals = list(padding)
        except TypeError:
            raise TypeError(f"padding={padding!r}: expected {legal}") from None
        # nested (2, n): [[before...], [after...]] (MATLAB's 2-by-d matrix)
        if len(vals) == 2 and all(is_seq(v) for v in vals):
            rows = [list(v) for v in vals]
            if len(rows[0]) != n or len(rows[1]) != n:
                raise ValueError(f"padding={padding!r} fits no padding form; use {legal}")
            vals = [x for pair in zip(rows[0], rows[1]) for x in pair]
            if n == 1:
                vals = [rows[0][0], rows[1][0]]
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) and not is_scalar_array(v):
            raise TypeError(f"padding={padding!r}: {v!r} is not an integer; expected {legal}")
        if not is_int(v):
            raise ValueError(f"padding={padding!r}: {v!r} is not an integer; expected {legal}")
        if int(v) < 0:
            raise ValueError(f"padding={padding!r}: padding must be non-negative; expected {legal}")
    vals = [int(v) for v in vals]
    if len(vals) == 1:
        return (vals[0],) * n, (vals[0],) * n
    if len(vals) == 2 * n:
        return tuple(vals[0::2]), tuple(vals[1::2])
    if len(vals) == n:
        return tuple(vals), tuple(vals)
    raise ValueError(
        f"padding={padding!r} has {len(vals)} values, which fits no padding form; use {legal}"
    )


def is_seq(v):
    return isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, str)


def is_scalar_array(v):
    return _backend.is_array(v) and getattr(v, "ndim", None) == 0


def padding_value(v):
    """A float, or one of :data:`~fmtarray._kernels.pad.PAD_MODES` (0-d arrays accepted)."""
    return check_pad_value(v)


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
