"""Padding along chosen axes, and its adjoint, on plain arrays of any array-API library.

Modes (the ``value`` argument):

* a float: constant padding (NumPy ``pad(mode="constant")``);
* ``"symmetric-include-edge"``: mirror including the edge (NumPy ``"symmetric"``);
* ``"symmetric-exclude-edge"``: mirror excluding the edge (NumPy ``"reflect"``);
* ``"replicate"``: repeat the border element (NumPy ``"edge"``).

Any pad size is accepted. Pads larger than the axis mirror repeatedly, exactly as
``numpy.pad`` does: the padded axis is the periodic extension of the mirrored
sequence (period ``2n`` including the edge, ``2n - 2`` excluding it). An axis of
length 1 excluding the edge has no second element to mirror to, so it repeats the
single element (as NumPy does). An axis of length 0 cannot be padded with a
non-constant mode: ``ValueError``.

The non-constant modes are computed from *runs*: the padded axis is split into
maximal pieces that are ascending, descending or constant index sequences of the
source axis; each piece is one slice (flipped, or broadcast) of the source, and the
pieces are concatenated. The adjoint adds each piece of the cotangent back onto
its source slice. Only slicing, ``flip``, ``broadcast_to``, ``concat`` and ``sum``
are used, so the portable path runs on any array-API library (Dask stays lazy).
NumPy gets an in-place path (one allocation, slice assignment).
"""

from __future__ import annotations

import functools
import numbers

from .. import _backend

__all__ = ["PAD_MODES", "pad", "pad_vjp", "pad_indices", "check_pad_value", "fill_border_numpy", "dilate"]

#: legal string values of ``value``
PAD_MODES = ("symmetric-include-edge", "symmetric-exclude-edge", "replicate")


