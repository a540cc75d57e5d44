"""Max and average pooling over the ``S`` dims of formatted input (MATLAB
``maxpool``/``avgpool``), and their VJPs.

Dispatch (as for convolution): the pooled dims are chosen by label, every other
dim except ``C`` is flattened into one batch axis, one positional kernel
(:mod:`fmtarray._kernels.pool`) runs on ``(batch, *pooled, C)``, and the dims
are restored. The output has the input's format.
"""

from __future__ import annotations

import math

from .. import _backend, _tape, _validate
from .._kernels import pool as _k
from ..array import FormattedArray
from ._chunks import match_chunks
from .nn import _as_input, _identity, _inverse, _to_caller

__all__ = ["max_pool", "avg_pool", "pool_padding"]


def _pooled_axes(fmt, dims, fn):
    if dims not in ("S", "ST"):
        raise ValueError(f"{fn}: dims must be 'S' (the S dims) or 'ST' (S dims and T), got {dims!r}")
    axes = [i for i, ch in enumerate(fmt) if ch == "S"]
    if dims == "ST":
        t = fmt.find("T")
        if t < 0:
            raise ValueError(f"{fn}: dims='ST' but the input format {fmt!r} has no 'T' dim")
        axes.append(t)
    if not axes:
        raise ValueError(
            f"{fn}: input of format {fmt!r} has no 'S' dim to pool over; pooling needs "
            "spatial dims, e.g. 'SSCB'"
        )
    if len(axes) > 3:
        raise ValueError(f"{fn}: can pool over 1 to 3 dims, format {fmt!r} has {len(axes)}")
    return tuple(axes)


def pool_padding(padding, sizes, pool_size, stride, fn="pooling"):
    """``(before, after)`` tuples from a padding spec.

    ``padding`` takes the forms of :func:`fmtarray.conv`'s (one shared normaliser,
    :func:`fmtarray._validate.padding`): a non-negative int (every edge), one int per
    pooled dim, ``2·d`` ints (before/after per dim), a ``2×d`` matrix ``(before_seq,
    after_seq)``, ``"same"`` or ``"valid"`` (any case). ``sizes`` are the input sizes of
    the pooled dims (used by ``"same"``).
    """
    d = len(sizes)
    p = _validate.padding(padding, d, "", strings=("same", "valid"), per="pooled dim")
    if p == "same":
        pairs = [_k.same_padding(n, k, s) for n, k, s in zip(sizes, pool_size, stride)]
        return tuple(q[0] for q in pairs), tuple(q[1] for q in pairs)
    return p


def _count_pad(padding_value, fn):
    """``avg_pool``'s ``padding_value``: 0 (padding counts as zeros) or ``"mean"`` (any
    case; padding is left out of each average)."""
    v = padding_value.lower() if isinstance(padding_value, str) else _validate.scalar(
        padding_value)
    if v == "mean":
        return False
    if not isinstance(v, (str, bool)) and v is not None and v == 0:
        return True
    raise ValueError(f"{fn}: padding_value must be 0 or 'mean', got {padding_value!r}")


_PLANS: dict = {}
_PLANS_MAX = 512


def _plain(v) -> bool:
    """An int, a string or a tuple of such (nested): safe in a cache key (``True == 1``
    is not)."""
    return type(v) in (int, str) or type(v) is tuple and all(_plain(a) for a in v)


