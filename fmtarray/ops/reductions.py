"""Reductions by label (``sum(x, "S")``, ``mean(x, "SB")``, ...) and their VJPs.

``dims`` is a str of labels (every dim with one of them), integer axes (0-based, of
the canonical layout), ``None`` or ``"all"`` (every dim: MATLAB's ``mean(X, "all")``;
the result is an unformatted scalar unless ``keepdims=True``)."""

from __future__ import annotations

from .. import _backend, _format, _tape
from .._kernels import total as _total
from ..array import FormattedArray

__all__ = ["sum", "mean", "max", "min", "var", "std"]


def _axes(x: FormattedArray, dims):
    if dims is None or (isinstance(dims, str) and dims.lower() == "all"):
        return tuple(range(x.ndim))
    if isinstance(dims, str):
        return _format.reduction_axes(x._fmt, dims)
    if isinstance(dims, int):
        dims = (dims,)
    axes = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or not -x.ndim <= d < x.ndim:
            raise ValueError(
                f"dims must be a str of labels (e.g. 'S', 'SB'), 'all', or integer axes in "
                f"[-{x.ndim}, {x.ndim}), got {dims!r}"
            )
        axes.append(d % x.ndim)
    return tuple(sorted(set(axes)))


def _result(x, y, axes, keepdims):
    if keepdims or not x._fmt:
        fmt = x._fmt
    else:
        fmt = "".join(ch for i, ch in enumerate(x._fmt) if i not in axes)
    return FormattedArray._wrap(y, fmt)


def _expand(xp, g, shape, axes, keepdims):
    """Bring a reduced cotangent back to a shape that broadcasts against ``shape``."""
    if not keepdims:
        kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
        g = xp.reshape(g, kept)
    return g


def _as_fa(x):
    return x if isinstance(x, FormattedArray) else FormattedArray(x)


def _reducer(name, fwd, vjp, doc, reads="xy"):
    """A reduction by labels; ``vjp(xp, g, x, y, axes, keepdims, shape, **kw)``.
    ``reads``: which of the input ``x`` and the result ``y`` the VJP reads; the recorded
    VJP keeps only those (``None`` in place of the other; on Dask ``x`` is kept for its
    chunks, a graph, not values), so that ``sum(a * b)`` does not hold on to ``a * b``
    until the backward pass: a sum's cotangent needs only the shape."""

    def op(x, dims=None, *, keepdims=False, **kw):
        x = _as_fa(x)
        xd = x._data
        xp = _backend.namespace(xd)
        axes = _axes(x, dims)
        y = fwd(xp, xd, axes, keepdims, **kw)
        out = _result(x, y, axes, keepdims)
        if x._node is not None:
            shape = tuple(xd.shape)
            kx = xd if "x" in reads or _backend.is_dask(xp) else None
            ky = y if "y" in reads else None

            def back(g, needs):
                gk = _expand(xp, g, shape, axes, keepdims)
                return (vjp(xp, gk, kx, ky, axes, keepdims, shape, **kw),)

            _tape.record(out, (x,), back, name)
        return out

    op.__name__ = name
    op.__qualname__ = name
    op.__doc__ = doc
    return op


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _bt(xp, g, x, shape):
    """``g`` broadcast to ``shape`` (the input's); on Dask, in the input ``x``'s chunks (a
    scalar cotangent broadcast as Dask does by default would be one chunk of the whole
    shape, then rechunked: materialised and copied, where NumPy's is a free view)."""
    if not _backend.is_dask(xp):
        return xp.broadcast_to(g, shape)
    import dask.array as da

    g = da.asarray(g)
    keep = {i: c for i, (c, n) in enumerate(zip(x.chunks, g.shape)) if n != 1}
    if any(g.chunks[i] != c for i, c in keep.items()):
        g = g.rechunk(keep)
    return da.broadcast_to(g, tuple(x.shape), chunks=x.chunks)


def _whole(xp, x, ax, kd, compiled, fallback):
    """A sum or mean over every dim of a NumPy float array by the compiled kernel of
    :mod:`.._kernels.total` where it runs, else ``fallback`` (the library's own)."""
    if len(ax) == x.ndim and _backend.is_numpy(xp):
        r = compiled(x)
        if r is not None:
            return xp.reshape(xp.asarray(r), (1,) * x.ndim) if kd else r
    return fallback(x, axis=ax, keepdims=kd)


sum = _reducer(
    "sum",
    lambda xp, x, ax, kd: _whole(xp, x, ax, kd, _total.compiled_total, xp.sum),
    lambda xp, g, x, y, ax, kd, shape: _bt(xp, g, x, shape),
    "Sum over the dims with the given labels (``\"S\"`` = every S dim); all dims when ``dims`` is None or ``\"all\"``.",
    reads="",
)
mean = _reducer(
    "mean",
    lambda xp, x, ax, kd: _whole(xp, x, ax, kd, _total.compiled_mean, xp.mean),
    lambda xp, g, x, y, ax, kd, shape: _bt(xp, g / _count(shape, ax), x, shape),
    "Mean over the dims with the given labels.",
    reads="",
)


def _extreme_vjp(xp, g, x, y, ax, kd, shape):
    yk = _expand(xp, y, shape, ax, kd)
    mask = xp.astype(x == yk, g.dtype)
    ties = xp.sum(mask, axis=ax, keepdims=True)
    return mask * g / ties


max = _reducer(
    "max",
    lambda xp, x, ax, kd: xp.max(x, axis=ax, keepdims=kd),
    _extreme_vjp,
    "Maximum over the dims with the given labels (ties share the gradient equally).",
)
min = _reducer(
    "min",
    lambda xp, x, ax, kd: xp.min(x, axis=ax, keepdims=kd),
    _extreme_vjp,
    "Minimum over the dims with the given labels (ties share the gradient equally).",
)


def _var_vjp(xp, g, x, y, ax, kd, shape, correction=0):
    mu = xp.mean(x, axis=ax, keepdims=True)
    return g * 2 * (x - mu) / (_count(shape, ax) - correction)


def _std_vjp(xp, g, x, y, ax, kd, shape, correction=0):
    mu = xp.mean(x, axis=ax, keepdims=True)
    yk = _expand(xp, y, shape, ax, kd)
    return g * (x - mu) / ((_count(shape, ax) - correction) * yk)


var = _reducer(
    "var",
    lambda xp, x, ax, kd, correction=0: xp.var(x, axis=ax, keepdims=kd, correction=correction),
    _var_vjp,
    "Variance over the dims with the given labels; ``correction=1`` for the unbiased estimate.",
    reads="x",
)
std = _reducer(
    "std",
    lambda xp, x, ax, kd, correction=0: xp.std(x, axis=ax, keepdims=kd, correction=correction),
    _std_vjp,
    "Standard deviation over the dims with the given labels; ``correction=1`` for unbiased.",
)
