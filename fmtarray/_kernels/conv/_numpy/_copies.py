"""Copies split over the convolution pool's workers: in cache-sized blocks cut along
the source's outermost dim (:func:`copy_blocked`, :func:`parallel_copy`), or by a
compiled transposing copy where one is registered (:data:`transposing_copy`);
:class:`Chunked` pads chunks of a batch into one reusable scratch buffer."""

from __future__ import annotations

import numpy as np

from ...pad import fill_border_numpy
from ..thresholds import current
from ._runtime import n_workers, parallel, scratch

__all__ = ["copy_blocked", "parallel_copy", "Chunked", "transposing_copy"]



def _c_order(a) -> bool:
    """Strides non-increasing (a plain copy streams through memory)."""
    st = [abs(s) for s, n in zip(a.strides, a.shape) if n > 1]
    return all(s1 >= s2 for s1, s2 in zip(st, st[1:]))


def _outer_axis(src):
    """The dim of size > 1 with the largest source stride: blocks cut along it are
    compact in the source (cutting along a dim that is contiguous in memory would
    make every block read a sliver of every cache line)."""
    big = [i for i, n in enumerate(src.shape) if n > 1]
    return max(big, key=lambda i: abs(src.strides[i])) if big else None


#: ``copy(dst, src) -> bool``: a compiled transposing copy that :func:`copy_blocked`
#: tries first (set by the compiled kernels' package; it declines when they are off)
transposing_copy = None


def copy_blocked(dst, src, block=None):
    """``dst[...] = src`` in blocks of ``Tuning.copy_block`` elements, so a transposing
    copy works in cache (or by :data:`transposing_copy` where it applies)."""
    if block is None:
        block = current().copy_block
    if src.size <= block or _c_order(src) and _c_order(dst):
        np.copyto(dst, src)
        return
    if transposing_copy is not None and transposing_copy(dst, src):
        return
    if _c_order(src):
        np.copyto(dst, src)
        return
    ax = _outer_axis(src)
    step = max(1, (block * src.shape[ax]) // src.size)
    for i in range(0, src.shape[ax], step):
        sl = (slice(None),) * ax + (slice(i, i + step),)
        copy_blocked(dst[sl], src[sl], block)


def parallel_copy(dst, src):
    """Copy split over the workers along the source's outermost dim (caller holds BLAS)."""
    n = n_workers()
    block = current().copy_block
    if n == 1 or src.size < 4 * block:
        copy_blocked(dst, src, block)
        return
    ax = _outer_axis(src)
    if ax is None or src.shape[ax] < n:
        copy_blocked(dst, src, block)
        return
    # about three parts per worker, taken dynamically
    step = -(-src.shape[ax] // min(3 * n, src.shape[ax]))
    parts = [(slice(None),) * ax + (slice(i, i + step),) for i in range(0, src.shape[ax], step)]
    parallel(lambda w, sl: copy_blocked(dst[sl], src[sl], block), parts, dynamic=True)


class Chunked:
    """A reusable buffer receiving padded, channels-last chunks of a batch."""

    def __init__(self, x, spec, nb, dtype, pb, pa, value):
        self.x = x
        self.spec = spec
        self.pb, self.pa, self.value = pb, pa, value
        sp = x.shape[1:-1]
        self.sp = sp
        self.shape = tuple(n + b + a for n, b, a in zip(sp, pb, pa))
        self.buf = scratch("chunk", (nb, *self.shape, x.shape[-1]), dtype)
        self.constant = not isinstance(value, str)
        if self.constant and (any(pb) or any(pa)):
            fill_border_numpy(self.buf, (0,) + tuple(pb), (0,) + tuple(pa),
                              tuple(range(self.buf.ndim - 1)), value)

    def block(self, n0, n1):
        out = self.buf[: n1 - n0]
        centre = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(self.pb, self.sp))
        parallel_copy(out[centre], self.x[n0:n1])
        if not self.constant:
            fill_border_numpy(out, self.pb, self.pa, tuple(range(1, out.ndim - 1)), self.value)
        return out
