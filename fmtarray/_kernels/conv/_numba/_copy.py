"""Compiled transposing copies: batch-innermost data into channels-last buffers, and
the weights with their channels and filters swapped for the input gradient.

The NumPy kernels read their operands channels-last ``(N, *sp, C)``; data in fmtarray's
canonical layout (``SSCB``: the batch innermost in memory) is copied there first, as are
the batch chunks of a Dask array (views with the batch run of each chunk, not the whole
batch, contiguous). NumPy's ``copyto`` walks such a copy in the destination's order and
reads one value per cache line. This kernel moves 8×8 blocks of samples × channels at
each position: eight source runs of eight samples in, eight destination runs of eight
channels out. One thread, warm caches, (positions × channels × samples), this kernel /
NumPy's ``copyto`` / the element-wise loop it replaced (batch innermost): 1024×96×16
0.69 / 1.19 / 4.41 ms, 1024×16×64 0.54 / 1.04 / 4.91, 64×16×1600 0.88 / 1.64 / 7.85,
3136×64×32 5.6 / 21.8 / 21.0. With fewer than :data:`MIN_BATCH` samples ``copyto``
serves.

:func:`copy` takes ``dst[...] = src`` for 3- to 5-d arrays of one dtype whose source
has the batch (dim 0) stored more inwards than the channels (the last dim), or whose
destination has and source has not (the way back, e.g. a channels-last operand of a
binary op brought to a canonical one's order: 32×32 96 channels b16 0.78 ms against
``copyto``'s 2.81); it returns ``False`` for anything else, which
:func:`.._numpy._copies.copy_blocked` then copies.

:func:`transpose_taps` writes the input gradient's weights ``(G, T, Fg, Cg)`` from
MATLAB's ``(K, Cg, Fg, G)``, a tap at a time, in 8×8 blocks of channels × filters:
NumPy's transposing copy of 512×512 3×3 weights (9.4 MB) took 5.6 ms, this one 1.45 ms
on one thread (32×32 blocks with variable bounds: 4.4 ms).
"""

from __future__ import annotations

import numba as nb

__all__ = ["copy", "transpose_taps", "MIN_BATCH"]

#: the smallest batch run the compiled copy takes: with fewer samples per position,
#: NumPy's blocked ``copyto`` was faster (3136 positions × 64 channels × 8 samples: 0.63
#: ms against 0.76; × 4 samples of 16 or 48 channels: 0.11-0.22 against 0.21-0.41)
MIN_BATCH = 16


@nb.njit(nogil=True, cache=True, boundscheck=False)
def _batch_inner(src, dst):
    """``dst[n, d, h, w, c] = src[n, d, h, w, c]`` by 8×8 blocks of samples × channels at
    each position (fixed loops, which LLVM compiles to vector loads, shuffles and
    stores), then the remainders."""
    N, D, H, W, C = src.shape
    N8, C8 = N - N % 8, C - C % 8
    for d in range(D):
        for h in range(H):
            for w in range(W):
                for c0 in range(0, C8, 8):
                    for n0 in range(0, N8, 8):
                        for n in range(8):
                            for c in range(8):
                                dst[n0 + n, d, h, w, c0 + c] = src[n0 + n, d, h, w, c0 + c]
                    for n in range(N8, N):
                        for c in range(c0, c0 + 8):
                            dst[n, d, h, w, c] = src[n, d, h, w, c]
                for c in range(C8, C):
                    for n in range(N):
                        dst[n, d, h, w, c] = src[n, d, h, w, c]


def _five(a):
    return a.reshape(a.shape[0], *(1,) * (5 - a.ndim), *a.shape[1:])


def _inner_first(a):
    """Whether dim 0 is stored more inwards than the last dim."""
    return abs(a.strides[0]) < abs(a.strides[-1])


def copy(dst, src) -> bool:
    """``dst[...] = src`` by the compiled loop when it applies (see the module); else
    ``False`` and nothing is written."""
    if (not 3 <= src.ndim <= 5 or src.shape != dst.shape or src.dtype != dst.dtype
            or src.dtype.char not in "fd" or src.shape[0] < MIN_BATCH
            or not (_inner_first(src) or _inner_first(dst))):
        return False
    _batch_inner(_five(src), _five(dst))
    return True


@nb.njit(nogil=True, cache=True, boundscheck=False)
def transpose_taps(w, taps, out, t0, t1):
    """``out[g, t, f, c] = w[taps[t], c, f, g]`` for ``t0 <= t < t1``: 8×8 blocks of
    channels × filters (whose fixed loops LLVM compiles to vector shuffles), a band of
    8 filters at a time across the channels, then the remainders."""
    _, Cg, Fg, G = w.shape
    C8, F8 = Cg - Cg % 8, Fg - Fg % 8
    for g in range(G):
        for t in range(t0, t1):
            s = taps[t]
            for f0 in range(0, F8, 8):
                for c0 in range(0, C8, 8):
                    for f in range(8):
                        for c in range(8):
                            out[g, t, f0 + f, c0 + c] = w[s, c0 + c, f0 + f, g]
                for f in range(f0, f0 + 8):
                    for c in range(C8, Cg):
                        out[g, t, f, c] = w[s, c, f, g]
            for f in range(F8, Fg):
                for c in range(Cg):
                    out[g, t, f, c] = w[s, c, f, g]
