"""Last-dim-innermost NumPy path: inputs whose last convolved dim is innermost in
memory (e.g. the canonical ``S C B T`` layout convolved over S and T).

Rows ``(N, W)`` of one channel are long contiguous runs and the windows of the last
dim are flat shifts of them (:class:`_LastInnermost`): columns without transposition,
``out[o] (F, N·W) = Wᵀ · cols`` per outer output position, the GEMM writing the output
rows in place when ``Wo == W``. In 2-D with stride 1 over rows the column buffer is a
ring of ``kh`` row blocks (one new input row per output row, the weights' row taps
permuted to the ring's phase; for the weight gradient one accumulator per phase).

Entries: ``numpy.last_innermost`` (forward and weight gradient) and
``numpy.last_innermost_input_grad`` (the stride-1 input gradient as this path's
convolution of the cotangent, whose last dim is then innermost too).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...pad import fill_border_numpy
from ..thresholds import current
from ._common import cl_strides, grad_conv, grad_input, itemsize, weight_matrix
from ._copies import parallel_copy
from ._runtime import n_workers, parallel, scratch

__all__ = ["applies", "applies_input_grad", "forward", "weight_grad", "input_grad"]


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
            src = scratch("li", (*geo.padded[:-1], C, N, geo.padded[-1]), dtype)
            centre = (tuple(slice(b, b + n) for b, n in zip(geo.pb[:-1], geo.sp[:-1]))
                      + (slice(None), slice(None), slice(geo.pb[-1], geo.pb[-1] + geo.sp[-1])))
            parallel_copy(src[centre], xv)
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
    wt[:, :KC] = weight_matrix(w, geo, dtype)[0].T
    if nb:
        wt[:, KC] = bias
    out = np.empty((*geo.out[:-1], F, N, wo), dtype=dtype)
    nw = n_workers()
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

        parallel(work_ring, blocks, dynamic=True)
    else:
        parallel(work, li.outer_out, dynamic=True)
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
    nw = n_workers()
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

        parallel(work_ring, blocks)
        acc = np.zeros((KC, F), dtype=dtype)
        for s_ in st:
            if s_ is None:
                continue
            for ph in range(kh):
                for j in range(kh):
                    i = (j - ph) % kh
                    acc[i * rb:(i + 1) * rb] += s_[2][ph, j * rb:(j + 1) * rb]
    else:
        parallel(work, li.outer_out)
        acc = sum(s[2] for s in st if s is not None)
    gw = acc.reshape(*geo.k, geo.C, F)
    return np.ascontiguousarray(gw[..., None])  # (*k, C, F, 1)



# ---------------------------------------------------------------------------------------
# registry entries


def _why_not(spec, st):
    """The path's conditions for data of strides ``st`` (channels-last, elements): the
    last convolved dim innermost, stride 1 along it, one group, few channels, long
    flat rows, and the padded input within the workspace."""
    t = current()
    if st is None or st[-2] != 1 or spec.sp[-1] < 2:
        return "the last convolved dim is not innermost in memory"
    if spec.G != 1:
        return f"{spec.G} groups: one group only"
    if spec.stride[-1] != 1:
        return f"stride {spec.stride[-1]} along the last convolved dim: stride 1 only"
    if spec.C > t.li_max_c:
        return f"{spec.C} channels > Tuning.li_max_c = {t.li_max_c}"
    run = spec.N * spec.padded[-1]
    if run < max(t.li_min_run, 1):
        return f"flat rows of {run} values < Tuning.li_min_run = {t.li_min_run}"
    nbytes = math.prod(spec.padded) * spec.C * spec.N * itemsize(spec)
    if nbytes > t.workspace_bytes:
        return f"padded input of {nbytes} bytes > Tuning.workspace_bytes = {t.workspace_bytes}"
    return None


def applies(spec, layout):
    return _why_not(spec, cl_strides(spec, layout))


def applies_input_grad(spec, layout):
    if not spec.constant_padding:
        return f"padding {spec.value!r}: constant padding only"
    if any(s != 1 for s in spec.stride):
        return f"stride {spec.stride}: only a stride-1 input gradient is a plain convolution"
    if layout.gy_memory is None:
        return "a gradient path"
    return _why_not(grad_conv(spec)[1], cl_strides(spec, layout, "gy"))


def forward(x, w, bias, geo, dtype):
    return _forward_li(x, w, geo, dtype, bias)


def weight_grad(gy, x, w, geo, needs, dtype):
    return None, _weight_grad_li(gy, x, geo, dtype)


def input_grad(gy, x, w, geo, needs, dtype):
    g, wt, g2, _ = grad_input(gy, w, geo, dtype)
    return _forward_li(g, wt, g2, dtype, None), None
