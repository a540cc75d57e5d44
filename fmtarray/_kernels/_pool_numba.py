"""Compiled max pooling of NumPy arrays (Numba ``njit``, ``nogil``, ``cache``).

:func:`fmtarray._kernels.pool.pool_forward` and :func:`~fmtarray._kernels.pool.pool_backward`
hand ``"max"`` pooling of NumPy arrays here when the compiled kernels can run (the rule
of :func:`fmtarray._kernels.conv._numba.unavailable`: ``FMTARRAY_NUMBA=0`` or no Numba
keeps the NumPy formulation). One pass over the input instead of one NumPy pass per
window offset, and for the gradient no masks: the gradient of a 2×2 pooling of a
mini-batch of 32 digits' 20 feature maps takes 13–18 µs instead of about 100.

The semantics are the NumPy formulation's, element for element:

* forward: ``maximum`` over the window's taps in C order, padding reading ``-inf``
  (so a NaN anywhere in the window gives NaN, as ``maximum`` does);
* gradient: each window's cotangent goes to its first tap (C order, padding taps
  included, reading ``-inf``) equal to the window's result; a padding tap drops it, and
  a NaN result matches no tap (the cotangent is dropped), as ``xpad == y`` does.

Arrays are ``(N, D, H, W, C)`` (1 and 2 pooled dims get leading pooled dims of size 1),
any strides; work is split over the batch with the convolution runtime's workers.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .conv._numpy._runtime import dynamic_blocks, parallel
from .conv.thresholds import current

__all__ = ["max_forward", "max_backward"]

_JIT = dict(nogil=True, cache=True, fastmath=False, boundscheck=False, error_model="numpy")


@nb.njit(**_JIT)
def _forward(x, y, n0, n1, k, s, p):
    D, H, W, C = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    for n in range(n0, n1):
        for a in range(y.shape[1]):
            for b in range(y.shape[2]):
                for c in range(y.shape[3]):
                    t = y[n, a, b, c]
                    t[:] = -np.inf
                    for i in range(k[0]):
                        zz = a * s[0] + i - p[0]
                        if zz < 0 or zz >= D:
                            continue
                        for j in range(k[1]):
                            yy = b * s[1] + j - p[1]
                            if yy < 0 or yy >= H:
                                continue
                            for m in range(k[2]):
                                xx = c * s[2] + m - p[2]
                                if xx < 0 or xx >= W:
                                    continue
                                v = x[n, zz, yy, xx]
                                for ch in range(C):  # selects, no branches
                                    t[ch] = v[ch] if (v[ch] > t[ch]) | (v[ch] != v[ch]) else t[ch]


@nb.njit(**_JIT)
def _first_max(gy, x, y, gx, n, a, b, c, f, k, s, p, add):
    """Window ``(a, b, c)`` of sample ``n``: ``f[ch]`` its first tap equal to the result
    (-1: none); with ``add`` (windows that do not overlap) the tap also gets the
    window's cotangent, its only contribution."""
    D, H, W, C = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    zero = gx.dtype.type(0)  # adding +0 to a sum started at +0 changes no bit
    t = y[n, a, b, c]
    g = gy[n, a, b, c]
    f[:] = -1
    tap = 0
    for i in range(k[0]):
        zz = a * s[0] + i - p[0]
        for j in range(k[1]):
            yy = b * s[1] + j - p[1]
            for m in range(k[2]):
                xx = c * s[2] + m - p[2]
                if zz >= 0 and zz < D and yy >= 0 and yy < H and xx >= 0 and xx < W:
                    v = x[n, zz, yy, xx]
                    o = gx[n, zz, yy, xx]
                    # selects, no branches (the data decide each lane)
                    for ch in range(C):
                        h = (f[ch] < 0) & (v[ch] == t[ch])
                        f[ch] = tap if h else f[ch]
                        if add:
                            o[ch] += g[ch] if h else zero
                else:  # a padding tap reads -inf
                    for ch in range(C):
                        h = (f[ch] < 0) & (t[ch] == -np.inf)
                        f[ch] = tap if h else f[ch]
                tap += 1


