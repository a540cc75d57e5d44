"""Winograd F(2×2, 3×3) convolution for NumPy, on batch-innermost data.

A 3×3, stride-1 convolution computes each 2×2 block of outputs from a 4×4 block of
inputs. Winograd's minimal filtering algorithm (Lavin & Gray, 2015) does it with 16
multiplications per (input channel, output channel) instead of 36:

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

and, summed over the input channels, the 16 element-wise products become 16 GEMMs
``M[ξν] (F, tiles) = U[ξν] (F, C) · V[ξν] (C, tiles)`` with ``U = G g Gᵀ`` (the
transformed filters) and ``V = Bᵀ d B`` (the transformed input tiles): 2.25× fewer
multiply-adds than the direct method. The transforms are additions and subtractions
only (``G`` holds halves), so float32 results stay within a few ulps of the direct
sum: the same accuracy tests as every other path apply.

with (rows of the matrices; the code applies them as additions and subtractions)

    Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G  = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]
    Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]

Layout. The canonical ``S S C B`` layout keeps the batch innermost: for a fixed pixel
the ``(C, N)`` values are one contiguous run. A block's input rows are copied once
(runs of ``N``) into a buffer split by row and column parity, ``(2, 2, rows, C,
cols, N)``, where the shifts of both transforms (next tile row, next tile column) are
flat offsets: every transform step is one NumPy call on contiguous operands (strided
ufunc calls run 2-3× slower). The products are transformed back in that layout and
copied (runs of ``N``) into the canonical ``(Ho, Wo, F, N)`` output.

The weight gradient is the adjoint (``F(3×3, 2×2)``): the cotangent's 2×2 tiles go to
4×4 by ``A ∂Y Aᵀ`` and 16 GEMMs contract ``V`` with them over tiles and batch.
Inputs holding a non-finite value, or values large enough for the transforms to
overflow, are left to the direct path (:func:`_why_not_values`).

Dilation ``dl`` splits the problem into ``dl_h · dl_w`` phases: the outputs whose
row ≡ p (mod dl_h) and column ≡ q (mod dl_w) read only the padded input rows and
columns of the same residues, an undilated 3×3 convolution on a strided view.

Work is cut into blocks of tiles (a few tile rows, or part of one) whose buffers stay
near ``Tuning.winograd_block_bytes``; blocks are spread over the worker threads of
:mod:`._runtime` with BLAS held at one thread.

Entries: ``numpy.winograd`` (forward), ``numpy.winograd_weight_grad`` and
``numpy.winograd_input_grad`` (the stride-1 input gradient: this forward on the
cotangent with the flipped filters, whose transform comes straight from ``w``).
Thresholds: ``Tuning.winograd_*``.
"""

from __future__ import annotations

import numpy as np

from ..thresholds import current
from ._common import cl_strides, grad_conv, grad_input, itemsize, unpad
from ._runtime import n_workers, parallel
from ._sums import parallel_sum

__all__ = ["applies_forward", "applies_weight_grad", "applies_input_grad", "accepts_forward",
           "accepts_weight_grad", "accepts_input_grad", "forward",
           "transformed_filters", "weight_grad", "run_forward", "run_weight_grad",
           "run_input_grad"]

# the filter transform (the input and output transforms are written out as additions)
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def why_not_shape(spec):
    """What every Winograd F(2×2, 3×3) entry needs of the convolution (this module's and
    :mod:`..._numba.winograd`'s): 2-D, 3×3, stride 1, one group, constant padding,
    float32 or float64."""
    if spec.d != 2 or spec.k != (3, 3):
        return f"filter {spec.k}: 3×3 over two dims only"
    if spec.stride != (1, 1):
        return f"stride {spec.stride}: stride 1 only"
    if spec.G != 1:
        return f"{spec.G} groups: one group only"
    if not spec.constant_padding:
        return f"padding {spec.value!r}: constant padding only"
    if spec.dtype not in ("float32", "float64"):
        return f"dtype {spec.dtype}: float32 or float64 only"
    return None


