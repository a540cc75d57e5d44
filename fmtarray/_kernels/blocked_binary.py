"""NumPy binary ops on operands stored in different orders.

A convolution on canonical data (``SSCB``: the batch innermost) returns its output as a
view of channels-last memory, and ``y * g`` with a canonical ``g`` then reads one of
them across its memory order: NumPy walks both in the output's order, one value per
cache line (and per page) of the other operand — b16 32×32 96 channels, float32: 3.0 ms,
against 0.33 ms for two operands stored alike. Cutting the walk into cache-sized blocks
did not help (3.4–5.2 ms: within a block NumPy still strides through the other
operand). :func:`apply` instead allocates the output NumPy would (same shape, dtype and
memory order: ``np.nditer``'s ``K`` order), copies each operand stored otherwise into
that order with the blocked transposing copy of the convolution kernels
(:func:`.conv._numpy._copies.copy_blocked`: 8×8 blocks of the two swapped dims when the
compiled kernels run, 0.78 ms for that operand) and calls the ufunc on operands stored
alike: 1.1 ms.

Only the ops whose result is exactly rounded per element take this path (``+ − × /``,
``maximum``, ``minimum``, the comparisons): the values are bit-identical to one ufunc
call. Anything else — other types, shapes that broadcast, operands stored alike, arrays
under ``4 · Tuning.copy_block`` values — is left to the op itself.
"""

from __future__ import annotations

import numpy as np

__all__ = ["UFUNCS", "apply", "add"]

#: the op names of :mod:`fmtarray.ops.elementwise` served here, and their ufuncs
UFUNCS = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "maximum": np.maximum, "minimum": np.minimum, "less": np.less,
    "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "equal": np.equal, "not_equal": np.not_equal,
}


def _order(a):
    """The dims of size > 1, outermost first in memory."""
    return sorted((i for i, n in enumerate(a.shape) if n > 1),
                  key=lambda i: -abs(a.strides[i]))


def apply(name, a, b):
    """``UFUNCS[name](a, b)`` with the operands brought to one memory order first (see
    the module); ``None`` where that does not apply (the caller computes the op)."""
    uf = UFUNCS.get(name)
    if (uf is None or type(a) is not np.ndarray or type(b) is not np.ndarray
            or a.shape != b.shape):
        return None
    oa, ob = _order(a), _order(b)
    if oa == ob:
        return None
    from .conv._numpy import _copies
    from .conv._numpy._copies import copy_blocked
    from .conv.thresholds import current

    if a.size <= 4 * current().copy_block:
        return None
    it = np.nditer([a, b, None], flags=["zerosize_ok"], order="K",
                   op_flags=[["readonly"], ["readonly"], ["writeonly", "allocate"]],
                   op_dtypes=[None, None, uf(a.flat[:1], b.flat[:1]).dtype])
    out = it.operands[2]
    del it
    order = _order(out)
    ops = []
    for v, ov in ((a, oa), (b, ob)):
        if ov != order:
            alike = np.empty_like(out, dtype=v.dtype)
            tc = _copies.transposing_copy  # compiled, when the kernels run
            if tc is None or not tc(alike, v):
                copy_blocked(alike, v)
            v = alike
        ops.append(v)
    uf(ops[0], ops[1], out=out)
    return out


def add(a, b):
    """``a + b`` for the tape's sums of cotangents (a value read by two ops: the
    convolution's input gradient, a channels-last view, meets a canonical one)."""
    r = apply("add", a, b)
    return a + b if r is None else r
