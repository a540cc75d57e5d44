"""``numba.winograd``, ``numba.winograd_input_grad`` and ``numba.winograd_weight_grad``:
Winograd F(2×2, 3×3) on channels-last data, compiled.

The forward of a 3×3, stride-1, one-group convolution over two dims (any dilation) on input
stored channels innermost (``(N, H, W, C)`` C-contiguous: NHWC data formatted
``"BSSC"``) with constant padding, and the input gradient of such a convolution (any
layout: the cotangent is copied channels-last unless it is). :mod:`.._numpy.winograd`
describes the algorithm (2.25× fewer multiply-adds than the direct sum); this module
runs it on channels-last data in place, the products summed by the register tiles of
:mod:`._simd`. The input gradient is the forward of the cotangent with the filters
turned by 180° and transposed, padded by ``2·dl - p`` with zeros. The weight gradient
is the adjoint (:func:`weight_grad`): ``∂U[ξ] = Σ_tiles V[ξ]ᵀ · (A ∂Y Aᵀ)[ξ]`` on the
weight-gradient SIMD tiles, then ``Gᵀ ∂U G``.

The outputs (2×2 per tile; with a dilation ``dl``, per phase of rows ≡ p and columns
≡ q mod ``dl``, each an undilated convolution of the input rows and columns with the
same residues) go through three steps: the padded 4×4 input tiles to ``V`` ``(16,
tiles, C)`` (:func:`._winograd_kernels.input_tiles`; values outside the input read as
the padding value: no padded copy), the 16 products ``M[ξ] = V[ξ] · U[ξ]`` per filter
block (as wide as the widest SIMD tile, 4 vectors) by :func:`._simd.forward_positions`
(the 16 ``ξ`` as 16 groups that read ``V`` at their own offsets, one run of ``C``
values per tile), and ``Y = Aᵀ M A`` plus the bias into the output
(:func:`._winograd_kernels.output_block`). Two schedules:

* transformed filters ``U`` ``(16, C, F)`` of at most ``Tuning.numba_winograd_u_bytes``
  (:func:`._winograd_kernels.filter_block`, one parallel phase per call): one dynamic
  phase whose items each take a run of tiles (``Tuning.numba_winograd_run_bytes`` of
  ``V``) through all three steps, ``V`` and ``M`` in the cache (:func:`_fused`, every
  dilation phase in the one parallel phase;
  ``V`` is 4× the input for 64 channels: written whole and read back, it made the 64 →
  64 forward no faster than numba.direct);
* larger ``U`` (512 → 512 channels: 16 MiB, more than it saves to write and read back
  per call): per chunk of tiles (``V`` of at most ``Tuning.numba_winograd_max_v_bytes``)
  an input phase, then one item per (filter block, run of at most :data:`TILES` tiles)
  that forms its block's ``U`` in the cache and its products and outputs
  (:func:`_phase`).

Values: the transforms add and subtract, so an input ±inf would turn into NaN where the
direct sum keeps it, and values near the dtype's limit could overflow in them. Both
leave a non-finite value in the result (an infinity only ever spreads as ±inf or NaN),
so the result is checked (one summing pass over it, instead of a maximum and a minimum
over the input and the weights before the call: those read the weights, 9 MiB for 512
→ 512 channels, twice per call) and, where it is not finite, :mod:`.direct` does the
call again: its results, bit for bit, the definition's inf/NaN pattern.

Where: from ``Tuning.numba_winograd_min_cf`` channels × filters (measured NHWC forward,
float32, against numba.direct in the same process, 2 threads: 16→16 0.47×, 32→32 0.84×,
32→64 1.12×, 48→48 1.07×, 64→64 1.15×, 128→128 1.47× (b4 14×14: 0.90×), 256→256 1.51×,
512→512 1.24×).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._numpy._common import all_finite, cl_strides, row_ranges, sum_blocks
from .._numpy._copies import parallel_copy
from .._numpy._sums import parallel_sum
from .._numpy.winograd import why_not_shape
from .._numpy._runtime import dynamic_blocks, n_workers, parallel, parallel_into, scratch
from ..thresholds import current
from . import direct
from .direct import WGRAD_TILE_POSITIONS
from .depthwise import _c_strides

__all__ = ["applies", "applies_input_grad", "applies_weight_grad", "accepts", "forward",
           "input_grad", "weight_grad", "TILES"]

#: most tiles per item, and the fewest items per worker (tile runs are cut shorter
#: until the filter blocks × runs reach it): more items re-form the filters per item
#: (512 → 512: 32 items 9.4-9.9 ms against 8 items 7.4-7.5)
TILES = 256
RUNS_PER_WORKER = 2


def _kernels():
    from . import _simd, _winograd_kernels

    return _simd, _winograd_kernels


def _why_not(spec):
    t = current()
    r = why_not_shape(spec)
    if r is not None:
        return r
    if spec.C * spec.F < t.numba_winograd_min_cf:
        return (f"{spec.C}×{spec.F} channels × filters < numba_winograd_min_cf "
                f"({t.numba_winograd_min_cf}): the transforms cost more than they save")
    return None


def applies(spec, layout):
    """The forward's domain: :func:`_why_not`'s, x channels-innermost C-contiguous."""
    r = _why_not(spec)
    if r is not None:
        return r
    st = cl_strides(spec, layout, "x")
    if st is None or st != _c_strides((spec.N, *spec.sp, spec.C)):
        return "x is not channels-innermost (N, H, W, C) C-contiguous memory"
    return None


def applies_input_grad(spec, layout):
    """The input gradient's: the forward of the cotangent with the filters turned by
    180° and transposed, padded by ``2·dl - p`` for a padding ``p`` before (any padding
    and layout: outside the cotangent, zeros; the cotangent copied channels-last)."""
    return _why_not(spec)


def accepts(spec, layout, x, w):
    """Both arrays in the result's dtype: read in place."""
    if x.dtype != np.dtype(spec.dtype) or w.dtype != np.dtype(spec.dtype):
        return f"x is {x.dtype} and w {w.dtype}, the result {spec.dtype}: read in place only"
    return None


