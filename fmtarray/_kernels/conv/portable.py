"""The portable convolution: array-API im2col, the last entry for every library.

Slicing, ``reshape``, ``permute_dims``, ``stack``/``concat`` and ``matmul`` only, so it
runs on every array-API library (``array_api_strict`` on any device, unknown
libraries; Dask data has its own entry, :mod:`._dask`, which runs the chunks'
library's kernels blockwise). Method: pad, gather the ``K = prod(k)`` shifted (strided,
dilated) views of the channels-last input into a column buffer ``(G, n·P, K·Cg)`` and
multiply it by the ``(G, K·Cg, Fg)`` weight matrix; the batch is cut into chunks so that
the column buffer stays below the workspace (:mod:`.tuning`) whatever ``N``. The weight
gradient is ``columnsᵀ · gy`` per chunk; the input gradient the convolution of the
stride-dilated cotangent with the flipped, transposed kernel, then the adjoint of the
padding (with a non-finite weight, a scatter of ``gy·Wᵀ`` over the taps instead: the
inserted and padded zeros would meet it as ``0·inf = NaN``). Input dilation is
materialised (zeros inserted) first.
"""

from __future__ import annotations

import math

from ... import _backend
from ..pad import dilate, pad, pad_vjp
from .registry import Algo, register
from .spec import ConvSpec
from .thresholds import current

__all__ = ["forward_nsc", "backward_nsc", "transposed_weights"]


def _weight_matrix(xp, w, spec):
    """``(G, K·Cg, Fg)`` from MATLAB layout ``(*k, Cg, Fg, G)``."""
    d = spec.d
    wt = xp.permute_dims(w, (d + 2,) + tuple(range(d + 2)))
    return xp.reshape(wt, (spec.G, spec.K * spec.Cg, spec.Fg))


def _columns(xp, xpad, spec, rows=None):
    """Gather windows of the padded block into ``(G, n·P, K·Cg)``."""
    n = xpad.shape[0]
    views = [xpad[(slice(None),) + spec.window(off, rows) + (slice(None),)]
             for off in spec.offsets()]
    cols = xp.stack(views, axis=-2)  # (n, *out, K, C)
    p = math.prod(cols.shape[1:-2])
    if spec.G == 1:
        return xp.reshape(cols, (1, n * p, spec.K * spec.C))
    cols = xp.reshape(cols, (n * p, spec.K, spec.G, spec.Cg))
    cols = xp.permute_dims(cols, (2, 0, 1, 3))
    return xp.reshape(cols, (spec.G, n * p, spec.K * spec.Cg))


def _pad_block(xp, x, spec, n0, n1, rows):
    xpad = pad(xp, x[n0:n1, ...], spec.pb, spec.pa, tuple(range(1, spec.d + 1)), spec.value)
    if rows is not None:
        r0, r1 = rows
        lo = r0 * spec.stride[0]
        hi = (r1 - 1) * spec.stride[0] + (spec.k[0] - 1) * spec.dilation[0] + 1
        xpad = xpad[:, lo:hi, ...]
    return xpad


def _chunks(xp, spec, itemsize):
    return spec.chunks(itemsize, current().workspace_bytes)


def _itemsize(x):
    try:
        return x.dtype.itemsize
    except AttributeError:
        return 8 if "64" in str(x.dtype) else 4


def _undilate_input(xp, x, spec):
    """Materialise the input dilation: ``(spec without it, x with zeros inserted)``."""
    if all(s == 1 for s in spec.lhs_dilation):
        return spec, x
    for i, s in enumerate(spec.lhs_dilation):
        x = dilate(xp, x, i + 1, s)
    return spec.replace(sp=tuple(x.shape[1:-1]), lhs_dilation=(1,) * spec.d), x


def forward_nsc(xp, x, w, b, spec):
    """Channels-last ``x`` ``(N, *sp, C)`` → ``(N, *out, F)``."""
    spec, x = _undilate_input(xp, x, spec)
    dev = _backend.device(x)
    if spec.N == 0:
        return xp.zeros((0, *spec.out, spec.F), dtype=x.dtype, device=dev)
    wm = _weight_matrix(xp, w, spec)
    pieces, row_pieces = [], []
    for n0, n1, rows in _chunks(xp, spec, _itemsize(x)):
        cols = _columns(xp, _pad_block(xp, x, spec, n0, n1, rows), spec, rows)
        y = xp.matmul(cols, wm)  # (G, nP, Fg)
        if spec.G > 1:
            y = xp.permute_dims(y, (1, 0, 2))
        out = list(spec.out)
        if rows is not None:
            out[0] = rows[1] - rows[0]
        y = xp.reshape(y, (n1 - n0, *out, spec.F))
        if rows is None:
            pieces.append(y)
        else:
            row_pieces.append(y)
            if rows[1] == spec.out[0]:
                pieces.append(xp.concat(row_pieces, axis=1))
                row_pieces = []
    y = xp.concat(pieces, axis=0) if len(pieces) > 1 else pieces[0]
    if b is not None:
        y = y + xp.reshape(b, (spec.F,))
    return y


def transposed_weights(xp, w, d):
    """Weights of the transposed convolution: flip ``k``, swap ``Cg`` and ``Fg``."""
    wf = xp.flip(w, axis=tuple(range(d)))
    return xp.permute_dims(wf, tuple(range(d)) + (d + 1, d, d + 2))


