"""Batch-innermost NumPy paths: the canonical ``S…S C B`` layout read without
transposing it to channels-last.

* ``numpy.batch_innermost`` (forward, few channels: ``kw·C ≤ Tuning.bi_max_run``):
  ``out (*out·N, F) = colsᵀ (*out·N, K·C) · W (K·C, F)`` tiled over output rows; a
  window row is a run of ``N`` contiguous values.
* ``numpy.input_grad_bi`` (input gradient, fewer input than output channels):
  ``Wᵀ · gy`` per block of output rows, scatter-added per tap into per-worker padded
  inputs ``(*padded, C, N)``.
* ``numpy.flat_shift`` (both gradients of a stride-1 2-d convolution with
  ``Tuning.flat_channels`` channels): ``x`` and ``gy`` copied once into channel-major
  padded buffers of a common row width, where every tap is a flat shift.

Kernel functions take channels-last views (batch innermost in memory, checked on the
strides by the ``applies`` predicates) and the call's :class:`~..spec.ConvSpec`
(named ``geo``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...pad import fill_border_numpy, pad_indices
from ..thresholds import current
from . import winograd
from ._common import cl_strides, has_gy, itemsize, padded_bytes, unpad, weight_matrix
from ._runtime import n_workers, parallel, scratch
from ._sums import parallel_sum

__all__ = ["applies_forward", "applies_input_grad", "applies_flat", "forward", "input_grad",
           "backward_flat"]


def _bi_tiles(geo, itemsize):
    """Tiles over the first output dim (then the second) so that a column tile
    ``(K·C, rows·…·N)`` is near ``Tuning.tile_bytes``."""
    per_row = (geo.P // geo.out[0]) * geo.N * geo.K * geo.C * itemsize
    rows = max(1, current().tile_bytes // max(per_row, 1))
    nw = n_workers()
    rows = min(rows, max(1, -(-geo.out[0] // nw)))
    return [(r0, min(r0 + rows, geo.out[0])) for r0 in range(0, geo.out[0], rows)]


def _forward_bi(x, w, geo, dtype, bias):
    """``out (*out·N, F) = colsᵀ (*out·N, K·C) · W (K·C, F)``, tiled over output rows.

    Reads the batch-innermost input directly: a window row is a run of ``N`` (for
    ``C = 1`` and stride 1, ``w·N``) contiguous values, so no transposition is needed.
    The columns ``(K·C, *out·N)`` go to BLAS as a transposed operand and the product
    is written ``(*out, N, F)`` — the orientation BLAS runs fastest for these thin
    GEMMs (``K·C ≤ 8·kh``, ``F`` filters); the result is returned as a ``(N, *out, F)``
    view. The bias is a row of ones in the columns times a bias row in ``W`` (no pass
    over the output).
    """
    d = geo.d
    xb = np.moveaxis(x, 0, -1)  # (*sp, C, N), (near) contiguous
    KC = geo.K * geo.C
    nb = 0 if bias is None else 1
    wb = np.empty((KC + nb, geo.F), dtype=dtype)
    wb[:KC] = np.asarray(w, dtype=dtype).reshape(KC, geo.F)
    if nb:
        wb[KC] = bias
    out = np.empty((*geo.out, geo.N, geo.F), dtype=dtype)
    out2 = out.reshape(-1, geo.F)
    row_len = (geo.P // geo.out[0]) * geo.N
    const = not isinstance(geo.value, str)
    src_rows = None if const else _pad_rows_index(geo)
    inner_axes = tuple(range(1, d))
    nw = n_workers()
    st = [None] * nw
    tiles = _bi_tiles(geo, dtype.itemsize)
    rmax = max(r1 - r0 for r0, r1 in tiles)
    nrows_max = (rmax - 1) * geo.stride[0] + (geo.k[0] - 1) * geo.dilation[0] + 1

    nopad = not any(geo.pb) and not any(geo.pa) and x.dtype == dtype

    def work(wid, tile):
        r0, r1 = tile
        if st[wid] is None:
            blk = None
            if not nopad:
                blk = np.empty((nrows_max, *geo.padded[1:], geo.C, geo.N), dtype=dtype)
                if const:
                    blk.fill(geo.value)
            cb = np.empty((KC + nb, rmax * row_len), dtype=dtype)
            cb[KC:] = 1  # the bias row (gathers write rows < KC only)
            st[wid] = (blk, cb)
        blk_full, cbuf = st[wid]
        lo = r0 * geo.stride[0]
        hi = (r1 - 1) * geo.stride[0] + (geo.k[0] - 1) * geo.dilation[0] + 1
        if nopad:  # windows straight from the input, no staging copy
            gather(xb[lo:hi], r0, r1, cbuf)
            return
        blk = blk_full[: hi - lo]
        centre = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(geo.pb[1:], geo.sp[1:]))
        for i, r in enumerate(range(lo, hi)):
            src = r - geo.pb[0] if const else src_rows[r]
            if 0 <= src < geo.sp[0]:
                blk[(i,) + centre[1:]] = xb[src]
            elif const:
                blk[i].fill(geo.value)
        if not const and d > 1:
            fill_border_numpy(blk, geo.pb[1:], geo.pa[1:], inner_axes, geo.value)
        gather(blk, r0, r1, cbuf)

    to_c_first = (d,) + tuple(range(d)) + (d + 1,)  # (rows, *out[1:], C, N) -> C first

    windows = {}  # row count -> the taps' window slices (relative to the block)

    def gather(blk, r0, r1, cbuf):
        m = (r1 - r0) * row_len
        cm = cbuf[:, :m]  # (KC + nb, m), row stride rmax·row_len
        cols = cm[:KC].reshape(geo.K, geo.C, r1 - r0, *geo.out[1:], geo.N)
        win = windows.get(r1 - r0)
        if win is None:
            win = windows[r1 - r0] = [geo.window(off, (0, r1 - r0)) for off in geo.offsets()]
        for kk, sl in enumerate(win):
            np.copyto(cols[kk], blk[sl].transpose(to_c_first))  # (rows, *out[1:], C, N)
        np.matmul(cm.T, wb, out=out2[r0 * row_len: r1 * row_len])

    parallel(work, tiles, dynamic=True)
    return np.moveaxis(out, d, 0)


def _pad_rows_index(geo):
    return pad_indices(geo.sp[0], geo.pb[0], geo.pa[0], geo.value)


def _input_grad_bi(gy, w, geo, dtype):
    """Input gradient on the batch-innermost layout for few input channels:
    ``D[p, (k, c), n] = Σ_f W[(k, c), f] · gy[p, f, n]`` (a GEMM per output row block,
    batched over positions), scatter-added per tap into a per-worker padded input
    ``(*padded, C, N)``; then the workers' sums and the padding's adjoint. Moves
    ``P·K·C`` values where the transposed convolution would gather ``P·K·F``."""
    N, C, K = geo.N, geo.C, geo.K
    gyb = np.moveaxis(gy, 0, -1)  # (*out, F, N)
    inner = math.prod(geo.out[1:])
    per_row = inner * K * C * N * dtype.itemsize
    nw = n_workers()
    rb = max(1, min(current().tile_bytes // max(per_row, 1), -(-geo.out[0] // nw)))
    tiles = [(r0, min(r0 + rb, geo.out[0])) for r0 in range(0, geo.out[0], rb)]
    st = [None] * nw
    offs = list(geo.offsets())
    wT = weight_matrix(w, geo, dtype)[0]  # (K·C, F)

    def work(wid, tile):
        r0, r1 = tile
        if st[wid] is None:
            st[wid] = (np.zeros((*geo.padded, C, N), dtype=dtype),
                       np.empty(rb * inner * K * C * N, dtype=dtype))
        gpad, dbuf = st[wid]
        rows = r1 - r0
        g = gyb[r0:r1].reshape(rows * inner, geo.F, N)
        dmat = dbuf[: rows * inner * K * C * N].reshape(rows * inner, K * C, N)
        np.matmul(wT, g, out=dmat)
        dmat = dmat.reshape(rows, *geo.out[1:], K, C, N)
        for kk, off in enumerate(offs):
            win = geo.window(off, (r0, r1))
            r_lo = r0 * geo.stride[0] + off[0] * geo.dilation[0]
            sl = (slice(r_lo, r_lo + (rows - 1) * geo.stride[0] + 1, geo.stride[0]),) + win[1:]
            dst = gpad[sl]
            np.add(dst, dmat[..., kk, :, :], out=dst)

    parallel(work, tiles)
    parts = [p[0] for p in st if p is not None]
    gpad = parts[0]
    for p in parts[1:]:
        gpad += p
    gpad = np.moveaxis(gpad, -1, 0)  # (N, *padded, C)
    return unpad(gpad, geo)


def _flat_bi_backward(gy, x, w, geo, needs, dtype):
    """Input and weight gradients of a stride-1 2-d convolution on batch-innermost data
    without channels-last columns: ``x`` and ``gy`` are copied once (runs of ``N``) into
    channel-major padded buffers ``(C, Hp, Wq, N)`` / ``(F, Ho + 2r, Wq, N)`` of a common
    row width ``Wq``, flattened per channel, where every tap is a flat shift. The weight
    gradient is ``Σ_tiles x_shift (C, L) · gyᵀ (L, F)`` per tap (BLAS on views, no
    copy; positions past the output width meet zeros of the padded ``gy``); the input
    gradient is ``colsᵀ (L, K·F) · W (K·F, C)`` per tile, the columns being ``K`` flat
    shifts of the padded ``gy`` (long contiguous runs), written channels-last."""
    N, C, F, K = geo.N, geo.C, geo.F, geo.K
    flat_tile = current().flat_tile
    (kh, kw), (d0, d1) = geo.k, geo.dilation
    r0, r1 = (kh - 1) * d0, (kw - 1) * d1
    Ho, Wo = geo.out
    Hp, Wp = geo.padded
    # one gap of r1 zero columns per row is both the right padding of a row and the
    # left padding of the next (flat shifts wrap around): Wq = Wo + r1 = Wp
    Hq, Wq = Ho + 2 * r0, Wo + r1
    slack = (r1 + 1) * N

    def rowlen(n):
        # channel rows of the flat buffers: a stride of 64 bytes more than a multiple of
        # 4 KiB (rows a multiple of 4 KiB apart would share cache sets: BLAS reads
        # across the rows)
        q = 4096 // dtype.itemsize
        return -(-n // q) * q + 64 // dtype.itemsize
    # gy padded by r (rows) and r1 (one gap per row): the flipped-kernel view of the
    # input gradient; shifted by (r0, r1) it is gy itself for the weight gradient
    gq = scratch("flat_gy", (F, rowlen(Hq * Wq * N + slack)), dtype, keep=True)
    gq[:, Hq * Wq * N:] = 0
    gv = gq[:, : Hq * Wq * N].reshape(F, Hq, Wq, N)
    gyt = np.moveaxis(gy, 0, -1).transpose(2, 0, 1, 3)  # (F, Ho, Wo, N)
    xt = np.moveaxis(x, 0, -1).transpose(2, 0, 1, 3) if needs[1] else None  # (C, H, W, N)
    if needs[1]:
        xq = scratch("flat_x", (C, rowlen(Hp * Wq * N + slack)), dtype, keep=True)
        xq[:, Hp * Wq * N:] = 0
        xv = xq[:, : Hp * Wq * N].reshape(C, Hp, Wq, N)
    pb0, pb1 = geo.pb
    H, W = geo.sp

    def prep(wid, part):
        which, c0, c1 = part  # a block of channel rows of one of the two buffers
        if which == 0:
            g = gv[c0:c1]
            g[:, :r0] = 0
            g[:, Hq - r0:] = 0
            g[:, r0:Hq - r0, :r1] = 0
            np.copyto(g[:, r0:r0 + Ho, r1:r1 + Wo], gyt[c0:c1])
        else:
            v = geo.value
            b = xv[c0:c1]
            b[:, :pb0] = v
            b[:, pb0 + H:] = v
            b[:, pb0:pb0 + H, :pb1] = v
            b[:, pb0:pb0 + H, pb1 + W:Wp] = v
            np.copyto(b[:, pb0:pb0 + H, pb1:pb1 + W], xt[c0:c1])

    # both copies in blocks of channel rows, about three per worker, taken dynamically
    parts = []
    for which, rows in ((0, F), (1, C)) if needs[1] else ((0, F),):
        step = -(-rows // 3)
        parts += [(which, c0, min(c0 + step, rows)) for c0 in range(0, rows, step)]
    parallel(prep, parts, dynamic=True)
    nw = n_workers()
    gx = gw = None
    if needs[1]:
        g0 = (r0 * Wq + r1) * N
        # the valid positions of each output row (the row gaps would multiply zeros,
        # or NaN from a non-finite input read across the gap)
        tiles = [(h * Wq * N + l0, h * Wq * N + min(l0 + flat_tile, Wo * N))
                 for h in range(Ho) for l0 in range(0, Wo * N, flat_tile)]
        it = dtype.itemsize
        tap_strides = (d0 * Wq * N * it, d1 * N * it, xq.strides[0], it)

        def wgrad(wid, tile, acc):
            # all taps in one stacked matmul (one BLAS call per tap, no Python between)
            l0, l1 = tile
            xs = as_strided(xq[:, l0:], shape=(kh, kw, C, l1 - l0), strides=tap_strides,
                            writeable=False)
            acc += np.matmul(xs, gq[:, g0 + l0:g0 + l1].T)

        gw = parallel_sum(wgrad, tiles, (kh, kw, C, F), dtype).reshape(kh, kw, C, F, 1)
    if needs[0]:
        # only the positions of the unpadded input, row by row, into a compact
        # (H, W·N, C) result
        base = (pb0 * Wq + pb1) * N
        # tap (a, b) of the columns reads gy at flat shift (a·d0·Wq + b·d1)·N: the weight
        # at the flipped tap (kh-1-a, kw-1-b)
        wm = np.ascontiguousarray(np.asarray(w, dtype=dtype)[::-1, ::-1, :, :, 0]
                                  .transpose(0, 1, 3, 2)).reshape(K * F, C)
        gxe = np.empty((H, W * N, C), dtype=dtype)
        bufs = [None] * nw
        tiles = [(h, l0, min(l0 + flat_tile, W * N))
                 for h in range(H) for l0 in range(0, W * N, flat_tile)]
        it = dtype.itemsize
        tap_strides = (d0 * Wq * N * it, d1 * N * it, gq.strides[0], it)

        def igrad(wid, tile):
            h, l0, l1 = tile
            if bufs[wid] is None:
                bufs[wid] = np.empty(K * F * flat_tile, dtype=dtype)
            cols = bufs[wid][: K * F * (l1 - l0)].reshape(kh, kw, F, l1 - l0)
            src = gq[:, base + h * Wq * N + l0:]
            np.copyto(cols, as_strided(src, shape=cols.shape, strides=tap_strides,
                                       writeable=False))
            np.matmul(cols.reshape(K * F, l1 - l0).T, wm, out=gxe[h, l0:l1])

        parallel(igrad, tiles, dynamic=True)
        gxv = gxe.reshape(H, W, N, C)
        gx = gxv.transpose(2, 0, 1, 3)  # (N, H, W, C)
    return gx, gw


# ---------------------------------------------------------------------------------------
# registry entries


def _batch_innermost(spec, layout, which="x"):
    st = cl_strides(spec, layout, which)
    return st is not None and st[0] == 1


def applies_forward(spec, layout):
    if spec.N < 2:
        return f"batch of {spec.N}: needs at least 2 samples innermost"
    if not _batch_innermost(spec, layout):
        return "the batch is not innermost in memory"
    if spec.G != 1:
        return f"{spec.G} groups: one group only"
    run, most = spec.C * spec.k[-1], current().bi_max_run
    if run > most:
        return (f"kw·C = {run} > Tuning.bi_max_run = {most}: the channels-last gather "
                "copies runs long enough")
    return None


def applies_input_grad(spec, layout):
    if spec.N < 2:
        return f"batch of {spec.N}: needs at least 2 samples innermost"
    if spec.G != 1:
        return f"{spec.G} groups: one group only"
    if not has_gy(layout):
        return "a gradient path"
    if not (_batch_innermost(spec, layout) and _batch_innermost(spec, layout, "gy")):
        return "the batch of x or of the cotangent is not innermost in memory"
    if spec.C >= spec.F:
        return f"{spec.C} input channels >= {spec.F} filters: the transposed convolution moves less"
    need, ws = n_workers() * padded_bytes(spec), current().workspace_bytes
    if need > ws:
        return f"one padded input per worker ({need} bytes) > Tuning.workspace_bytes = {ws}"
    if winograd.applies_weight_grad(spec, layout) is None:
        return ("numpy.winograd_weight_grad applies: the input gradient goes through the "
                "stride-1 convolution of the cotangent")
    return None


def applies_flat(spec, layout):
    t = current()
    lo, hi = t.flat_channels
    if spec.d != 2:
        return f"{spec.d} convolved dims: 2-d only"
    if spec.G != 1:
        return f"{spec.G} groups: one group only"
    if any(s != 1 for s in spec.stride):
        return f"stride {spec.stride}: stride 1 only"
    if not has_gy(layout):
        return "a gradient path"
    if spec.N < max(t.flat_min_n, 1):
        return f"batch of {spec.N} < Tuning.flat_min_n = {t.flat_min_n}"
    if not (lo <= spec.C <= hi and lo <= spec.F <= hi):
        return f"{spec.C} -> {spec.F} channels outside Tuning.flat_channels = {t.flat_channels}"
    if not (spec.constant_padding and math.isfinite(spec.value)):
        return f"padding value {spec.value!r}: a finite constant only"
    if not (_batch_innermost(spec, layout) and _batch_innermost(spec, layout, "gy")):
        return "the batch of x or of the cotangent is not innermost in memory"
    if spec.out[1] * spec.N < t.flat_min_row:
        return f"output rows of {spec.out[1] * spec.N} values < Tuning.flat_min_row = {t.flat_min_row}"
    r = [(k - 1) * dl for k, dl in zip(spec.k, spec.dilation)]
    wq = spec.out[1] + r[1]
    size = (spec.C * spec.padded[0] + spec.F * (spec.out[0] + 2 * r[0])) * (wq + 1) * spec.N
    if size * itemsize(spec) > t.workspace_bytes:
        return (f"flat buffers of {size * itemsize(spec)} bytes > Tuning.workspace_bytes = "
                f"{t.workspace_bytes}")
    return None


def forward(x, w, bias, geo, dtype):
    return _forward_bi(x, w, geo, dtype, bias)


def input_grad(gy, x, w, geo, needs, dtype):
    return _input_grad_bi(gy, w, geo, dtype), None


def backward_flat(gy, x, w, geo, needs, dtype):
    return _flat_bi_backward(gy, x, w, geo, needs, dtype)