def check_pad_value(value):
    """Return ``value`` as a float or one of :data:`PAD_MODES` (the one check of a padding
    value: the op, the layer and :mod:`fmtarray.matlab` call it)."""
    legal = "a real number or one of " + ", ".join(repr(m) for m in PAD_MODES)
    if isinstance(value, str):
        if value not in PAD_MODES:
            raise ValueError(f"padding_value={value!r} is not a padding mode; use {legal}")
        return value
    if isinstance(value, bool) or not (isinstance(value, numbers.Real)
                                       or getattr(value, "ndim", None) == 0):
        raise TypeError(f"padding_value={value!r}: expected {legal}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"padding_value={value!r}: expected {legal}") from None


def _index(i: int, n: int, mode: str) -> int:
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "symmetric-include-edge":
        r = i % (2 * n)
        return r if r < n else 2 * n - 1 - r
    # symmetric-exclude-edge
    if n == 1:
        return 0
    p = 2 * n - 2
    r = i % p
    return r if r < n else p - r


@functools.lru_cache(maxsize=1024)
def pad_indices(n: int, before: int, after: int, mode: str) -> tuple[int, ...]:
    """Source index of every position of the padded axis (length ``before + n + after``)."""
    if n == 0 and (before or after):
        raise ValueError(
            f"cannot pad an empty axis with padding_value={mode!r}: there is no element "
            "to mirror or replicate; use a constant padding value"
        )
    return tuple(_index(i, n, mode) for i in range(-before, n + after))


def _split_runs(idx, offset):
    runs = []
    i = 0
    m = len(idx)
    while i < m:
        j = i + 1
        step = idx[j] - idx[i] if j < m else 1
        if j < m and step in (-1, 0, 1):
            while j + 1 < m and idx[j + 1] - idx[j] == step:
                j += 1
            j += 1
        else:
            step = 1
        length = j - i
        lo = idx[j - 1] if step == -1 else idx[i]
        runs.append((step, lo, length, offset + i))
        i = j
    return runs


@functools.lru_cache(maxsize=1024)
def _runs(n: int, before: int, after: int, mode: str):
    """The border of the padded axis as runs ``(kind, src_lo, length, dst_lo)``.

    ``kind`` is +1 (ascending source indices ``src_lo, src_lo+1, ...``), -1
    (descending ``src_lo+length-1, ..., src_lo``) or 0 (``src_lo`` repeated).
    Returns ``(runs_before, runs_after)``; the centre (``x`` itself) lies between.
    """
    idx = pad_indices(n, before, after, mode)
    return tuple(_split_runs(idx[:before], 0)), tuple(_split_runs(idx[before + n:], before + n))


def _sl(ndim, axis, start, stop):
    s = [slice(None)] * ndim
    s[axis] = slice(start, stop)
    return tuple(s)


def _normalise(x, pad_before, pad_after, axes):
    axes = tuple(int(a) % x.ndim for a in axes)
    pad_before = tuple(int(p) for p in pad_before)
    pad_after = tuple(int(p) for p in pad_after)
    if not (len(axes) == len(pad_before) == len(pad_after)):
        raise ValueError(
            f"pad: axes={axes}, pad_before={pad_before}, pad_after={pad_after} must have the "
            "same length"
        )
    if any(p < 0 for p in pad_before + pad_after):
        raise ValueError(f"pad: pad sizes must be non-negative, got {pad_before} / {pad_after}")
    return axes, pad_before, pad_after


def pad(xp, x, pad_before, pad_after, axes, value=0.0):
    """Pad ``x`` by ``pad_before[i]``/``pad_after[i]`` along ``axes[i]``.

    ``value`` is a number (constant padding) or one of :data:`PAD_MODES`.
    The result is a new array of ``x``'s library, dtype and device.
    """
    value = check_pad_value(value)
    axes, pad_before, pad_after = _normalise(x, pad_before, pad_after, axes)
    if not any(pad_before) and not any(pad_after):
        return x
    if _backend.is_numpy(xp):
        return _pad_numpy(x, pad_before, pad_after, axes, value)
    for ax, pb, pa in zip(axes, pad_before, pad_after):
        if pb or pa:
            x = _pad_axis(xp, x, pb, pa, ax, value)
    return x


def _pad_axis(xp, x, pb, pa, ax, value):
    n = x.shape[ax]
    if isinstance(value, str):
        runs_b, runs_a = _runs(n, pb, pa, value)
        pieces = [_src_piece(xp, x, ax, r) for r in runs_b]
        pieces.append(x)
        pieces += [_src_piece(xp, x, ax, r) for r in runs_a]
        return xp.concat(pieces, axis=ax)
    dev = _backend.device(x)
    pieces = []
    if pb:
        shape = list(x.shape)
        shape[ax] = pb
        pieces.append(xp.full(tuple(shape), value, dtype=x.dtype, device=dev))
    pieces.append(x)
    if pa:
        shape = list(x.shape)
        shape[ax] = pa
        pieces.append(xp.full(tuple(shape), value, dtype=x.dtype, device=dev))
    return xp.concat(pieces, axis=ax)


def _src_piece(xp, x, ax, run):
    kind, lo, length, _ = run
    if kind == 1:
        return x[_sl(x.ndim, ax, lo, lo + length)]
    if kind == -1:
        return xp.flip(x[_sl(x.ndim, ax, lo, lo + length)], axis=ax)
    shape = list(x.shape)
    shape[ax] = length
    return xp.broadcast_to(x[_sl(x.ndim, ax, lo, lo + 1)], tuple(shape))


def _pad_numpy(x, pad_before, pad_after, axes, value, out=None):
    import numpy as np

    x = np.asarray(x)
    shape = list(x.shape)
    for ax, pb, pa in zip(axes, pad_before, pad_after):
        shape[ax] += pb + pa
    if out is None:
        out = np.empty(tuple(shape), dtype=x.dtype)
    centre = [slice(None)] * x.ndim
    for ax, pb in zip(axes, pad_before):
        centre[ax] = slice(pb, pb + x.shape[ax])
    out[tuple(centre)] = x
    fill_border_numpy(out, pad_before, pad_after, axes, value)
    return out


def fill_border_numpy(out, pad_before, pad_after, axes, value):
    """Write the border of the NumPy array ``out`` whose centre already holds the data."""
    import numpy as np

    shape = out.shape
    centre = [slice(None)] * out.ndim
    for ax, pb, pa in zip(axes, pad_before, pad_after):
        centre[ax] = slice(pb, shape[ax] - pa)
    region = list(centre)
    for ax, pb, pa in zip(axes, pad_before, pad_after):
        n = shape[ax] - pb - pa
        if isinstance(value, str):
            # mirror / replicate: each axis reads from the already-filled part
            idx = np.asarray(pad_indices(n, pb, pa, value), dtype=np.intp)
            src = out[tuple(region)]
        region[ax] = slice(None)
        if pb:
            s = list(region)
            s[ax] = slice(0, pb)
            out[tuple(s)] = value if not isinstance(value, str) else np.take(src, idx[:pb], axis=ax)
        if pa:
            s = list(region)
            s[ax] = slice(shape[ax] - pa, shape[ax])
            out[tuple(s)] = (value if not isinstance(value, str)
                             else np.take(src, idx[pb + n:], axis=ax))
    return out


def pad_vjp(xp, g, pad_before, pad_after, axes, value=0.0):
    """Adjoint of :func:`pad`: map a cotangent of the padded array back to ``x``'s shape.

    Constant mode slices the centre out; mirror/replicate modes also add every
    padded border element back onto the source element it copied.
    """
    value = check_pad_value(value)
    axes, pad_before, pad_after = _normalise(g, pad_before, pad_after, axes)
    if not any(pad_before) and not any(pad_after):
        return g
    if not isinstance(value, str):
        centre = [slice(None)] * g.ndim
        for ax, pb, pa in zip(axes, pad_before, pad_after):
            centre[ax] = slice(pb, g.shape[ax] - pa)
        return g[tuple(centre)]
    numpy = _backend.is_numpy(xp)
    # adjoint of a composition: undo the axes in reverse order
    for ax, pb, pa in reversed(tuple(zip(axes, pad_before, pad_after))):
        if pb or pa:
            g = _pad_axis_vjp_numpy(g, pb, pa, ax, value) if numpy else _pad_axis_vjp(
                xp, g, pb, pa, ax, value
            )
    return g


def _run_piece(xp, g, ax, kind, dst, length):
    piece = g[_sl(g.ndim, ax, dst, dst + length)]
    if kind == -1:
        piece = xp.flip(piece, axis=ax)
    elif kind == 0:
        piece = xp.sum(piece, axis=ax, keepdims=True)
    return piece


def _pad_axis_vjp(xp, g, pb, pa, ax, value):
    n = g.shape[ax] - pb - pa
    acc = g[_sl(g.ndim, ax, pb, pb + n)]
    dev = _backend.device(g)
    runs_b, runs_a = _runs(n, pb, pa, value)
    for kind, lo, length, dst in runs_b + runs_a:
        width = 1 if kind == 0 else length
        src_lo = lo
        piece = _run_piece(xp, g, ax, kind, dst, length)
        # contribution placed at [src_lo, src_lo + width) of an axis of length n
        parts = []
        if src_lo:
            shp = list(piece.shape)
            shp[ax] = src_lo
            parts.append(xp.zeros(tuple(shp), dtype=g.dtype, device=dev))
        parts.append(piece)
        if n - src_lo - width:
            shp = list(piece.shape)
            shp[ax] = n - src_lo - width
            parts.append(xp.zeros(tuple(shp), dtype=g.dtype, device=dev))
        acc = acc + (xp.concat(parts, axis=ax) if len(parts) > 1 else piece)
    return acc


def _pad_axis_vjp_numpy(g, pb, pa, ax, value):
    import numpy as np

    g = np.asarray(g)
    n = g.shape[ax] - pb - pa
    acc = np.array(g[_sl(g.ndim, ax, pb, pb + n)], copy=True)
    runs_b, runs_a = _runs(n, pb, pa, value)
    for kind, lo, length, dst in runs_b + runs_a:
        piece = g[_sl(g.ndim, ax, dst, dst + length)]
        if kind == -1:
            piece = np.flip(piece, axis=ax)
        elif kind == 0:
            piece = piece.sum(axis=ax, keepdims=True)
        width = 1 if kind == 0 else length
        acc[_sl(g.ndim, ax, lo, lo + width)] += piece
    return acc


def dilate(xp, g, axis, s):
    """Insert ``s - 1`` zeros between the elements of ``g`` along ``axis`` (the input
    dilation of transposed convolutions and strided gradients)."""
    if s == 1:
        return g
    n = g.shape[axis]
    z = xp.zeros_like(g)
    st = xp.stack([g] + [z] * (s - 1), axis=axis + 1)
    shape = list(g.shape)
    shape[axis] = n * s
    st = xp.reshape(st, tuple(shape))
    sl = [slice(None)] * g.ndim
    sl[axis] = slice(0, (n - 1) * s + 1)
    return st[tuple(sl)]
