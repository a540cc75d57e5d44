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
* **Depthwise** (``C/groups == 1``): no GEMM; on batch-innermost data a fused
  multiply-accumulate (``einsum`` over ``sliding_window_view`` windows) per block of
  rows, zero padding never materialised; otherwise a multiply-accumulate over the
  ``K`` offsets on cache-sized channels-last tiles.
* **Layout-specific paths**, each taken only after checking the strides it relies on
  (a size-1 dim may carry any stride; ``as_strided`` is never built from assumed
  strides): batch-innermost (the canonical ``S…S C B`` layout, few channels: no
  transposition, ``Wᵀ · cols``), last-dim-innermost (e.g. canonical ``SCBT`` convolved
  over S and T: columns are flat shifts of contiguous ``(B, T)`` runs; in 2-D with
  stride 1 over rows, the column buffer is a ring of ``kh`` row blocks — one new input
  row per output row — and the weights' row taps are permuted to the ring's phase).
* **Backward.** Weight gradient: ``colsᵀ · gy`` per tile into per-worker
  accumulators. Input gradient: for stride 1 a forward convolution of ``gy`` with
  the flipped, transposed weights (same machinery, gathers only); for fewer input
  than output channels on batch-innermost data ``Wᵀ · gy`` scattered per tap into
  per-worker padded inputs; else ``gy · Wᵀ`` per tile scatter-added into a
  per-worker padded sample buffer (col2im). Then the adjoint of the padding. The
  flipped, transposed weights are copied as ``(Fg, K·Cg)`` (long runs) and handed to
  BLAS as a transposed operand; the big-weights weight gradient is split over the
  workers by rows of the result (no per-worker copies of it to sum).
* **Bias** is added to each output tile right after its GEMM, while it is in cache.
* **Scratch** buffers of 8 MiB and more (chunk copies, chunk columns, transposed
  cotangents) are kept per thread and role for the next call — at most
  ``2 · WORKSPACE_BYTES`` — since faulting in fresh pages costs about 0.1 ms per MiB;
  :func:`release_scratch` drops them.
"""

from __future__ import annotations

from ..spec import ConvSpec
from ..tuning import current

import contextlib
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import winograd
from ...pad import fill_border_numpy, pad_vjp

__all__ = ["forward", "backward", "TILE_BYTES", "release_scratch"]

#: target size of one column tile (gathered, then consumed by the GEMM while in cache)
TILE_BYTES = 2 * 2**20
#: elements per block of a transposing copy
_COPY_BLOCK = 1 << 17

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


#: weight matrices at least this large (bytes) switch to "wide" mode: big column
#: chunks and one GEMM per chunk (split over the workers by rows), so the weights are streamed once
#: per chunk rather than once per small tile
WIDE_WEIGHT_BYTES = 2 * 2**20


def _row_blocks(m):
    """One block of GEMM rows per worker. The big GEMMs of wide mode are split over
    our workers (BLAS held at one thread) rather than handed to BLAS's own threads,
    which spin for a long while after each call and slow whatever runs next."""
    _, nw, _ = _workers()
    step = -(-m // nw)
    return [(r0, min(r0 + step, m)) for r0 in range(0, m, step)]


def _wide(geo, itemsize):
    return geo.K * geo.C * geo.Fg * itemsize >= WIDE_WEIGHT_BYTES


def _wide_chunk(geo, itemsize):
    """Samples per chunk in wide mode: columns (and the pad buffer) within the workspace."""
    WORKSPACE_BYTES = current().workspace_bytes

    per = max(geo.P * geo.K * geo.C, math.prod(geo.padded) * geo.C) * itemsize
    return max(1, min(geo.N, WORKSPACE_BYTES // max(per, 1)))


def _parallel(fn, items, dynamic=False):
    """Run ``fn(worker, item)`` over ``items``; worker ``i`` takes items ``i, i+n, …``
    (a fixed assignment: sums per worker are reproducible). Worker 0 is the calling
    thread, which starts at once: a pool thread that has been idle takes a while to
    wake up (hundreds of µs on a virtual machine), and each conv runs a few of these
    parallel phases.

    ``dynamic=True`` (for items whose results do not depend on which worker ran them:
    disjoint outputs, no per-worker sums): each worker takes the next item as it
    becomes free, so a core slowed by something else (another library's threads still
    spinning after its call, another process) gets fewer items instead of holding up
    the whole phase."""
    pool, n, _ = _workers()
    items = list(items)
    if n == 1 or len(items) <= 1 or getattr(_tls, "serial", False):
        for it in items:
            fn(0, it)
        return
    n = min(n, len(items))

    if dynamic:
        nxt = iter(items)
        lock = threading.Lock()

        def run(w):
            while True:
                with lock:
                    it = next(nxt, _END)
                if it is _END:
                    return
                fn(w, it)
    else:

        def run(w):
            for it in items[w::n]:
                fn(w, it)

    futures = [pool.submit(run, w) for w in range(1, n)]
    try:
        run(0)
    finally:
        for f in futures:
            f.result()


_END = object()

#: convolutions with fewer multiply-adds than this run on the calling thread alone:
#: waking a pool thread (tens of µs per parallel phase, hundreds on a busy VM) costs
#: more than it saves
SERIAL_MACS = 1 << 22


@contextlib.contextmanager
def _serial_if_small(geo):
    """Within the block, :func:`_parallel` runs on the calling thread when the
    convolution is small (``N·P·K·C/groups·F`` below :data:`SERIAL_MACS`)."""
    if geo.N * geo.P * geo.K * geo.Cg * geo.F >= SERIAL_MACS or getattr(_tls, "serial", False):
        yield
        return
    _tls.serial = True
    try:
        yield
    finally:
        _tls.serial = False

#: per-item partial sums up to this size (all items together) let a summing phase hand
#: out its items dynamically and still add them up in item order
ORDERED_SUM_BYTES = 16 * 2**20


def _parallel_sum(fn, items, shape, dtype):
    """``Σ`` over ``items`` of what ``fn(worker, item, acc)`` accumulates into ``acc``
    (zeros of ``shape``), reproducibly whatever the timing: with per-item partials
    (within :data:`ORDERED_SUM_BYTES`) the items are handed out dynamically and the
    partials added in item order; else each worker sums its fixed share of the items
    and the workers' sums are added in worker order."""
    items = list(items)
    if not items:
        return np.zeros(shape, dtype=dtype)
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if len(items) > 1 and len(items) * size <= ORDERED_SUM_BYTES:
        parts = np.zeros((len(items), *shape), dtype=dtype)
        _parallel(lambda w, iv: fn(w, iv[1], parts[iv[0]]), list(enumerate(items)),
                  dynamic=True)
        return parts.sum(axis=0)
    _, nw, _ = _workers()
    accs = [None] * nw

    def run(w, it):
        if accs[w] is None:
            accs[w] = np.zeros(shape, dtype=dtype)
        fn(w, it, accs[w])

    _parallel(run, items)
    total = None
    for a in accs:
        if a is not None:
            total = a if total is None else total + a
    return total