def _plan(fmt, shape, pool_size, stride, padding, dims, fn):
    """The checked arguments and the permutation of one pooling call: built once per
    signature of plain arguments (a training loop pools the same shapes every step)."""
    key = (fmt, shape, pool_size, stride, padding, dims, fn)
    if all(_plain(v) for v in (pool_size, stride, padding)):
        got = _PLANS.get(key)
        if got is not None:
            return got
    else:
        key = None
    pooled = _pooled_axes(fmt, dims, fn)
    d = len(pooled)
    sizes = tuple(shape[i] for i in pooled)
    try:
        pool_size = _validate.ints("pool_size", pool_size, d, "pooled dim", 1)
        stride = _validate.ints("stride", stride, d, "pooled dim", 1)
        pb, pa = pool_padding(padding, sizes, pool_size, stride, fn)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{fn}: {e}") from None
    c = fmt.find("C")
    rest = tuple(i for i in range(len(fmt)) if i not in pooled and i != c)
    perm = rest + pooled + ((c,) if c >= 0 else ())
    plan = (pooled, sizes, pool_size, stride, pb, pa, c, rest, perm)
    if key is not None:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _pool(x, mode, pool_size, stride, padding, count_pad, dims, data_format, fn):
    x, df = _as_input(x, data_format, fn)
    fmt = x._fmt
    xd = x._data
    xp = _backend.namespace(xd)
    shape = tuple(xd.shape)
    pooled, sizes, pool_size, stride, pb, pa, c, rest, perm = _plan(
        fmt, shape, pool_size, stride, padding, dims, fn)
    rsz = tuple(shape[i] for i in rest)
    nc = shape[c] if c >= 0 else 1
    xt = xd if _identity(perm) else xp.permute_dims(xd, perm)
    xk = xp.reshape(xt, (math.prod(rsz), *sizes, nc))
    kw = dict(stride=stride, pad_before=pb, pad_after=pa, count_pad=count_pad)
    try:
        yk = _k.pool_forward(xp, xk, mode, pool_size, **kw)
    except ValueError as e:
        raise ValueError(f"{fn} on input of format {fmt!r} and shape {shape}: {e}") from None
    out_sp = tuple(yk.shape[1:-1])
    yt_shape = rsz + out_sp + ((nc,) if c >= 0 else ())
    yt = xp.reshape(yk, yt_shape)
    y = yt if _identity(perm) else xp.permute_dims(yt, _inverse(perm))
    y = match_chunks(xp, y, xd, rest)  # Dask: the batch-like dims keep their chunks
    out = FormattedArray._wrap(y, fmt)
    if x._node is not None:
        yk_shape = tuple(yk.shape)

        def back(g, needs):
            gt = g if _identity(perm) else xp.permute_dims(g, perm)
            gk = xp.reshape(gt, yk_shape)
            gxk = _k.pool_backward(xp, gk, xk, yk, mode, pool_size, **kw)
            gx = xp.reshape(gxk, tuple(xt.shape))
            gx = gx if _identity(perm) else xp.permute_dims(gx, _inverse(perm))
            return (match_chunks(xp, gx, xd, range(len(fmt))),)

        _tape.record(out, (x,), back, fn)
    return _to_caller(out, df)


def max_pool(x, pool_size, *, stride=1, padding=0, dims="S", data_format=None):
    """Max pooling (MATLAB ``maxpool``) over the ``S`` dims (``dims="ST"``: and ``T``).

    Parameters
    ----------
    x
        Formatted input, e.g. ``SSCB`` (or unformatted with ``data_format``).
    pool_size
        Int or one int per pooled dim.
    stride
        Int or one int per pooled dim (MATLAB's default is 1).
    padding
        Non-negative int, one int per pooled dim, ``(before, after)`` sequences,
        or ``"same"`` (output ``ceil(n / stride)``, the odd pixel after).
        Padding never wins a max; it must be smaller than the pool size.

    What does not fit at the bottom/right is ignored. The gradient of each
    window goes to its first maximum. Returns the input's format.
    """
    return _pool(x, "max", pool_size, stride, padding, True, dims, data_format, "max_pool")


def avg_pool(x, pool_size, *, stride=1, padding=0, padding_value=0, dims="S", data_format=None):
    """Average pooling (MATLAB ``avgpool``); arguments as :func:`max_pool`.

    ``padding_value=0`` (default) averages padding as zeros (every window is
    divided by the pool size); ``"mean"`` excludes padding from the average.
    """
    count_pad = _count_pad(padding_value, "avg_pool")
    return _pool(x, "average", pool_size, stride, padding, count_pad, dims, data_format, "avg_pool")