class _Conv(NamedTuple):
    """What :func:`_winograd` reads of a convolution: batch, channels, filters, output
    size, top and left padding, padding value, dilation."""
    N: int
    C: int
    F: int
    out: tuple
    pb: tuple
    value: float
    dilation: tuple


def forward(x, w, bias, spec, dtype):
    """The Winograd forward; where its result holds a non-finite value (an input ±inf or
    NaN, or an overflow in the transforms), numba.direct's instead."""
    geo = _Conv(spec.N, spec.C, spec.F, spec.out, spec.pb, spec.value, spec.dilation)
    wc = np.asarray(w, dtype=dtype).reshape(3, 3, spec.C, spec.F)
    y = _winograd(x, wc, bias, geo, dtype, False)
    if all_finite(y):
        return y
    return direct.forward(x, w, bias, spec, dtype)


def input_grad(gy, x, w, spec, needs, dtype):
    """``(gx, None)``: the forward of the cotangent (:func:`_channels_last`) with the
    weights transposed ``(3, 3, F, C)`` (one parallel blocked copy) and turned by 180° (in
    the filter transform), padded by ``2·dl - p`` with zeros (a negative padding: rows
    and columns the windows skip); where the result holds a non-finite value,
    numba.direct_input_grad's (:data:`EXACT_INPUT_GRAD`)."""
    g = _channels_last(gy, dtype)
    taps = np.stack(np.unravel_index(np.arange(9), (3, 3)), axis=1)
    wt = direct._transposed(np.asarray(w, dtype=dtype), taps, spec).reshape(3, 3, spec.F,
                                                                            spec.C)
    geo = _Conv(spec.N, spec.F, spec.C, spec.sp,
                tuple(2 * d - p for p, d in zip(spec.pb, spec.dilation)), 0.0, spec.dilation)
    gx = _winograd(g, wt, None, geo, dtype, True)
    if all_finite(gx):
        return gx, None
    return EXACT_INPUT_GRAD[0](gy, x, w, spec, needs, dtype)


