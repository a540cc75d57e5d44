"""``numba.direct``: dense and grouped convolution on channels-innermost data, compiled.

Serves the forward and the weight gradient of a 1-, 2- or 3-d convolution (one group,
or groups of more than one channel; any stride, dilation and padding), and, as
``numba.direct_input_grad``, the stride-1 input gradient (a forward convolution of the
cotangent with the flipped, transposed kernel), on inputs that hold their channels
innermost in memory (``(N, *sp, C)`` C-contiguous: NHWC data formatted ``"BSSC"``).

The input is padded by one copy (or read in place when there is no padding). Each
output value is a sum over its window, and a window is a few *runs* of contiguous
input values: for one group and no dilation along the innermost convolved dim, the
``kw`` taps of a window row and their channels are one run of ``kw·C`` values (any
stride); otherwise each tap's ``Cg`` channels are a run. The generated kernels of
:mod:`._direct_kernels` sum 3 outputs × 4 filters at once over each run, the partial
sums in vector registers; the runtime's workers take blocks of output rows (the weight
gradient: a fixed number of row blocks whose partials are added in block order, so the
bits do not depend on the thread count). Every product of the definition is formed,
padding included, so inf and NaN land where the direct sum puts them.
"""

from __future__ import annotations

import numpy as np

from ...pad import fill_border_numpy
from .._numpy._common import cl_strides, grad_input, has_gy, unpad
from .._numpy._runtime import n_workers, parallel, parallel_copy, parallel_sum
from ..thresholds import current
from .depthwise import WGRAD_BLOCKS, _c_strides, _rows

__all__ = ["applies", "applies_input_grad", "forward", "weight_grad", "input_grad"]


def _k():
    from . import _direct_kernels

    return _direct_kernels


def applies(spec, layout):
    if spec.Cg == 1 and spec.G > 1:
        return "channel-wise (one channel per group): numba.depthwise's domain"
    if spec.d > 3:
        return f"{spec.d} convolved dims: 1 to 3 only"
    limit = current().direct_max_cf
    if spec.Cg * spec.Fg > limit:
        return (f"{spec.Cg}×{spec.Fg} channels × filters per group > direct_max_cf "
                f"({limit}): BLAS GEMMs are faster")
    for which, name in (("x", "x"), ("gy", "the cotangent")):
        if which == "gy" and not has_gy(layout):
            continue
        st = cl_strides(spec, layout, which)
        shape = (spec.N, *(spec.sp if which == "x" else spec.out),
                 spec.C if which == "x" else spec.F)
        if st is None or st != _c_strides(shape):
            return f"{name} is not channels-innermost (N, *sp, C) C-contiguous memory"
    return None


def applies_input_grad(spec, layout):
    if max(spec.stride) > 1:
        return f"stride {spec.stride}: the input gradient as a convolution needs stride 1"
    return applies(spec, layout)


def _padded(x, spec, dtype):
    """``(N, *padded, C)`` C-contiguous: ``x`` itself when it already is, else a copy."""
    if not any(spec.pb + spec.pa) and x.dtype == dtype and x.flags.c_contiguous:
        return x
    xp = np.empty((spec.N, *spec.padded, spec.C), dtype=dtype)
    inner = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(spec.pb, spec.sp))
    parallel_copy(xp[inner], x)
    fill_border_numpy(xp, spec.pb, spec.pa, tuple(range(1, spec.d + 1)), spec.value)
    return xp


