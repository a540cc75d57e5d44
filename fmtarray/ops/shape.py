"""Shape operations by label: :func:`concat` (MATLAB ``cat`` / ``concatenationLayer``) and
:func:`flatten` (MATLAB ``flattenLayer``), and their VJPs.

Dims are named by a label (``"C"``, ``"B"``, ``"T"``, ``"U"``, or ``"S"`` when there is one
``S`` dim) or by MATLAB's dim number: 1-based, counted in the canonical (MATLAB) order
``S…S C B T U…U`` of the format, so dim 3 of an ``SSCB`` array is ``C``.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend, _tape
from ..array import FormattedArray

__all__ = ["concat", "flatten", "dim_axis"]


def _fmt_shown(fmt) -> str:
    return repr(fmt) if fmt else "'' (unformatted)"


def dim_axis(fmt: str, ndim: int, dim, *, name: str = "dim") -> int:
    """The 0-based axis of ``dim`` (a label or MATLAB's 1-based dim number) in data of
    format ``fmt`` (``""`` for unformatted) with ``ndim`` dims."""
    if isinstance(dim, str):
        if not fmt:
            raise ValueError(
                f"{name}={dim!r} names a label, but the input is unformatted; give the input a "
                f"format or pass MATLAB's dim number (1 to {ndim})"
            )
        if len(dim) != 1 or dim not in "SCBTU":
            raise ValueError(
                f"{name} must be one label of 'S', 'C', 'B', 'T', 'U' or a MATLAB dim number "
                f"(1 to {ndim}), got {dim!r}"
            )
        axes = [i for i, ch in enumerate(fmt) if ch == dim]
        if not axes:
            raise ValueError(
                f"{name}={dim!r} is not a dim of the input format {fmt!r}; the labels are "
                + ", ".join(repr(c) for c in dict.fromkeys(fmt))
            )
        if len(axes) > 1:
            raise ValueError(
                f"{name}={dim!r} is ambiguous: format {fmt!r} has {len(axes)} {dim!r} dims; pass "
                f"MATLAB's dim number instead ({', '.join(str(a + 1) for a in axes)})"
            )
        return axes[0]
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(
            f"{name} must be a label ('S', 'C', 'B', 'T', 'U') or a positive integer (MATLAB's "
            f"dim number), got {type(dim).__name__} {dim!r}"
        )
    if not 1 <= int(dim) <= ndim:
        where = f"format {fmt!r}" if fmt else "the unformatted input"
        raise ValueError(
            f"{name}={int(dim)} is out of range: {where} has {ndim} dims, so MATLAB's dim number "
            f"must be 1 to {ndim}"
        )
    return int(dim) - 1


def _as_fa(x, i):
    if isinstance(x, FormattedArray):
        return x
    if _backend.is_array(x):
        return FormattedArray(x)
    raise TypeError(
        f"concat: input {i + 1} must be a FormattedArray or an array, got "
        f"{type(x).__module__}.{type(x).__name__}"
    )


def concat(xs, dim):
    """Concatenate arrays of one format along ``dim`` (MATLAB ``cat(dim, X1, X2, ...)``).

    Parameters
    ----------
    xs
        A list or tuple of FormattedArrays (at least one), all with the same format, of
        the same library and device, and with the same sizes except along ``dim``.
    dim
        A label (``"C"``, ``"B"``, ``"T"``, a lone ``"S"`` or ``"U"``) or MATLAB's dim
        number (1-based, in the canonical order ``S…S C B T U…U``; dim 3 of ``SSCB`` is
        ``C``). Unformatted inputs take dim numbers only.

    Returns a FormattedArray of that format; the dtype is the inputs' array-API result
    type. Differentiable: the cotangent is split back into the inputs' parts.

    Examples
    --------
    >>> import numpy as np, fmtarray as fa
    >>> a = fa.FormattedArray(np.ones((4, 4, 2, 1)), "SSCB")
    >>> b = fa.FormattedArray(np.zeros((4, 4, 3, 1)), "SSCB")
    >>> fa.concat([a, b], "C").shape, fa.concat([a, b], 3).shape
    ((4, 4, 5, 1), (4, 4, 5, 1))
    """
    if isinstance(xs, FormattedArray) or not isinstance(xs, (list, tuple)):
        raise TypeError(
            f"concat: xs must be a list or tuple of arrays, got {type(xs).__name__}"
        )
    if not xs:
        raise ValueError("concat: xs is empty; give at least one array")
    xs = [_as_fa(x, i) for i, x in enumerate(xs)]
    fmt, nd = xs[0]._fmt, xs[0].ndim
    for i, x in enumerate(xs[1:], 2):
        if x._fmt != fmt or x.ndim != nd:
            raise ValueError(
                f"concat: all inputs must have the same format; input 1 has format "
                f"{_fmt_shown(fmt)} (shape {xs[0].shape}) and input {i} has format "
                f"{_fmt_shown(x._fmt)} (shape {x.shape})"
            )
    ax = dim_axis(fmt, nd, dim)
    s0 = xs[0].shape
    for i, x in enumerate(xs[1:], 2):
        for a, (m, n) in enumerate(zip(s0, x.shape)):
            if a != ax and m != n:
                lab = f" ({fmt[a]!r})" if fmt else ""
                raise ValueError(
                    f"concat: inputs must have the same sizes except along dim {ax + 1}; input 1 "
                    f"has shape {s0} and input {i} has shape {x.shape} (they differ in dim "
                    f"{a + 1}{lab}), format {_fmt_shown(fmt)}"
                )
    raws = [x._data for x in xs]
    xp = _backend.namespace(*raws)
    _backend.check_same_device(*raws)
    y = raws[0] if len(raws) == 1 else xp.concat(raws, axis=ax)
    out = FormattedArray._wrap(y, fmt)
    if _tape.traced(*xs):
        bounds = []
        start = 0
        for x in xs:
            bounds.append((start, start + x.shape[ax]))
            start += x.shape[ax]
        dtypes = [r.dtype for r in raws]
        lead = (slice(None),) * ax
        tail = (slice(None),) * (nd - ax - 1)  # a full index: the array API has no implicit tail

        def back(g, needs):
            out_g = []
            for (a, b), dt, need in zip(bounds, dtypes, needs):
                if not need:
                    out_g.append(None)
                    continue
                part = g[lead + (slice(a, b),) + tail]
                out_g.append(part if part.dtype == dt else xp.astype(part, dt))
            return tuple(out_g)

        _tape.record(out, tuple(xs), back, "concat")
    return out


def flatten(x):
    """Fold the ``S`` dims into ``C`` (MATLAB ``flattenLayer``): ``SSCB`` → ``CB``.

    The output's ``C`` index runs over the input's ``S…S C`` dims in MATLAB's
    column-major order: the first ``S`` dim varies fastest, ``C`` slowest, so element
    ``(h, w, c)`` of an ``H × W × C`` image lands at ``h + H·w + H·W·c`` (0-based) — the
    order :func:`fmtarray.fully_connect` flattens in, and MATLAB's
    ``reshape(X, H*W*C, N)``. ``B``, ``T`` and ``U`` dims are kept. An input without
    ``S`` dims is returned as it is; one without ``C`` is treated as having a singleton
    ``C``. Differentiable.
    """
    if not isinstance(x, FormattedArray):
        raise TypeError(f"flatten: x must be a FormattedArray, got {type(x).__name__}")
    fmt = x._fmt
    if not fmt:
        raise ValueError(
            "flatten needs a formatted input (it folds the 'S' dims into 'C'); got an "
            f"unformatted array of shape {x.shape}; give it a format, e.g. 'SSCB'"
        )
    ns = fmt.count("S")
    if ns == 0:
        return x
    xd = x._data
    xp = _backend.namespace(xd)
    shape = tuple(xd.shape)
    has_c = "C" in fmt
    rest0 = ns + 1 if has_c else ns
    # column-major over (S1..Sk, C) = row-major over (C, Sk..S1)
    perm = ((ns,) if has_c else ()) + tuple(range(ns - 1, -1, -1)) + tuple(range(rest0, len(shape)))
    moved = xp.permute_dims(xd, perm) if perm != tuple(range(len(shape))) else xd
    n_c = math.prod(shape[:rest0])
    y = xp.reshape(moved, (n_c,) + shape[rest0:])
    out_fmt = "C" + fmt[rest0:]
    out = FormattedArray._wrap(y, out_fmt)
    if x._node is not None:
        moved_shape = tuple(shape[p] for p in perm)
        inv = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))

        def back(g, needs):
            g = xp.reshape(g, moved_shape)
            return (xp.permute_dims(g, inv) if inv != tuple(range(len(inv))) else g,)

        _tape.record(out, (x,), back, "flatten")
    return out