#: scratch buffers at least this large are kept (per thread and role) for the next call:
#: faulting in fresh pages costs about 0.1 ms per MiB, a few % of a large convolution
SCRATCH_KEEP_BYTES = 8 * 2**20

_tls = threading.local()


def _scratch(role, shape, dtype, keep=False):
    """Uninitialised scratch array for one role (``"chunk"``, ``"cols"``, ``"gy"``, ``"li"``).

    Large ones come from a per-thread cache, reused by the next call with the same
    role (a role is never in use twice at once within a thread; other threads have
    their own cache). The cache holds at most ``2 · WORKSPACE_BYTES``: a buffer that
    would exceed it evicts the others (still valid where in use). Never used for
    anything returned to the caller. :func:`release_scratch` empties it.
    """
    WORKSPACE_BYTES = current().workspace_bytes

    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < SCRATCH_KEEP_BYTES and not keep:
        return np.empty(shape, dtype=dtype)
    cache = getattr(_tls, "bufs", None)
    if cache is None:
        cache = _tls.bufs = {}
    buf = cache.pop(role, None)
    if buf is None or buf.nbytes < nbytes:
        buf = None  # free the smaller one first
        if nbytes + sum(b.nbytes for b in cache.values()) > 2 * WORKSPACE_BYTES:
            cache.clear()
        buf = np.empty(nbytes, dtype=np.uint8)
    if nbytes + sum(b.nbytes for b in cache.values()) <= 2 * WORKSPACE_BYTES:
        cache[role] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def release_scratch():
    """Drop the calling thread's cached scratch buffers."""
    getattr(_tls, "bufs", {}).clear()


def _dtype(*arrs):
    return np.result_type(*[a.dtype for a in arrs if a is not None])


# ---------------------------------------------------------------------------------------
# copies


def _c_order(a) -> bool:
    """Strides non-increasing (a plain copy streams through memory)."""
    st = [abs(s) for s, n in zip(a.strides, a.shape) if n > 1]
    return all(s1 >= s2 for s1, s2 in zip(st, st[1:]))


def _outer_axis(src):
    """The dim of size > 1 with the largest source stride: blocks cut along it are
    compact in the source (cutting along a dim that is contiguous in memory would
    make every block read a sliver of every cache line)."""
    big = [i for i, n in enumerate(src.shape) if n > 1]
    return max(big, key=lambda i: abs(src.strides[i])) if big else None