def _windows(spec):
    """``(pos, offs, R)`` for the padded input, as :mod:`._direct_kernels` reads them."""
    d, C = spec.d, spec.C
    st = [C] * d  # flat strides of the padded spatial dims
    for i in range(d - 2, -1, -1):
        st[i] = st[i + 1] * spec.padded[i + 1]
    sn = st[0] * spec.padded[0]
    pos = np.arange(spec.N, dtype=np.int64) * sn
    for i in range(d):
        step = np.arange(spec.out[i], dtype=np.int64) * (spec.stride[i] * st[i])
        pos = (pos[:, None] + step[None, :]).ravel()
    merged = spec.G == 1 and spec.dilation[-1] == 1
    tap_dims = d - 1 if merged else d
    offs = np.zeros(1, dtype=np.int64)
    for i in range(tap_dims):
        step = np.arange(spec.k[i], dtype=np.int64) * (spec.dilation[i] * st[i])
        offs = (offs[:, None] + step[None, :]).ravel()
    offs = offs[None, :] + np.arange(spec.G, dtype=np.int64)[:, None] * spec.Cg
    R = spec.k[-1] * C if merged else spec.Cg
    return pos, np.ascontiguousarray(offs), R


def _lanes(dtype):
    from ._simd import VECTOR_BYTES

    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _vectors(a, lanes):
    """``a`` with its last dim zero-padded to whole vectors of ``lanes``, contiguous."""
    n = a.shape[-1]
    if n % lanes == 0:
        return np.ascontiguousarray(a)
    out = np.zeros((*a.shape[:-1], -(-n // lanes) * lanes), dtype=a.dtype)
    out[..., :n] = a
    return out


def _weights(w, spec, dtype):
    """``(G, K·Cg, Fp)``, the taps in window order and the filters innermost, zero-padded
    to whole vectors, from MATLAB's ``(*k, Cg, Fg, G)``."""
    wm = np.moveaxis(np.asarray(w, dtype=dtype), spec.d + 2, 0)  # (G, *k, Cg, Fg)
    return _vectors(wm.reshape(spec.G, spec.K * spec.Cg, spec.Fg), _lanes(dtype))


def _blocks(rows):
    return _rows(rows, 4 * n_workers())


def forward(x, w, bias, spec, dtype):
    k = _k()
    xf = _padded(x, spec, dtype).reshape(-1)
    pos, offs, R = _windows(spec)
    wt = _weights(w, spec, dtype)
    Fp = wt.shape[2]
    b = np.zeros((spec.G, spec.Fg), dtype) if bias is None else np.asarray(bias, dtype)
    bp = _vectors(b.reshape(spec.G, spec.Fg), _lanes(dtype))
    y = np.empty((spec.N, *spec.out, spec.F), dtype=dtype)
    yf, wf, bf = y.reshape(-1), wt.reshape(-1), bp.reshape(-1)
    parallel(lambda _w, q: k.forward_positions(xf, pos, offs, R, wf, bf, Fp, yf, spec.F,
                                               spec.Fg, q[0], q[1]),
             _blocks(len(pos)), dynamic=True)
    return y


#: output positions per weight-gradient tile
WGRAD_TILE_POSITIONS = 128


def weight_grad(gy, x, w, spec, needs, dtype):
    k = _k()
    xf = _padded(x, spec, dtype).reshape(-1)
    pos, offs, R = _windows(spec)
    g = np.asarray(gy, dtype=dtype).reshape(len(pos), spec.G, spec.Fg)
    gp = _vectors(g, _lanes(dtype))
    Fp = gp.shape[2]
    gf = gp.reshape(-1)
    acc = parallel_sum(
        lambda _w, q, a: k.weight_grad_positions(xf, pos, offs, R, gf, a.reshape(-1), Fp,
                                                 WGRAD_TILE_POSITIONS, q[0], q[1]),
        _rows(len(pos), WGRAD_BLOCKS), (spec.G, spec.K * spec.Cg, Fp), dtype)
    d = spec.d
    gw = acc[..., :spec.Fg].reshape(spec.G, *spec.k, spec.Cg, spec.Fg)
    return None, gw.transpose(*range(1, d + 3), 0)


def input_grad(gy, x, w, spec, needs, dtype):
    g, wt, g2, padded = grad_input(gy, w, spec, dtype)
    gx = forward(g, wt, None, g2, dtype)
    return (unpad(gx, spec) if padded else gx), None
