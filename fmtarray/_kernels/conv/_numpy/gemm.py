"""im2col GEMM: the general NumPy convolution (forward, weight and input gradients).

Same algorithm as the portable path — gather windows into a column buffer, one
GEMM per tile — arranged for the CPU caches and cores:

* **Chunks.** The batch is processed in chunks whose padded copy stays within
  ``Tuning.workspace_bytes``. The copy into the chunk's pad buffer is also where a
  batch-innermost input (the canonical ``S…S C B`` layout, seen channels-last as a
  strided view) is transposed, in cache-sized blocks.
* **Tiles.** Each chunk is cut into column tiles of about ``Tuning.tile_bytes``
  (whole samples, or rows of one sample), small enough that the gathered columns
  are still in cache when the GEMM reads them; the tiles are spread over the workers
  of :mod:`._runtime`, each with its own column buffer.
* **Gather.** When the last convolved dim is not dilated, its ``kw`` taps over all
  channels are one contiguous run of ``kw·C`` values: one strided copy per
  (outer) kernel offset instead of ``kw`` narrow ones.
* **Wide mode** (``numpy.gemm_wide``, weight matrices of ``Tuning.wide_weight_bytes``
  and more): big column chunks and one GEMM per chunk, split over the workers by rows,
  so the weights are streamed once per chunk rather than once per small tile; the
  weight gradient is split by rows of the result (no per-worker copies of it to sum).
* **Bias** is added to each output tile right after its GEMM, while it is in cache.
* **Input gradient.** Stride 1 (``numpy.grad_as_conv``): a forward convolution of
  ``gy`` with the flipped, transposed weights (gathers only). Otherwise
  (``numpy.col2im``): ``gy · Wᵀ`` per tile scatter-added into a per-worker padded
  sample buffer. Then the adjoint of the padding. The flipped, transposed weights are
  copied as ``(Fg, K·Cg)`` (long runs) and handed to BLAS as a transposed operand.

Kernel functions take channels-last arrays and the call's :class:`~..spec.ConvSpec`
(named ``geo``: its geometry).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..thresholds import current
from ._common import (chunk_size, gemm, grad_input, itemsize, plain, unpad, weight_matrix)
from ._copies import Chunked, parallel_copy
from ._runtime import n_workers, parallel, row_blocks, scratch
from ._sums import parallel_sum

__all__ = ["forward_gemm", "applies_wide", "applies_grad_as_conv", "forward_tiles",
           "forward_wide", "weight_grad_tiles", "weight_grad_wide", "input_grad_as_conv",
           "input_grad_col2im"]


def _wide(geo, itemsize):
    return geo.K * geo.C * geo.Fg * itemsize >= current().wide_weight_bytes


def _wide_chunk(geo, itemsize):
    """Samples per chunk in wide mode: columns (and the pad buffer) within the workspace."""
    per = max(geo.P * geo.K * geo.C, math.prod(geo.padded) * geo.C) * itemsize
    return max(1, min(geo.N, current().workspace_bytes // max(per, 1)))


def _tiles(geo, n, itemsize):
    """Tiles ``(s0, s1, rows)`` of a chunk of ``n`` samples, each column tile near
    ``Tuning.tile_bytes`` (whole samples when they are small, rows of one sample else)."""
    tile = current().tile_bytes
    per_sample = geo.P * geo.K * geo.C * itemsize
    if per_sample <= tile or geo.out[0] == 1:
        ns = max(1, tile // max(per_sample, 1))
        nw = n_workers()
        ns = max(1, min(ns, -(-n // nw)))  # at least one tile per worker
        return [(s0, min(s0 + ns, n), None) for s0 in range(0, n, ns)]
    per_row = per_sample // geo.out[0]
    rb = max(1, tile // max(per_row, 1))
    rb = -(-geo.out[0] // -(-geo.out[0] // rb))  # balance the row tiles
    return [(s, s + 1, (r0, min(r0 + rb, geo.out[0])))
            for s in range(n) for r0 in range(0, geo.out[0], rb)]


def _tile_rows(geo, rows):
    return geo.out[0] if rows is None else rows[1] - rows[0]


def _rows_block(xpad, geo, rows):
    if rows is None:
        return xpad
    r0, r1 = rows
    lo = r0 * geo.stride[0]
    hi = (r1 - 1) * geo.stride[0] + (geo.k[0] - 1) * geo.dilation[0] + 1
    return xpad[:, lo:hi]


def _merged(geo):
    """True when the last dim's ``kw`` taps of all ``C`` channels are one contiguous run."""
    return geo.G == 1 and geo.dilation[-1] == 1 and geo.k[-1] > 1


