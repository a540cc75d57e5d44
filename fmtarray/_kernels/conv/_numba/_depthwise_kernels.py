"""Compiled channel-wise convolution kernels (Numba ``njit``, ``nogil``, ``cache``).

Imported on the first run of a ``numba.*`` entry (this imports Numba). Each kernel
works on a range of rows and releases the GIL, so :mod:`.._numpy._runtime`'s workers
split one call over the cores (see :mod:`.` for why not ``parallel=True``).

Arrays: ``x`` ``(N, H, W, C)`` C-contiguous, ``w`` ``(kh, kw, C, M)`` C-contiguous (``M``
filters per channel), ``y``/``gy`` ``(N, Ho, Wo, C·M)`` C-contiguous, filter ``f`` of
channel ``c`` at ``c·M + f``. Padding is virtual: a tap that reads outside the input
reads the constant ``v`` (the caller materialises mirror/replicate padding and passes
zero pads). Sums run over the taps in C order, as the direct loop does; no fast-math,
so inf/NaN follow IEEE arithmetic exactly like the direct path.
"""

from __future__ import annotations

import numba as nb

from ._cache import install

install()  # the cached kernels' stamps: every file of this package (see ._cache)

_JIT = dict(nogil=True, cache=True, fastmath=False, boundscheck=False, error_model="numpy")


@nb.njit(inline="always", **_JIT)
def _sizes(x, y, w):
    """``H, W, C`` of the input ``x``, ``Ho, Wo`` of the output ``y``, ``kh, kw, M`` of
    the weights ``w``."""
    return (x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
            w.shape[0], w.shape[1], w.shape[3])


@nb.njit(inline="always", **_JIT)
def _split(t, rows):
    """Row ``t`` of the ``n·rows + i`` rows as ``(n, i)`` (``divmod`` is slower here)."""
    n = t // rows
    return n, t - n * rows


@nb.njit(inline="always", **_JIT)
def _tap(i, j, p, q, sh, sw, dh, dw, ph, pw, H, W):
    """The input element ``(yy, xx)`` that tap ``(p, q)`` of output ``(i, j)`` reads, and
    whether it lies inside the ``H×W`` input (else the tap reads the padding)."""
    yy = i * sh + p * dh - ph
    xx = j * sw + q * dw - pw
    return yy, xx, yy >= 0 and yy < H and xx >= 0 and xx < W


@nb.njit(inline="always", **_JIT)
def _reader(a, p, s, d, pad, size):
    """Along one dim: the output index ``i`` whose tap ``p`` reads input index ``a``
    (``i·s + p·d - pad = a``), and whether there is one in ``[0, size)``."""
    u = a + pad - p * d
    if u < 0 or u % s != 0:
        return 0, False
    i = u // s
    return i, i < size


@nb.njit(**_JIT)
def forward_rows(x, w, bias, y, r0, r1, sh, sw, dh, dw, ph, pw, v, has_bias):
    """``y[n, i]`` for the rows ``t = n·Ho + i`` in ``[r0, r1)``."""
    H, W, C, Ho, Wo, kh, kw, M = _sizes(x, y, w)
    F = y.shape[3]
    for t in range(r0, r1):
        n, i = _split(t, Ho)
        for j in range(Wo):
            if has_bias:
                for f in range(F):
                    y[n, i, j, f] = bias[f]
            else:
                for f in range(F):
                    y[n, i, j, f] = 0
            for p in range(kh):
                for q in range(kw):
                    yy, xx, inside = _tap(i, j, p, q, sh, sw, dh, dw, ph, pw, H, W)
                    if inside and M == 1:
                        for c in range(C):
                            y[n, i, j, c] += x[n, yy, xx, c] * w[p, q, c, 0]
                    elif inside:
                        for c in range(C):
                            xv = x[n, yy, xx, c]
                            for m in range(M):
                                y[n, i, j, c * M + m] += xv * w[p, q, c, m]
                    else:
                        for c in range(C):
                            for m in range(M):
                                y[n, i, j, c * M + m] += v * w[p, q, c, m]


@nb.njit(**_JIT)
def input_grad_rows(gy, w, gx, r0, r1, sh, sw, dh, dw, ph, pw):
    """``gx[n, a]`` for the rows ``t = n·H + a`` in ``[r0, r1)``: each input element
    gathers the cotangent of the outputs whose taps read it (taps that read padding
    touch no input element, so a non-finite weight reaches only what it multiplies)."""
    H, W, C, Ho, Wo, kh, kw, M = _sizes(gx, gy, w)
    for t in range(r0, r1):
        n, a = _split(t, H)
        for b in range(W):
            for c in range(C):
                gx[n, a, b, c] = 0
            for p in range(kh):
                i, row_in = _reader(a, p, sh, dh, ph, Ho)
                if not row_in:
                    continue
                for q in range(kw):
                    j, col_in = _reader(b, q, sw, dw, pw, Wo)
                    if not col_in:
                        continue
                    if M == 1:
                        for c in range(C):
                            gx[n, a, b, c] += gy[n, i, j, c] * w[p, q, c, 0]
                    else:
                        for c in range(C):
                            for m in range(M):
                                gx[n, a, b, c] += gy[n, i, j, c * M + m] * w[p, q, c, m]


@nb.njit(**_JIT)
def weight_grad_rows(gy, x, acc, r0, r1, sh, sw, dh, dw, ph, pw, v):
    """``acc[p, q, c, m] += Σ gy[n, i, j, c·M + m] · x(n, i·sh + p·dh - ph, …, c)`` over
    the output rows ``t = n·Ho + i`` in ``[r0, r1)`` (padding reads ``v``)."""
    H, W, C, Ho, Wo, kh, kw, M = _sizes(x, gy, acc)
    for t in range(r0, r1):
        n, i = _split(t, Ho)
        for j in range(Wo):
            for p in range(kh):
                for q in range(kw):
                    yy, xx, inside = _tap(i, j, p, q, sh, sw, dh, dw, ph, pw, H, W)
                    if inside and M == 1:
                        for c in range(C):
                            acc[p, q, c, 0] += gy[n, i, j, c] * x[n, yy, xx, c]
                    elif inside:
                        for c in range(C):
                            xv = x[n, yy, xx, c]
                            for m in range(M):
                                acc[p, q, c, m] += gy[n, i, j, c * M + m] * xv
                    else:
                        for c in range(C):
                            for m in range(M):
                                acc[p, q, c, m] += gy[n, i, j, c * M + m] * v
