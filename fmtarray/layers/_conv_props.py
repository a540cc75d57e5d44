"""Property normalisers and display helpers of :class:`~fmtarray.layers.Convolution2DLayer`.

MATLAB-flavoured: numbers arrive as scalars, lists or the 1×n arrays that
``scipy.io.loadmat`` gives; every error names the property, the value and the legal
values.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend, _format
from ..array import FormattedArray

#: legal string values of ``padding_value``
PADDING_VALUE_MODES = ("symmetric-include-edge", "symmetric-exclude-edge", "replicate")
#: legal values of ``padding_mode``
PADDING_MODES = ("manual", "same")

_X = "\u00d7"  # ×


# validation helpers ------------------------------------------------------------------


def _flat_numbers(value, prop, legal):
    """``value`` (a number, a list/tuple, or a 1-D-like array) as a flat list of numbers."""
    if isinstance(value, bool):
        raise TypeError(f"{prop} must be {legal}, got the bool {value!r}")
    if isinstance(value, numbers.Number):
        return [value]
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "tolist"):
        # NumPy / torch arrays, e.g. MATLAB row vectors read by scipy.io.loadmat (1×2)
        if sum(1 for n in shape if n != 1) > 1:
            raise ValueError(f"{prop} must be {legal}, got an array of shape {tuple(shape)}")
        value = value.tolist()
        while isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            value = value[0]
        if isinstance(value, list) and value and isinstance(value[0], list):
            value = [v[0] for v in value]  # column vector
        return value if isinstance(value, list) else [value]
    if isinstance(value, (list, tuple)):
        out = list(value)
        for v in out:
            if isinstance(v, bool) or not isinstance(v, numbers.Number):
                raise TypeError(f"{prop} must be {legal}, got {value!r}")
        return out
    raise TypeError(f"{prop} must be {legal}, got {type(value).__name__} {value!r}")


def _ints(value, prop, *, lengths, low, legal):
    """Validate a scalar or vector of integers ``>= low``; returns a tuple.

    ``lengths``: accepted numbers of values (the first is also what a scalar expands to
    when it is absent, e.g. ``(2,)`` expands a scalar to a pair).
    """
    vals = _flat_numbers(value, prop, legal)
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{prop} must be {legal}, got {value!r}")
        if isinstance(v, numbers.Integral):
            iv = int(v)
        elif math.isfinite(float(v)) and float(v).is_integer():
            iv = int(v)
        else:
            raise ValueError(f"{prop} must be {legal}, got {value!r} (not an integer)")
        if iv < low:
            raise ValueError(f"{prop} must be {legal}, got {value!r}")
        out.append(iv)
    if len(out) == 1 and 1 not in lengths:
        out = out * lengths[0]
    if len(out) not in lengths:
        raise ValueError(f"{prop} must be {legal}, got {value!r} ({len(out)} values)")
    return tuple(out)


def _pos_int(value, prop):
    return _ints(value, prop, lengths=(1,), low=1, legal="a positive integer")[0]


def _factor(value, prop):
    legal = "a nonnegative finite number"
    vals = _flat_numbers(value, prop, legal)
    if len(vals) != 1 or isinstance(vals[0], bool) or not isinstance(vals[0], numbers.Real):
        raise TypeError(f"{prop} must be {legal}, got {value!r}")
    v = vals[0]
    if not math.isfinite(float(v)) or v < 0:
        raise ValueError(f"{prop} must be {legal}, got {value!r}")
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def _padding(value):
    """``(mode, (t, b, l, r))`` from any ``padding`` form (SPEC §3.3)."""
    if isinstance(value, str):
        if value.lower() == "same":
            return "same", (0, 0, 0, 0)
        raise ValueError(
            f"padding must be 'same', a nonnegative integer p, a pair (a, b) (top/bottom, "
            f"left/right) or four values (t, b, l, r), got {value!r}"
        )
    p = _ints(
        value, "padding", lengths=(1, 2, 4), low=0,
        legal="'same', a nonnegative integer p, a pair (a, b) (top/bottom, left/right) "
              "or four nonnegative integers (t, b, l, r)",
    )
    if len(p) == 1:
        p = p * 4
    elif len(p) == 2:
        p = (p[0], p[0], p[1], p[1])
    return "manual", p


def _padding_value(value):
    if isinstance(value, str):
        v = value.lower()
        if v in PADDING_VALUE_MODES:
            return v
        raise ValueError(
            f"padding_value must be a number or one of "
            f"{', '.join(repr(m) for m in PADDING_VALUE_MODES)}, got {value!r}"
        )
    legal = "a number or one of " + ", ".join(repr(m) for m in PADDING_VALUE_MODES)
    vals = _flat_numbers(value, "padding_value", legal)
    if len(vals) != 1 or isinstance(vals[0], bool) or not isinstance(vals[0], numbers.Real):
        raise TypeError(f"padding_value must be {legal}, got {value!r}")
    v = vals[0]
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def _is_traced(v) -> bool:
    return isinstance(v, FormattedArray) and v._node is not None


def _check_param(value, prop):
    """Common checks for ``weights``/``bias``: an unformatted real floating array."""
    if isinstance(value, FormattedArray):
        if value.format:
            raise ValueError(
                f"{prop} must be unformatted (MATLAB layout), got a FormattedArray of format "
                f"{value.format!r}; use stripdims({prop}, <format in MATLAB order>)"
            )
        xp = value.xp
    elif _backend.is_array(value):
        xp = _backend.namespace(value)
    else:
        raise TypeError(
            f"{prop} must be an array of an array-API library (or None), got "
            f"{type(value).__module__}.{type(value).__name__}; wrap lists with numpy.asarray"
        )
    if not xp.isdtype(value.dtype, "real floating"):
        raise TypeError(
            f"{prop} must have a real floating dtype (float32 or float64), got {value.dtype}; "
            "convert it with astype first"
        )
    return xp


def _reshape_param(value, xp, shape, prop):
    if tuple(value.shape) == shape:
        return value
    if _is_traced(value):
        raise ValueError(f"{prop} must have shape {shape}, got {tuple(value.shape)}")
    data = value.data if isinstance(value, FormattedArray) else value
    return xp.reshape(data, shape)


def _shape_str(shape) -> str:
    return _X.join(str(n) for n in shape)


def _dtype_str(dt) -> str:
    s = str(dt)
    for pre in ("torch.", "dtype('", "array_api_strict."):
        s = s.replace(pre, "")
    return s.rstrip("')")


def _vec(v) -> str:
    return "[" + " ".join(str(a) for a in v) + "]"


def _layout(x):
    """``(format, shape, xp, dtype, device)`` of an example input.

    ``x`` is a FormattedArray, an object with ``.format`` and ``.shape`` (a data
    layout), or a pair ``(shape, format)`` / ``(format, shape)``.
    """
    if isinstance(x, FormattedArray):
        return x.format, x.shape, x.xp, x.dtype, x.device
    if isinstance(x, tuple) and len(x) == 2:
        a, b = x
        fmt, shape = (a, b) if isinstance(a, str) else (b, a)
        if isinstance(fmt, str) and isinstance(shape, (tuple, list)):
            return fmt, tuple(int(n) for n in shape), None, None, None
    fmt = getattr(x, "format", None)
    shape = getattr(x, "shape", None)
    if isinstance(fmt, str) and shape is not None:
        return fmt, tuple(int(n) for n in shape), None, None, None
    if _backend.is_array(x):
        _format.conv2d_layer_dims("")  # raises: unformatted input, lists the accepted formats
    raise TypeError(
        "initialize needs an example input: a FormattedArray, a layout with .format and "
        f".shape, or a pair (shape, format); got {type(x).__name__}"
    )
