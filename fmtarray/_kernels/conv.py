"""N-d convolution (cross-correlation, as MATLAB's ``dlconv``) on plain channels-last arrays.

Layouts (d = 1, 2 or 3 convolved dims):

* ``x``: ``(N, *spatial, C)``  — channels last, so a window's ``K·C`` values are
  contiguous runs of ``C``;
* ``w``: ``(*k, C // groups, F // groups, groups)`` — MATLAB's weight layout;
* ``b``: ``None`` or ``(F,)``;
* result: ``(N, *out, F)``; output channel ``g * (F // groups) + j`` is filter ``j``
  of group ``g``.

Method: pad, gather the ``K = prod(k)`` shifted (strided, dilated) views of the
input into a column buffer ``(n, *out, K, C)`` and multiply it by the
``(K·C, F)`` weight matrix — one GEMM per chunk (one batched GEMM over groups).
The batch is processed in chunks so that the column buffer stays below
:data:`WORKSPACE_BYTES` whatever ``N``; when a single sample is larger than
that, its output rows are tiled too. The backward pass reuses the machinery:
the weight gradient is ``columnsᵀ · gy`` per chunk, the input gradient a
transposed convolution followed by the adjoint of the padding.

This module is the portable path: slicing, ``reshape``, ``permute_dims``,
``stack``/``concat`` and ``matmul`` only, so it runs on every array-API library
(``array_api_strict`` on any device, torch, Dask lazily). Named fast paths sit
behind the backend seam (:mod:`fmtarray._backend`):

* NumPy → :mod:`fmtarray._kernels.numpy_conv` (preallocated, reused buffers,
  BLAS ``matmul`` with ``out=``, in-place scatter-add, threaded depthwise path);
* everything else → the portable code below.
"""

from __future__ import annotations

import math

from .. import _backend
from .pad import check_pad_value, pad, pad_vjp

__all__ = [
    "WORKSPACE_BYTES",
    "conv_forward",
    "conv_backward",
    "conv_output_size",
    "same_padding",
]

#: upper bound for the column buffer of one chunk (bytes)
WORKSPACE_BYTES = 64 * 2**20


def conv_output_size(n: int, k: int, stride: int, dilation: int, before: int, after: int) -> int:
    """``floor((n + before + after - ((k - 1) * dilation + 1)) / stride) + 1`` (may be < 1)."""
    eff = (k - 1) * dilation + 1
    return (n + before + after - eff) // stride + 1


