"""Max and average pooling on plain channels-last arrays, and their adjoints.

Layout: ``x`` is ``(N, *spatial, C)`` with 1, 2 or 3 pooled (spatial) dims; the
result is ``(N, *out, C)``. Knows nothing about formats.

Geometry, per pooled dim: ``out = floor((n + before + after - k) / stride) + 1``;
what does not fit at the bottom/right is ignored (as MATLAB does).

* ``"max"``: padding never wins (the input is padded with ``-inf``). The
  gradient of a window goes to its *first* maximum in C (row-major) window
  order, as cuDNN, PyTorch and MATLAB do; overlapping windows accumulate.
* ``"average"``: ``count_pad=True`` (MATLAB's ``PaddingValue=0``, the default)
  divides every window by ``prod(k)``, padding counting as zeros;
  ``count_pad=False`` (MATLAB's ``PaddingValue="mean"``) divides by the number of
  input (non-padding) elements in the window.

NumPy arrays are max-pooled by compiled kernels (:mod:`._pool_numba`: one pass, no
masks) when Numba can run; ``FMTARRAY_NUMBA=0`` keeps the formulation below.
The portable path uses strided slicing, ``maximum``/``where``, ``stack``,
``reshape`` and ``concat`` only, so it runs on every array-API library. NumPy gets an
in-place path for the adjoint (slice ``+=`` into one buffer); its forward is the same
code, which is already one pass per window offset.

Dask arrays are pooled block by block (:func:`_pool_dask`): ``N`` and ``C`` chunks
pass through, a chunked pooled dim exchanges halos with its neighbours
(:mod:`fmtarray._kernels.conv._dask_halo`: each output block pools its own chunk plus
the ``k - stride`` (or so) elements its windows reach into the next ones, strides
honoured across chunk boundaries, padding added by the blocks at the array's edges),
so the output keeps the input's chunk count along every dim and is lazy; the chunks'
own library (NumPy's in-place adjoint included) runs each block. The gradient is one
task per output block plus one per input chunk (overlapping windows' contributions
added in block order).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers

from .. import _backend
from .conv.spec import output_size, same_padding as _conv_same_padding
from .pad import dilate as _dilate, pad


__all__ = ["PoolGeometry", "pool_output_size", "same_padding", "pool_forward", "pool_backward"]


def pool_output_size(n: int, k: int, stride: int, before: int, after: int) -> int:
    """``floor((n + before + after - k) / stride) + 1`` (may be < 1): the convolution rule."""
    return output_size(n, k, stride, 1, before, after)


def same_padding(n: int, k: int, stride: int) -> tuple[int, int]:
    """MATLAB's ``"same"`` (the convolution rule): output ``ceil(n / stride)``."""
    return _conv_same_padding(n, k, stride, 1)


def _ints(v, d, name, low):
    if isinstance(v, bool):
        raise TypeError(f"pooling: {name}={v!r} must be an integer or {d} integers")
    if isinstance(v, numbers.Integral):
        v = (int(v),) * d
    try:
        v = tuple(v)
    except TypeError:
        raise TypeError(f"pooling: {name}={v!r} must be an integer or {d} integers") from None
    if len(v) != d or any(isinstance(a, bool) or int(a) != a or a < low for a in v):
        raise ValueError(f"pooling: {name}={v} must be {d} integers >= {low}")
    return tuple(int(a) for a in v)