@nb.njit(**_JIT)
def _backward(gy, x, y, gx, n0, n1, k, s, p):
    """Windows that do not overlap: each tap gets at most one window's cotangent, added
    as its first maximum is found."""
    f = np.empty(x.shape[4], dtype=np.int32)
    for n in range(n0, n1):
        for a in range(y.shape[1]):
            for b in range(y.shape[2]):
                for c in range(y.shape[3]):
                    _first_max(gy, x, y, gx, n, a, b, c, f, k, s, p, True)


@nb.njit(**_JIT)
def _backward_overlapping(gy, x, y, gx, n0, n1, k, s, p):
    """Overlapping windows: each window's first maximum, then the contributions added
    tap by tap, as the NumPy formulation adds its per-offset contributions: the same
    sums in the same order, hence the same bits (a kernel of its own: the common,
    non-overlapping pooling does not wait for this one's compilation)."""
    D, H, W = x.shape[1], x.shape[2], x.shape[3]
    Od, Oh, Ow, C = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    first = np.empty((Od, Oh, Ow, C), dtype=np.int32)  # each window's first max, -1: none
    zero = gx.dtype.type(0)
    for n in range(n0, n1):
        for a in range(Od):
            for b in range(Oh):
                for c in range(Ow):
                    _first_max(gy, x, y, gx, n, a, b, c, first[a, b, c], k, s, p, False)
        tap = 0
        for i in range(k[0]):
            for j in range(k[1]):
                for m in range(k[2]):
                    for a in range(Od):
                        zz = a * s[0] + i - p[0]
                        if zz < 0 or zz >= D:
                            continue
                        for b in range(Oh):
                            yy = b * s[1] + j - p[1]
                            if yy < 0 or yy >= H:
                                continue
                            for c in range(Ow):
                                xx = c * s[2] + m - p[2]
                                if xx < 0 or xx >= W:
                                    continue
                                f = first[a, b, c]
                                g = gy[n, a, b, c]
                                o = gx[n, zz, yy, xx]
                                for ch in range(C):
                                    o[ch] += g[ch] if f[ch] == tap else zero
                    tap += 1


def _five(a, d):
    """``(N, *sp, C)`` as ``(N, D, H, W, C)``: a view with leading size-1 pooled dims."""
    return a.reshape(a.shape[0], *(1,) * (3 - d), *a.shape[1:])


def _geometry(geo):
    """Pool size, stride and padding before as three 3-tuples (leading pooled dims 1)."""
    pad = 3 - geo.d
    return (1,) * pad + geo.k, (1,) * pad + geo.stride, (0,) * pad + geo.pb


def _split(geo, fn):
    """``fn(n0, n1)`` over batch blocks: on the calling thread alone when the pooling
    compares fewer values than ``Tuning.serial_macs``, else over the workers."""
    if geo.N * math.prod(geo.out) * geo.C * geo.K < current().serial_macs:
        fn(0, geo.N)
        return
    step = -(-geo.N // min(geo.N, dynamic_blocks()))
    parallel(lambda _w, n0: fn(n0, min(n0 + step, geo.N)), range(0, geo.N, step),
             dynamic=True)


def max_forward(x, geo):
    """Max pooling of ``x`` ``(N, *sp, C)`` (``geo``: :class:`~.pool.PoolGeometry`)."""
    y = np.empty((geo.N, *geo.out, geo.C), dtype=x.dtype)
    x5, y5 = _five(x, geo.d), _five(y, geo.d)
    k, s, p = _geometry(geo)
    _split(geo, lambda n0, n1: _forward(x5, y5, n0, n1, k, s, p))
    return y


def max_backward(gy, x, y, geo):
    """The input gradient of :func:`max_forward` for the cotangent ``gy``."""
    gx = np.zeros(x.shape, dtype=gy.dtype)
    # a cotangent in another memory order (a fully connected layer's gradient comes
    # batch-innermost) copied C-ordered: the kernel on the strided one ran 57 µs in a
    # training loop against 10 µs after a 2 µs copy (32 digits' 2×2×20 cotangent)
    gy = np.ascontiguousarray(gy)
    gy5, x5, y5, gx5 = (_five(a, geo.d) for a in (gy, x, y, gx))
    k, s, p = _geometry(geo)
    kernel = (_backward_overlapping if any(st < kk for st, kk in zip(geo.stride, geo.k))
              else _backward)
    _split(geo, lambda n0, n1: kernel(gy5, x5, y5, gx5, n0, n1, k, s, p))
    return gx
