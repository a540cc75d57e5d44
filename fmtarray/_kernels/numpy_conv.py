"""NumPy fast path of :mod:`fmtarray._kernels.conv` (selected by the backend seam).

Same algorithm as the portable path — gather windows into a column buffer, one
GEMM per tile — arranged for the CPU caches and cores:

* **Chunks.** The batch is processed in chunks whose padded copy stays within
  :data:`~fmtarray._kernels.conv.WORKSPACE_BYTES`. The copy into the chunk's pad
  buffer is also where a batch-innermost input (the canonical ``S…S C B`` layout,
  seen channels-last as a strided view) is transposed, in cache-sized blocks.
* **Tiles.** Each chunk is cut into column tiles of about :data:`TILE_BYTES`
  (whole samples, or rows of one sample), small enough that the gathered columns
  are still in cache when the GEMM reads them.
* **Cores.** The tiles are spread over one worker thread per core, each with its
  own column buffer, while BLAS is held at one thread: gathering (a memory copy)
  and GEMMs then run on every core, instead of a single-threaded gather followed
  by a multi-threaded GEMM. NumPy and BLAS release the GIL.
* **Gather.** When the last convolved dim is not dilated, its ``kw`` taps over all
  channels are one contiguous run of ``kw·C`` values: one strided copy per
  (outer) kernel offset instead of ``kw`` narrow ones.
* **Depthwise** (``C/groups == 1``): no GEMM, a multiply-accumulate over the ``K``
  offsets on cache-sized tiles, in parallel.
* **Backward.** Weight gradient: ``colsᵀ · gy`` per tile into per-worker
  accumulators. Input gradient: for stride 1 a forward convolution of ``gy`` with
  the flipped, transposed weights (same machinery, gathers only); for larger
  strides ``gy · Wᵀ`` per tile scatter-added into a per-worker padded sample
  buffer (col2im). Then the adjoint of the padding.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .pad import fill_border_numpy, pad_vjp

__all__ = ["forward", "backward", "TILE_BYTES"]

#: target size of one column tile (gathered, then consumed by the GEMM while in cache)
TILE_BYTES = 2 * 2**20
#: elements per block of a transposing copy
_COPY_BLOCK = 1 << 15

_lock = threading.Lock()
_state: dict = {}


def _workers():
    """``(pool, n, controller)``: one worker per core that BLAS would use."""
    if "pool" not in _state:
        with _lock:
            if "pool" not in _state:
                n = os.cpu_count() or 1
                ctl = None
                try:
                    from threadpoolctl import ThreadpoolController

                    ctl = ThreadpoolController()
                    blas = [i["num_threads"] for i in ctl.info() if i["user_api"] == "blas"]
                    if blas:
                        n = max(1, min(n, max(blas)))
                except Exception:  # pragma: no cover - threadpoolctl missing
                    # BLAS cannot be held at one thread: no worker threads on top of it
                    ctl, n = None, 1
                env = os.environ.get("FMTARRAY_NUM_THREADS")
                if env:
                    n = max(1, int(env))
                _state["n"] = n
                _state["ctl"] = ctl
                _state["pool"] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fmtarray")
    return _state["pool"], _state["n"], _state["ctl"]


@contextlib.contextmanager
def _single_threaded_blas():
    _, n, ctl = _workers()
    if n > 1 and ctl is not None:
        with ctl.limit(limits=1, user_api="blas"):
            yield
    else:
        yield


@contextlib.contextmanager
def _full_blas():
    """Inside :func:`_single_threaded_blas`: give BLAS all its threads back."""
    _, n, ctl = _workers()
    if n > 1 and ctl is not None:
        with ctl.limit(limits=n, user_api="blas"):
            yield
    else:
        yield


#: weight matrices at least this large (bytes) switch to "wide" mode: big column
#: chunks and one multi-threaded GEMM per chunk, so the weights are streamed once
#: per chunk rather than once per small tile
WIDE_WEIGHT_BYTES = 2 * 2**20


def _wide(geo, itemsize):
    return geo.K * geo.C * geo.Fg * itemsize >= WIDE_WEIGHT_BYTES


def _wide_chunk(geo, itemsize):
    """Samples per chunk in wide mode: columns (and the pad buffer) within the workspace."""
    from .conv import WORKSPACE_BYTES

    per = max(geo.P * geo.K * geo.C, math.prod(geo.padded) * geo.C) * itemsize
    return max(1, min(geo.N, WORKSPACE_BYTES // max(per, 1)))


def _parallel(fn, items):
    """Run ``fn(worker, item)`` over ``items``; worker ``i`` takes items ``i, i+n, …``."""
    pool, n, _ = _workers()
    items = list(items)
    if n == 1 or len(items) <= 1:
        for it in items:
            fn(0, it)
        return
    n = min(n, len(items))

    def run(w):
        for it in items[w::n]:
            fn(w, it)

    for f in [pool.submit(run, w) for w in range(n)]:
        f.result()


def _dtype(*arrs):
    return np.result_type(*[a.dtype for a in arrs if a is not None])


# ---------------------------------------------------------------------------------------
# copies


def _c_order(a) -> bool:
    """Strides non-increasing (a plain copy streams through memory)."""
    st = [abs(s) for s, n in zip(a.strides, a.shape) if n > 1]
    return all(s1 >= s2 for s1, s2 in zip(st, st[1:]))


def _copy_blocked(dst, src):
    """``dst[...] = src`` in blocks, so a transposing copy works in cache."""
    if src.size <= _COPY_BLOCK or _c_order(src):
        np.copyto(dst, src)
        return
    ax = next(i for i, n in enumerate(src.shape) if n > 1)
    step = max(1, (_COPY_BLOCK * src.shape[ax]) // src.size)
    for i in range(0, src.shape[ax], step):
        sl = (slice(None),) * ax + (slice(i, i + step),)
        _copy_blocked(dst[sl], src[sl])


def _parallel_copy(dst, src):
    """Copy split over the workers along the first dim of size > 1 (caller holds BLAS)."""
    _, n, _ = _workers()
    big = [i for i, s in enumerate(src.shape) if s > 1]
    if n == 1 or not big or src.size < 4 * _COPY_BLOCK:
        _copy_blocked(dst, src)
        return
    ax = big[0] if src.shape[big[0]] >= n or len(big) == 1 else big[1]
    step = -(-src.shape[ax] // n)
    parts = [(slice(None),) * ax + (slice(i, i + step),) for i in range(0, src.shape[ax], step)]
    _parallel(lambda w, sl: _copy_blocked(dst[sl], src[sl]), parts)


class _Chunked:
    """A reusable buffer receiving padded, channels-last chunks of a batch."""

    def __init__(self, x, geo, nb, dtype, pb, pa, value):
        self.x = x
        self.geo = geo
        self.pb, self.pa, self.value = pb, pa, value
        sp = x.shape[1:-1]
        self.sp = sp
        self.shape = tuple(n + b + a for n, b, a in zip(sp, pb, pa))
        self.buf = np.empty((nb, *self.shape, x.shape[-1]), dtype=dtype)
        self.constant = not isinstance(value, str)
        if self.constant and (any(pb) or any(pa)):
            fill_border_numpy(self.buf, (0,) + tuple(pb), (0,) + tuple(pa),
                              tuple(range(self.buf.ndim - 1)), value)

    def block(self, n0, n1):
        out = self.buf[: n1 - n0]
        centre = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(self.pb, self.sp))
        _parallel_copy(out[centre], self.x[n0:n1])
        if not self.constant:
            fill_border_numpy(out, self.pb, self.pa, tuple(range(1, out.ndim - 1)), self.value)
        return out


# ---------------------------------------------------------------------------------------
# geometry of chunks and tiles


def _chunk_size(geo, per_sample_bytes):
    from .conv import WORKSPACE_BYTES

    return max(1, WORKSPACE_BYTES // max(per_sample_bytes, 1))


def _tiles(geo, n, itemsize):
    """Tiles ``(s0, s1, rows)`` of a chunk of ``n`` samples, each column tile near
    :data:`TILE_BYTES` (whole samples when they are small, rows of one sample else)."""
    per_sample = geo.P * geo.K * geo.C * itemsize
    if per_sample <= TILE_BYTES or geo.out[0] == 1:
        ns = max(1, TILE_BYTES // max(per_sample, 1))
        _, nw, _ = _workers()
        ns = max(1, min(ns, -(-n // nw)))  # at least one tile per worker
        return [(s0, min(s0 + ns, n), None) for s0 in range(0, n, ns)]
    per_row = per_sample // geo.out[0]
    rb = max(1, TILE_BYTES // max(per_row, 1))
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


def _gather(xpad, geo, rows, cols):
    """Fill ``cols`` ``(n, *out_tile, K·C)`` (group-major inside: ``G, K, Cg``) from a
    padded channels-last block whose last two dims are contiguous."""
    n = xpad.shape[0]
    osz = cols.shape[1:-1]
    if _merged(geo):
        kw = geo.k[-1]
        run = kw * geo.C
        c3 = cols.reshape(n, *osz, geo.K // kw, run)
        for ko, off in enumerate(itertools.product(*(range(k) for k in geo.k[:-1]))):
            sl = tuple(slice(o * dl, o * dl + (cnt - 1) * s + 1, s)
                       for o, s, dl, cnt in zip(off, geo.stride, geo.dilation, osz))
            v = xpad[(slice(None),) + sl]  # (n, *outer, Wp, C)
            src = as_strided(
                v, shape=v.shape[:-2] + (osz[-1], run),
                strides=v.strides[:-2] + (v.strides[-2] * geo.stride[-1], v.strides[-1]),
                writeable=False,
            )
            np.copyto(c3[..., ko, :], src)
        return
    c5 = cols.reshape(n, *osz, geo.G, geo.K, geo.Cg)
    for kk, off in enumerate(geo.offsets()):
        src = xpad[(slice(None),) + geo.window(off, rows) + (slice(None),)]
        src = src.reshape(src.shape[:-1] + (geo.G, geo.Cg))
        np.copyto(c5[..., kk, :], src)


def _weight_matrix(w, geo, dtype):
    """``(G, K·Cg, Fg)`` from MATLAB layout ``(*k, Cg, Fg, G)``."""
    wm = np.moveaxis(np.asarray(w), geo.d + 2, 0).reshape(geo.G, geo.K * geo.Cg, geo.Fg)
    return np.ascontiguousarray(wm, dtype=dtype)


def _gemm(a, wm, out):
    """``out[:, g, :] = a[:, g, :] @ wm[g]`` for each group (BLAS on strided views)."""
    if wm.shape[0] == 1:
        np.matmul(a[:, 0, :], wm[0], out=out[:, 0, :])
    else:
        np.matmul(a.transpose(1, 0, 2), wm, out=out.transpose(1, 0, 2))


def _needs_copy(x, geo):
    """Whether the input must go through the chunk buffer: padding, or a layout that
    is not one C-contiguous block (e.g. the batch-innermost canonical layout)."""
    return any(geo.pb) or any(geo.pa) or not x.flags.c_contiguous


# ---------------------------------------------------------------------------------------
# forward


def forward(x, w, b, geo):
    x = np.asarray(x)
    w = np.asarray(w)
    dtype = _dtype(x, w)
    bias = None if b is None else np.asarray(b, dtype=dtype).reshape(geo.F)
    if geo.N > 0 and _batch_innermost(x, geo):
        with _single_threaded_blas():
            return _forward_bi(x, w, geo, dtype, bias)
    out = np.empty((geo.N, *geo.out, geo.F), dtype=dtype)
    if geo.N == 0:
        return out
    with _single_threaded_blas():
        if geo.Cg == 1 and geo.G > 1:
            _depthwise_forward(x, w, geo, out, dtype)
        else:
            _forward_gemm(x, w, geo, out, dtype)
        if bias is not None:
            _parallel_add(out, bias)
    return out


def _parallel_add(out, bias):
    o2 = out.reshape(-1, out.shape[-1])
    _, n, _ = _workers()
    step = -(-o2.shape[0] // n)
    _parallel(lambda w, i: np.add(o2[i:i + step], bias, out=o2[i:i + step]),
              range(0, o2.shape[0], step))


def _forward_gemm(x, w, geo, out, dtype):
    wm = _weight_matrix(w, geo, dtype)
    it = dtype.itemsize
    copy = _needs_copy(x, geo) or x.dtype != dtype
    if _wide(geo, it) and geo.out[0] > 0:
        _forward_wide(x, wm, geo, out, dtype, copy)
        return
    if copy:
        nb = _chunk_size(geo, math.prod(geo.padded) * geo.C * it)
        chunker = _Chunked(x, geo, min(nb, geo.N), dtype, geo.pb, geo.pa, geo.value)
    else:
        nb = geo.N
    tile_elems = max((s1 - s0) * _tile_rows(geo, r) for s0, s1, r in _tiles(geo, nb, it))
    cols_len = tile_elems * (geo.P // geo.out[0]) * geo.K * geo.C
    _, nw, _ = _workers()
    bufs = [None] * nw

    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        xpad = chunker.block(n0, n1) if copy else x[n0:n1]

        def work(wid, tile, xpad=xpad, n0=n0):
            s0, s1, rows = tile
            if bufs[wid] is None:
                bufs[wid] = np.empty(cols_len, dtype=dtype)
            n = s1 - s0
            osz = (_tile_rows(geo, rows),) + geo.out[1:]
            m = n * math.prod(osz)
            cols = bufs[wid][: m * geo.K * geo.C].reshape(n, *osz, geo.K * geo.C)
            _gather(_rows_block(xpad[s0:s1], geo, rows), geo, rows, cols)
            o = out[n0 + s0:n0 + s1] if rows is None else out[n0 + s0, rows[0]:rows[1]]
            _gemm(cols.reshape(m, geo.G, geo.K * geo.Cg), wm, o.reshape(m, geo.G, geo.Fg))

        _parallel(work, _tiles(geo, n1 - n0, it))


# ---------------------------------------------------------------------------------------
# batch-innermost path (the canonical S…S C B layout, few channels)

#: use the batch-innermost path when the channels-last gather would copy runs of
#: fewer values than this (``kw·C``): measured faster for 1 channel, slower for 3
BI_MAX_RUN = 8


def _batch_innermost(x, geo):
    """Batch-innermost input (canonical ``S…S C B`` data) with very few channels."""
    return (geo.N > 1 and x.strides[0] == x.itemsize and geo.G == 1
            and geo.C * geo.k[-1] <= BI_MAX_RUN)


def _bi_tiles(geo, itemsize):
    """Tiles over the first output dim (then the second) so that a column tile
    ``(K·C, rows·…·N)`` is near :data:`TILE_BYTES`."""
    per_row = (geo.P // geo.out[0]) * geo.N * geo.K * geo.C * itemsize
    rows = max(1, TILE_BYTES // max(per_row, 1))
    _, nw, _ = _workers()
    rows = min(rows, max(1, -(-geo.out[0] // nw)))
    return [(r0, min(r0 + rows, geo.out[0])) for r0 in range(0, geo.out[0], rows)]


def _forward_bi(x, w, geo, dtype, bias):
    """``out (F, *out, N) = Wᵀ (F, K·C) · cols (K·C, *out·N)``, tiled over output rows.

    Reads the batch-innermost input directly: a window row is a run of ``N`` (for
    ``C = 1`` and stride 1, ``w·N``) contiguous values, so no transposition is needed,
    and the result, returned as a ``(N, *out, F)`` view, is batch-innermost as well.
    """
    d = geo.d
    xb = np.moveaxis(x, 0, -1)  # (*sp, C, N), (near) contiguous
    wt = np.ascontiguousarray(np.asarray(w, dtype=dtype).reshape(geo.K * geo.C, geo.F).T)
    out = np.empty((geo.F, *geo.out, geo.N), dtype=dtype)
    out2 = out.reshape(geo.F, -1)
    row_len = (geo.P // geo.out[0]) * geo.N
    const = not isinstance(geo.value, str)
    src_rows = None if const else _pad_rows_index(geo)
    inner_axes = tuple(range(1, d))
    _, nw, _ = _workers()
    st = [None] * nw
    tiles = _bi_tiles(geo, dtype.itemsize)
    rmax = max(r1 - r0 for r0, r1 in tiles)
    nrows_max = (rmax - 1) * geo.stride[0] + (geo.k[0] - 1) * geo.dilation[0] + 1

    def work(wid, tile):
        r0, r1 = tile
        if st[wid] is None:
            blk = np.empty((nrows_max, *geo.padded[1:], geo.C, geo.N), dtype=dtype)
            if const:
                blk.fill(geo.value)
            st[wid] = (blk, np.empty(rmax * row_len * geo.K * geo.C, dtype=dtype))
        blk_full, cbuf = st[wid]
        lo = r0 * geo.stride[0]
        hi = (r1 - 1) * geo.stride[0] + (geo.k[0] - 1) * geo.dilation[0] + 1
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
        m = (r1 - r0) * row_len
        cols = cbuf[: m * geo.K * geo.C].reshape(geo.K, geo.C, r1 - r0, *geo.out[1:], geo.N)
        for kk, off in enumerate(geo.offsets()):
            v = blk[geo.window(off, (r0, r1))]  # (rows, *out[1:], C, N)
            np.copyto(cols[kk], np.moveaxis(v, -2, 0))
        dst = out2[:, r0 * row_len: r1 * row_len]
        np.matmul(wt, cols.reshape(geo.K * geo.C, m), out=dst)
        if bias is not None:
            dst += bias[:, None]

    _parallel(work, tiles)
    return np.transpose(out, (d + 1,) + tuple(range(1, d + 1)) + (0,))


def _pad_rows_index(geo):
    from .pad import pad_indices

    return pad_indices(geo.sp[0], geo.pb[0], geo.pa[0], geo.value)


def _gather_chunk(xpad, geo, cols, n):
    """Parallel gather of a whole chunk (``n`` samples) into ``cols`` ``(n, *out, K·C)``."""
    _, nw, _ = _workers()
    if n >= nw:
        step = -(-n // nw)
        tiles = [(s0, min(s0 + step, n), None) for s0 in range(0, n, step)]
    else:
        step = -(-geo.out[0] // nw)
        tiles = [(s, s + 1, (r0, min(r0 + step, geo.out[0])))
                 for s in range(n) for r0 in range(0, geo.out[0], step)]

    def work(wid, tile):
        s0, s1, rows = tile
        c = cols[s0:s1] if rows is None else cols[s0:s1, rows[0]:rows[1]]
        _gather(_rows_block(xpad[s0:s1], geo, rows), geo, rows, c)

    _parallel(work, tiles)


def _forward_wide(x, wm, geo, out, dtype, copy):
    it = dtype.itemsize
    nb = _wide_chunk(geo, it)
    chunker = _Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy else None
    cbuf = np.empty(nb * geo.P * geo.K * geo.C, dtype=dtype)
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        n = n1 - n0
        xpad = chunker.block(n0, n1) if copy else x[n0:n1]
        cols = cbuf[: n * geo.P * geo.K * geo.C].reshape(n, *geo.out, geo.K * geo.C)
        _gather_chunk(xpad, geo, cols, n)
        m = n * geo.P
        with _full_blas():
            _gemm(cols.reshape(m, geo.G, geo.K * geo.Cg), wm, out[n0:n1].reshape(m, geo.G, geo.Fg))


def _depthwise_tiles(geo, n):
    per_sample = geo.P * geo.F * 4
    nb = max(1, (256 * 1024) // max(per_sample, 1))
    _, nw, _ = _workers()
    nb = max(1, min(nb, -(-n // nw)))
    return [(n0, min(n0 + nb, n)) for n0 in range(0, n, nb)]


def _depthwise_weights(w, geo, dtype):
    # (*k, 1, Fg, G) -> (K, G, Fg)
    wk = np.moveaxis(np.asarray(w, dtype=dtype), geo.d + 2, geo.d + 1)
    return np.ascontiguousarray(wk.reshape(geo.K, geo.G, geo.Fg))


def _depthwise_forward(x, w, geo, out, dtype):
    """Channel-wise convolution: ``out[..., g, j] = Σ_k x_k[..., g] · w[k, 0, j, g]``."""
    wk = _depthwise_weights(w, geo, dtype)
    offs = list(geo.offsets())
    it = dtype.itemsize
    nb = _chunk_size(geo, math.prod(geo.padded) * geo.C * it)
    chunker = _Chunked(x, geo, min(nb, geo.N), dtype, geo.pb, geo.pa, geo.value)
    _, nw, _ = _workers()
    tmps = [None] * nw
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        xpad = chunker.block(n0, n1)

        def work(wid, tile, xpad=xpad, n0=n0):
            s0, s1 = tile
            o = out[n0 + s0:n0 + s1].reshape(s1 - s0, *geo.out, geo.G, geo.Fg)
            if tmps[wid] is None or tmps[wid].size < o.size:
                tmps[wid] = np.empty(o.size, dtype=dtype)
            tmp = tmps[wid][: o.size].reshape(o.shape)
            for kk, off in enumerate(offs):
                src = xpad[(slice(s0, s1),) + geo.window(off) + (slice(None),)][..., None]
                if kk == 0:
                    np.multiply(src, wk[kk], out=o)
                else:
                    np.multiply(src, wk[kk], out=tmp)
                    o += tmp

        _parallel(work, _depthwise_tiles(geo, n1 - n0))


# ---------------------------------------------------------------------------------------
# backward


def backward(gy, x, w, geo, needs):
    gy = np.asarray(gy)
    x = np.asarray(x)
    w = np.asarray(w)
    dtype = _dtype(gy, x, w)
    d = geo.d
    gx = gw = gb = None
    if needs[2]:
        gb = gy.sum(axis=tuple(range(d + 1)), dtype=dtype)
    if not (needs[0] or needs[1]):
        return gx, gw, gb
    if geo.N == 0:
        return (np.zeros(x.shape, dtype) if needs[0] else None,
                np.zeros(w.shape, dtype) if needs[1] else None, gb)
    with _single_threaded_blas():
        if geo.Cg == 1 and geo.G > 1:
            gx, gw = _depthwise_backward(gy, x, w, geo, needs, dtype)
            return gx, gw, gb
        if needs[1]:
            gw = _weight_grad(gy, x, geo, dtype)
        if needs[0]:
            if all(s == 1 for s in geo.stride):
                gx = _input_grad_stride1(gy, w, geo, dtype)
            else:
                gx = _input_grad_col2im(gy, w, geo, dtype)
    return gx, gw, gb


def _weight_grad_wide(gy, x, geo, dtype):
    it = dtype.itemsize
    nb = _wide_chunk(geo, it)
    copy_x = _needs_copy(x, geo) or x.dtype != dtype
    chunker = _Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy_x else None
    cbuf = np.empty(nb * geo.P * geo.K * geo.C, dtype=dtype)
    gybuf = np.empty((nb, *geo.out, geo.F), dtype=dtype)
    acc = np.zeros((geo.G, geo.K * geo.Cg, geo.Fg), dtype=dtype)
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        n = n1 - n0
        xpad = chunker.block(n0, n1) if copy_x else x[n0:n1]
        cols = cbuf[: n * geo.P * geo.K * geo.C].reshape(n, *geo.out, geo.K * geo.C)
        _gather_chunk(xpad, geo, cols, n)
        g = gybuf[:n]
        _parallel_copy(g, gy[n0:n1])
        m = n * geo.P
        c3 = cols.reshape(m, geo.G, geo.K * geo.Cg).transpose(1, 2, 0)
        g3 = g.reshape(m, geo.G, geo.Fg).transpose(1, 0, 2)
        with _full_blas():
            acc += np.matmul(c3, g3)
    gw = acc.reshape(geo.G, *geo.k, geo.Cg, geo.Fg)
    return np.ascontiguousarray(np.moveaxis(gw, 0, -1))


def _weight_grad(gy, x, geo, dtype):
    it = dtype.itemsize
    if _wide(geo, it):
        return _weight_grad_wide(gy, x, geo, dtype)
    per_sample = (math.prod(geo.padded) * geo.C + geo.P * geo.F) * it
    nb = min(_chunk_size(geo, per_sample), geo.N)
    copy_x = _needs_copy(x, geo) or x.dtype != dtype
    chunker = _Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy_x else None
    gybuf = np.empty((nb, *geo.out, geo.F), dtype=dtype)
    tile_elems = max((s1 - s0) * _tile_rows(geo, r) for s0, s1, r in _tiles(geo, nb, it))
    cols_len = tile_elems * (geo.P // geo.out[0]) * geo.K * geo.C
    _, nw, _ = _workers()
    bufs = [None] * nw
    accs = [None] * nw
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        xpad = chunker.block(n0, n1) if copy_x else x[n0:n1]
        g = gybuf[: n1 - n0]
        _parallel_copy(g, gy[n0:n1])

        def work(wid, tile, xpad=xpad, g=g):
            s0, s1, rows = tile
            if bufs[wid] is None:
                bufs[wid] = np.empty(cols_len, dtype=dtype)
                accs[wid] = np.zeros((geo.G, geo.K * geo.Cg, geo.Fg), dtype=dtype)
            n = s1 - s0
            osz = (_tile_rows(geo, rows),) + geo.out[1:]
            m = n * math.prod(osz)
            cols = bufs[wid][: m * geo.K * geo.C].reshape(n, *osz, geo.K * geo.C)
            _gather(_rows_block(xpad[s0:s1], geo, rows), geo, rows, cols)
            gt = g[s0:s1] if rows is None else g[s0, rows[0]:rows[1]]
            c3 = cols.reshape(m, geo.G, geo.K * geo.Cg).transpose(1, 2, 0)  # (G, K·Cg, m)
            g3 = gt.reshape(m, geo.G, geo.Fg).transpose(1, 0, 2)  # (G, m, Fg)
            accs[wid] += np.matmul(c3, g3)

        _parallel(work, _tiles(geo, n1 - n0, it))
    acc = None
    for a in accs:
        if a is not None:
            acc = a if acc is None else acc + a
    gw = acc.reshape(geo.G, *geo.k, geo.Cg, geo.Fg)
    return np.ascontiguousarray(np.moveaxis(gw, 0, -1))


def _transposed_weights(w, geo, dtype):
    d = geo.d
    wf = np.flip(np.asarray(w, dtype=dtype), axis=tuple(range(d)))
    return np.ascontiguousarray(wf.transpose(tuple(range(d)) + (d + 1, d, d + 2)))


def _input_grad_stride1(gy, w, geo, dtype):
    """Stride 1: the input gradient is a convolution of ``gy`` with the flipped,
    transposed kernel (gathers only, no scatter)."""
    from .conv import _Geometry

    wt = _transposed_weights(w, geo, dtype)
    reach = tuple((k - 1) * dl for k, dl in zip(geo.k, geo.dilation))
    if not isinstance(geo.value, str):
        # gx directly: pads (K-1)d - pb before, (K-1)d - pa after; negative pads crop gy
        before = tuple(r - p for r, p in zip(reach, geo.pb))
        after = tuple(r - p for r, p in zip(reach, geo.pa))
        crop = (slice(None),) + tuple(
            slice(max(-b, 0), n - max(-a, 0)) for b, a, n in zip(before, after, geo.out)
        )
        g = gy[crop]
        before = tuple(max(b, 0) for b in before)
        after = tuple(max(a, 0) for a in after)
        g2 = _Geometry(g.shape, wt.shape, 1, geo.dilation, before, after, 0.0, geo.G)
        gx = np.empty((geo.N, *g2.out, geo.C), dtype=dtype)
        _forward_gemm(g, wt, g2, gx, dtype)
        return gx
    g2 = _Geometry(gy.shape, wt.shape, 1, geo.dilation, reach, reach, 0.0, geo.G)
    gxpad = np.empty((geo.N, *g2.out, geo.C), dtype=dtype)
    _forward_gemm(gy, wt, g2, gxpad, dtype)
    return _unpad(gxpad, geo)


def _unpad(gpad, geo):
    return pad_vjp(np, gpad, geo.pb, geo.pa, tuple(range(1, geo.d + 1)), geo.value)


def _input_grad_col2im(gy, w, geo, dtype):
    """Strided: ``dcols = gy · Wᵀ`` per tile, scatter-added into a per-worker padded
    sample buffer, then the padding's adjoint."""
    it = dtype.itemsize
    wmt = np.ascontiguousarray(_weight_matrix(w, geo, dtype).transpose(0, 2, 1))  # (G, Fg, K·Cg)
    gx = np.empty((geo.N, *geo.sp, geo.C), dtype=dtype)
    # per-sample units; rows of one sample are tiles processed by the same worker
    per_sample_tiles = _tiles(geo, 1, it)
    tile_elems = max(_tile_rows(geo, r) for _, _, r in per_sample_tiles)
    cols_len = tile_elems * (geo.P // geo.out[0]) * geo.K * geo.C
    gy_len = tile_elems * (geo.P // geo.out[0]) * geo.F
    _, nw, _ = _workers()
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
            _gemm(g2.reshape(m, geo.G, geo.Fg), wmt, cols.reshape(m, geo.G, geo.K * geo.Cg))
            blk = _rows_block(gpad, geo, rows)
            for kk, off in enumerate(geo.offsets()):
                dst = blk[(slice(None),) + geo.window(off, rows) + (slice(None),)]
                dst = dst.reshape(dst.shape[:-1] + (geo.G, geo.Cg))
                dst += cols[..., kk, :]
        gx[n:n + 1] = _unpad(gpad, geo)

    _parallel(work, range(geo.N))
    return gx


def _depthwise_backward(gy, x, w, geo, needs, dtype):
    wk = _depthwise_weights(w, geo, dtype)
    offs = list(geo.offsets())
    tiles = _depthwise_tiles(geo, geo.N)
    gx = np.empty((geo.N, *geo.sp, geo.C), dtype=dtype) if needs[0] else None
    partial = np.zeros((len(tiles), geo.K, geo.G, geo.Fg), dtype=dtype) if needs[1] else None
    letters = "abcdefgh"[: geo.d + 1]
    sub = f"{letters}z,{letters}z->z"
    axes = tuple(range(1, geo.d + 1))

    def work(wid, item):
        i, (n0, n1) = item
        g = np.ascontiguousarray(gy[n0:n1], dtype=dtype).reshape(n1 - n0, *geo.out, geo.G, geo.Fg)
        if needs[1]:
            xpad = np.empty((n1 - n0, *geo.padded, geo.C), dtype=dtype)
            centre = (slice(None),) + tuple(slice(b, b + n) for b, n in zip(geo.pb, geo.sp))
            xpad[centre] = x[n0:n1]
            fill_border_numpy(xpad, geo.pb, geo.pa, axes, geo.value)
            red = tuple(range(geo.d + 1))
            for kk, off in enumerate(offs):
                src = xpad[(slice(None),) + geo.window(off) + (slice(None),)]
                if geo.Fg == 1:
                    partial[i, kk, :, 0] = np.einsum(sub, src, g[..., 0])
                else:
                    partial[i, kk] = (src[..., None] * g).sum(axis=red)
        if needs[0]:
            gpad = np.zeros((n1 - n0, *geo.padded, geo.C), dtype=dtype)
            for kk, off in enumerate(offs):
                dst = gpad[(slice(None),) + geo.window(off) + (slice(None),)]
                if geo.Fg == 1:
                    dst += g[..., 0] * wk[kk, :, 0]
                else:
                    dst += (g * wk[kk]).sum(axis=-1)
            gx[n0:n1] = _unpad(gpad, geo)

    _parallel(work, list(enumerate(tiles)))
    gw = None
    if needs[1]:
        gk = partial.sum(axis=0)  # (K, G, Fg)
        gw = gk.reshape(*geo.k, geo.G, geo.Fg)
        gw = np.ascontiguousarray(np.moveaxis(gw, -2, -1)[..., None, :, :])  # (*k, 1, Fg, G)
    return gx, gw
