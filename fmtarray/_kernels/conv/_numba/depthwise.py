"""``numba.depthwise``: channel-wise convolution on channels-innermost data, compiled.

Serves the forward and both gradients of a convolution with one channel per group
(any stride, dilation and padding), two ways:

* one filter per channel (the usual depthwise convolution), any number of convolved
  dims, data in any memory order: the channel-wise SIMD tiles of :mod:`._simd` (vectors
  of channels, a block of positions per tile) over the plans of :mod:`.plans` (the input
  gradient by stride phase; with a ±inf/NaN weight it goes to the row kernel below,
  whose zero padding is never read). Channels-last data holding whole vectors of
  channels is read in place, its zero padding never materialised (the border groups of
  :mod:`.plans`); other data is copied, padded in space and to whole vectors of
  channels;
* several filters per channel, 1 or 2 convolved dims, input (and cotangent) holding
  its channels innermost (``(N, *sp, C)`` C-contiguous: NHWC data formatted ``"BSSC"``):
  the row kernels of
  :mod:`._depthwise_kernels`, split by rows of the output (forward, weight gradient)
  or of the input (input gradient); constant padding is never materialised, mirror and
  replicate padding are (a padded copy, folded back by the padding's adjoint).

The weight gradients add per-block partials in block order: the same bits whatever
the number of threads.
"""

from __future__ import annotations

import math

import numpy as np

from ...pad import fill_border_numpy
from .._numpy._common import SUM_BLOCKS, all_finite, cl_strides, has_gy, row_ranges, sum_blocks, unpad
from .._numpy._runtime import dynamic_blocks, parallel, parallel_into
from .._numpy._sums import parallel_sum

__all__ = ["applies", "forward", "backward"]


def _k():
    from . import _depthwise_kernels

    return _depthwise_kernels


def applies(spec, layout):
    if not (spec.Cg == 1 and spec.G > 1):
        return f"{spec.Cg} channels per group, {spec.G} group(s): channel-wise only"
    if spec.Fg == 1:
        return None  # the SIMD tiles: data in any memory order copied channels-last
    if spec.d > 2:
        return f"{spec.d} convolved dims with {spec.Fg} filters per channel: 1 or 2 only"
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