class PoolGeometry:
    """Sizes of one pooling, checked once."""

    __slots__ = ("d", "N", "sp", "C", "k", "K", "stride", "pb", "pa", "out", "padded")

    def __init__(self, x_shape, pool_size, stride, pad_before, pad_after):
        d = len(x_shape) - 2
        if d < 1:
            raise ValueError(f"pooling kernel: x of shape {tuple(x_shape)} has no pooled dims")
        self.d = d
        self.N = int(x_shape[0])
        self.sp = tuple(int(s) for s in x_shape[1:-1])
        self.C = int(x_shape[-1])
        self.k = _ints(pool_size, d, "pool_size", 1)
        self.K = math.prod(self.k)
        self.stride = _ints(stride, d, "stride", 1)
        self.pb = _ints(pad_before, d, "padding (before)", 0)
        self.pa = _ints(pad_after, d, "padding (after)", 0)
        for k, b, a in zip(self.k, self.pb, self.pa):
            if b >= k or a >= k:
                raise ValueError(
                    f"pooling: padding {self.pb} before / {self.pa} after must be smaller than "
                    f"the pool size {self.k} in every dim (a window made of padding only has "
                    "no input to pool)"
                )
        self.out = tuple(
            pool_output_size(n, k, s, b, a)
            for n, k, s, b, a in zip(self.sp, self.k, self.stride, self.pb, self.pa)
        )
        if any(o < 1 for o in self.out):
            raise ValueError(
                f"pooling: output size {self.out} < 1 for input size {self.sp}, pool size "
                f"{self.k}, stride {self.stride}, padding {self.pb} before / {self.pa} after; "
                "use a smaller pool size or more padding"
            )
        self.padded = tuple(n + b + a for n, b, a in zip(self.sp, self.pb, self.pa))

    def offsets(self):
        return itertools.product(*(range(k) for k in self.k))

    def window(self, off):
        """Index (over all axes of a padded array) of the view for window offset ``off``."""
        sl = tuple(
            slice(o, o + (n - 1) * s + 1, s) for o, s, n in zip(off, self.stride, self.out)
        )
        return (slice(None),) + sl + (slice(None),)

    def tiled(self) -> bool:
        """Windows tile the padded input without overlap or gaps (stride == pool size)."""
        return self.stride == self.k

    def counts(self):
        """Per-dim lists: number of input elements in each window (padding excluded)."""
        out = []
        for n, k, s, b, o in zip(self.sp, self.k, self.stride, self.pb, self.out):
            out.append([min(i * s + k, b + n) - max(i * s, b) for i in range(o)])
        return out


@functools.lru_cache(maxsize=256)
def _cached_geometry(*args):
    return PoolGeometry(*args)


def _geometry(*args):
    """:class:`PoolGeometry` of these arguments, built once per distinct arguments made of
    plain ints (a training loop pools the same shapes every step); others (``True``,
    NumPy integers, lists) are checked anew, as ``True == 1`` would share a cache key."""
    if all(type(a) is int or type(a) is tuple and all(type(v) is int for v in a)
           for a in args):
        return _cached_geometry(*args)
    return PoolGeometry(*args)


def _pad_input(xp, x, geo, value):
    return pad(xp, x, geo.pb, geo.pa, tuple(range(1, geo.d + 1)), value)


def _count_array(xp, geo, dtype, dev):
    """``(1, *out, 1)`` array of the number of input elements per window."""
    cnt = None
    for i, c in enumerate(geo.counts()):
        shape = [1] * (geo.d + 2)
        shape[i + 1] = len(c)
        a = xp.reshape(xp.asarray(c, dtype=dtype, device=dev), tuple(shape))
        cnt = a if cnt is None else cnt * a
    return cnt


def _check_mode(mode):
    if mode not in ("max", "average"):
        raise ValueError(f"pooling: mode must be 'max' or 'average', got {mode!r}")


def pool_forward(xp, x, mode, pool_size, *, stride=1, pad_before=0, pad_after=0, count_pad=True):
    """Pool channels-last ``x`` ``(N, *sp, C)``; returns ``(N, *out, C)``.

    ``mode`` is ``"max"`` or ``"average"``; see the module docstring.
    """
    _check_mode(mode)
    geo = _geometry(tuple(x.shape), pool_size, stride, pad_before, pad_after)
    if not _backend.isdtype(xp, x.dtype, "real floating"):
        raise TypeError(f"pooling needs a real floating-point array, got dtype {x.dtype}")
    if _is_dask(xp):
        return _pool_dask(x, geo, mode, count_pad)
    if mode == "max" and _compiled(xp, x):
        return _pool_numba_forward(x, geo)
    xpad = _pad_input(xp, x, geo, float("-inf") if mode == "max" else 0.0)
    y = None
    for off in geo.offsets():
        v = xpad[geo.window(off)]
        if y is None:
            y = v
        elif mode == "max":
            y = xp.maximum(y, v)
        else:
            y = y + v
    if mode == "average":
        if count_pad or not (any(geo.pb) or any(geo.pa)):
            y = y / geo.K
        else:
            y = y / _count_array(xp, geo, x.dtype, _backend.device(x))
    return y


