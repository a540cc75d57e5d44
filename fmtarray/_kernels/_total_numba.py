"""The compiled sum of every value of a float NumPy array (Numba ``njit``, ``nogil``,
``cache``), in a fixed order of vector lanes (see :mod:`.total` for when it runs).

The order, the same on every host whatever its vector width:

* the values in blocks of :data:`BLOCK` (2048); in a block, lane ``j`` (``j <``
  :data:`LANES`, 64) adds up the values at ``j, j + 64, j + 128, …`` in that order,
  starting from the first of them;
* the 64 lane sums, then the block sums, are added by :func:`_pairwise`: adjacent
  pairs, an odd last value carried up, until one is left;
* the last, partial block: its whole rows of 64 as above, then each value past them
  added to lanes ``0, 1, …`` in order; under 64 values, they are the lanes.

No value is ever added to a zero that is not in the data, so the sum of negative zeros
is ``-0.0`` (IEEE; NumPy's pairwise sum starts from ``+0.0`` and gives ``+0.0``). The error bound is about ``(32 + log2 n) · eps · Σ|x|``: 32
values summed in turn per lane, then the pairwise levels (NumPy's pairwise summation,
which NumPy's ``sum`` runs on the contiguous axis: 16 in turn per accumulator). NumPy's
loop adds one value per cycle or so (float32 b16 32×32 96: 0.41–0.49 ms a sum, in a
training step the largest elementwise cost after the two products); here whole vectors
per instruction.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["LANES", "BLOCK", "total"]

#: lanes of a block's sums, and values per block (32 per lane)
LANES = 64
BLOCK = 2048
_I64 = ir.IntType(64)


def _vector_bytes():
    from llvmlite import binding

    return 64 if binding.get_host_cpu_features().get("avx512f", False) else 32


_VECTOR_BYTES = _vector_bytes()


@intrinsic
def _lane_sums(typingctx, a, lo, rows, out):
    """``out[j] = a[lo + j] + a[lo + 64 + j] + … `` over ``rows ≥ 1`` rows of 64, added
    in row order, for ``j < 64``: ``64 / lanes`` vector sums of the host's width."""

    def codegen(context, builder, sig, args):
        dt = sig.args[0].dtype
        size = 4 if dt == types.float32 else 8
        lanes = min(LANES, _VECTOR_BYTES // size)
        vty = ir.VectorType(context.get_value_type(dt), lanes)
        ap = context.make_array(sig.args[0])(context, builder, args[0]).data
        op = context.make_array(sig.args[3])(context, builder, args[3]).data
        lo, rows = args[1], args[2]

        def ptr(base, idx):
            return builder.bitcast(builder.gep(base, [idx]), vty.as_pointer())

        def at(c, row_start):
            return builder.add(row_start, ir.Constant(_I64, c * lanes))

        accs = [cgutils.alloca_once(builder, vty) for _ in range(LANES // lanes)]
        for c, acc in enumerate(accs):
            builder.store(builder.load(ptr(ap, at(c, lo)), align=size), acc)
        with cgutils.for_range_slice(builder, ir.Constant(_I64, 1), rows,
                                     ir.Constant(_I64, 1)) as (k, _):
            start = builder.add(lo, builder.mul(k, ir.Constant(_I64, LANES)))
            for c, acc in enumerate(accs):
                v = builder.load(ptr(ap, at(c, start)), align=size)
                builder.store(builder.fadd(builder.load(acc), v), acc)
        for c, acc in enumerate(accs):
            builder.store(builder.load(acc), ptr(op, ir.Constant(_I64, c * lanes)), align=size)
        return context.get_dummy_value()

    return types.void(a, types.int64, types.int64, out), codegen


@njit(nogil=True, cache=True, boundscheck=False)
def _pairwise(v, m):
    """``v[0]`` becomes the sum of ``v[:m]`` (``m ≥ 1``): adjacent pairs added, an odd
    last value carried up, until one is left."""
    while m > 1:
        h = m // 2
        for i in range(h):
            v[i] = v[2 * i] + v[2 * i + 1]
        if m % 2:
            v[h] = v[m - 1]
            m = h + 1
        else:
            m = h
    return v[0]


@njit(nogil=True, cache=True, boundscheck=False)
def total(a):
    """The sum of the 1-D C-contiguous float array ``a`` (at least one value), in the
    module's order."""
    n = a.size
    nb = n // BLOCK
    rem = n - nb * BLOCK
    parts = np.empty(nb + 1, a.dtype)
    lanes = np.empty(LANES, a.dtype)
    for b in range(nb):
        _lane_sums(a, b * BLOCK, BLOCK // LANES, lanes)
        parts[b] = _pairwise(lanes, LANES)
    m = nb
    if rem:
        lo = nb * BLOCK
        rows = rem // LANES
        extra = rem - rows * LANES
        if rows:
            _lane_sums(a, lo, rows, lanes)
            for j in range(extra):
                lanes[j] += a[lo + rows * LANES + j]
            parts[m] = _pairwise(lanes, LANES)
        else:
            for j in range(extra):
                lanes[j] = a[lo + j]
            parts[m] = _pairwise(lanes, extra)
        m += 1
    return _pairwise(parts, m)