def same_padding(n: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """MATLAB's ``"same"``: output ``ceil(n / stride)``, odd pixel after."""
    eff = (k - 1) * dilation + 1
    out = -(-n // stride)
    total = max((out - 1) * stride + eff - n, 0)
    return total // 2, total - total // 2


class _Geometry:
    """Sizes of one convolution, checked once and shared by the paths."""

    __slots__ = (
        "d", "N", "sp", "C", "k", "Cg", "Fg", "G", "F", "K", "stride", "dilation",
        "pb", "pa", "value", "out", "P", "padded", "used",
    )

    def __init__(self, x_shape, w_shape, stride, dilation, pad_before, pad_after, pad_value,
                 groups):
        d = len(x_shape) - 2
        if d < 1 or len(w_shape) != d + 3:
            raise ValueError(
                f"conv kernel: x of shape {tuple(x_shape)} needs weights of rank {d + 3} "
                f"(*k, C/groups, F/groups, groups), got shape {tuple(w_shape)}"
            )
        self.d = d
        self.N = int(x_shape[0])
        self.sp = tuple(int(s) for s in x_shape[1:-1])
        self.C = int(x_shape[-1])
        self.k = tuple(int(s) for s in w_shape[:d])
        self.Cg, self.Fg, self.G = (int(s) for s in w_shape[d:])
        if groups is not None and int(groups) != self.G:
            raise ValueError(f"conv kernel: groups={groups} but weights have {self.G} groups")
        if self.Cg * self.G != self.C:
            raise ValueError(
                f"conv kernel: x has {self.C} channels, weights expect "
                f"{self.Cg} x {self.G} groups = {self.Cg * self.G}"
            )
        self.F = self.Fg * self.G
        self.K = math.prod(self.k)
        self.stride = _tuple(stride, d, "stride")
        self.dilation = _tuple(dilation, d, "dilation")
        self.pb = _tuple(pad_before, d, "pad_before", low=0)
        self.pa = _tuple(pad_after, d, "pad_after", low=0)
        self.value = check_pad_value(pad_value)
        self.out = tuple(
            conv_output_size(n, k, s, dl, b, a)
            for n, k, s, dl, b, a in zip(self.sp, self.k, self.stride, self.dilation, self.pb,
                                         self.pa)
        )
        if any(o < 1 for o in self.out):
            raise ValueError(
                f"conv kernel: output size {self.out} < 1 for input {self.sp}, filter {self.k}, "
                f"stride {self.stride}, dilation {self.dilation}, padding {self.pb}/{self.pa}"
            )
        self.P = math.prod(self.out)
        self.padded = tuple(n + b + a for n, b, a in zip(self.sp, self.pb, self.pa))
        # padded extent actually read by the windows
        self.used = tuple(
            (o - 1) * s + (k - 1) * dl + 1
            for o, s, k, dl in zip(self.out, self.stride, self.k, self.dilation)
        )

    def offsets(self):
        """Kernel offsets in C order (the order of the K axis of the columns)."""
        import itertools

        return itertools.product(*(range(k) for k in self.k))

    def window(self, off, rows=None):
        """Slices (over the spatial axes of a padded block) of the view for offset ``off``.

        ``rows=(r0, r1)`` restricts the first output dim (the block then starts at
        padded row ``r0 * stride[0]``).
        """
        sl = []
        for i, (o, s, dl, out) in enumerate(zip(off, self.stride, self.dilation, self.out)):
            start = o * dl
            if i == 0 and rows is not None:
                out = rows[1] - rows[0]
            sl.append(slice(start, start + (out - 1) * s + 1, s))
        return tuple(sl)

    def chunks(self, itemsize, per_row_cols=None):
        """``(n0, n1, rows)`` tiles keeping ``n · P · K · C · itemsize`` within the budget.

        ``rows`` is ``None`` (whole samples) or ``(r0, r1)`` over the first output dim.
        """
        per_sample = self.P * self.K * self.C * itemsize
        if per_sample <= WORKSPACE_BYTES or self.out[0] == 1:
            nb = max(1, WORKSPACE_BYTES // max(per_sample, 1))
            return [(n0, min(n0 + nb, self.N), None) for n0 in range(0, self.N, nb)]
        per_row = per_sample // self.out[0]
        rb = max(1, WORKSPACE_BYTES // max(per_row, 1))
        return [
            (n, n + 1, (r0, min(r0 + rb, self.out[0])))
            for n in range(self.N)
            for r0 in range(0, self.out[0], rb)
        ]


def _tuple(v, d, name, low=1):
    if isinstance(v, int):
        v = (v,) * d
    v = tuple(int(a) for a in v)
    if len(v) != d or any(a < low for a in v):
        raise ValueError(f"conv kernel: {name}={v} must be {d} integers >= {low}")
    return v


def _dispatch(xp):
    if _backend.is_numpy(xp):
        from . import numpy_conv

        return numpy_conv
    return None


# ---------------------------------------------------------------------------------------
# forward


def conv_forward(xp, x, w, b=None, *, stride=1, dilation=1, pad_before=0, pad_after=0,
                 pad_value=0.0, groups=None):
    """Convolve channels-last ``x`` ``(N, *sp, C)`` with ``w`` ``(*k, C/g, F/g, g)``.

    Returns ``(N, *out, F)`` in ``x``'s library, dtype and device. See the module
    docstring for the layouts and the method.
    """
    geo = _Geometry(x.shape, w.shape, stride, dilation, pad_before, pad_after, pad_value, groups)
    fast = _dispatch(xp)
    if fast is not None:
        return fast.forward(x, w, b, geo)
    return _forward_portable(xp, x, w, b, geo)


def _weight_matrix(xp, w, geo):
    """``(G, K·Cg, Fg)`` from MATLAB layout ``(*k, Cg, Fg, G)``."""
    d = geo.d
    wt = xp.permute_dims(w, (d + 2,) + tuple(range(d + 2)))
    return xp.reshape(wt, (geo.G, geo.K * geo.Cg, geo.Fg))


def _columns(xp, xpad, geo, rows=None):
    """Gather windows of the padded block into ``(G, n·P, K·Cg)``."""
    n = xpad.shape[0]
    views = []
    for off in geo.offsets():
        views.append(xpad[(slice(None),) + geo.window(off, rows) + (slice(None),)])
    cols = xp.stack(views, axis=-2)  # (n, *out, K, C)
    p = math.prod(cols.shape[1:-2])
    if geo.G == 1:
        return xp.reshape(cols, (1, n * p, geo.K * geo.C))
    cols = xp.reshape(cols, (n * p, geo.K, geo.G, geo.Cg))
    cols = xp.permute_dims(cols, (2, 0, 1, 3))
    return xp.reshape(cols, (geo.G, n * p, geo.K * geo.Cg))


def _pad_block(xp, x, geo, n0, n1, rows):
    xc = x[n0:n1, ...]
    axes = tuple(range(1, geo.d + 1))
    xpad = pad(xp, xc, geo.pb, geo.pa, axes, geo.value)
    if rows is not None:
        r0, r1 = rows
        lo = r0 * geo.stride[0]
        hi = (r1 - 1) * geo.stride[0] + (geo.k[0] - 1) * geo.dilation[0] + 1
        xpad = xpad[:, lo:hi, ...]
    return xpad


def _chunks(xp, geo, itemsize):
    if _backend.is_dask(xp):
        # Dask builds a lazy graph and schedules its own blocks: one tile
        return [(0, geo.N, None)]
    return geo.chunks(itemsize)


def _itemsize(x):
    try:
        return x.dtype.itemsize
    except AttributeError:
        return 8 if "64" in str(x.dtype) else 4


def _dask_blocks(xp, *arrays):
    """Dask: keep blocks along the batch axis only (small graphs for the gathers)."""
    if not _backend.is_dask(xp):
        return arrays
    out = []
    for i, a in enumerate(arrays):
        if a is None:
            out.append(a)
        elif i == 0 and a.ndim > 1:
            out.append(a.rechunk({ax: -1 for ax in range(1, a.ndim)}))
        else:
            out.append(a.rechunk(-1))
    return tuple(out)


def _forward_portable(xp, x, w, b, geo):
    x, w, b = _dask_blocks(xp, x, w, b)
    dev = _backend.device(x)
    if geo.N == 0:
        return xp.zeros((0, *geo.out, geo.F), dtype=x.dtype, device=dev)
    wm = _weight_matrix(xp, w, geo)
    pieces = []
    row_pieces = []
    for n0, n1, rows in _chunks(xp, geo, _itemsize(x)):
        xpad = _pad_block(xp, x, geo, n0, n1, rows)
        cols = _columns(xp, xpad, geo, rows)
        y = xp.matmul(cols, wm)  # (G, nP, Fg)
        if geo.G > 1:
            y = xp.permute_dims(y, (1, 0, 2))
        out = list(geo.out)
        if rows is not None:
            out[0] = rows[1] - rows[0]
        y = xp.reshape(y, (n1 - n0, *out, geo.F))
        if rows is None:
            pieces.append(y)
        else:
            row_pieces.append(y)
            if rows[1] == geo.out[0]:
                pieces.append(xp.concat(row_pieces, axis=1))
                row_pieces = []
    y = xp.concat(pieces, axis=0) if len(pieces) > 1 else pieces[0]
    if b is not None:
        y = y + xp.reshape(b, (geo.F,))
    return y


# ---------------------------------------------------------------------------------------
# backward


def conv_backward(xp, gy, x, w, *, stride=1, dilation=1, pad_before=0, pad_after=0,
                  pad_value=0.0, groups=None, needs=(True, True, True)):
    """Vector-Jacobian product of :func:`conv_forward`.

    ``gy`` is the cotangent of the output ``(N, *out, F)``. Returns ``(gx, gw, gb)``
    shaped like ``x``, ``w`` and ``(F,)``, with ``None`` where ``needs`` is false.
    """
    geo = _Geometry(x.shape, w.shape, stride, dilation, pad_before, pad_after, pad_value, groups)
    if tuple(gy.shape) != (geo.N, *geo.out, geo.F):
        raise ValueError(
            f"conv_backward: gy has shape {tuple(gy.shape)}, expected "
            f"{(geo.N, *geo.out, geo.F)}"
        )
    needs = tuple(bool(n) for n in needs) + (False,) * (3 - len(needs))
    fast = _dispatch(xp)
    if fast is not None:
        return fast.backward(gy, x, w, geo, needs)
    return _backward_portable(xp, gy, x, w, geo, needs)


def _dilate(xp, g, axis, s):
    """Insert ``s - 1`` zeros between the elements of ``g`` along ``axis``."""
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


def transposed_weights(xp, w, d):
    """Weights of the transposed convolution: flip ``k``, swap ``Cg`` and ``Fg``."""
    wf = xp.flip(w, axis=tuple(range(d)))
    return xp.permute_dims(wf, tuple(range(d)) + (d + 1, d, d + 2))


def _backward_portable(xp, gy, x, w, geo, needs):
    gy, x, w = _dask_blocks(xp, gy, x, w)
    if _backend.is_dask(xp):
        x = x.rechunk({0: gy.chunks[0]})
    dev = _backend.device(x)
    d = geo.d
    gx = gw = gb = None
    if needs[2]:
        gb = xp.sum(gy, axis=tuple(range(d + 1)))
    if geo.N == 0:
        if needs[0]:
            gx = xp.zeros(x.shape, dtype=x.dtype, device=dev)
        if needs[1]:
            gw = xp.zeros(w.shape, dtype=w.dtype, device=dev)
        return gx, gw, gb
    if needs[1]:
        acc = None
        for n0, n1, rows in _chunks(xp, geo, _itemsize(x)):
            xpad = _pad_block(xp, x, geo, n0, n1, rows)
            cols = _columns(xp, xpad, geo, rows)  # (G, nP, K·Cg)
            g = gy[n0:n1, ...]
            if rows is not None:
                g = g[:, rows[0]:rows[1], ...]
            g = xp.reshape(g, (-1, geo.G, geo.Fg))
            g = xp.permute_dims(g, (1, 0, 2))  # (G, nP, Fg)
            part = xp.matmul(xp.matrix_transpose(cols), g)  # (G, K·Cg, Fg)
            acc = part if acc is None else acc + part
        gw = xp.reshape(acc, (geo.G, *geo.k, geo.Cg, geo.Fg))
        gw = xp.permute_dims(gw, tuple(range(1, d + 1)) + (d + 1, d + 2, 0))
    if needs[0]:
        # transposed convolution of the stride-dilated gy with the flipped kernel
        g = gy
        for i, s in enumerate(geo.stride):
            g = _dilate(xp, g, i + 1, s)
        full = tuple((k - 1) * dl for k, dl in zip(geo.k, geo.dilation))
        wt = transposed_weights(xp, w, d)
        gxpad = conv_forward(
            xp, g, wt, None, stride=1, dilation=geo.dilation, pad_before=full, pad_after=full,
            pad_value=0.0, groups=geo.G,
        )  # (N, *used, C)
        extra = tuple(p - u for p, u in zip(geo.padded, geo.used))
        if any(extra):
            gxpad = pad(xp, gxpad, (0,) * d, extra, tuple(range(1, d + 1)), 0.0)
        gx = pad_vjp(xp, gxpad, geo.pb, geo.pa, tuple(range(1, d + 1)), geo.value)
    return gx, gw, gb
