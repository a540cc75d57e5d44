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

:func:`copy` takes ``dst[...] = src`` for arrays of one dtype (float32 or float64, up to
five dims of size > 1) whose innermost dims differ, the source's holding at least
:data:`MIN_BATCH` values: those two dims swap by the blocks (the batch and the channels
of canonical data copied channels-last, the time and the channels of ``SCBT`` data, a
channels-last operand of a binary op brought to a canonical one's order: 32×32 96
channels b16 0.78 ms against ``copyto``'s 2.81), the others walked as the destination
stores them. It returns ``False`` for anything else, which
:func:`.._numpy._copies.copy_blocked` then copies.

:func:`transpose_taps` writes the input gradient's weights ``(G, T, Fg, Cg)`` from
MATLAB's ``(K, Cg, Fg, G)``, a tap at a time, in 8×8 blocks of channels × filters:
NumPy's transposing copy of 512×512 3×3 weights (9.4 MB) took 5.6 ms, this one 1.45 ms
on one thread (32×32 blocks with variable bounds: 4.4 ms).
"""

from __future__ import annotations

import numba as nb

from ._cache import install

install()  # the cached kernels' stamps: every file of this package (see ._cache)

__all__ = ["copy", "transpose_taps", "MIN_BATCH"]

#: the fewest values in the source's innermost dim the compiled copy takes: with fewer
#: (samples per position), NumPy's blocked ``copyto`` was faster (3136 positions × 64
#: channels × 8 samples: 0.63 ms against 0.76; × 4 samples of 16 or 48 channels:
#: 0.11-0.22 against 0.21-0.41)
MIN_BATCH = 16


@nb.njit(nogil=True, cache=True, boundscheck=False)
def _batch_inner(src, dst):
    """``dst[n, d, h, w, c] = src[n, d, h, w, c]`` by 8×8 blocks of ``n`` × ``c`` (the
    source's innermost dim × the destination's: samples × channels for canonical data)
    at each ``(d, h, w)`` (fixed loops, which LLVM compiles to vector loads, shuffles and
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


def _inner(a):
    """The dim of size > 1 stored innermost (``None`` when there is none)."""
    dims = [i for i, n in enumerate(a.shape) if n > 1]
    return min(dims, key=lambda i: abs(a.strides[i])) if dims else None


def copy(dst, src) -> bool:
    """``dst[...] = src`` by the compiled loop when it applies (see the module); else
    ``False`` and nothing is written."""
    if src.shape != dst.shape or src.dtype != dst.dtype or src.dtype.char not in "fd":
        return False
    si, di = _inner(src), _inner(dst)
    if si is None or di is None or si == di or src.shape[si] < MIN_BATCH:
        return False
    # the loop's dims: the source's innermost first, the destination's innermost last,
    # the others as the destination stores them (size-1 dims dropped)
    rest = sorted((i for i, n in enumerate(src.shape) if n > 1 and i not in (si, di)),
                  key=lambda i: -abs(dst.strides[i]))
    if len(rest) > 3:
        return False
    at = tuple(slice(None) if n > 1 else 0 for n in src.shape)
    pos = [i for i, n in enumerate(src.shape) if n > 1]  # dims left after dropping
    perm = [pos.index(i) for i in (si, *rest, di)]
    _batch_inner(_five(src[at].transpose(perm)), _five(dst[at].transpose(perm)))
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