def _why_not(spec, st):
    """2-D, 3×3, stride 1, one group, constant padding, batch innermost in memory
    (``st``: channels-last element strides of the data), enough channels, batch and
    output tiles for the transforms to pay (the filter transform costs as much as
    ``16·C·F`` values, whatever the batch: the 512-channel 7×7 case of the benchmark,
    with 16 tiles of a batch of 8, measured faster on the direct path)."""
    t = current()
    r = why_not_shape(spec)
    if r is not None:
        return r
    if spec.N < t.winograd_min_n:
        return f"batch of {spec.N} < Tuning.winograd_min_n = {t.winograd_min_n}"
    if st is None or st[0] != 1:
        return "the batch is not innermost in memory"
    if spec.C < t.winograd_min_c or spec.F < t.winograd_min_f:
        return (f"{spec.C} -> {spec.F} channels, fewer than Tuning.winograd_min_c/_f = "
                f"{t.winograd_min_c}/{t.winograd_min_f}")
    cols = _tiles_total(spec) * spec.N
    if cols < t.winograd_min_total_cols:
        return (f"{cols} GEMM columns (2×2 tiles × batch) < Tuning.winograd_min_total_cols = "
                f"{t.winograd_min_total_cols}")
    return None


def applies_forward(spec, layout):
    return _why_not(spec, cl_strides(spec, layout))


def applies_weight_grad(spec, layout):
    """The forward's conditions, a batch-innermost cotangent, and filters below the
    wide size (large filters make the per-block ``(16, C, F)`` products dominate: the
    GEMM path accumulates those better)."""
    r = applies_forward(spec, layout)
    if r is not None:
        return r
    if layout.gy_memory is None:
        return "a gradient path"
    gs = cl_strides(spec, layout, "gy")
    if gs is None or gs[0] != 1:
        return "the cotangent's batch is not innermost in memory"
    u, limit = 16 * spec.C * spec.F * itemsize(spec), current().winograd_wide_u_bytes
    if u >= limit:
        return f"transformed filters of {u} bytes >= Tuning.winograd_wide_u_bytes = {limit}"
    return None


def applies_input_grad(spec, layout):
    """The forward's conditions for the convolution of the cotangent with the flipped
    filters (see :func:`~._common.grad_conv`)."""
    if any(s != 1 for s in spec.stride):
        return f"stride {spec.stride}: only a stride-1 input gradient is a plain convolution"
    if layout.gy_memory is None:
        return "a gradient path"
    return _why_not(grad_conv(spec)[1], cl_strides(spec, layout, "gy"))


def _max_abs(a) -> float:
    """``max |a|`` (NaN when a value is NaN): two reductions, no temporary."""
    if a.size == 0:
        return 0.0
    hi, lo = float(np.max(a)), float(np.min(a))
    return max(hi, -lo) if hi == hi and lo == lo else float("nan")


def _why_not_values(spec, a, b, gain_a, gain_b, gain_ab):
    """``None`` when no value the transforms compute can overflow, else the reason.

    The transforms add and subtract values (``|Bᵀ d B| ≤ 4·max|d|``, ``|G g Gᵀ| ≤
    2.25·max|g|``, ``|A ∂Y Aᵀ| ≤ 4·max|∂Y|``, ``Aᵀ M A`` sums 9 products): ``gain_a``,
    ``gain_b`` bound the transformed operands, ``gain_ab · max|a| · max|b|`` every sum of
    products; all must stay below a quarter of the dtype's largest value. Beyond that
    (values near the limit, e.g. ±1e38 in float32, which the direct sum handles) the
    call goes to the direct path, as do non-finite values: an infinite input would give
    NaN where the direct sum gives ±inf."""
    ma, mb = _max_abs(a), _max_abs(b)
    if not (np.isfinite(ma) and np.isfinite(mb)):
        return ("a non-finite value: the transforms would turn ±inf into NaN (the direct "
                "sum keeps it)")
    limit = float(np.finfo(spec.dtype).max) / 4
    if max(ma * gain_a, mb * gain_b, ma * mb * gain_ab) > limit:
        return (f"values up to {ma:.3g} and {mb:.3g}: the transforms' intermediate values "
                f"could overflow {spec.dtype} where the direct sum does not")
    return None