def pool_backward(xp, gy, x, y, mode, pool_size, *, stride=1, pad_before=0, pad_after=0,
                  count_pad=True):
    """Vector-Jacobian product of :func:`pool_forward` with respect to ``x``.

    ``gy`` is the output cotangent ``(N, *out, C)``, ``y`` the forward result
    (used by ``"max"`` to find each window's first maximum).
    """
    _check_mode(mode)
    geo = _geometry(tuple(x.shape), pool_size, stride, pad_before, pad_after)
    if tuple(gy.shape) != (geo.N, *geo.out, geo.C):
        raise ValueError(
            f"pool_backward: gy has shape {tuple(gy.shape)}, expected {(geo.N, *geo.out, geo.C)}"
        )
    if _is_dask(xp):
        return _pool_dask(x, geo, mode, count_pad, gy, y)
    if mode == "max" and _compiled(xp, x, gy, y):
        return _pool_numba_backward(gy, x, y, geo)
    if mode == "average":
        if count_pad or not (any(geo.pb) or any(geo.pa)):
            g = gy / geo.K
        else:
            g = gy / _count_array(xp, geo, gy.dtype, _backend.device(gy))
        contribs = ((off, g) for off in geo.offsets())
    else:
        contribs = _max_contributions(xp, gy, x, y, geo)
    if _backend.is_numpy(xp):
        gpad = _place_numpy(contribs, geo, gy.dtype)
    elif geo.tiled():
        gpad = _place_tiled(xp, list(contribs), geo, gy)
    else:
        gpad = _place_portable(xp, contribs, geo, gy)
    centre = (slice(None),) + tuple(
        slice(b, b + n) for b, n in zip(geo.pb, geo.sp)
    ) + (slice(None),)
    return gpad[centre]


def _compiled(xp, *arrays) -> bool:
    """Whether :mod:`._pool_numba` runs this max pooling: NumPy arrays of one dtype,
    float32 or float64, and the compiled kernels available (see
    :func:`fmtarray._kernels.conv._numba.unavailable`)."""
    dt = arrays[0].dtype
    if not _backend.is_numpy(xp) or dt.char not in "fd" or any(a.dtype != dt for a in arrays):
        return False
    from .conv._numba import unavailable

    return unavailable() is None


def _pool_numba_forward(x, geo):
    from . import _pool_numba  # imports Numba: only once a compiled pooling runs

    return _pool_numba.max_forward(x, geo)


def _pool_numba_backward(gy, x, y, geo):
    from . import _pool_numba

    return _pool_numba.max_backward(gy, x, y, geo)


def _max_contributions(xp, gy, x, y, geo):
    """Yield ``(offset, cotangent routed to that offset)``: each window's first max wins."""
    xpad = _pad_input(xp, x, geo, float("-inf"))
    zero = xp.zeros_like(gy)
    taken = None
    for off in geo.offsets():
        hit = xpad[geo.window(off)] == y
        if taken is None:
            taken = hit
        else:
            hit = xp.logical_and(hit, xp.logical_not(taken))
            taken = xp.logical_or(taken, hit)
        yield off, xp.where(hit, gy, zero)


def _place_numpy(contribs, geo, dtype):
    import numpy as np

    gpad = np.zeros((geo.N, *geo.padded, geo.C), dtype=dtype)
    for off, c in contribs:
        gpad[geo.window(off)] += c
    return gpad