def _run_stride(xpad, geo):
    """Byte stride of the ``kw·C`` run of the last convolved dim and its channels, or
    ``None`` when they are not one evenly strided run in ``xpad``'s memory.

    Checked on the actual strides of the block, never assumed: a size-1 channel dim
    may carry any stride (NumPy's contiguity flags ignore it), so for ``C == 1`` the
    run's step is the last spatial stride, and for ``C > 1`` the spatial step must be
    exactly ``C`` channel steps.
    """
    sw, sc = xpad.strides[-2], xpad.strides[-1]
    if geo.C == 1:
        return sw
    if sw == geo.C * sc:
        return sc
    return None


def _gather(xpad, geo, rows, cols):
    """Fill ``cols`` ``(n, *out_tile, K·C)`` (group-major inside: ``G, K, Cg``) from a
    padded channels-last block (any strides)."""
    n = xpad.shape[0]
    osz = cols.shape[1:-1]
    step = _run_stride(xpad, geo) if _merged(geo) else None
    if step is not None:
        kw = geo.k[-1]
        run = kw * geo.C
        # the windows of the last dim must lie inside the block (out-of-bounds reads
        # through as_strided would be silent garbage or a crash)
        assert (osz[-1] - 1) * geo.stride[-1] + kw <= xpad.shape[-2], (osz, xpad.shape)
        c3 = cols.reshape(n, *osz, geo.K // kw, run)
        for ko, off in enumerate(itertools.product(*(range(k) for k in geo.k[:-1]))):
            sl = tuple(slice(o * dl, o * dl + (cnt - 1) * s + 1, s)
                       for o, s, dl, cnt in zip(off, geo.stride, geo.dilation, osz))
            v = xpad[(slice(None),) + sl]  # (n, *outer, Wp, C)
            src = as_strided(
                v, shape=v.shape[:-2] + (osz[-1], run),
                strides=v.strides[:-2] + (v.strides[-2] * geo.stride[-1], step),
                writeable=False,
            )
            np.copyto(c3[..., ko, :], src)
        return
    c5 = cols.reshape(n, *osz, geo.G, geo.K, geo.Cg)
    for kk, off in enumerate(geo.offsets()):
        src = xpad[(slice(None),) + geo.window(off, rows) + (slice(None),)]
        src = src.reshape(src.shape[:-1] + (geo.G, geo.Cg))
        np.copyto(c5[..., kk, :], src)


def _tile_columns(buf, xpad, geo, tile):
    """The columns ``(n, *out_tile, K·C)`` of one tile ``(s0, s1, rows)`` of a padded
    chunk, gathered into ``buf``; returns them and their row count ``m``."""
    s0, s1, rows = tile
    n = s1 - s0
    osz = (_tile_rows(geo, rows),) + geo.out[1:]
    m = n * math.prod(osz)
    cols = buf[: m * geo.K * geo.C].reshape(n, *osz, geo.K * geo.C)
    _gather(_rows_block(xpad[s0:s1], geo, rows), geo, rows, cols)
    return cols, m


def _needs_copy(x, geo):
    """Whether the input must go through the chunk buffer: padding, or a layout that
    is not one C-contiguous block (e.g. the batch-innermost canonical layout)."""
    return any(geo.pb) or any(geo.pa) or not x.flags.c_contiguous


def forward_gemm(x, w, geo, out, dtype, bias=None, wide=None):
    """``out = conv(x, w) (+ bias)``; the bias is added to each tile right after its
    GEMM, while the tile is in cache (no separate pass over the output). ``wide``:
    ``None`` chooses by the weights' size (``Tuning.wide_weight_bytes``)."""
    x = plain(x)
    wm = weight_matrix(w, geo, dtype)
    it = dtype.itemsize
    copy = _needs_copy(x, geo) or x.dtype != dtype
    if wide is None:
        wide = _wide(geo, it)
    if wide and geo.out[0] > 0:
        _forward_wide(x, wm, geo, out, dtype, copy, bias)
        return
    if copy:
        nb = chunk_size(math.prod(geo.padded) * geo.C * it)
        chunker = Chunked(x, geo, min(nb, geo.N), dtype, geo.pb, geo.pa, geo.value)
    else:
        nb = geo.N
    tile_elems = max((s1 - s0) * _tile_rows(geo, r) for s0, s1, r in _tiles(geo, nb, it))
    cols_len = tile_elems * (geo.P // geo.out[0]) * geo.K * geo.C
    nw = n_workers()
    bufs = [None] * nw

    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        xpad = chunker.block(n0, n1) if copy else x[n0:n1]

        def work(wid, tile, xpad=xpad, n0=n0):
            s0, s1, rows = tile
            if bufs[wid] is None:
                bufs[wid] = np.empty(cols_len, dtype=dtype)
            cols, m = _tile_columns(bufs[wid], xpad, geo, tile)
            o = out[n0 + s0:n0 + s1] if rows is None else out[n0 + s0, rows[0]:rows[1]]
            o2 = o.reshape(m, geo.G, geo.Fg)
            gemm(cols.reshape(m, geo.G, geo.K * geo.Cg), wm, o2)
            if bias is not None:
                o2 = o2.reshape(m, geo.F)
                np.add(o2, bias, out=o2)

        parallel(work, _tiles(geo, n1 - n0, it), dynamic=True)


def _gather_chunk(xpad, geo, cols, n):
    """Parallel gather of a whole chunk (``n`` samples) into ``cols`` ``(n, *out, K·C)``
    (about three tiles per worker, taken dynamically)."""
    nw = n_workers()
    if n >= 3 * nw:
        step = -(-n // (3 * nw))
        tiles = [(s0, min(s0 + step, n), None) for s0 in range(0, n, step)]
    else:
        step = -(-geo.out[0] // -(-3 * nw // n))
        tiles = [(s, s + 1, (r0, min(r0 + step, geo.out[0])))
                 for s in range(n) for r0 in range(0, geo.out[0], step)]

    def work(wid, tile):
        s0, s1, rows = tile
        c = cols[s0:s1] if rows is None else cols[s0:s1, rows[0]:rows[1]]
        _gather(_rows_block(xpad[s0:s1], geo, rows), geo, rows, c)

    parallel(work, tiles, dynamic=True)


def _wide_columns(x, geo, dtype, nb, copy):
    """The wide path's batch chunks: an iterator of ``(n0, n1, cols)``, ``cols`` the
    im2col columns ``(n, *out, K·C)`` of samples ``n0:n1`` (padded through the chunk
    buffer when ``copy``), gathered into one scratch buffer that each step reuses.
    The chunk and column buffers are taken here, before the first step."""
    chunker = Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy else None
    cbuf = scratch("cols", (nb * geo.P * geo.K * geo.C,), dtype)

    def chunks():
        for n0 in range(0, geo.N, nb):
            n1 = min(n0 + nb, geo.N)
            n = n1 - n0
            xpad = chunker.block(n0, n1) if copy else x[n0:n1]
            cols = cbuf[: n * geo.P * geo.K * geo.C].reshape(n, *geo.out, geo.K * geo.C)
            _gather_chunk(xpad, geo, cols, n)
            yield n0, n1, cols

    return chunks()


def _forward_wide(x, wm, geo, out, dtype, copy, bias=None):
    nb = _wide_chunk(geo, dtype.itemsize)
    for n0, n1, cols in _wide_columns(x, geo, dtype, nb, copy):
        m = (n1 - n0) * geo.P
        a = cols.reshape(m, geo.G, geo.K * geo.Cg)
        o = out[n0:n1].reshape(m, geo.G, geo.Fg)

        def part(w, r, a=a, o=o):
            gemm(a[r[0]:r[1]], wm, o[r[0]:r[1]])
            if bias is not None:
                ob = o[r[0]:r[1]].reshape(-1, geo.F)
                np.add(ob, bias, out=ob)

        parallel(part, row_blocks(m))


def _weight_grad_wide(gy, x, geo, dtype):
    nb = _wide_chunk(geo, dtype.itemsize)
    copy_x = _needs_copy(x, geo) or x.dtype != dtype
    chunks = _wide_columns(x, geo, dtype, nb, copy_x)
    gybuf = scratch("gy", (nb, *geo.out, geo.F), dtype)
    acc = np.empty((geo.G, geo.K * geo.Cg, geo.Fg), dtype=dtype)
    for n0, n1, cols in chunks:
        n = n1 - n0
        g = gybuf[:n]
        parallel_copy(g, gy[n0:n1])
        m = n * geo.P
        c3 = cols.reshape(m, geo.G, geo.K * geo.Cg).transpose(1, 2, 0)
        g3 = g.reshape(m, geo.G, geo.Fg).transpose(1, 0, 2)
        # split over the rows of the result (K·Cg): each worker owns its rows of the
        # accumulator, no per-worker partial sums of the whole weight gradient
        def part(w, r, c3=c3, g3=g3, first=n0 == 0):
            r0, r1 = r
            if first:
                np.matmul(c3[:, r0:r1], g3, out=acc[:, r0:r1])
            else:
                acc[:, r0:r1] += np.matmul(c3[:, r0:r1], g3)

        parallel(part, row_blocks(geo.K * geo.Cg))
    gw = acc.reshape(geo.G, *geo.k, geo.Cg, geo.Fg)
    return np.ascontiguousarray(np.moveaxis(gw, 0, -1))


def _weight_grad(gy, x, geo, dtype, wide=None):
    it = dtype.itemsize
    x = plain(x)
    if _wide(geo, it) if wide is None else wide:
        return _weight_grad_wide(gy, x, geo, dtype)
    per_sample = (math.prod(geo.padded) * geo.C + geo.P * geo.F) * it
    nb = min(chunk_size(per_sample), geo.N)
    copy_x = _needs_copy(x, geo) or x.dtype != dtype
    chunker = Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy_x else None
    gybuf = scratch("gy", (nb, *geo.out, geo.F), dtype)
    tile_elems = max((s1 - s0) * _tile_rows(geo, r) for s0, s1, r in _tiles(geo, nb, it))
    cols_len = tile_elems * (geo.P // geo.out[0]) * geo.K * geo.C
    nw = n_workers()
    bufs = [None] * nw
    acc = None
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        xpad = chunker.block(n0, n1) if copy_x else x[n0:n1]
        g = gybuf[: n1 - n0]
        parallel_copy(g, gy[n0:n1])

        def work(wid, tile, a, xpad=xpad, g=g):
            s0, s1, rows = tile
            if bufs[wid] is None:
                bufs[wid] = np.empty(cols_len, dtype=dtype)
            cols, m = _tile_columns(bufs[wid], xpad, geo, tile)
            gt = g[s0:s1] if rows is None else g[s0, rows[0]:rows[1]]
            c3 = cols.reshape(m, geo.G, geo.K * geo.Cg).transpose(1, 2, 0)  # (G, K·Cg, m)
            g3 = gt.reshape(m, geo.G, geo.Fg).transpose(1, 0, 2)  # (G, m, Fg)
            a += np.matmul(c3, g3)

        part = parallel_sum(work, _tiles(geo, n1 - n0, it),
                             (geo.G, geo.K * geo.Cg, geo.Fg), dtype)
        acc = part if acc is None else acc + part
    gw = acc.reshape(geo.G, *geo.k, geo.Cg, geo.Fg)
    return np.ascontiguousarray(np.moveaxis(gw, 0, -1))


def _input_grad_col2im(gy, w, geo, dtype):
    """Strided: ``dcols = gy · Wᵀ`` per tile, scatter-added into a per-worker padded
    sample buffer, then the padding's adjoint."""
    it = dtype.itemsize
    wmt = np.ascontiguousarray(weight_matrix(w, geo, dtype).transpose(0, 2, 1))  # (G, Fg, K·Cg)
    gx = np.empty((geo.N, *geo.sp, geo.C), dtype=dtype)
    # per-sample units; rows of one sample are tiles processed by the same worker
    per_sample_tiles = _tiles(geo, 1, it)
    tile_elems = max(_tile_rows(geo, r) for _, _, r in per_sample_tiles)
    cols_len = tile_elems * (geo.P // geo.out[0]) * geo.K * geo.C
    gy_len = tile_elems * (geo.P // geo.out[0]) * geo.F
    nw = n_workers()
    st = [None] * nw

    def work(wid, n):
        if st[wid] is None:
            st[wid] = (np.empty(cols_len, dtype=dtype), np.empty(gy_len, dtype=dtype),
                       np.empty((1, *geo.padded, geo.C), dtype=dtype))
        cbuf, gbuf, gpad = st[wid]
        gpad.fill(0)
        for _, _, rows in per_sample_tiles:
            osz = (_tile_rows(geo, rows),) + geo.out[1:]
            m = math.prod(osz)
            gt = gy[n:n + 1] if rows is None else gy[n:n + 1, rows[0]:rows[1]]
            g2 = gbuf[: m * geo.F].reshape(1, *osz, geo.F)
            np.copyto(g2, gt)
            cols = cbuf[: m * geo.K * geo.C].reshape(1, *osz, geo.G, geo.K, geo.Cg)
            gemm(g2.reshape(m, geo.G, geo.Fg), wmt, cols.reshape(m, geo.G, geo.K * geo.Cg))
            blk = _rows_block(gpad, geo, rows)
            for kk, off in enumerate(geo.offsets()):
                dst = blk[(slice(None),) + geo.window(off, rows) + (slice(None),)]
                dst = dst.reshape(dst.shape[:-1] + (geo.G, geo.Cg))
                dst += cols[..., kk, :]
        gx[n:n + 1] = unpad(gpad, geo)

    if gy.flags.c_contiguous:
        parallel(work, range(geo.N))
        return gx
    # any other layout (e.g. batch-innermost, where one sample is a sliver of every
    # cache line of gy): transpose chunks of samples to channels-last first, in blocks
    nb = max(1, min(geo.N, current().workspace_bytes // max(geo.P * geo.F * it, 1)))
    gbig = scratch("gy", (nb, *geo.out, geo.F), dtype)
    src = gy
    # ``work`` reads ``gy`` and ``gx`` from this scope when it runs: rebound per chunk
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        gy = gbig[: n1 - n0]
        parallel_copy(gy, src[n0:n1])
        gx_all, gx = gx, gx[n0:n1]
        parallel(work, range(n1 - n0))
        gx = gx_all
    return gx



# ---------------------------------------------------------------------------------------
# registry entries (channels-last kernels; see ``__init__``)


def applies_wide(spec, layout):
    wb = spec.K * spec.C * spec.Fg * itemsize(spec)
    limit = current().wide_weight_bytes
    if wb < limit:
        return f"weight matrix of {wb} bytes < Tuning.wide_weight_bytes = {limit}"
    return None


def applies_grad_as_conv(spec, layout):
    if any(s != 1 for s in spec.stride):
        return f"stride {spec.stride}: only a stride-1 input gradient is a plain convolution"
    return None


def forward_tiles(x, w, bias, geo, dtype):
    out = np.empty((geo.N, *geo.out, geo.F), dtype=dtype)
    forward_gemm(x, w, geo, out, dtype, bias, wide=False)
    return out


def forward_wide(x, w, bias, geo, dtype):
    out = np.empty((geo.N, *geo.out, geo.F), dtype=dtype)
    forward_gemm(x, w, geo, out, dtype, bias, wide=True)
    return out


def weight_grad_tiles(gy, x, w, geo, needs, dtype):
    return None, _weight_grad(gy, x, geo, dtype, wide=False)


def weight_grad_wide(gy, x, w, geo, needs, dtype):
    return None, _weight_grad(gy, x, geo, dtype, wide=True)


def input_grad_as_conv(gy, x, w, geo, needs, dtype):
    """Stride 1: the input gradient is a convolution of ``gy`` with the flipped,
    transposed kernel (gathers only, no scatter)."""
    g, wt, g2, padded = grad_input(gy, w, geo, dtype)
    gx = np.empty((geo.N, *g2.out, geo.C), dtype=dtype)
    forward_gemm(g, wt, g2, gx, dtype)
    return (unpad(gx, geo) if padded else gx), None


def input_grad_col2im(gy, x, w, geo, needs, dtype):
    return _input_grad_col2im(gy, w, geo, dtype), None
