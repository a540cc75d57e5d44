"""Validation of option and solver values: one error message shape for all."""

from __future__ import annotations

import math
import numbers


def _bad(owner, name, value, legal):
    return ValueError(f"{owner}: invalid {name}={value!r}; {legal}")


def _check_real(owner, name, value, *, lo=None, hi=None, lo_open=False, hi_open=False,
                allow_inf=False):
    legal = "it must be a real number"
    if lo is not None or hi is not None:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        legal += f" in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    if allow_inf:
        legal += " (inf allowed)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(owner, name, value, legal)
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise _bad(owner, name, value, legal)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise _bad(owner, name, value, legal)
    if hi is not None and not math.isinf(v) and (v > hi or (hi_open and v == hi)):
        raise _bad(owner, name, value, legal)
    return v


def _check_int(owner, name, value, *, lo=1, allow_inf=False):
    legal = f"it must be an integer >= {lo}" + (" or inf" if allow_inf else "")
    if allow_inf and isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and math.isinf(value) and value > 0:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        if isinstance(value, float) and value.is_integer() and value >= lo:
            return int(value)
        raise _bad(owner, name, value, legal)
    return int(value)


def _check_choice(owner, name, value, choices):
    legal = "legal values: " + ", ".join(repr(c) for c in choices)
    if not isinstance(value, str) or value.lower() not in choices:
        raise _bad(owner, name, value, legal)
    return value.lower()