def _place_tiled(xp, contribs, geo, gy):
    """stride == pool size: interleave the K contributions with one stack + reshape."""
    d = geo.d
    parts = [c for _, c in contribs]  # C-order offsets
    st = xp.stack(parts, axis=-2)  # (N, *out, K, C)
    st = xp.reshape(st, (geo.N, *geo.out, *geo.k, geo.C))
    # (N, o1, k1, o2, k2, ..., C)
    perm = (0,) + tuple(a for i in range(d) for a in (1 + i, 1 + d + i)) + (1 + 2 * d,)
    st = xp.permute_dims(st, perm)
    used = tuple(o * k for o, k in zip(geo.out, geo.k))
    st = xp.reshape(st, (geo.N, *used, geo.C))
    extra = tuple(p - u for p, u in zip(geo.padded, used))
    if any(extra):
        st = pad(xp, st, (0,) * d, extra, tuple(range(1, d + 1)), 0.0)
    return st


def _place_portable(xp, contribs, geo, gy):
    """General stride: dilate each contribution by the stride and shift it into place."""
    d = geo.d
    axes = tuple(range(1, d + 1))
    acc = None
    for off, c in contribs:
        for i, s in enumerate(geo.stride):
            c = _dilate(xp, c, i + 1, s)
        span = tuple((o - 1) * s + 1 for o, s in zip(geo.out, geo.stride))
        after = tuple(p - o - sp for p, o, sp in zip(geo.padded, off, span))
        c = pad(xp, c, off, after, axes, 0.0)
        acc = c if acc is None else acc + c
    return acc


# ---------------------------------------------------------------------------------------
# Dask: block by block, halos across chunked pooled dims


def _is_dask(xp) -> bool:
    return _backend.library_key(xp) == "dask"


def _on_scheduler_thread():
    """A block runs on its Dask scheduler thread alone (Dask's threads are the
    parallelism; the compiled kernels would otherwise split it over the workers too)."""
    from .conv._numpy._runtime import on_calling_thread

    return on_calling_thread()


def _pool_block(x, lb, la, *, mode, k, stride, count_pad):
    with _on_scheduler_thread():
        return pool_forward(_backend.namespace(x), x, mode, k, stride=stride, pad_before=lb,
                            pad_after=la, count_pad=count_pad)


def _pool_grad_block(x, lb, la, gy, y, *, mode, k, stride, count_pad):
    from .conv._dask_halo import Grads

    with _on_scheduler_thread():
        return Grads(pool_backward(_backend.namespace(x), gy, x, y, mode, k, stride=stride,
                                   pad_before=lb, pad_after=la, count_pad=count_pad))


def _pool_dask(x, geo, mode, count_pad, gy=None, y=None):
    """The pooling of the Dask array ``x`` (``gy is None``) or its input gradient."""
    import functools

    from dask.base import tokenize

    from .conv._dask_halo import Windows

    value = float("-inf") if mode == "max" else 0.0
    win = Windows(x, tuple(range(1, geo.d + 1)), geo.k, geo.stride, geo.pb, geo.pa,
                  geo.out, value)
    meta = getattr(x, "_meta", None)
    meta = meta[(slice(0, 0),) * x.ndim] if meta is not None and meta.ndim == x.ndim else None
    if meta is None:
        import numpy as np

        meta = np.empty((0,) * x.ndim, dtype=x.dtype)
    kw = dict(mode=mode, k=geo.k, stride=geo.stride, count_pad=count_pad)
    if gy is None:
        name = "pool-" + tokenize(x, kw, geo.pb, geo.pa)
        return win.forward(functools.partial(_pool_block, **kw), name, meta)
    out = win.out_chunks()
    gy = gy if gy.chunks == out else gy.rechunk(out)
    y = y if y.chunks == out else y.rechunk(out)
    name = "pool-grad-" + tokenize(x, gy, y, kw, geo.pb, geo.pa)
    _, _, gx = win.backward(functools.partial(_pool_grad_block, **kw), name, meta,
                            lambda idx: ((gy.name, *idx), (y.name, *idx)), deps=[gy, y],
                            gx_meta=meta)
    return gx