def backward_nsc(xp, gy, x, w, spec, needs):
    """``(gx, gw)`` of :func:`forward_nsc` for the cotangent ``gy`` ``(N, *out, F)``."""
    spec0 = spec
    spec, xd = _undilate_input(xp, x, spec)
    dev = _backend.device(x)
    d = spec.d
    gx = gw = None
    if spec.N == 0:
        return (xp.zeros(x.shape, dtype=x.dtype, device=dev) if needs[0] else None,
                xp.zeros(w.shape, dtype=w.dtype, device=dev) if needs[1] else None)
    if needs[1]:
        acc = None
        for n0, n1, rows in _chunks(xp, spec, _itemsize(xd)):
            cols = _columns(xp, _pad_block(xp, xd, spec, n0, n1, rows), spec, rows)
            g = gy[n0:n1, ...]
            if rows is not None:
                g = g[:, rows[0]:rows[1], ...]
            g = xp.permute_dims(xp.reshape(g, (-1, spec.G, spec.Fg)), (1, 0, 2))
            part = xp.matmul(xp.matrix_transpose(cols), g)  # (G, K·Cg, Fg)
            acc = part if acc is None else acc + part
        gw = xp.reshape(acc, (spec.G, *spec.k, spec.Cg, spec.Fg))
        gw = xp.permute_dims(gw, tuple(range(1, d + 1)) + (d + 1, d + 2, 0))
    if needs[0] and _maybe_non_finite(xp, w):
        gxpad = _input_grad_scatter(xp, gy, w, spec)
    elif needs[0]:
        # transposed convolution: the stride-dilated gy with the flipped kernel
        full = tuple((k - 1) * dl for k, dl in zip(spec.k, spec.dilation))
        wt = transposed_weights(xp, w, d)
        gspec = ConvSpec.make(gy.shape, wt.shape, dilation=spec.dilation, pad_before=full,
                              pad_after=full, lhs_dilation=spec.stride, dtype=spec.dtype)
        gxpad = forward_nsc(xp, gy, wt, None, gspec)  # (N, *used, C)
        extra = tuple(p - u for p, u in zip(spec.padded, spec.used))
        if any(extra):
            gxpad = pad(xp, gxpad, (0,) * d, extra, tuple(range(1, d + 1)), 0.0)
    if needs[0]:
        gx = pad_vjp(xp, gxpad, spec.pb, spec.pa, tuple(range(1, d + 1)), spec.value)
        if any(s > 1 for s in spec0.lhs_dilation):  # the input dilation's adjoint
            gx = gx[(slice(None),) + tuple(slice(None, None, s) for s in spec0.lhs_dilation)]
    return gx, gw


def _maybe_non_finite(xp, w) -> bool:
    """Whether a weight may be ±inf or NaN (true when the values cannot be read, e.g.
    inside a trace: the exact path is right for every value)."""
    try:
        return not bool(xp.all(xp.isfinite(w)))
    except Exception:
        return True


def _input_grad_scatter(xp, gy, w, spec):
    """The gradient of the padded input ``(N, *padded, C)`` as a sum over the taps of
    ``gy·Wᵀ`` placed by stride and dilation (zeros inserted and padded around: added,
    never multiplied), so only the (output, tap) pairs that exist meet: the transposed
    convolution would multiply its zero padding and inserted zeros by the weights, and
    ``0·inf`` puts NaN where no tap reaches."""
    d, axes = spec.d, tuple(range(1, spec.d + 1))
    wm = _weight_matrix(xp, w, spec)  # (G, K·Cg, Fg)
    per_sample = (spec.P * spec.K + math.prod(spec.padded)) * spec.C * _itemsize(gy)
    nb = max(1, current().workspace_bytes // max(per_sample, 1))
    parts = []
    for n0 in range(0, spec.N, nb):
        n = min(nb, spec.N - n0)
        g = gy[n0:n0 + n, ...]
        g = xp.permute_dims(xp.reshape(g, (n * spec.P, spec.G, spec.Fg)), (1, 0, 2))
        cols = xp.matmul(g, xp.matrix_transpose(wm))  # (G, n·P, K·Cg)
        cols = xp.reshape(cols, (spec.G, n, *spec.out, spec.K, spec.Cg))
        cols = xp.permute_dims(cols, tuple(range(1, d + 3)) + (0, d + 3))
        cols = xp.reshape(cols, (n, *spec.out, spec.K, spec.C))
        acc = None
        for i, off in enumerate(spec.offsets()):
            c = cols[..., i, :]
            for ax, s in zip(axes, spec.stride):
                c = dilate(xp, c, ax, s)
            before = tuple(o * dl for o, dl in zip(off, spec.dilation))
            after = tuple(p - b - m for p, b, m in zip(spec.padded, before, c.shape[1:-1]))
            c = pad(xp, c, before, after, axes, 0.0)
            acc = c if acc is None else acc + c
        parts.append(acc)
    return xp.concat(parts, axis=0) if len(parts) > 1 else parts[0]


def _to_nsc(xp, a, layout):
    perm = layout.perm(layout.channels_last)
    return a if perm == tuple(range(len(perm))) else xp.permute_dims(a, perm)


def _from_nsc(xp, a, layout):
    perm = layout.inverse(layout.channels_last)
    return a if perm == tuple(range(len(perm))) else xp.permute_dims(a, perm)


def _forward(xp, spec, layout, x, w, b):
    return _from_nsc(xp, forward_nsc(xp, _to_nsc(xp, x, layout), w, b, spec), layout)


def _backward(xp, spec, layout, gy, x, w, needs):
    gn, xn = _to_nsc(xp, gy, layout), _to_nsc(xp, x, layout)
    gx, gw = backward_nsc(xp, gn, xn, w, spec, needs)
    return (None if gx is None else _from_nsc(xp, gx, layout)), gw


def _applies(spec, layout):
    return None


register(Algo("portable.im2col", "portable", ("forward", "input_grad", "weight_grad"),
              _applies, forward=_forward, backward=_backward,
              domain="everything (array-API im2col + GEMM, chunked within the workspace)"))