#: ``[numba.direct_input_grad's backward]``, set where that entry is registered
EXACT_INPUT_GRAD: list = []


def _channels_last(gy, dtype):
    """The cotangent ``(N, *out, F)`` C-contiguous in ``dtype``: ``gy`` itself when it is,
    else a parallel copy."""
    if gy.dtype == dtype and gy.flags.c_contiguous:
        return gy
    g = np.empty(gy.shape, dtype)
    parallel_copy(g, gy)
    return g


def applies_weight_grad(spec, layout):
    """The weight gradient's: the forward's domain from ``Tuning.numba_winograd_wgrad_min_cf``
    channels × filters, with the transformed filters' sums ``∂U`` (16 · C · F values) of
    at most ``Tuning.numba_winograd_u_bytes`` (one per block of tiles, added in block
    order; 512 → 512, 16 MiB, split by filter vectors instead ran no faster than
    numba.direct: 10.8 against 11.1 ms)."""
    r = applies(spec, layout)
    if r is not None:
        return r
    t = current()
    if spec.C * spec.F < t.numba_winograd_wgrad_min_cf:
        return (f"{spec.C}×{spec.F} channels × filters < numba_winograd_wgrad_min_cf "
                f"({t.numba_winograd_wgrad_min_cf}): numba.direct's weight gradient is as fast")
    u = 16 * spec.C * spec.F * np.dtype(spec.dtype).itemsize
    if u > current().numba_winograd_u_bytes:
        return (f"transformed filters of {u} bytes > numba_winograd_u_bytes "
                f"({current().numba_winograd_u_bytes}): one sum of them per block of tiles")
    return None


