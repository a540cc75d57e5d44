"""The sum (and mean) of every value of a NumPy float array, compiled.

``fmtarray.sum(x)`` and ``fmtarray.mean(x)`` over all dims of a NumPy float32 or
float64 array of at least :data:`MIN_VALUES` values run the compiled kernel of
:mod:`._total_numba`: whole vectors added per instruction in a fixed order of 64 lanes,
where NumPy's pairwise sum adds about one value per cycle (float32, 1.6 M values: 0.11
against 0.42 ms; float64 0.18 against 0.42). A training step's loss is such a sum (the
benchmark's ``sum(conv(x) * g)``). The result is the NumPy scalar NumPy would return
(dtype of ``x``), its rounding that of the kernel's order (documented there: no worse
than NumPy's by more than the 32 values each lane adds in turn), not NumPy's bits.

Everything else is NumPy's (``xp.sum`` / ``xp.mean``): sums over some of the dims, other
dtypes and libraries, arrays not stored contiguously in some order of their dims (no
copy is made to get there), smaller arrays, byte-swapped or unaligned ones, and all of
them when the compiled kernels are off (``FMTARRAY_NUMBA=0``, or no Numba: the rule of
:func:`fmtarray._kernels.conv._numba.unavailable`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_VALUES", "compiled_total", "compiled_mean"]

#: the fewest values summed by the compiled kernel (below, NumPy's call overhead is
#: most of the cost either way)
MIN_VALUES = 1 << 16


def _flat(x):
    """``x``'s values as a 1-D contiguous view (in memory order), or ``None``."""
    if (type(x) is not np.ndarray or x.dtype.char not in "fd" or not x.dtype.isnative
            or x.size < MIN_VALUES or not x.flags.aligned):
        return None
    if x.flags.c_contiguous:
        return x.reshape(-1)
    # contiguous in another order of the dims (F order, a transposed channels-last view):
    # order "K" gives the memory order as a view; anything else would be a copy
    flat = x.ravel(order="K")
    return flat if np.shares_memory(flat, x) else None


def compiled_total(x):
    """The sum of every value of ``x`` by :func:`._total_numba.total` (a NumPy scalar of
    ``x``'s dtype), or ``None`` where that does not run (see the module)."""
    flat = _flat(x)
    if flat is None:
        return None
    from .conv._numba import unavailable

    if unavailable() is not None:
        return None
    from . import _total_numba  # imports Numba: only once a compiled sum runs

    return x.dtype.type(_total_numba.total(flat))


def compiled_mean(x):
    """The mean of every value of ``x`` as NumPy forms it (the sum divided by the count
    in ``x``'s dtype), the sum by :func:`compiled_total`; or ``None``."""
    s = compiled_total(x)
    return None if s is None else s / x.size