def _copy_blocked(dst, src):
    """``dst[...] = src`` in blocks, so a transposing copy works in cache."""
    if src.size <= _COPY_BLOCK or _c_order(src):
        np.copyto(dst, src)
        return
    ax = _outer_axis(src)
    step = max(1, (_COPY_BLOCK * src.shape[ax]) // src.size)
    for i in range(0, src.shape[ax], step):
        sl = (slice(None),) * ax + (slice(i, i + step),)
        _copy_blocked(dst[sl], src[sl])


def _parallel_copy(dst, src):
    """Copy split over the workers along the source's outermost dim (caller holds BLAS)."""
    _, n, _ = _workers()
    ax = _outer_axis(src)
    if n == 1 or ax is None or src.size < 4 * _COPY_BLOCK:
        _copy_blocked(dst, src)
        return
    if src.shape[ax] < n:
        _copy_blocked(dst, src)
        return
    # about three parts per worker, taken dynamically
    step = -(-src.shape[ax] // min(3 * n, src.shape[ax]))
    parts = [(slice(None),) * ax + (slice(i, i + step),) for i in range(0, src.shape[ax], step)]
    _parallel(lambda w, sl: _copy_blocked(dst[sl], src[sl]), parts, dynamic=True)


class _Chunked:
    """A reusable buffer receiving padded, channels-last chunks of a batch."""

    def __init__(self, x, geo, nb, dtype, pb, pa, value):
        self.x = x
        self.geo = geo
        self.pb, self.pa, self.value = pb, pa, value
        sp = x.shape[1:-1]
        self.sp = sp
        self.shape = tuple(n + b + a for n, b, a in zip(sp, pb, pa))
        self.buf = _scratch("chunk", (nb, *self.shape, x.shape[-1]), dtype)
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
    WORKSPACE_BYTES = current().workspace_bytes

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


def _weight_matrix(w, geo, dtype):
    """``(G, K·Cg, Fg)`` from MATLAB layout ``(*k, Cg, Fg, G)``.

    When ``Cg`` is the contiguous dim of ``w`` (the flipped, transposed weights of the
    input gradient, a view), the copy is made as ``(G, Fg, K·Cg)`` — long contiguous
    runs instead of an element-wise transpose, several ms for 512×512 taps — and the
    transposed view is returned: BLAS reads it as a transposed operand."""
    w = np.asarray(w)
    wm = np.moveaxis(w, geo.d + 2, 0)  # (G, *k, Cg, Fg)
    it = w.itemsize
    if (w.dtype == dtype and geo.Cg > 1 and geo.Fg > 1 and wm.strides[-2] == it
            and wm.strides[-1] != it):
        t = np.ascontiguousarray(np.moveaxis(wm, -1, 1))  # (G, Fg, *k, Cg)
        return t.reshape(geo.G, geo.Fg, geo.K * geo.Cg).transpose(0, 2, 1)
    wm = wm.reshape(geo.G, geo.K * geo.Cg, geo.Fg)
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


def _plain(a):
    """``a`` itself, or — when it is C-contiguous — a view with the canonical strides.

    NumPy calls an array C-contiguous whatever the strides of its size-1 dims (e.g. a
    channels-last view of batch-outermost data with ``C == 1`` carries the batch
    stride on its ``C`` dim); code that reads strides must not see those.
    """
    a = np.asarray(a)
    if a.flags.c_contiguous and a.size:
        return a.reshape(-1).reshape(a.shape)
    return a


# ---------------------------------------------------------------------------------------
# forward


def forward(x, w, b, geo):
    with _serial_if_small(geo):
        return _forward(x, w, b, geo)


def _forward(x, w, b, geo):
    x = _plain(x)
    w = np.asarray(w)
    dtype = _dtype(x, w)
    bias = None if b is None else np.asarray(b, dtype=dtype).reshape(geo.F)
    if geo.N > 0 and winograd.applicable(x, geo, dtype) and winograd.finite(x, w):
        with _single_threaded_blas():
            return winograd.forward(x, w, bias, geo, dtype)
    if geo.N > 0 and _batch_innermost(x, geo):
        with _single_threaded_blas():
            return _forward_bi(x, w, geo, dtype, bias)
    if geo.N > 0 and _last_innermost(x, geo, dtype):
        with _single_threaded_blas():
            return _forward_li(x, w, geo, dtype, bias)
    out = np.empty((geo.N, *geo.out, geo.F), dtype=dtype)
    if geo.N == 0:
        return out
    if geo.Cg == 1 and geo.G > 1 and geo.Fg == 1 and _depthwise_bi_ok(x, geo, dtype):
        return _depthwise_forward_bi(x, w, geo, dtype, bias)
    with _single_threaded_blas():
        if geo.Cg == 1 and geo.G > 1:
            _depthwise_forward(x, w, geo, out, dtype)
            if bias is not None:
                _parallel_add(out, bias)
        else:
            _forward_gemm(x, w, geo, out, dtype, bias)
    return out


def _parallel_add(out, bias):
    o2 = out.reshape(-1, out.shape[-1])
    _, n, _ = _workers()
    step = -(-o2.shape[0] // n)
    _parallel(lambda w, i: np.add(o2[i:i + step], bias, out=o2[i:i + step]),
              range(0, o2.shape[0], step))


def _forward_gemm(x, w, geo, out, dtype, bias=None):
    """``out = conv(x, w) (+ bias)``; the bias is added to each tile right after its
    GEMM, while the tile is in cache (no separate pass over the output)."""
    x = _plain(x)
    wm = _weight_matrix(w, geo, dtype)
    it = dtype.itemsize
    copy = _needs_copy(x, geo) or x.dtype != dtype
    if _wide(geo, it) and geo.out[0] > 0:
        _forward_wide(x, wm, geo, out, dtype, copy, bias)
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
            cols, m = _tile_columns(bufs[wid], xpad, geo, tile)
            o = out[n0 + s0:n0 + s1] if rows is None else out[n0 + s0, rows[0]:rows[1]]
            o2 = o.reshape(m, geo.G, geo.Fg)
            _gemm(cols.reshape(m, geo.G, geo.K * geo.Cg), wm, o2)
            if bias is not None:
                o2 = o2.reshape(m, geo.F)
                np.add(o2, bias, out=o2)

        _parallel(work, _tiles(geo, n1 - n0, it), dynamic=True)



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
    _, nw, _ = _workers()
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

    _parallel(work, tiles, dynamic=True)
    return np.moveaxis(out, d, 0)


# ---------------------------------------------------------------------------------------
# last-dim-innermost path (e.g. the canonical S C B T layout convolved over S and T)


#: minimum flat row length ``N·Wp`` for the last-dim-innermost path
LI_MIN_RUN = 256


def _last_innermost(x, geo, dtype):
    """The last convolved dim is the innermost in memory (checked on the strides),
    stride 1 along it, one group, few channels, and the padded input fits the
    workspace: rows ``(N, W)`` are then long contiguous runs and the windows of the
    last dim are flat shifts of them."""
    WORKSPACE_BYTES = current().workspace_bytes

    return (x.strides[-2] == x.itemsize and x.shape[-2] > 1 and x.dtype == dtype
            and geo.G == 1 and geo.stride[-1] == 1 and geo.C <= 64
            and geo.N * geo.padded[-1] >= LI_MIN_RUN
            and math.prod(geo.padded) * geo.C * geo.N * dtype.itemsize <= WORKSPACE_BYTES)


class _LastInnermost:
    """Flat-shift columns for inputs whose last convolved dim is innermost in memory.

    Column row ``(k, c)`` for outer output position ``o`` is a flat shift of the
    ``(N, W)`` run of channel ``c``: ``x[o·s + k_outer·dl, c].ravel()[k_w·dl - pb:][:N·W]``,
    one strided copy per kernel offset, no transposition; the values a shift carries
    across a sample boundary (or out of the input) are reset to the padding value.
    With constant padding and ``Wo <= W`` the input is read in place; otherwise it is
    first padded into a copy laid out ``(*outer, C, N, Wp)``. Columns are computed for
    all ``N·W`` flat positions; output ``j`` of sample ``n`` is position ``n·W + j``.
    """

    def __init__(self, x, geo, dtype):
        d, N, C = geo.d, geo.N, geo.C
        self.geo = geo
        xv = x.transpose(tuple(range(1, d)) + (d + 1, 0, d))  # (*outer, C, N, W)
        const = not isinstance(geo.value, str)
        direct = (const and geo.out[-1] <= geo.sp[-1]
                  and (N == 1 or xv.strides[-2] == geo.sp[-1] * x.itemsize))
        if direct:
            src, self.pb, self.sp, self.value = xv, geo.pb, geo.sp, geo.value
        else:
            src = _scratch("li", (*geo.padded[:-1], C, N, geo.padded[-1]), dtype)
            centre = (tuple(slice(b, b + n) for b, n in zip(geo.pb[:-1], geo.sp[:-1]))
                      + (slice(None), slice(None), slice(geo.pb[-1], geo.pb[-1] + geo.sp[-1])))
            _parallel_copy(src[centre], xv)
            if any(geo.pb) or any(geo.pa):
                fill_border_numpy(src, geo.pb, geo.pa, tuple(range(d - 1)) + (d + 1,),
                                  geo.value)
            self.pb, self.sp, self.value = (0,) * d, geo.padded, 0.0
        self.wrow = self.sp[-1]
        self.L = N * self.wrow
        self.flat = src.reshape(*self.sp[:-1], C, self.L)  # a view (strides checked)
        self.outer_out = list(itertools.product(*(range(o) for o in geo.out[:-1])))
        self.outer_offs = list(itertools.product(*(range(k) for k in geo.k[:-1])))

    def fill(self, cols, o):
        geo, C, kw = self.geo, self.geo.C, self.geo.k[-1]
        for t, off in enumerate(self.outer_offs):
            idx = tuple(oi * s + k * dd - b for oi, s, k, dd, b in
                        zip(o, geo.stride, off, geo.dilation, self.pb))
            self.fill_row(cols[t * kw * C:(t + 1) * kw * C], idx)

    def fill_row(self, cb_all, idx):
        """The ``kw·C`` column rows ``(kw, C, N·W)`` read from input row ``idx`` (outer
        coordinates of the source, possibly outside it: padding value)."""
        geo, C, kw, dl = self.geo, self.geo.C, self.geo.k[-1], self.geo.dilation[-1]
        L, wrow, pb, value = self.L, self.wrow, self.pb, self.value
        if any(i < 0 or i >= n for i, n in zip(idx, self.sp[:-1])):
            cb_all.fill(value)
            return
        row = self.flat[idx]  # (C, N·W)
        for j in range(kw):
            delta = j * dl - pb[-1]
            cb = cb_all[j * C:(j + 1) * C]
            q0, q1 = max(0, -delta), min(L, L - delta)
            if q0 < q1:
                np.copyto(cb[:, q0:q1], row[:, q0 + delta:q1 + delta])
            if delta:
                bad = (slice(max(wrow - delta, 0), wrow) if delta > 0
                       else slice(0, min(-delta, wrow)))
                cb.reshape(C, geo.N, wrow)[:, :, bad] = value


def _forward_li(x, w, geo, dtype, bias):
    """``out[o] (F, N·W) = Wᵀ (F, K·C) · cols (K·C, N·W)`` per outer output position
    ``o`` (columns of :class:`_LastInnermost`); the GEMM writes the output rows in
    place when ``Wo == W`` (e.g. ``"same"``). The result, ``(*outer, F, N, Wo)``, is
    returned as a ``(N, *out, F)`` view. The bias is a row of ones below the columns
    times a bias column of the weights (no pass over the output)."""
    d, N, F = geo.d, geo.N, geo.F
    li = _LastInnermost(x, geo, dtype)
    wo, L = geo.out[-1], li.L
    KC = geo.K * geo.C
    nb = 0 if bias is None else 1
    wt = np.empty((F, KC + nb), dtype=dtype)  # (F, K·C [+ bias])
    wt[:, :KC] = _weight_matrix(w, geo, dtype)[0].T
    if nb:
        wt[:, KC] = bias
    out = np.empty((*geo.out[:-1], F, N, wo), dtype=dtype)
    _, nw, _ = _workers()
    st = [None] * nw
    in_place = wo == li.wrow
    out_flat = out.reshape(*geo.out[:-1], F, N * wo)  # a view: out is C-contiguous

    def gemm(wid, o, wmat, cols):
        res = st[wid][1]
        dst = out[o]  # (F, N, Wo)
        if in_place:
            np.matmul(wmat, cols, out=out_flat[o])
        else:
            np.matmul(wmat, cols, out=res)
            np.copyto(dst, res.reshape(F, N, li.wrow)[:, :, :wo])

    def state(wid):
        if st[wid] is None:
            cb = np.empty((KC + nb, L), dtype=dtype)
            cb[KC:] = 1  # the bias row (fills write rows < KC only)
            st[wid] = (cb, None if in_place else np.empty((F, L), dtype=dtype))
        return st[wid]

    def work(wid, o):
        cols = state(wid)[0]
        li.fill(cols, o)
        gemm(wid, o, wt, cols)

    kh = geo.k[0]
    if d == 2 and geo.stride[0] == 1 and geo.dilation[0] == 1 and kh > 1 and geo.out[0] > 1:
        # consecutive outer outputs share kh - 1 input rows: the column buffer is a
        # ring of kh row blocks (row q in slot q mod kh), one new row per output, and
        # the weights' row-tap blocks are permuted to match the ring's phase
        rb = kw_c = KC // kh
        phases = []
        for ph in range(kh):  # slot j holds tap (j - ph) mod kh
            cols_of = [(j - ph) % kh for j in range(kh)]
            phases.append(np.ascontiguousarray(np.concatenate(
                [wt[:, i * kw_c:(i + 1) * kw_c] for i in cols_of] + [wt[:, KC:]], axis=1)))
        pb0 = li.pb[0]
        blocks = _ring_blocks(geo, nw)

        def work_ring(wid, blk):
            a, b = blk
            cols = state(wid)[0]
            for o in range(a, b):
                for q in _ring_new_rows(o, a, pb0, kh):
                    j = q % kh
                    li.fill_row(cols[j * rb:(j + 1) * rb], (q,))
                gemm(wid, (o,), phases[(o - pb0) % kh], cols)

        _parallel(work_ring, blocks, dynamic=True)
    else:
        _parallel(work, li.outer_out, dynamic=True)
    return out.transpose((d,) + tuple(range(d - 1)) + (d + 1, d - 1))  # (N, *out, F)


def _ring_blocks(geo, nw):
    """Blocks of output rows for the row ring (three per worker, taken dynamically):
    ``[(first, stop), …]``."""
    step = -(-geo.out[0] // (3 * nw))
    return [(a, min(a + step, geo.out[0])) for a in range(0, geo.out[0], step)]


def _ring_new_rows(o, first, pb0, kh):
    """Input rows to load into the ring before output row ``o``: all ``kh`` taps at the
    start of a block, then only the one new row (stride 1 shares the other ``kh - 1``)."""
    return range(o - pb0, o - pb0 + kh) if o == first else (o - pb0 + kh - 1,)


def _weight_grad_li(gy, x, geo, dtype):
    """Weight gradient on the columns of :class:`_LastInnermost`:
    ``Σ_o cols_o (K·C, N·W) · gy_oᵀ (N·W, F)``, ``gy_o`` the ``(F, N, Wo)`` cotangent
    rows (zero-extended to ``W`` when ``Wo < W``), per-worker accumulators."""
    d, N, F = geo.d, geo.N, geo.F
    li = _LastInnermost(x, geo, dtype)
    wo, L = geo.out[-1], li.L
    gyv = gy.transpose(tuple(range(1, d)) + (d + 1, 0, d))  # (*outer, F, N, Wo)
    KC = geo.K * geo.C
    _, nw, _ = _workers()
    st = [None] * nw

    def work(wid, o):
        if st[wid] is None:
            gb = np.zeros((F, N, li.wrow), dtype=dtype)
            st[wid] = (np.empty((KC, L), dtype=dtype), gb, np.zeros((KC, F), dtype=dtype),
                       np.empty((KC, F), dtype=dtype))
        cols, gb, acc, tmp = st[wid]
        li.fill(cols, o)
        np.copyto(gb[:, :, :wo], gyv[o])
        np.matmul(cols, gb.reshape(F, L).T, out=tmp)
        acc += tmp

    kh = geo.k[0]
    if d == 2 and geo.stride[0] == 1 and geo.dilation[0] == 1 and kh > 1 and geo.out[0] > 1:
        # the ring of row blocks of _forward_li: slot j of the columns holds row tap
        # (j - phase) mod kh; one accumulator per phase, unpermuted at the end
        rb = KC // kh
        pb0 = li.pb[0]
        blocks = _ring_blocks(geo, nw)

        def work_ring(wid, blk):
            a, b = blk
            if st[wid] is None:
                st[wid] = (np.empty((KC, L), dtype=dtype), np.zeros((F, N, li.wrow), dtype=dtype),
                           np.zeros((kh, KC, F), dtype=dtype), np.empty((KC, F), dtype=dtype))
            cols, gb, accs, tmp = st[wid]
            for o in range(a, b):
                for q in _ring_new_rows(o, a, pb0, kh):
                    j = q % kh
                    li.fill_row(cols[j * rb:(j + 1) * rb], (q,))
                np.copyto(gb[:, :, :wo], gyv[o])
                np.matmul(cols, gb.reshape(F, L).T, out=tmp)
                accs[(o - pb0) % kh] += tmp

        _parallel(work_ring, blocks)
        acc = np.zeros((KC, F), dtype=dtype)
        for s_ in st:
            if s_ is None:
                continue
            for ph in range(kh):
                for j in range(kh):
                    i = (j - ph) % kh
                    acc[i * rb:(i + 1) * rb] += s_[2][ph, j * rb:(j + 1) * rb]
    else:
        _parallel(work, li.outer_out)
        acc = sum(s[2] for s in st if s is not None)
    gw = acc.reshape(*geo.k, geo.C, F)
    return np.ascontiguousarray(gw[..., None])  # (*k, C, F, 1)


def _pad_rows_index(geo):
    from ...pad import pad_indices

    return pad_indices(geo.sp[0], geo.pb[0], geo.pa[0], geo.value)


def _gather_chunk(xpad, geo, cols, n):
    """Parallel gather of a whole chunk (``n`` samples) into ``cols`` ``(n, *out, K·C)``
    (about three tiles per worker, taken dynamically)."""
    _, nw, _ = _workers()
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

    _parallel(work, tiles, dynamic=True)


def _forward_wide(x, wm, geo, out, dtype, copy, bias=None):
    it = dtype.itemsize
    nb = _wide_chunk(geo, it)
    chunker = _Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy else None
    cbuf = _scratch("cols", (nb * geo.P * geo.K * geo.C,), dtype)
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        n = n1 - n0
        xpad = chunker.block(n0, n1) if copy else x[n0:n1]
        cols = cbuf[: n * geo.P * geo.K * geo.C].reshape(n, *geo.out, geo.K * geo.C)
        _gather_chunk(xpad, geo, cols, n)
        m = n * geo.P
        a = cols.reshape(m, geo.G, geo.K * geo.Cg)
        o = out[n0:n1].reshape(m, geo.G, geo.Fg)

        def part(w, r, a=a, o=o):
            _gemm(a[r[0]:r[1]], wm, o[r[0]:r[1]])
            if bias is not None:
                ob = o[r[0]:r[1]].reshape(-1, geo.F)
                np.add(ob, bias, out=ob)

        _parallel(part, _row_blocks(m))


def _depthwise_bi_ok(x, geo, dtype):
    """Channel-wise conv straight on batch-innermost data: ``(C, N)`` one contiguous
    block per position (checked on the strides), same dtype, and when the padding is
    not zeros, a padded copy within the workspace."""
    WORKSPACE_BYTES = current().workspace_bytes

    it = x.itemsize
    if x.dtype != dtype or geo.N < 2 or x.strides[0] != it or x.strides[-1] != geo.N * it:
        return False
    if geo.value == 0 and not isinstance(geo.value, str):
        return True
    return math.prod(geo.padded) * geo.C * geo.N * it <= WORKSPACE_BYTES


def _valid(o, s, k, dl, pb, n):
    """Output range ``[lo, hi)`` whose tap ``k`` reads inside ``[0, n)``, and its first
    input index."""
    off = k * dl - pb  # output j reads input j·s + off
    lo = max(0, -(off // s))  # ceil(-off / s)
    hi = min(o, (n - 1 - off) // s + 1)
    return lo, max(lo, hi), lo * s + off


def _depthwise_forward_bi(x, w, geo, dtype, bias):
    """Channel-wise convolution on the canonical batch-innermost layout, no transposes:
    ``out[o, (c, n)] = Σ_k w[k, c] · x[o·s + k·dl - pb, (c, n)]`` over contiguous
    ``C·N`` runs: one fused multiply-accumulate per block of output rows (``einsum``
    over the windows of ``sliding_window_view``), reading the input in place where the
    windows stay inside it, else a per-worker zero-padded copy of the rows they read
    (zero padding is never materialised for the whole input). Row blocks go to the
    workers as they become free."""
    from numpy.lib.stride_tricks import sliding_window_view

    d, N, C = geo.d, geo.N, geo.C
    cn = C * N
    xb = np.moveaxis(x, 0, -1).reshape(*geo.sp, cn)  # a view (strides checked)
    wk = _depthwise_weights(w, geo, dtype)[:, :, 0]  # (K, C)
    wexp = np.ascontiguousarray(np.repeat(wk, N, axis=1))  # (K, C·N)
    src, pb, sp = _depthwise_src(xb, geo, dtype)
    out = np.empty((*geo.out, cn), dtype=dtype)
    letters = "abcdefghij"[:d]
    taps = "pqrstuvwxy"[:d]
    sub = f"{letters}z{taps},{taps}z->{letters}z"
    wwin = wexp.reshape(*geo.k, cn)
    _, nw, _ = _workers()
    # row blocks over the first output dim, about three per worker, taken dynamically
    rb = max(1, -(-geo.out[0] // (3 * nw)))
    tasks = [(r0, min(r0 + rb, geo.out[0])) for r0 in range(0, geo.out[0], rb)]
    eff = tuple((k - 1) * dl + 1 for k, dl in zip(geo.k, geo.dilation))
    bexp = None if bias is None else np.repeat(bias, N)
    patch_len = ((rb - 1) * geo.stride[0] + eff[0]) * math.prod(
        (o - 1) * s + e for o, s, e in zip(geo.out[1:], geo.stride[1:], eff[1:])) * cn
    bufs = [None] * nw

    def work(wid, rows):
        """One einsum over the windows of the input rows that output rows ``rows``
        read, copied with zeros into a per-worker patch where they reach outside."""
        region = [rows] + [(0, o) for o in geo.out[1:]]
        dst = out[rows[0]:rows[1]]
        lo_in = [lo * s - b for (lo, _), s, b in zip(region, geo.stride, pb)]
        ext = [(hi - lo - 1) * s + e for (lo, hi), s, e in zip(region, geo.stride, eff)]
        if all(a >= 0 and a + e <= n for a, e, n in zip(lo_in, ext, sp)):
            patch = src[tuple(slice(a, a + e) for a, e in zip(lo_in, ext))]
        else:
            if bufs[wid] is None:
                bufs[wid] = np.empty(patch_len, dtype=dtype)
            patch = bufs[wid][: math.prod(ext) * cn].reshape(*ext, cn)
            inside_src, inside_dst = [], []
            for a, e, n in zip(lo_in, ext, sp):
                a0, a1 = max(a, 0), min(a + e, n)
                inside_src.append(slice(a0, max(a0, a1)))
                inside_dst.append(slice(a0 - a, max(a0, a1) - a))
            patch.fill(0)
            patch[tuple(inside_dst)] = src[tuple(inside_src)]
        win = sliding_window_view(patch, eff, axis=tuple(range(d)))
        win = win[tuple(slice(None, None, s) for s in geo.stride) + (slice(None),)
                  + tuple(slice(None, None, dl) for dl in geo.dilation)]
        np.einsum(sub, win, wwin, out=dst)
        if bexp is not None:
            np.add(dst, bexp, out=dst)

    _parallel(work, tasks, dynamic=True)
    y = out.reshape(*geo.out, C, N)
    return np.moveaxis(y, -1, 0)


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
    with _serial_if_small(geo):
        return _backward(gy, x, w, geo, needs)


def _backward(gy, x, w, geo, needs):
    gy = _plain(gy)
    x = _plain(x)
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
    if (geo.Cg == 1 and geo.G > 1 and geo.Fg == 1 and _depthwise_bi_ok(x, geo, dtype)
            and gy.dtype == dtype and gy.strides[0] == gy.itemsize
            and gy.strides[-1] == geo.N * gy.itemsize):
        return (*_depthwise_backward_bi(gy, x, w, geo, needs, dtype), gb)
    with _single_threaded_blas():
        if geo.Cg == 1 and geo.G > 1:
            gx, gw = _depthwise_backward(gy, x, w, geo, needs, dtype)
            return gx, gw, gb
        if _flat_bi_ok(gy, x, geo, dtype):
            gx, gw = _flat_bi_backward(gy, x, w, geo, needs, dtype)
            return gx, gw, gb
        if winograd.weight_grad_applicable(gy, x, geo, dtype) and winograd.finite(gy, x):
            if needs[1]:
                gw = winograd.weight_grad(gy, x, geo, dtype)
            if needs[0]:
                gx = _input_grad_stride1(gy, w, geo, dtype)
            return gx, gw, gb
        if needs[1]:
            if _last_innermost(x, geo, dtype) and gy.dtype == dtype:
                gw = _weight_grad_li(gy, x, geo, dtype)
            else:
                gw = _weight_grad(gy, x, geo, dtype)
        if needs[0]:
            if _input_grad_bi_ok(gy, x, geo, dtype):
                gx = _input_grad_bi(gy, w, geo, dtype)
            elif all(s == 1 for s in geo.stride):
                gx = _input_grad_stride1(gy, w, geo, dtype)
            else:
                gx = _input_grad_col2im(gy, w, geo, dtype)
    return gx, gw, gb


def _weight_grad_wide(gy, x, geo, dtype):
    it = dtype.itemsize
    nb = _wide_chunk(geo, it)
    copy_x = _needs_copy(x, geo) or x.dtype != dtype
    chunker = _Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy_x else None
    cbuf = _scratch("cols", (nb * geo.P * geo.K * geo.C,), dtype)
    gybuf = _scratch("gy", (nb, *geo.out, geo.F), dtype)
    acc = np.empty((geo.G, geo.K * geo.Cg, geo.Fg), dtype=dtype)
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
        # split over the rows of the result (K·Cg): each worker owns its rows of the
        # accumulator, no per-worker partial sums of the whole weight gradient
        def part(w, r, c3=c3, g3=g3, first=n0 == 0):
            r0, r1 = r
            if first:
                np.matmul(c3[:, r0:r1], g3, out=acc[:, r0:r1])
            else:
                acc[:, r0:r1] += np.matmul(c3[:, r0:r1], g3)

        _parallel(part, _row_blocks(geo.K * geo.Cg))
    gw = acc.reshape(geo.G, *geo.k, geo.Cg, geo.Fg)
    return np.ascontiguousarray(np.moveaxis(gw, 0, -1))


def _weight_grad(gy, x, geo, dtype):
    it = dtype.itemsize
    x = _plain(x)
    if _wide(geo, it):
        return _weight_grad_wide(gy, x, geo, dtype)
    per_sample = (math.prod(geo.padded) * geo.C + geo.P * geo.F) * it
    nb = min(_chunk_size(geo, per_sample), geo.N)
    copy_x = _needs_copy(x, geo) or x.dtype != dtype
    chunker = _Chunked(x, geo, nb, dtype, geo.pb, geo.pa, geo.value) if copy_x else None
    gybuf = _scratch("gy", (nb, *geo.out, geo.F), dtype)
    tile_elems = max((s1 - s0) * _tile_rows(geo, r) for s0, s1, r in _tiles(geo, nb, it))
    cols_len = tile_elems * (geo.P // geo.out[0]) * geo.K * geo.C
    _, nw, _ = _workers()
    bufs = [None] * nw
    acc = None
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        xpad = chunker.block(n0, n1) if copy_x else x[n0:n1]
        g = gybuf[: n1 - n0]
        _parallel_copy(g, gy[n0:n1])

        def work(wid, tile, a, xpad=xpad, g=g):
            s0, s1, rows = tile
            if bufs[wid] is None:
                bufs[wid] = np.empty(cols_len, dtype=dtype)
            cols, m = _tile_columns(bufs[wid], xpad, geo, tile)
            gt = g[s0:s1] if rows is None else g[s0, rows[0]:rows[1]]
            c3 = cols.reshape(m, geo.G, geo.K * geo.Cg).transpose(1, 2, 0)  # (G, K·Cg, m)
            g3 = gt.reshape(m, geo.G, geo.Fg).transpose(1, 0, 2)  # (G, m, Fg)
            a += np.matmul(c3, g3)

        part = _parallel_sum(work, _tiles(geo, n1 - n0, it),
                             (geo.G, geo.K * geo.Cg, geo.Fg), dtype)
        acc = part if acc is None else acc + part
    gw = acc.reshape(geo.G, *geo.k, geo.Cg, geo.Fg)
    return np.ascontiguousarray(np.moveaxis(gw, 0, -1))


def _transposed_weights(w, geo, dtype):
    d = geo.d
    wf = np.flip(np.asarray(w, dtype=dtype), axis=tuple(range(d)))
    # a view: consumers copy it in the order that suits them (see _weight_matrix)
    return wf.transpose(tuple(range(d)) + (d + 1, d, d + 2))


def _grad_as_conv(gy, w, geo, dtype):
    """The stride-1 input gradient as a forward convolution: ``(g, wt, g2, padded)``
    with ``wt`` the flipped, transposed kernel (a view) and ``g2`` the geometry of
    ``conv(g, wt)``. Constant padding: the result is ``gx`` itself (``g`` is ``gy``
    padded by ``(K-1)·d - pb`` before and ``(K-1)·d - pa`` after, negative pads
    cropping it). Otherwise (``padded`` true): the result is the gradient of the padded
    input, whose padding adjoint :func:`_unpad` folds back."""

    wt = _transposed_weights(w, geo, dtype)
    reach = tuple((k - 1) * dl for k, dl in zip(geo.k, geo.dilation))
    if isinstance(geo.value, str):
        return gy, wt, ConvSpec.make(gy.shape, wt.shape, dilation=geo.dilation, pad_before=reach,
                                 pad_after=reach, dtype=dtype), True
    before = tuple(r - p for r, p in zip(reach, geo.pb))
    after = tuple(r - p for r, p in zip(reach, geo.pa))
    crop = (slice(None),) + tuple(
        slice(max(-b, 0), n - max(-a, 0)) for b, a, n in zip(before, after, geo.out))
    g = gy[crop]
    g2 = ConvSpec.make(g.shape, wt.shape, dilation=geo.dilation,
                       pad_before=tuple(max(b, 0) for b in before),
                       pad_after=tuple(max(a, 0) for a in after), dtype=dtype)
    return g, wt, g2, False


def _input_grad_stride1(gy, w, geo, dtype):
    """Stride 1: the input gradient is a convolution of ``gy`` with the flipped,
    transposed kernel (gathers only, no scatter)."""
    g, wt, g2, padded = _grad_as_conv(gy, w, geo, dtype)
    if not padded:
        if winograd.applicable(g, g2, dtype) and winograd.finite(g, w):
            # the flipped, transposed filters' transform straight from w (no copy of wt)
            ut = winograd.transformed_filters(w, geo, dtype, flip=True)
            return winograd.forward(g, None, None, g2, dtype, ut=ut)
        if _last_innermost(g, g2, dtype):
            return _forward_li(g, wt, g2, dtype, None)
        gx = np.empty((geo.N, *g2.out, geo.C), dtype=dtype)
        _forward_gemm(g, wt, g2, gx, dtype)
        return gx
    if winograd.applicable(g, g2, dtype) and winograd.finite(g, w):
        ut = winograd.transformed_filters(w, geo, dtype, flip=True)
        return _unpad(winograd.forward(g, None, None, g2, dtype, ut=ut), geo)
    gxpad = np.empty((geo.N, *g2.out, geo.C), dtype=dtype)
    _forward_gemm(g, wt, g2, gxpad, dtype)
    return _unpad(gxpad, geo)


def _input_grad_bi_ok(gy, x, geo, dtype):
    """Batch-innermost input and cotangent, fewer input than output channels, one
    padded input per worker within the workspace."""
    WORKSPACE_BYTES = current().workspace_bytes

    _, nw, _ = _workers()
    return (geo.N > 1 and geo.G == 1 and x.strides[0] == x.itemsize
            and gy.strides[0] == gy.itemsize and geo.C < geo.F
            and nw * math.prod(geo.padded) * geo.C * geo.N * dtype.itemsize <= WORKSPACE_BYTES)


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
    _, nw, _ = _workers()
    rb = max(1, min(TILE_BYTES // max(per_row, 1), -(-geo.out[0] // nw)))
    tiles = [(r0, min(r0 + rb, geo.out[0])) for r0 in range(0, geo.out[0], rb)]
    st = [None] * nw
    offs = list(geo.offsets())
    wT = _weight_matrix(w, geo, dtype)[0]  # (K·C, F)

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

    _parallel(work, tiles)
    parts = [p[0] for p in st if p is not None]
    gpad = parts[0]
    for p in parts[1:]:
        gpad += p
    gpad = np.moveaxis(gpad, -1, 0)  # (N, *padded, C)
    return _unpad(gpad, geo)


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

    if gy.flags.c_contiguous:
        _parallel(work, range(geo.N))
        return gx
    # any other layout (e.g. batch-innermost, where one sample is a sliver of every
    # cache line of gy): transpose chunks of samples to channels-last first, in blocks
    WORKSPACE_BYTES = current().workspace_bytes

    nb = max(1, min(geo.N, WORKSPACE_BYTES // max(geo.P * geo.F * it, 1)))
    gbig = _scratch("gy", (nb, *geo.out, geo.F), dtype)
    src = gy
    # ``work`` reads ``gy`` and ``gx`` from this scope when it runs: rebound per chunk
    for n0 in range(0, geo.N, nb):
        n1 = min(n0 + nb, geo.N)
        gy = gbig[: n1 - n0]
        _parallel_copy(gy, src[n0:n1])
        gx_all, gx = gx, gx[n0:n1]
        _parallel(work, range(n1 - n0))
        gx = gx_all
    return gx


def _depthwise_backward_bi(gy, x, w, geo, needs, dtype):
    """Channel-wise VJP on batch-innermost data (see :func:`_depthwise_forward_bi`).

    Input gradient: for stride 1, the channel-wise convolution of ``gy`` with the
    flipped kernel (the forward kernel again); otherwise the transposing path.
    Weight gradient: per tap, ``Σ x_window · gy`` over the valid outputs (fused
    ``einsum`` per row block, in cache), then summed over the batch.
    """
    d, N, C = geo.d, geo.N, geo.C
    cn = C * N
    gx = gw = None
    if needs[0]:
        if all(s == 1 for s in geo.stride):
            g, wt, g2, padded = _grad_as_conv(gy, w, geo, dtype)
            gx = _depthwise_forward_bi(g, wt, g2, dtype, None)
            if padded:
                gx = _unpad(gx, geo)
        else:
            with _single_threaded_blas():
                gx, _ = _depthwise_backward(gy, x, w, geo, (True, False), dtype)
    if needs[1]:
        xb = np.moveaxis(x, 0, -1).reshape(*geo.sp, cn)
        gyb = np.moveaxis(gy, 0, -1).reshape(*geo.out, cn)
        src, pb, sp = _depthwise_src(xb, geo, dtype)
        offs = list(geo.offsets())
        ranges = [[_valid(o, s, k, dl, b, n) for o, s, k, dl, b, n in
                   zip(geo.out, geo.stride, off, geo.dilation, pb, sp)] for off in offs]
        letters = "abcdefghij"[:d]
        sub = f"{letters}z,{letters}z->z"
        _, nw, _ = _workers()
        inner = math.prod(geo.out[1:]) * cn * dtype.itemsize
        rb = max(1, min((512 * 1024) // max(inner, 1), -(-geo.out[0] // nw)))
        tiles = [(r0, min(r0 + rb, geo.out[0])) for r0 in range(0, geo.out[0], rb)]
        tmp = np.empty((nw, cn), dtype=dtype)

        def work(wid, tile, part):
            r0, r1 = tile
            for kk, rng in enumerate(ranges):
                dsl, ssl = [], []
                for m, ((lo, hi, i0), s) in enumerate(zip(rng, geo.stride)):
                    if m == 0:
                        lo, hi, i0 = max(lo, r0), min(hi, r1), i0 + max(r0 - lo, 0) * s
                    if lo >= hi:
                        break
                    dsl.append(slice(lo, hi))
                    ssl.append(slice(i0, i0 + (hi - lo - 1) * s + 1, s))
                else:
                    np.einsum(sub, src[tuple(ssl)], gyb[tuple(dsl)], out=tmp[wid])
                    part[kk] += tmp[wid]

        gk = _parallel_sum(work, tiles, (geo.K, cn), dtype).reshape(geo.K, C, N).sum(axis=-1)
        gw = np.ascontiguousarray(gk.reshape(*geo.k, 1, 1, C)).astype(dtype, copy=False)
    return gx, gw


def _depthwise_src(xb, geo, dtype):
    """The input ``(*sp, C·N)`` to read windows from, with the padding origin and
    extent: the input itself for zero padding (never materialised), else a padded copy."""
    d = geo.d
    if geo.value == 0 and not isinstance(geo.value, str):
        return xb, geo.pb, geo.sp
    src = np.empty((*geo.padded, xb.shape[-1]), dtype=dtype)
    centre = tuple(slice(b, b + n) for b, n in zip(geo.pb, geo.sp))
    with _single_threaded_blas():
        _parallel_copy(src[centre], xb)
    fill_border_numpy(src, geo.pb, geo.pa, tuple(range(d)), geo.value)
    return src, (0,) * d, geo.padded


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


# ---------------------------------------------------------------------------------------
# batch-innermost backward by flat shifts (the canonical S S C B… layout, a few channels)

#: flat-shift backward for 2-d batch-innermost data when ``C`` and ``F`` lie in this range
#: and the batch is at least ``FLAT_MIN_N`` (runs of ``N`` values in the copies)
FLAT_CHANNELS = (8, 32)
FLAT_MIN_N = 16
#: and each output row is at least this many values (``Wo·N``, the GEMMs' long dim)
FLAT_MIN_ROW = 512
#: columns (flat positions) per tile of the flat-shift backward
FLAT_TILE = 2048


def _flat_bi_ok(gy, x, geo, dtype):
    WORKSPACE_BYTES = current().workspace_bytes

    lo, hi = FLAT_CHANNELS
    if not (geo.d == 2 and geo.G == 1 and geo.N >= FLAT_MIN_N and lo <= geo.C <= hi
            and lo <= geo.F <= hi and all(s == 1 for s in geo.stride)
            and not isinstance(geo.value, str) and np.isfinite(geo.value)
            and x.strides[0] == x.itemsize and gy.strides[0] == gy.itemsize
            and geo.out[1] * geo.N >= FLAT_MIN_ROW):
        return False
    r = [(k - 1) * dl for k, dl in zip(geo.k, geo.dilation)]
    wq = geo.out[1] + r[1]
    size = (geo.C * geo.padded[0] + geo.F * (geo.out[0] + 2 * r[0])) * (wq + 1) * geo.N
    return size * dtype.itemsize <= WORKSPACE_BYTES


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
    gq = _scratch("flat_gy", (F, rowlen(Hq * Wq * N + slack)), dtype, keep=True)
    gq[:, Hq * Wq * N:] = 0
    gv = gq[:, : Hq * Wq * N].reshape(F, Hq, Wq, N)
    gyt = np.moveaxis(gy, 0, -1).transpose(2, 0, 1, 3)  # (F, Ho, Wo, N)
    xt = np.moveaxis(x, 0, -1).transpose(2, 0, 1, 3) if needs[1] else None  # (C, H, W, N)
    if needs[1]:
        xq = _scratch("flat_x", (C, rowlen(Hp * Wq * N + slack)), dtype, keep=True)
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
    _parallel(prep, parts, dynamic=True)
    _, nw, _ = _workers()
    gx = gw = None
    if needs[1]:
        g0 = (r0 * Wq + r1) * N
        # the valid positions of each output row (the row gaps would multiply zeros,
        # or NaN from a non-finite input read across the gap)
        tiles = [(h * Wq * N + l0, h * Wq * N + min(l0 + FLAT_TILE, Wo * N))
                 for h in range(Ho) for l0 in range(0, Wo * N, FLAT_TILE)]
        it = dtype.itemsize
        tap_strides = (d0 * Wq * N * it, d1 * N * it, xq.strides[0], it)

        def wgrad(wid, tile, acc):
            # all taps in one stacked matmul (one BLAS call per tap, no Python between)
            l0, l1 = tile
            xs = as_strided(xq[:, l0:], shape=(kh, kw, C, l1 - l0), strides=tap_strides,
                            writeable=False)
            acc += np.matmul(xs, gq[:, g0 + l0:g0 + l1].T)

        gw = _parallel_sum(wgrad, tiles, (kh, kw, C, F), dtype).reshape(kh, kw, C, F, 1)
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
        tiles = [(h, l0, min(l0 + FLAT_TILE, W * N))
                 for h in range(H) for l0 in range(0, W * N, FLAT_TILE)]
        it = dtype.itemsize
        tap_strides = (d0 * Wq * N * it, d1 * N * it, gq.strides[0], it)

        def igrad(wid, tile):
            h, l0, l1 = tile
            if bufs[wid] is None:
                bufs[wid] = np.empty(K * F * FLAT_TILE, dtype=dtype)
            cols = bufs[wid][: K * F * (l1 - l0)].reshape(kh, kw, F, l1 - l0)
            src = gq[:, base + h * Wq * N + l0:]
            np.copyto(cols, as_strided(src, shape=cols.shape, strides=tap_strides,
                                       writeable=False))
            np.matmul(cols.reshape(K * F, l1 - l0).T, wm, out=gxe[h, l0:l1])

        _parallel(igrad, tiles, dynamic=True)
        gxv = gxe.reshape(H, W, N, C)
        gx = gxv.transpose(2, 0, 1, 3)  # (N, H, W, C)
    return gx, gw
