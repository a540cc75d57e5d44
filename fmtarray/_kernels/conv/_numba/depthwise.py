"""``numba.depthwise``: channel-wise convolution on channels-innermost data, compiled.

Serves the forward and both gradients of a 1-d or 2-d convolution with one channel per
group (any filters per channel, any stride, dilation and padding) whose input holds
its channels innermost in memory (``(N, *sp, C)`` C-contiguous: NHWC data formatted
``"BSSC"``, or any format whose data lie that way). The work is split by rows of the
output (forward, weight gradient) or of the input (input gradient) over the runtime's
workers, each running a compiled kernel of :mod:`._depthwise_kernels` with the GIL
released. Constant padding is never materialised; mirror and replicate padding are (a
padded copy of the input, and the padding's adjoint folds the gradient back). The
weight gradient adds per-row-block partials in block order: the same bits whatever
the number of threads.
"""

from __future__ import annotations

import numpy as np

from ...pad import fill_border_numpy
from .._numpy._common import cl_strides, has_gy, unpad
from .._numpy._runtime import n_workers, parallel, parallel_sum

__all__ = ["applies", "forward", "backward"]


def _k():
    from . import _depthwise_kernels

    return _depthwise_kernels


def applies(spec, layout):
    if not (spec.Cg == 1 and spec.G > 1):
        return f"{spec.Cg} channels per group, {spec.G} group(s): channel-wise only"
    if spec.d > 2:
        return f"{spec.d} convolved dims: 1 or 2 only"
    for which, name in (("x", "x"), ("gy", "the cotangent")):
        if which == "gy" and not has_gy(layout):
            continue
        st = cl_strides(spec, layout, which)
        n = spec.C if which == "x" else spec.F
        shape = (spec.N, *(spec.sp if which == "x" else spec.out), n)
        if st is None or st != _c_strides(shape):
            return f"{name} is not channels-innermost (N, *sp, C) C-contiguous memory"
    return None


def _c_strides(shape):
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def _geometry(spec):
    """2-d parameters ``(sh, sw, dh, dw, ph, pw)`` (a 1-d convolution is a 2-d one with
    one row) and whether the input is padded by a copy first."""
    copy = not spec.constant_padding
    g = [(1, 1, 0)] * (2 - spec.d) + list(zip(spec.stride, spec.dilation,
                                              (0,) * spec.d if copy else spec.pb))
    (sh, dh, ph), (sw, dw, pw) = g
    return (sh, sw, dh, dw, ph, pw), copy


def _as_2d(a, d):
    return a if d == 2 else a[:, None]


def _weights(w, spec, dtype):
    """``(kh, kw, C, M)`` contiguous from MATLAB's ``(*k, 1, M, G)``."""
    wk = np.moveaxis(np.asarray(w)[..., 0, :, :], -1, -2)
    wk = wk if spec.d == 2 else wk[None]
    return np.ascontiguousarray(wk, dtype=dtype)


def _input(x, spec, dtype, copy):
    """The input as the kernels read it: in place, or padded by a copy."""
    x = np.ascontiguousarray(x, dtype=dtype)
    if not copy:
        return _as_2d(x, spec.d)
    xp = np.empty((spec.N, *spec.padded, spec.C), dtype=dtype)
    xp[(slice(None),) + tuple(slice(b, b + n) for b, n in zip(spec.pb, spec.sp))] = x
    fill_border_numpy(xp, spec.pb, spec.pa, tuple(range(1, spec.d + 1)), spec.value)
    return _as_2d(xp, spec.d)


def _value(spec):
    return float(spec.value) if spec.constant_padding else 0.0


def _rows(total, n_blocks):
    """``[r0, r1)`` ranges: ``total`` rows in at most ``n_blocks`` blocks."""
    step = max(1, -(-total // n_blocks))
    return [(r, min(r + step, total)) for r in range(0, total, step)]


#: row blocks of the weight gradient (fixed, not one per worker: the partials, added in
#: block order, give the same bits whatever the number of threads)
WGRAD_BLOCKS = 16


def forward(x, w, bias, spec, dtype):
    k = _k()
    geo, copy = _geometry(spec)
    xk = _input(x, spec, dtype, copy)
    wk = _weights(w, spec, dtype)
    y = np.empty((spec.N, *spec.out, spec.F), dtype=dtype)
    y2 = _as_2d(y, spec.d)
    b = np.zeros(1, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    v = dtype.type(_value(spec))
    parallel(lambda _w, r: k.forward_rows(xk, wk, b, y2, r[0], r[1], *geo, v, bias is not None),
             _rows(spec.N * y2.shape[1], 4 * n_workers()), dynamic=True)
    return y


def backward(gy, x, w, spec, needs, dtype):
    k = _k()
    geo, copy = _geometry(spec)
    gk = _as_2d(np.ascontiguousarray(gy, dtype=dtype), spec.d)
    wk = _weights(w, spec, dtype)
    gx = gw = None
    if needs[0]:
        shape = (spec.N, *(spec.padded if copy else spec.sp), spec.C)
        g = np.empty(shape, dtype=dtype)
        g2 = _as_2d(g, spec.d)
        parallel(lambda _w, r: k.input_grad_rows(gk, wk, g2, r[0], r[1], *geo),
                 _rows(spec.N * g2.shape[1], 4 * n_workers()), dynamic=True)
        gx = unpad(g, spec) if copy else g
    if needs[1]:
        xk = _input(x, spec, dtype, copy)
        v = dtype.type(_value(spec))
        acc = parallel_sum(
            lambda _w, r, a: k.weight_grad_rows(gk, xk, a, r[0], r[1], *geo, v),
            _rows(spec.N * gk.shape[1], WGRAD_BLOCKS), wk.shape, dtype)
        gw = np.moveaxis(acc, -1, -2)[..., None, :, :]  # (kh, kw, 1, M, C)
        gw = gw if spec.d == 2 else gw[0]
    return gx, gw