def weight_grad(gy, x, w, spec, needs, dtype):
    """``(None, gw)``: ``∂U[ξ] = Σ_tiles V[ξ]ᵀ · (A ∂Y Aᵀ)[ξ]`` (the products on the
    weight-gradient SIMD tiles, the 16 ``ξ`` as 16 groups) summed per fixed block of
    tiles, the blocks added in block order (the same bits whatever the number of
    threads), then ``gw = Gᵀ ∂U G``; where that holds a non-finite value,
    numba.direct's."""
    simd, wk = _kernels()
    g = _channels_last(gy, dtype)
    x = np.ascontiguousarray(x, dtype=dtype)  # (in place: applies and accepts ask it)
    N, C, F = spec.N, spec.C, spec.F
    isz = np.dtype(dtype).itemsize
    lanes = simd.VECTOR_BYTES // isz
    fp = -(-F // lanes) * lanes
    geo = _Conv(N, C, F, spec.out, spec.pb, spec.value, spec.dilation)
    tiles = _Tiles(x, g, np.full(C, spec.value, dtype), geo, fp, dtype)
    du = _du_by_tiles(tiles, spec)
    gw = np.empty((3, 3, C, F), dtype)
    parallel(lambda _w, r: wk.filter_grad(du, gw, r[0], r[1]),
             row_ranges(C, min(C, dynamic_blocks())), dynamic=True)
    if all_finite(gw):
        return None, gw.reshape(np.shape(w))
    return direct.weight_grad(gy, x, w, spec, needs, dtype)


class _Tiles:
    """The transformed input and cotangent tiles of a weight gradient, and their
    products: ``v`` ``(16, n, C)`` and ``m`` ``(n, 16, fp)`` for a run of tiles of one
    dilation phase, summed into ``acc`` ``(16, C, fp)`` for the filter vectors ``va ..
    vb-1``."""

    def __init__(self, x, g, pad, geo, fp, dtype):
        self.x, self.g, self.pad, self.geo, self.fp, self.dtype = x, g, pad, geo, fp, dtype
        self.phases = _phases(geo)
        self.C = geo.C

    def transform(self, k, t0, t1, v, m, base):
        """Tiles ``t0 .. t1-1`` of phase ``k`` into ``v[:, t - base]``, ``m[t - base]``."""
        _, wk = _kernels()
        p, q, hp, wp, th, tw = self.phases[k]
        dr, dc = self.geo.dilation
        wk.input_tiles(self.x, self.pad, v, p - self.geo.pb[0], q - self.geo.pb[1], dr, dc,
                       th, tw, t0, t1, base)
        wk.cotangent_tiles(self.g, m[t0 - base:], p, q, dr, dc, hp, wp, th, tw, t0, t1)

    def products(self, v, m, n, acc, va, vb):
        """``acc += Σ`` over the first ``n`` tiles of ``v`` and ``m``."""
        from ._wgrad_pieces import weight_grad

        offs = (np.arange(16, dtype=np.int64) * (v.shape[1] * self.C)).reshape(16, 1)
        weight_grad(v.reshape(-1), np.arange(n, dtype=np.int64) * self.C,
                    np.arange(n, dtype=np.int64) * (16 * self.fp), offs, self.C, m.reshape(-1),
                    acc.reshape(-1), self.fp, 0, WGRAD_TILE_POSITIONS, 0, n, va, vb,
                    current().numba_wgrad_pieces_min_fill)


def _du_by_tiles(tiles, spec):
    """``∂U`` as one sum per block of tiles, the blocks handed out dynamically and added
    in block order; each block in runs of tiles (``Tuning.numba_winograd_run_bytes``)
    transformed in the cache."""
    simd, _ = _kernels()
    C, fp, dtype = tiles.C, tiles.fp, tiles.dtype
    isz = np.dtype(dtype).itemsize
    nvec = fp // (simd.VECTOR_BYTES // isz)
    run_len = max(1, current().numba_winograd_run_bytes // (16 * max(C, fp) * isz))

    def run(_w, item, acc):
        for k, b0, b1 in item:
            for t0 in range(b0, b1, run_len):
                t1 = min(t0 + run_len, b1)
                v = np.empty((16, _rows(t1 - t0, C, dtype), C), dtype)
                m = np.empty((t1 - t0, 16, fp), dtype)
                tiles.transform(k, t0, t1, v, m, t0)
                tiles.products(v, m, t1 - t0, acc, 0, nvec)

    return parallel_sum(run, _tile_blocks(tiles, spec, 16 * C * fp * isz), (16, C, fp),
                        dtype)


def _tile_blocks(tiles, spec, size):
    """The blocks of :func:`_du_by_tiles`: the tiles of every dilation phase in one
    sequence cut into :func:`.._numpy._common.sum_blocks`' number of ranges, at most as
    many as keep their partial sums (``size`` bytes each) within
    ``Tuning.ordered_sum_bytes`` (so that :func:`.._numpy._sums.parallel_sum` adds them in
    block order: the same bits whatever the number of threads), each a tuple of
    ``(phase, first tile, end)`` pieces."""
    counts = [tiles.geo.N * ph[4] * ph[5] for ph in tiles.phases]
    total = sum(counts)
    nb = max(1, min(len(sum_blocks(total, spec)), current().ordered_sum_bytes // size))
    blocks = []
    for b0, b1 in row_ranges(total, nb):
        pieces, start = [], 0
        for k, n in enumerate(counts):
            lo, hi = max(b0, start), min(b1, start + n)
            if lo < hi:
                pieces.append((k, lo - start, hi - start))
            start += n
        blocks.append(tuple(pieces))
    return blocks


def _winograd(x, wc, bias, spec, dtype, flip):
    """The forward of ``x`` ``(N, H, W, C)`` with the filters ``wc`` ``(3, 3, C, F)``
    (``flip``: turned by 180°) of the geometry ``spec`` (a :class:`_Conv`)."""
    simd, wk = _kernels()
    t = current()
    N, C, F = spec.N, spec.C, spec.F
    Ho, Wo = spec.out
    isz = np.dtype(dtype).itemsize
    x = np.ascontiguousarray(x, dtype=dtype)  # (in place: applies and accepts ask it)
    pad = np.full(C, spec.value, dtype)
    wc = np.ascontiguousarray(wc, dtype=dtype)
    b = np.zeros(F, dtype) if bias is None else np.asarray(bias, dtype).reshape(F)
    lanes = simd.VECTOR_BYTES // isz
    fblock = simd.NV_MAX * lanes
    fblocks = [(f, min(f + fblock, F)) for f in range(0, F, fblock)]
    widths = [-(-(f1 - f0) // lanes) * lanes for f0, f1 in fblocks]
    # every block's transformed filters at once when they are small, else per item
    us = None
    if 16 * C * F * isz <= t.numba_winograd_u_bytes:
        # one array, block i at uoff[i] (the compiled items read it so)
        uoff = np.concatenate([[0], np.cumsum([16 * C * m for m in widths])]).astype(np.int64)
        uall = np.empty(int(uoff[-1]), dtype)
        us = [uall[a:e].reshape(16, C, m) for a, e, m in zip(uoff[:-1], uoff[1:], widths)]
        parallel(lambda _w, i: wk.filter_block(wc, us[i], *fblocks[i], flip),
                 range(len(fblocks)), dynamic=True)
    y = np.empty((N, Ho, Wo, F), dtype)
    dr, dc = spec.dilation
    if us is not None:
        return _fused(x, pad, uall, uoff, b, y, spec, dtype, fblocks, widths)
    for p in range(min(dr, Ho)):  # the dilation phases: rows ≡ p, columns ≡ q
        for q in range(min(dc, Wo)):
            y = _phase(x, pad, us, wc, b, y, spec, dtype, flip, fblocks, widths, p, q)
    return y


def _rows(n, C, dtype):
    """Rows of a transformed input ``V`` ``(16, rows, C)`` for ``n`` tiles: one more when
    its 16 planes would lie a multiple of 4 KiB apart (a tile's 16 values of a channel,
    written or read together, would then fall in one set of the L1 cache: 256 → 256
    input transform 2.0 → 3.9 ms)."""
    return n + 1 if n * C * np.dtype(dtype).itemsize % 4096 == 0 else n


def _phases(spec):
    """``(p, q, hp, wp, th, tw)`` of each dilation phase with outputs: rows ≡ p and
    columns ≡ q, ``hp × wp`` of them in ``th × tw`` tiles per sample."""
    Ho, Wo = spec.out
    dr, dc = spec.dilation
    out = []
    for p in range(min(dr, Ho)):
        for q in range(min(dc, Wo)):
            hp, wp = len(range(p, Ho, dr)), len(range(q, Wo, dc))
            out.append((p, q, hp, wp, -(-hp // 2), -(-wp // 2)))
    return out


def _fused(x, pad, uall, uoff, b, y, spec, dtype, fblocks, widths):
    """With the transformed filters formed already (``uall``, filter block ``i`` at
    ``uoff[i]``): one parallel phase (for every
    dilation phase at once) whose items each take a run of tiles through the input
    transform, the products of every filter block and the output transform, its ``V``
    and ``M`` in the cache (never the whole ``V`` in memory: for 64 → 64 channels it is
    4× the input)."""
    simd, wk = _kernels()
    t = current()
    N, C, F = spec.N, spec.C, spec.F
    Ho, Wo = spec.out
    dr, dc = spec.dilation
    lanes = simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    phases = _phases(spec)
    total = sum(N * ph[4] * ph[5] for ph in phases)
    # runs of tiles whose V stays in the cache, at least dynamic_blocks() of them
    per = 16 * C * np.dtype(dtype).itemsize
    run_len = max(1, min(t.numba_winograd_run_bytes // per, -(-total // dynamic_blocks())))
    zero = np.zeros(16 * widths[0], dtype)
    items = [(k, t0, min(t0 + run_len, N * ph[4] * ph[5])) for k, ph in enumerate(phases)
             for t0 in range(0, N * ph[4] * ph[5], run_len)]

    # the blocks' first filters, counts and padded widths
    blk = np.array([(f0, f1 - f0, wd) for (f0, f1), wd in zip(fblocks, widths)], np.int64)
    nf_max = max(f1 - f0 for f0, f1 in fblocks)
    wblock = t.direct_weight_block_bytes

    def run(_w, item, yf):
        k, t0, t1 = item
        p, q, hp, wp, th, tw = phases[k]
        n = t1 - t0
        v = np.empty((16, _rows(n, C, dtype), C), dtype)
        m = np.empty(n * 16 * nf_max + lanes, dtype)
        wk.fused_item(x, pad, v, m, uall, uoff, blk, zero, b, yf.reshape(N, Ho, Wo, F),
                      np.empty(widths[0], dtype), (p - spec.pb[0], q - spec.pb[1], dr, dc,
                                                   th, tw, p, q, hp, wp, t0, t1, wblock))

    return parallel_into(run, items, y)


def _phase(x, pad, us, wc, b, y, spec, dtype, flip, fblocks, widths, p, q):
    """The outputs of the dilation phase ``(p, q)`` into ``y``; returns ``y`` (or the
    copy :func:`parallel_into` finished)."""
    simd, wk = _kernels()
    t = current()
    N, C, F = spec.N, spec.C, spec.F
    Ho, Wo = spec.out
    dr, dc = spec.dilation
    hp, wp = len(range(p, Ho, dr)), len(range(q, Wo, dc))
    th, tw = -(-hp // 2), -(-wp // 2)
    T = N * th * tw
    isz = np.dtype(dtype).itemsize
    lanes = simd.VECTOR_BYTES // isz
    r0, c0 = p - spec.pb[0], q - spec.pb[1]
    # the tiles in chunks whose V stays under numba_winograd_max_v_bytes
    chunk = max(1, min(T, t.numba_winograd_max_v_bytes // (16 * C * isz)))
    v = scratch("winograd V", (16, _rows(chunk, C, dtype), C), dtype)
    vf = v.reshape(-1)
    offs = (np.arange(16, dtype=np.int64) * (v.shape[1] * C)).reshape(16, 1)
    zero = np.zeros(16 * widths[0], dtype)
    nb = dynamic_blocks()
    for s0 in range(0, T, chunk):
        s1 = min(s0 + chunk, T)
        step = -(-(s1 - s0) // nb)
        parallel(lambda _w, r, s0=s0: wk.input_tiles(x, pad, v, r0, c0, dr, dc, th, tw, r[0],
                                                     r[1], s0),
                 [(k, min(k + step, s1)) for k in range(s0, s1, step)], dynamic=True)
        # tile runs: enough items for the workers, each at most TILES
        runs = max(-(-(s1 - s0) // TILES),
                   -(-RUNS_PER_WORKER * n_workers() // len(fblocks)))
        tstep = -(-(s1 - s0) // runs)
        items = [(i, k, min(k + tstep, s1)) for k in range(s0, s1, tstep)
                 for i in range(len(fblocks))]

        def run(_w, item, yf, s0=s0):
            i, t0, t1 = item
            f0, f1 = fblocks[i]
            nf, fp = f1 - f0, widths[i]
            if us is None:
                u = np.empty((16, C, fp), dtype)
                wk.filter_block(wc, u, f0, f1, flip)
            else:
                u = us[i]
            n = t1 - t0
            m = np.empty(n * 16 * nf + lanes, dtype)
            pos = np.arange(t0 - s0, t1 - s0, dtype=np.int64) * C
            mpos = np.arange(n, dtype=np.int64) * (16 * nf)
            simd.forward_positions(vf, pos, mpos, offs, C, u.reshape(-1), zero, fp, m, nf, 0,
                                   t.direct_weight_block_bytes, 0, n, 0, fp // lanes,
                                   (0, 1, 0, C))
            wk.output_block(m, yf.reshape(N, Ho, Wo, F), b, np.empty(nf, dtype), p, q, dr,
                            dc, hp, wp, th, tw, t0, t1, f0, nf)

        y = parallel_into(run, items, y)
    return y