def accepts_forward(spec, layout, x, w):
    return _why_not_values(spec, x, w, 4.0, 2.25, 81.0 * spec.C)


def accepts_weight_grad(spec, layout, gy, x):
    if np.dtype(gy.dtype) != np.dtype(spec.dtype):
        return f"the cotangent is {gy.dtype}, the result {spec.dtype}"
    # Σ over (tile, sample) of the 4×4 products, then Gᵀ·G over 16 of them (≤ 4×)
    return _why_not_values(spec, gy, x, 4.0, 4.0, 64.0 * _tiles_total(spec) * spec.N)


def accepts_input_grad(spec, layout, gy, w):
    return _why_not_values(spec, gy, w, 4.0, 2.25, 81.0 * spec.F)


def _tiles_total(geo):
    """2×2 output tiles over all dilation phases."""
    dh, dw = geo.dilation
    return sum(-(-len(range(ph, geo.out[0], dh)) // 2) * -(-len(range(pw, geo.out[1], dw)) // 2)
               for ph in range(dh) for pw in range(dw))


def transformed_filters(w, geo, dtype, flip=False):
    """``U`` as ``(16, C, F)`` from weights ``(3, 3, C, F[, 1])`` (any strides):
    ``U[4ξ+ν] = Σ_ij G[ξ,i] G[ν,j] g[i,j]``, one GEMM ``(16, 9) · (9, C·F)`` split over
    the workers by columns.

    ``flip=True``: the transform of the spatially flipped filters, ``U[π(ξ)π(ν)]``
    with ``π = (3, 1, 2, 0)`` (``G`` with its columns reversed is ``G`` with rows 0 and 3
    swapped): the input gradient's filters (flipped, ``C`` and ``F`` swapped) are then
    these matrices transposed, which BLAS reads for free — no copy of the transposed
    weights."""
    g = np.ascontiguousarray(np.asarray(w).reshape(9, geo.C * geo.F), dtype=dtype)
    gk = np.einsum("ai,bj->abij", _G, _G).reshape(16, 9).astype(dtype)
    if flip:
        p = (3, 1, 2, 0)
        gk = gk[[4 * p[a] + p[b] for a in range(4) for b in range(4)]]
    u = np.empty((16, geo.C * geo.F), dtype=dtype)
    nw = n_workers()
    n = g.shape[1]
    step = max(-(-n // nw), 1)
    parallel(lambda _w, c0: np.matmul(gk, g[:, c0:c0 + step], out=u[:, c0:c0 + step]),
              range(0, n, step))
    return u.reshape(16, geo.C, geo.F)


def _blocks(geo, itemsize):
    """Blocks ``(phase, t0, t1, u0, u1, n0, n1)``: tile rows ``[t0, t1)`` and tile
    columns ``[u0, u1)`` of the phase's output grid, samples ``[n0, n1)``. A block's
    buffers stay within the workspace share of its worker whatever the batch size."""
    t = current()
    C, F, N = geo.C, geo.F, geo.N
    nw = n_workers()
    cap = t.workspace_bytes // (2 * nw)  # all workers' blocks together within the workspace
    # bytes per tile and sample: padded input (~4), row-transformed (8), V (16) per
    # channel, M (16) per filter
    per_n = (12 * C + max(16 * C, 8 * F) + 16 * F) * itemsize
    # samples per block: the whole batch unless one tile of it exceeds the share
    nb = N if per_n * N <= cap else max(1, cap // per_n)
    nb = -(-N // -(-N // nb))  # balance the batch chunks
    per_tile = per_n * nb
    out = []
    dh, dw = geo.dilation
    phases = [(ph, pw, len(range(ph, geo.out[0], dh)), len(range(pw, geo.out[1], dw)))
              for ph in range(dh) for pw in range(dw)]
    phases = [p for p in phases if p[2] and p[3]]  # dilation beyond the output: empty phases
    total = sum(-(-ho // 2) * -(-wo // 2) for _, _, ho, wo in phases) * -(-N // nb)
    # tiles per block: within the block budget, but enough GEMM columns (winograd_min_gemm_cols)
    # to run BLAS near its peak; within the workspace (all workers' blocks together);
    # at least two blocks per worker where there are enough tiles
    most = max(t.winograd_block_bytes // per_tile, -(-t.winograd_min_gemm_cols // nb))
    most = min(most, cap // per_tile, -(-total // (2 * nw)))
    most = max(1, most)
    for n0 in range(0, N, nb):
        for ph, pw, ho, wo in phases:
            th, tw = -(-ho // 2), -(-wo // 2)
            cu = max(1, min(tw, most))
            cu = -(-tw // -(-tw // cu))  # balance the column chunks
            nt = max(1, min(th, most // cu)) if cu == tw else 1
            for t0 in range(0, th, nt):
                for u0 in range(0, tw, cu):
                    out.append(((ph, pw, ho, wo), t0, min(t0 + nt, th), u0, min(u0 + cu, tw),
                                n0, min(n0 + nb, N)))
    return out


def forward(x, w, bias, geo, dtype, ut=None):
    """``conv(x, w) + bias`` for channels-last ``x`` ``(N, H, W, C)`` whose batch is
    innermost in memory; returns ``(N, Ho, Wo, F)``, a view of a ``(Ho, Wo, F, N)``
    array. ``ut``: the transformed filters as ``(16, F, C)`` when already known (the
    input gradient), else computed from ``w``.

    Small filters: each worker runs whole blocks (input transform, 16 GEMMs, output
    transform) in its own buffers. Large filters (``U`` beyond ``winograd_wide_u_bytes``,
    which would be streamed from memory once per block): blocks are grouped into chunks
    whose ``V`` and ``M`` fit the workspace; the workers transform the chunk's input
    blocks, then split the 16 GEMMs by rows of ``U`` (each ``U`` row block read once
    per chunk, wide GEMMs), then transform the output blocks."""
    t = current()
    N, C, F = geo.N, geo.C, geo.F
    it = np.dtype(dtype).itemsize
    if ut is None:
        ut = transformed_filters(w, geo, dtype).transpose(0, 2, 1)  # (16, F, C), BLAS-transposed
    out = np.empty((*geo.out, F, N), dtype=dtype)
    blocks = _blocks(geo, it)
    lmax = max(_spec_len(b) for b in blocks)  # nt·Qh·nb
    inb = max(4 * C * (_spec_len(b) + (b[4] - b[3] + 1) * (b[6] - b[5])) for b in blocks)
    nw = n_workers()
    bufs = [None] * nw

    def scratch(wid):
        """Per worker: input block, row-transformed block, V (later: s), M (later: y)."""
        if bufs[wid] is None:
            bufs[wid] = (np.empty(inb, dtype=dtype), np.empty(8 * C * lmax, dtype=dtype),
                         np.empty(max(16 * C, 8 * F) * lmax, dtype=dtype),
                         np.empty(16 * F * lmax, dtype=dtype))
        return bufs[wid]

    ctx = (x, geo, dtype, out, bias)
    if 16 * C * F * it < t.winograd_wide_u_bytes:

        def work(wid, spec):
            bb, tb, vb, mb = scratch(wid)
            nt, X = spec[2] - spec[1], _spec_x(spec)
            v = _transform_in(ctx, spec, bb, tb, vb)  # (16, nt, C, Qh·N)
            m = mb[: 16 * F * X].reshape(16, nt, F, X // nt)
            # the junk column is skipped by the GEMM's row stride
            np.matmul(ut[:, None], v[..., : X // nt], out=m)
            _transform_out(ctx, spec, m, vb)

        parallel(work, blocks, dynamic=True)
        return out.transpose(3, 0, 1, 2)

    # wide: chunks of blocks; a block's columns in the chunk are (nt, cu, N) (no junk)
    xs = [_spec_x(b) for b in blocks]
    limit = max(max(xs), t.workspace_bytes // (16 * (C + F) * it))
    chunks, cur, tot = [], [], 0
    for b, xw in zip(blocks, xs):
        if cur and tot + xw > limit:
            chunks.append(cur)
            cur, tot = [], 0
        cur.append((b, tot, tot + xw))
        tot += xw
    chunks.append(cur)
    xc = max(c[-1][2] for c in chunks)
    vbig = np.empty(16 * C * xc, dtype=dtype)
    mbig = np.empty(16 * F * xc, dtype=dtype)
    rows = [(f0, min(f0 + -(-F // nw), F)) for f0 in range(0, F, -(-F // nw))]
    for chunk in chunks:
        X = chunk[-1][2]
        vc = vbig[: 16 * C * X].reshape(16, C, X)
        mc = mbig[: 16 * F * X].reshape(16, F, X)

        def work_in(wid, c, vc=vc):
            spec, x0, x1 = c
            nt, cu, nb = spec[2] - spec[1], spec[4] - spec[3], spec[6] - spec[5]
            v = _transform_in(ctx, spec, *scratch(wid)[:3])  # (16, nt, C, Qh·nb)
            v = v.reshape(16, nt, C, cu + 1, nb)[:, :, :, :cu]
            dst = vc[:, :, x0:x1].reshape(16, C, nt, cu, nb).transpose(0, 2, 1, 3, 4)
            np.copyto(dst, v)

        def gemm(wid, r, vc=vc, mc=mc):
            np.matmul(ut[:, r[0]:r[1]], vc, out=mc[:, r[0]:r[1]])

        def work_out(wid, c, mc=mc):
            spec, x0, x1 = c
            nt, cu, nb = spec[2] - spec[1], spec[4] - spec[3], spec[6] - spec[5]
            _, _, vb, mb = scratch(wid)
            m = mb[: 16 * F * nt * cu * nb].reshape(16, nt, F, cu, nb)
            np.copyto(m, mc[:, :, x0:x1].reshape(16, F, nt, cu, nb).transpose(0, 2, 1, 3, 4))
            _transform_out(ctx, spec, m.reshape(16, nt, F, cu * nb), vb)

        parallel(work_in, chunk, dynamic=True)
        parallel(gemm, rows)
        parallel(work_out, chunk, dynamic=True)
    return out.transpose(3, 0, 1, 2)


def _spec_x(spec):
    """Output-tile columns of a block: ``nt · cu · nb``."""
    _, t0, t1, u0, u1, n0, n1 = spec
    return (t1 - t0) * (u1 - u0) * (n1 - n0)


def _spec_len(spec):
    """Columns of a block in the flat layout: ``nt · (cu + 1) · nb`` (one junk tile column)."""
    _, t0, t1, u0, u1, n0, n1 = spec
    return (t1 - t0) * (u1 - u0 + 1) * (n1 - n0)


def _transform_in(ctx, spec, bb, tbb, vb):
    """``V = Bᵀ d B`` of one block; returns ``(16, nt, C, Qh·N)`` in ``vb``.

    Flat layout: the block's padded input is kept as ``(row parity, column parity,
    rows, C, Qh, N)``, so every shift the transform needs (next tile row, next tile
    column) is a flat offset of one contiguous buffer, and every operation is one
    contiguous NumPy call (strided ufunc calls cost 2-3× more). The price is one junk
    tile column per ``(row, channel)`` (``Qh = cu + 1``), which the GEMM skips through
    its row stride.
    """
    x, geo, dtype, _, _ = ctx
    (ph, pw, _, _), t0, t1, u0, u1, n0, n1 = spec
    nt, cu, N = t1 - t0, u1 - u0, n1 - n0  # N: the block's samples
    C = geo.C
    xb = np.moveaxis(x, 0, -1)[..., n0:n1]  # (H, W, C, N)
    H, W = geo.sp
    pb0, pb1 = geo.pb
    dh, dw = geo.dilation
    value = geo.value
    Qh = cu + 1
    P = C * Qh * N  # one (row, column parity) plane
    # ---- padded input: phase rows 2·t0 + i (i = 2·r + row parity), phase columns
    # 2·u0 + 2·jj + column parity
    blk = bb[: 4 * (nt + 1) * P].reshape(2, 2, nt + 1, C, Qh, N)
    spans = []
    for par in range(2):
        j0 = 2 * u0 + par  # phase column j0 + 2·jj <-> input column pw + dw·(j0 + 2·jj) - pb1
        lo = max(0, -(-(pb1 - pw - dw * j0) // (2 * dw)))
        hi = min(Qh, (W - 1 + pb1 - pw - dw * j0) // (2 * dw) + 1)
        spans.append((lo, hi, pw + dw * (j0 + 2 * lo) - pb1))
    for rp in range(2):
        # block row r of this parity <-> input row base + 2·dh·r
        base = ph + dh * (2 * t0 + rp) - pb0
        rlo = min(nt + 1, max(0, -(base // (2 * dh))))  # ceil(-base / (2·dh))
        rhi = max(rlo, min(nt + 1, (H - 1 - base) // (2 * dh) + 1))
        rows = slice(base + 2 * dh * rlo, base + 2 * dh * (rhi - 1) + 1, 2 * dh)
        for par, (lo, hi, c0) in enumerate(spans):
            b = blk[rp, par]  # (nt + 1, C, Qh, N)
            b[:rlo] = value
            b[rhi:] = value
            if rlo == rhi:
                continue
            if lo < hi:
                cols = slice(c0, c0 + 2 * dw * (hi - lo - 1) + 1, 2 * dw)
                np.copyto(b[rlo:rhi, :, lo:hi], xb[rows, cols].transpose(0, 2, 1, 3))
            if lo:
                b[rlo:rhi, :, :lo] = value
            if hi < Qh:
                b[rlo:rhi, :, max(hi, lo):] = value
    # ---- rows: t[ξ, column parity] (nt·P values each), contiguous operands
    L = nt * P
    tb = tbb[: 8 * L].reshape(4, 2, L)
    for par in range(2):
        ev = blk[0, par].reshape(-1)  # rows 0, 2, …, 2·nt
        od = blk[1, par].reshape(-1)  # rows 1, 3, …, 2·nt + 1
        e0, e1, o0, o1 = ev[:L], ev[P:], od[:L], od[P:]
        np.subtract(e0, e1, out=tb[0, par])
        np.add(o0, e1, out=tb[1, par])
        np.subtract(e1, o0, out=tb[2, par])
        np.subtract(o0, o1, out=tb[3, par])
    # ---- columns: the next tile column is N values further
    v = vb[: 16 * L].reshape(16, L)
    K = L - N
    for xi in range(4):
        e, o = tb[xi, 0], tb[xi, 1]
        np.subtract(e[:K], e[N:], out=v[4 * xi, :K])
        np.add(o[:K], e[N:], out=v[4 * xi + 1, :K])
        np.subtract(e[N:], o[:K], out=v[4 * xi + 2, :K])
        np.subtract(o[:K], o[N:], out=v[4 * xi + 3, :K])
    v[:, K:] = 0  # the last junk column
    return v.reshape(16, nt, C, Qh * N)


def _transform_out(ctx, spec, m, vb):
    """``Y = Aᵀ M A`` (+ bias) of one block from ``m`` ``(16, nt, F, cu·N)`` (contiguous,
    consumed: used as scratch) into the output; ``vb`` holds ``8·F·nt·cu·N`` values."""
    _, geo, dtype, out, bias = ctx
    _, t0, t1, u0, u1, n0, n1 = spec
    nt, cu, N = t1 - t0, u1 - u0, n1 - n0
    F = geo.F
    if bias is not None:
        # M[1,1] enters every output of the tile with weight 1
        m[5] += bias[:, None]
    L = nt * F * cu * N
    m = m.reshape(4, 4, L)
    # over the columns: s[ξ, b]; then over the rows: y[a, b] (into M, consumed)
    s = vb[: 8 * L].reshape(4, 2, L)
    np.add(m[:, 0], m[:, 1], out=s[:, 0])
    np.add(s[:, 0], m[:, 2], out=s[:, 0])
    np.subtract(m[:, 1], m[:, 2], out=s[:, 1])
    np.subtract(s[:, 1], m[:, 3], out=s[:, 1])
    y = m.reshape(-1)[: 4 * L].reshape(2, 2, L)
    np.add(s[0], s[1], out=y[0])
    np.add(y[0], s[2], out=y[0])
    np.subtract(s[1], s[2], out=y[1])
    np.subtract(y[1], s[3], out=y[1])
    y = y.reshape(2, 2, nt, F, cu, N)
    for a, b, nr, nc, rows, cols in _tile_outputs(spec, geo.dilation):
        if nr and nc:
            dst = out[rows, cols, :, n0:n1][:nr, :nc]
            np.copyto(dst, y[a, b, :nr, :, :nc].transpose(0, 2, 1, 3))  # (nr, nc, F, N)


def _tile_outputs(spec, dilation):
    """For each position ``(a, b)`` of the block's 2×2 tiles: how many tile rows and
    columns hold an output (``nr``, ``nc``; partial tiles at the far edges hold none),
    and the output rows and columns they are (slices to cut ``[:nr]`` / ``[:nc]``)."""
    (ph, pw, ho, wo), t0, t1, u0, u1, _, _ = spec
    dh, dw = dilation
    for a in range(2):
        r0 = 2 * t0 + a
        nr = len(range(r0, min(2 * t1, ho), 2))
        for b in range(2):
            c0 = 2 * u0 + b
            nc = len(range(c0, min(2 * u1, wo), 2))
            yield (a, b, nr, nc, slice(ph + dh * r0, None, 2 * dh),
                   slice(pw + dw * c0, None, 2 * dw))


# ---------------------------------------------------------------------------------------
# weight gradient: the adjoint of the forward, F(3×3, 2×2)


def weight_grad(gy, x, geo, dtype):
    """``∂L/∂w`` ``(3, 3, C, F, 1)`` for the Winograd-eligible forward.

    ``Y = Aᵀ[(G g Gᵀ) ⊙ V]A`` per tile is linear in the transformed filters, so
    ``∂L/∂U[ξν] = Σ_tiles (A ∂Y Aᵀ)[ξν] ⊗ V[ξν]``: 16 GEMMs ``V (C, cols) · Ĝᵀ (cols, F)``
    contracting over the tiles and the batch, with the cotangent tiles transformed
    like ``Ĝ = A ∂Y Aᵀ`` (4×4 from 2×2: additions only) and ``V`` from the same input
    transform as the forward. Then ``∂L/∂g = Gᵀ (∂L/∂U) G`` over the 3×3 taps. Output
    positions of partial tiles and the junk columns of the flat layout carry a zero
    cotangent, so they add nothing."""
    C, F = geo.C, geo.F
    it = np.dtype(dtype).itemsize
    blocks = _blocks(geo, it)
    lmax = max(_spec_len(b) for b in blocks)
    inb = max(4 * C * (_spec_len(b) + (b[4] - b[3] + 1) * (b[6] - b[5])) for b in blocks)
    nw = n_workers()
    bufs = [None] * nw
    ctx = (x, geo, dtype, None, None)
    gyb = np.moveaxis(gy, 0, -1)  # (Ho, Wo, F, N)

    def work(wid, spec, acc):
        if bufs[wid] is None:
            bufs[wid] = (np.empty(inb, dtype=dtype), np.empty(8 * C * lmax, dtype=dtype),
                         np.empty(16 * C * lmax, dtype=dtype),
                         np.empty(24 * F * lmax, dtype=dtype),
                         np.empty((16, C, F), dtype=dtype))
        bb, tb, vb, gb, tmp = bufs[wid]
        nt = spec[2] - spec[1]
        v = _transform_in(ctx, spec, bb, tb, vb)  # (16, nt, C, Qh·N)
        g = _transform_gy(gyb, geo, spec, gb)  # (16, nt, F, Qh·N)
        for t in range(nt):
            np.matmul(v[:, t], g[:, t].transpose(0, 2, 1), out=tmp)
            acc += tmp

    total = parallel_sum(work, blocks, (16, C, F), dtype)
    gk = np.einsum("ai,bj->ijab", _G, _G).reshape(9, 16).astype(dtype)
    gw = np.matmul(gk, total.reshape(16, C * F))
    return gw.reshape(3, 3, C, F, 1)


def _transform_gy(gyb, geo, spec, gb):
    """``Ĝ = A ∂Y Aᵀ`` of one block's cotangent tiles as ``(16, nt, F, Qh·N)`` (the
    column layout of :func:`_transform_in`; zero where no output is)."""
    _, t0, t1, u0, u1, n0, n1 = spec
    nt, cu, N = t1 - t0, u1 - u0, n1 - n0
    F = geo.F
    Qh = cu + 1
    L = nt * F * Qh * N
    g = gb[: 4 * L].reshape(2, 2, nt, F, Qh, N)
    for a, b, nr, nc, rows, cols in _tile_outputs(spec, geo.dilation):
        dst = g[a, b]
        if nr and nc:
            src = gyb[rows, cols, :, n0:n1][:nr, :nc]
            np.copyto(dst[:nr, :, :nc], src.transpose(0, 2, 1, 3))
            dst[nr:] = 0
            dst[:nr, :, nc:] = 0
        else:
            dst[...] = 0
    g = g.reshape(2, 2, L)
    # rows: r[ξ, b] = Σ_a A[ξ, a] ∂Y[a, b]; A = [[1, 0], [1, 1], [1, -1], [0, -1]]
    r = gb[16 * L: 24 * L].reshape(4, 2, L)
    np.copyto(r[0], g[0])
    np.add(g[0], g[1], out=r[1])
    np.subtract(g[0], g[1], out=r[2])
    np.negative(g[1], out=r[3])
    # columns: Ĝ[ξ, ν] = Σ_b A[ν, b] r[ξ, b]  (over g, consumed)
    out = gb[: 16 * L].reshape(4, 4, L)
    np.copyto(out[:, 0], r[:, 0])
    np.add(r[:, 0], r[:, 1], out=out[:, 1])
    np.subtract(r[:, 0], r[:, 1], out=out[:, 2])
    np.negative(r[:, 1], out=out[:, 3])
    return out.reshape(16, nt, F, Qh * N)


# ---------------------------------------------------------------------------------------
# registry entries


def run_forward(x, w, bias, geo, dtype):
    return forward(x, w, bias, geo, dtype)


def run_weight_grad(gy, x, w, geo, needs, dtype):
    return None, weight_grad(gy, x, geo, dtype)


def run_input_grad(gy, x, w, geo, needs, dtype):
    """The flipped, transposed filters' transform straight from ``w`` (no copy of the
    transposed weights), then this forward on the (cropped) cotangent."""
    g, _, g2, padded = grad_input(gy, w, geo, dtype)
    ut = transformed_filters(w, geo, dtype, flip=True)
    gx = forward(g, None, None, g2, dtype, ut=ut)
    return (unpad(gx, geo) if padded else gx), None