def forward(x, w, bias, spec, dtype):
    if spec.Fg == 1:
        return _simd_forward(x, w, bias, spec, dtype)
    k = _k()
    geo, copy = _geometry(spec)
    xk = _input(x, spec, dtype, copy)
    wk = _weights(w, spec, dtype)
    y = np.empty((spec.N, *spec.out, spec.F), dtype=dtype)
    y2 = _as_2d(y, spec.d)
    b = np.zeros(1, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    v = dtype.type(_value(spec))
    parallel(lambda _w, r: k.forward_rows(xk, wk, b, y2, r[0], r[1], *geo, v, bias is not None),
             row_ranges(spec.N * y2.shape[1], dynamic_blocks()), dynamic=True)
    return y


def backward(gy, x, w, spec, needs, dtype):
    gx = gw = None  # gy in any strides: the SIMD paths copy it, the row kernels below
    if (all(needs) and spec.Fg == 1 and _simd_channels(spec, dtype) == spec.C
            and not (gy.dtype == dtype and gy.flags.c_contiguous)):
        # both passes read the cotangent channels-last: one copy, read in place by both
        from .direct import packed

        gy = packed(gy, 1, spec.C, dtype).reshape(gy.shape)
    if all(needs) and spec.Fg == 1:
        both = _simd_gradients(gy, x, w, spec, dtype)
        if both is not None:
            return both
    if needs[0]:  # the SIMD pass zero-pads the cotangent: not with ±inf/NaN weights
        if spec.Fg == 1 and all_finite(w):
            gx = _simd_input_grad(gy, w, spec, dtype)
        else:
            gx = _rows_input_grad(gy, w, spec, dtype)
    if needs[1]:
        gw = (_simd_weight_grad(gy, x, spec, dtype) if spec.Fg == 1
              else _rows_weight_grad(gy, x, w, spec, dtype))
    return gx, gw


def _rows_input_grad(gy, w, spec, dtype):
    k = _k()
    gy = np.ascontiguousarray(gy, dtype=dtype)
    geo, copy = _geometry(spec)
    gk, wk = _as_2d(gy, spec.d), _weights(w, spec, dtype)
    g = np.empty((spec.N, *(spec.padded if copy else spec.sp), spec.C), dtype=dtype)
    g2 = _as_2d(g, spec.d)
    parallel(lambda _w, r: k.input_grad_rows(gk, wk, g2, r[0], r[1], *geo),
             row_ranges(spec.N * g2.shape[1], dynamic_blocks()), dynamic=True)
    return unpad(g, spec) if copy else g


def _rows_weight_grad(gy, x, w, spec, dtype):
    k = _k()
    gy = np.ascontiguousarray(gy, dtype=dtype)
    geo, copy = _geometry(spec)
    gk, wk = _as_2d(gy, spec.d), _weights(w, spec, dtype)
    xk = _input(x, spec, dtype, copy)
    v = dtype.type(_value(spec))
    acc = parallel_sum(
        lambda _w, r, a: k.weight_grad_rows(gk, xk, a, r[0], r[1], *geo, v),
        row_ranges(spec.N * gk.shape[1], SUM_BLOCKS), wk.shape, dtype)
    gw = np.moveaxis(acc, -1, -2)[..., None, :, :]  # (kh, kw, 1, M, C)
    return gw if spec.d == 2 else gw[0]


# ---- one filter per channel: the SIMD tiles of ._simd, vectors of channels


def _simd_channels(spec, dtype):
    from ._simd import VECTOR_BYTES

    lanes = VECTOR_BYTES // dtype.itemsize
    return -(-spec.C // lanes) * lanes


def _simd_weights(w, dtype, cp):
    """``(taps, Cp)`` zero-padded from MATLAB's ``(*k, 1, 1, C)`` (taps in window order)."""
    w = np.asarray(w, dtype=dtype)
    out = np.zeros((w[..., 0, 0, :].size // w.shape[-1], cp), dtype=dtype)
    out[:, :w.shape[-1]] = w.reshape(-1, w.shape[-1])
    return out


def _simd_forward(x, w, bias, spec, dtype):
    from .direct import padded_input
    from .plans import forward_plan

    cp = _simd_channels(spec, dtype)
    y = np.empty((spec.N, *spec.out, spec.F), dtype=dtype)
    wt = _simd_weights(w, dtype, cp)
    x = np.asarray(x)
    if _in_place(x, wt, spec, dtype, cp):
        return _border_forward(x, wt, bias, spec, y, dtype)
    pos, ypos, offs, _ = forward_plan(spec, cp)
    return _simd_groups(padded_input(x, spec, dtype, cp), [(pos, ypos, offs[0], 1, None)],
                        [wt], bias, y, spec.C, dtype)[0]


def _in_place(x, wt, spec, dtype, cp):
    """Whether the forward (weights ``wt``) or the weight gradient (``wt`` None) reads
    ``x`` where it lies, the padding never materialised: channels-last C-contiguous in
    ``dtype``, whole vectors of channels, zero padding, and for the forward finite
    weights (a padded copy forms ``0 · w`` at every padded tap, so ``0 · ±inf = NaN``
    where a weight is not finite: those keep the copy; the weight gradient checks its
    result instead)."""
    return (cp == spec.C and x.dtype == dtype and x.flags.c_contiguous
            and spec.constant_padding and float(spec.value) == 0.0
            and (wt is None or not any(spec.pb + spec.pa) or all_finite(wt)))


def _border_forward(x, wt, bias, spec, y, dtype):
    """The forward on the unpadded input: the output positions grouped by the taps of
    their window that fall inside it (:func:`.plans.border_plan`), each group summing
    only those (the others meet zero padding). Returns the output (``y`` or its
    replacement: :func:`_simd_groups`)."""
    from .direct import group_weights
    from .plans import border_plan, border_rows

    groups, empty = border_plan(spec, spec.C)
    y, b = _simd_groups(x, groups, group_weights(wt, border_rows(spec, spec.C), 0), bias, y,
                        spec.C, dtype)
    if len(empty):  # windows wholly in the padding: the bias alone
        y.reshape(-1, spec.C)[empty // spec.C] = b
    return y


def _simd_groups(src, groups, wts, bias, y, C, dtype):
    """``y[ypos[p] + c] = bias[c] + Σ_t src[pos[p] + offs[t] + c] · w[t, c]`` over each
    group's positions ``(pos, ypos, offs, ·, ·)`` (a channel-wise plan of :mod:`.plans`,
    or one of its border groups; ``wts[i]`` its ``(taps, Cp)`` weights, ``C`` channels
    stored), one parallel phase. ``y`` is fresh; returns it (or the copy that
    :func:`.._numpy._runtime.parallel_into` finished when a pool thread was stuck in an
    item) and the bias."""
    from . import _simd as dk
    from .plans import group_items

    cp = wts[0].shape[-1]  # whole vectors: the source and the weights hold cp ≥ C channels
    b = np.zeros(cp, dtype)
    if bias is not None:
        b[:C] = bias
    sf = src.reshape(-1)
    wts = [np.ascontiguousarray(w).reshape(-1) for w in wts]

    def run(_w, item, yf):
        for i, q0, q1, _, _ in item:
            pos, ypos, offs, _, _ = groups[i]
            dk.channelwise_positions(sf, pos, ypos, offs, wts[i], b, cp, yf, C, q0, q1)

    return parallel_into(run, group_items(groups, dynamic_blocks()), y), b[:C]


def _simd_input_grad(gy, w, spec, dtype):
    from .direct import padded_cotangent
    from .plans import input_grad_border_plan, input_grad_plans

    cp = _simd_channels(spec, dtype)
    gy = np.asarray(gy)
    wt = _simd_weights(w, dtype, cp)  # (taps, cp); finite here (see backward)
    if cp == spec.C and gy.dtype == dtype and gy.flags.c_contiguous:
        # the cotangent read in place: each phase's targets grouped by the taps that
        # read inside it (dropping only 0 · w terms)
        from .direct import group_weights
        from .plans import input_grad_border_rows

        tshape, groups, zero = input_grad_border_plan(spec, cp)
        gx = np.empty(tshape, dtype=dtype)
        gx = _simd_groups(gy, groups, group_weights(wt, input_grad_border_rows(spec, cp), 0),
                          None, gx, spec.C, dtype)[0]
        if len(zero):
            gx.reshape(-1, spec.C)[zero // spec.C] = 0
    else:
        tshape, pads, passes, empty = input_grad_plans(spec, cp)
        gp = padded_cotangent(gy, spec, pads, cp, dtype)
        gx = (np.zeros if empty else np.empty)(tshape, dtype=dtype)
        wk = wt.reshape(*spec.k, cp)
        for pos, ypos, offs, _, taps in passes:
            gx = _simd_groups(gp, [(pos, ypos, offs[0], 1, None)], [wk[tuple(taps.T)]], None,
                              gx, spec.C, dtype)[0]
    return gx if spec.constant_padding else unpad(gx, spec)


#: positions per block of the interior group in :func:`_simd_gradients` (at most
#: :data:`GRADIENT_BLOCKS` blocks): items as fine as a dynamic phase's, since a pool
#: thread held up in an item (another library's threads spinning on its core) holds up
#: the phase, and each block's weight-gradient part is small (taps × channels)
GRADIENT_BLOCK_POSITIONS = 1024
GRADIENT_BLOCKS = 32


def _gradient_blocks(n, spec):
    """The interior group's blocks of positions in :func:`_simd_gradients`, fixed by the
    problem alone (their parts are added in block order); one below
    ``Tuning.serial_macs`` (run on the calling thread), as :func:`sum_blocks`."""
    if len(sum_blocks(n, spec)) == 1:
        return [(0, n)]
    return row_ranges(n, max(4, min(GRADIENT_BLOCKS, n // GRADIENT_BLOCK_POSITIONS)))


def _simd_gradients(gy, x, w, spec, dtype):
    """Both gradients in one pass over the cotangent (:func:`._simd.
    channelwise_gradients_positions`), the input gradient's plan of targets grouped by
    the taps that read inside the cotangent (:func:`.plans.input_grad_border_plan`), each
    target's input value read next to its cotangent values for the weight gradient;
    ``None`` unless both read their data in place (whole vectors of channels, channels-last
    C-contiguous ``x`` and ``gy`` in the result dtype, zero padding, finite weights, no
    output window wholly in the padding). Each item sums its groups' weight gradients into
    parts of its own, the first group's blocks (:func:`_gradient_blocks`) added in block
    order, then every group's rows into the taps' (the same bits whatever
    the number of threads); a weight gradient that is not finite is formed again by
    :func:`_simd_weight_grad` (a non-finite cotangent may have met the padding, unseen
    here: ``0 · ±inf``). The input gradient has the bits of :func:`_simd_input_grad`'s."""
    from . import _simd as dk
    from .._numpy._sums import in_order
    from .direct import WGRAD_TILE_POSITIONS, group_weights, summed_rows
    from .plans import border_plan, bundles, input_grad_border_plan, input_grad_border_rows

    cp = _simd_channels(spec, dtype)
    gy, x = np.asarray(gy), np.asarray(x)
    if not (cp == spec.C and gy.dtype == dtype and gy.flags.c_contiguous
            and _in_place(x, None, spec, dtype, cp) and all_finite(w)
            and not len(border_plan(spec, spec.C)[1])):
        return None
    tshape, groups, zero = input_grad_border_plan(spec, cp)
    if tuple(tshape) != x.shape:
        return None
    rows = input_grad_border_rows(spec, cp)
    wts = [np.ascontiguousarray(a).reshape(-1)
           for a in group_weights(_simd_weights(w, dtype, cp), rows, 0)]
    psize = [g[2].shape[0] * cp for g in groups]
    blocks = _gradient_blocks(len(groups[0][0]), spec)
    size = max(1, sum(len(g[0]) for g in groups) // dynamic_blocks())
    at, items = x.size, []  # the input gradient first, then each item's parts
    for it in [[(0, q0, q1)] for q0, q1 in blocks] + bundles(groups, range(1, len(groups)), size):
        items.append([(i, q0, q1, at + sum(psize[j] for j, _, _ in it[:k]))
                      for k, (i, q0, q1) in enumerate(it)])
        at += sum(psize[i] for i, _, _ in it)
    gyf, xf = gy.reshape(-1), x.reshape(-1)

    def run(_w, item, flat):
        flat[item[0][3]:item[-1][3] + psize[item[-1][0]]] = 0
        for i, q0, q1, a in item:
            pos, ypos, offs, _, _ = groups[i]
            dk.channelwise_gradients_positions(gyf, pos, ypos, offs, wts[i], cp, flat, xf,
                                               flat[a:], WGRAD_TILE_POSITIONS, q0, q1)

    flat = parallel_into(run, items, np.empty(at, dtype=dtype))
    gx = flat[:x.size].reshape(x.shape)
    if len(zero):
        gx.reshape(-1, spec.C)[zero // spec.C] = 0
    parts = {}
    for item in items:
        for i, _, _, a in item:
            parts.setdefault(i, []).append(flat[a:a + psize[i]].reshape(-1, cp))
    acc = summed_rows([in_order(parts[0])] + [parts[i][0] for i in range(1, len(groups))],
                      rows, math.prod(spec.k), 0)
    if all_finite(acc):
        return gx, acc.reshape(*spec.k, 1, 1, spec.C)
    return gx, _simd_weight_grad(gy, x, spec, dtype)


def _simd_weight_grad(gy, x, spec, dtype):
    from .direct import packed

    cp = _simd_channels(spec, dtype)
    gf = packed(gy, 1, cp, dtype).reshape(-1)
    x = np.asarray(x)
    if _in_place(x, None, spec, dtype, cp):
        acc = _border_weight_grad(x, gf, spec, dtype)
        if acc is not None and all_finite(acc):  # else a non-finite cotangent may
            return acc.reshape(*spec.k, 1, 1, spec.C)  # have met the padding: 0 · ±inf
    return _padded_weight_grad(x, gf, spec, dtype, cp)


def _padded_weight_grad(x, gf, spec, dtype, cp):
    from . import _simd as dk
    from .direct import WGRAD_TILE_POSITIONS, padded_input
    from .plans import forward_plan

    pos, ypos, offs, _ = forward_plan(spec, cp)
    gpos = ypos if cp == spec.F else np.arange(len(pos), dtype=np.int64) * cp
    xf = padded_input(x, spec, dtype, cp).reshape(-1)
    o = offs[0]
    acc = parallel_sum(
        lambda _w, q, a: dk.channelwise_weight_grad_positions(
            xf, pos, gpos, o, gf, a.reshape(-1), cp, WGRAD_TILE_POSITIONS, q[0], q[1]),
        sum_blocks(len(pos), spec), (len(o), cp), dtype, redo=True)
    return acc[:, :spec.C].reshape(*spec.k, 1, 1, spec.C)


def _border_weight_grad(x, gf, spec, dtype):
    """The weight gradient on the unpadded input, by the groups of
    :func:`.plans.border_plan`: each group sums its taps into rows of its own, added
    into the taps' rows at the end (a fixed number of blocks: the same bits whatever
    the number of threads). ``(T, C)``; ``None`` when some output's window lies wholly in
    the padding (its cotangent would meet only padding, unseen here)."""
    from . import _simd as dk
    from .direct import WGRAD_TILE_POSITIONS, summed_rows
    from .plans import border_plan, border_rows

    groups, empty = border_plan(spec, spec.C)
    if len(empty):
        return None
    C = spec.C
    xf = x.reshape(-1)
    rows = np.cumsum([0] + [len(g[4]) for g in groups])
    items = []
    for i, (pos, *_) in enumerate(groups):
        blocks = sum_blocks(len(pos), spec) if i == 0 else [(0, len(pos))]
        items += [(i, q0, q1) for q0, q1 in blocks]

    def run(_w, it, a):
        pos, ypos, offs, _, _ = groups[it[0]]
        dk.channelwise_weight_grad_positions(xf, pos, ypos, offs, gf,
                                             a.reshape(-1)[rows[it[0]] * C:], C,
                                             WGRAD_TILE_POSITIONS, it[1], it[2])

    part = parallel_sum(run, items, (int(rows[-1]), C), dtype, redo=True)
    return summed_rows([part], border_rows(spec, spec.C), math.prod(spec.k), 0)
