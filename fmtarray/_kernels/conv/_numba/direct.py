"""``numba.direct``: dense and grouped convolution on channels-innermost data, compiled.

Serves the forward and both gradients of a convolution over any number of dims (one
group, or groups of more than one channel; any stride, dilation and padding) on inputs that hold
their channels innermost in memory (``(N, *sp, C)`` C-contiguous: NHWC data formatted
``"BSSC"``); a cotangent in another memory order is copied channels-last.

Each of the three is one pattern: every *position* of a target sums, over the taps of
its window in a source, products of source values with weights. The source is padded
by one copy (or read in place); a window is a few *runs* of contiguous source values —
each tap's channels, or, with one group and neighbouring taps adjacent in the source,
a whole window row of taps and channels. The SIMD tiles of :mod:`._simd` sum a block of
positions × filter vectors at once over each run, the partial sums in vector registers.

* forward: source the (padded) input, target the output; positions ``o``, window at
  ``o·s``, taps at ``k·dil``.
* input gradient: source the cotangent (padded with zeros), target the input (or the
  padded input, whose padding's adjoint folds it back): by *phase* ``u mod s`` of the
  input position ``u``, the taps with ``(u - k·dil) ≡ 0 (mod s)`` reach cotangent
  ``(u - k·dil)/s``; one pass per phase, no zeros inserted, no scatter.
* weight gradient: the forward's windows, summed against the cotangent over the
  positions (a fixed number of position blocks whose partials are added in block order:
  the bits do not depend on the thread count).

Zero padding is not materialised where a channels-last source can be read in place
(:mod:`.plans`' border groups: each position sums only the taps of its window inside
the source): the forward and the weight gradient on the input when it has at least
``Tuning.direct_in_place_ratio`` times the weights' bytes, the input gradient on a
channels-last cotangent of ``direct_input_grad_in_place_ratio`` times them. The terms dropped are ``0 · w`` (forward; weights checked
finite, else the padded copy), ``0 · gy`` (weight gradient; a non-finite result is
recomputed on the padded copy, whose ``0 · inf`` gives the definition's NaN) and
``0 · w`` (input gradient; this entry runs with finite weights, non-finite ones go to
the exact scatter, as for the NumPy entries). Otherwise every product of the definition
is formed, padding included, and each result is one running sum in a fixed order.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ...pad import fill_border_numpy
from .._numpy import winograd
from .._numpy._common import all_finite, cl_strides, row_ranges, sum_blocks, unpad
from .._numpy.relayout import canonical_layout
from .._numpy._copies import parallel_copy
from .._numpy._runtime import dynamic_blocks, parallel, parallel_into, scratch
from .._numpy._sums import in_order, parallel_parts, parallel_sum
from ..thresholds import current
from .depthwise import _c_strides
from .plans import (border_gpos, border_plan, border_rows, bundles, forward_plan, gpos,
                    group_items, input_grad_border_plan, input_grad_border_rows,
                    input_grad_plans, span_plan)

__all__ = ["applies", "applies_op", "applies_input_grad", "forward", "input_grad", "weight_grad"]


_simd = []  # [the module], once a kernel has run (importing it imports Numba)


def _k():
    if not _simd:
        from . import _simd as k

        _simd.append(k)
    return _simd[0]


def applies(spec, layout):
    """The forward's and the weight gradient's domain."""
    if spec.Cg == 1 and spec.G > 1:
        return "channel-wise (one channel per group): numba.depthwise's domain"
    t = current()
    if (spec.Cg * spec.Fg > t.direct_max_cf
            and winograd.applies_forward(spec, canonical_layout(spec, layout)) is None):
        return (f"{spec.Cg}×{spec.Fg} channels × filters > direct_max_cf ({t.direct_max_cf}) "
                "where numpy.winograd applies (on a canonical copy): its fewer multiplies win")
    st = cl_strides(spec, layout, "x")
    if st is None or st != _c_strides((spec.N, *spec.sp, spec.C)):
        if spec.Cg * spec.Fg > t.direct_copy_max_cf:
            return (f"x is not channels-innermost and {spec.Cg}×{spec.Fg} channels × filters > "
                    f"direct_copy_max_cf ({t.direct_copy_max_cf}): the BLAS entries read it "
                    "in place faster than a channels-last copy pays")
    return None  # other memory orders (and any cotangent's) are copied channels-last


def applies_op(op, spec, layout):
    """The weight gradient's further condition: one group's weights of fewer than
    ``Tuning.direct_wgrad_max_bytes`` (more: numpy.gemm_wide's BLAS GEMM is faster)."""
    if op != "weight_grad" or spec.G > 1:
        return None
    wb = spec.K * spec.C * spec.F * np.dtype(spec.dtype).itemsize
    limit = current().direct_wgrad_max_bytes
    if wb >= limit:
        return (f"weights of {wb} bytes >= direct_wgrad_max_bytes ({limit}): BLAS's GEMM "
                "(numpy.gemm_wide) is faster")
    return None


def applies_input_grad(spec, layout):
    r = applies(spec, layout)
    if r is not None:
        return r
    st = cl_strides(spec, layout, "x")
    t = current()
    positions = spec.N * math.prod(spec.out)
    if (spec.Cg * spec.Fg > t.direct_max_cf
            and positions < t.direct_input_grad_min_positions):
        return (f"{spec.Cg}×{spec.Fg} channels × filters > direct_max_cf ({t.direct_max_cf}) "
                f"over {positions} output positions < direct_input_grad_min_positions "
                f"({t.direct_input_grad_min_positions}): the weights' transposed copy costs "
                "more than it saves")
    if (st is None or st != _c_strides((spec.N, *spec.sp, spec.C))) and (
            spec.Cg < t.direct_copy_min_cg):
        return (f"x is not channels-innermost and {spec.Cg} channels per group < "
                f"direct_copy_min_cg ({t.direct_copy_min_cg}): a few-channel input gradient "
                "fills the vectors poorly")
    return None


def padded_input(x, spec, dtype, channels=None):
    """``(N, *padded, channels)`` C-contiguous (``channels`` ≥ ``C``, the extra ones
    zero; default ``C``): ``x`` itself when it already is, else a copy in a scratch
    buffer of the running kernel call (reused between calls: no fresh pages to fault
    in, about 0.1 ms per MiB)."""
    c = spec.C if channels is None else channels
    if (not any(spec.pb + spec.pa) and c == spec.C and x.dtype == dtype
            and x.flags.c_contiguous):
        return x
    xp = scratch("padded x", (spec.N, *spec.padded, c), dtype)
    if c > spec.C:
        xp[..., spec.C:] = 0
    inner = ((slice(None),) + tuple(slice(b, b + n) for b, n in zip(spec.pb, spec.sp))
             + (slice(0, spec.C),))
    parallel_copy(xp[inner], x)
    fill_border_numpy(xp[..., :spec.C], spec.pb, spec.pa, tuple(range(1, spec.d + 1)),
                      spec.value)
    return xp


def padded_cotangent(gy, spec, pads, channels, dtype):
    """The cotangent zero-padded by ``pads`` (before, after) per convolved dim and to
    ``channels``, C-contiguous, in a scratch buffer of the running kernel call."""
    gp = scratch("padded gy", (spec.N, *(o + a + b for o, (a, b) in zip(spec.out, pads)),
                               channels), dtype)
    if channels > spec.F:
        gp[..., spec.F:] = 0
    inner = ((slice(None),) + tuple(slice(a, a + o) for o, (a, _) in zip(spec.out, pads))
             + (slice(0, spec.F),))
    parallel_copy(gp[inner], gy)
    fill_border_numpy(gp[..., :spec.F], tuple(a for a, _ in pads), tuple(b for _, b in pads),
                      tuple(range(1, spec.d + 1)), 0.0)
    return gp


_widths: dict = {}


def _width(dtype, n):
    """``(lanes, narrow)`` of the vectors for ``n`` filters (see :data:`._simd.NARROW`)."""
    key = (dtype, n)
    w = _widths.get(key)
    if w is None:
        k = _k()
        full = k.VECTOR_BYTES // np.dtype(dtype).itemsize
        narrow = max([0, *(i for i in k.NARROW if n <= full >> i and full >> i >= 2)])
        w = _widths[key] = (full >> narrow, narrow)
    return w


def _vectors(a, lanes):
    """``a`` with its last dim zero-padded to whole vectors of ``lanes``, contiguous."""
    n = a.shape[-1]
    if n % lanes == 0:
        return np.ascontiguousarray(a)
    out = np.zeros((*a.shape[:-1], -(-n // lanes) * lanes), dtype=a.dtype)
    out[..., :n] = a
    return out


def packed(a, groups, lanes, dtype):
    """``a`` (``(N, *out, F)``, any strides) as ``(N, *out, groups, Fp)`` C-contiguous in
    ``dtype``, each group's ``F/groups`` values zero-padded to whole vectors of ``lanes``:
    one parallel blocked copy (none when ``a`` already is that)."""
    n = a.shape[-1] // groups
    m = -(-n // lanes) * lanes
    a = a.reshape(*a.shape[:-1], groups, n)  # splitting the last dim: a view
    if m == n and a.dtype == dtype and a.flags.c_contiguous:
        return a
    out = scratch("packed gy", (*a.shape[:-1], m), dtype)
    if m > n:
        out[..., n:] = 0
    parallel_copy(out[..., :n], a)
    return out


def output(shape, dtype):
    """``np.empty(shape)`` with one 64-byte vector of slack past its end (the forward
    tiles read whole vectors back when they sum a reduction in blocks)."""
    n = math.prod(shape)
    return np.empty(n + 64 // np.dtype(dtype).itemsize, dtype=dtype)[:n].reshape(shape)


def forward(x, w, bias, spec, dtype):
    wm = np.asarray(w, dtype=dtype).transpose(spec.d + 2, *range(spec.d + 2))  # (G, *k, Cg, Fg)
    wt = wm.reshape(spec.G, spec.K * spec.Cg, spec.Fg)
    y = output((spec.N, *spec.out, spec.F), dtype)
    if in_place(x, wt, spec, dtype):
        return _border_run(x, wt, bias, spec, y, dtype)
    src = padded_input(x, spec, dtype)
    if _spans(spec, wt):
        groups, spans, empty = span_plan(spec)
        if groups:
            y = _run_groups(src, groups, [wt] * len(groups), bias, y, dtype, spans)
        if len(empty):
            y.reshape(-1, spec.F)[empty // spec.F] = 0 if bias is None else np.asarray(
                bias, dtype)
        return y
    pos, ypos, offs, R = forward_plan(spec)
    return _run_groups(src, [(pos, ypos, offs, R, None)], [wt], bias, y, dtype)


def _spans(spec, wt):
    """Whether the padded forward skips its products with the zero padding
    (:func:`.plans.span_plan`): 2-d, one group, the taps of a window row adjacent (runs of
    whole rows), zero padding, and finite weights (``0 · ±inf`` is NaN, which the
    products with the padding would form)."""
    return (len(spec.k) == 2 and spec.G == 1 and spec.dilation[-1] == 1
            and all(d == 1 for d in spec.lhs_dilation) and any(spec.pb + spec.pa)
            and spec.constant_padding and float(spec.value) == 0.0 and all_finite(wt))


def in_place(x, wt, spec, dtype):
    """Whether the forward reads the input where it lies, its zero padding never
    materialised (:func:`border_plan`): the input channels-last C-contiguous in
    ``dtype``, padded (else it is read in place anyway) with zeros, weights small next to
    the input (the border groups gather their rows of them) and finite (a padded copy
    forms ``0 · w`` at every padded tap: ``0 · ±inf = NaN``, kept by the copy)."""
    return (any(spec.pb + spec.pa) and spec.constant_padding and float(spec.value) == 0.0
            and x.dtype == dtype and x.flags.c_contiguous
            and wt.nbytes * current().direct_in_place_ratio <= x.nbytes and all_finite(wt))


def _border_run(x, wt, bias, spec, y, dtype):
    """The forward by the groups of :func:`border_plan`, each with its rows of the
    weights; outputs whose window is all padding get the bias. Returns the output
    (``y``, or its replacement: :func:`_run_groups`)."""
    groups, empty = border_plan(spec)
    if groups:
        y = _run_groups(x, groups, group_weights(wt, border_rows(spec), 1), bias, y, dtype)
    if len(empty):  # (every output, when no window reaches the input)
        y.reshape(-1, spec.F)[empty // spec.F] = 0 if bias is None else np.asarray(bias, dtype)
    return y


def _run_groups(src, groups, wts, bias, out, dtype, spans=None):
    """``out[ypos[p] + g·n + f] = bias + Σ`` over each group's positions ``(pos, ypos,
    offs, R, ·)`` (a plan of :mod:`.plans`, or one of its border groups), the group's
    weights ``wts[i]`` ``(G, T·R, n)``, in one parallel phase whose items go to the
    workers as they come free: blocks of positions, or, for weights of at least
    ``Tuning.direct_filter_split_bytes``, blocks of filter vectors each over all the
    positions (or as few blocks of them as keep the workers busy). ``spans[i]``: group
    ``i``'s runs and offsets ``(t0, t1, k0, k1)`` (default all of them). ``out`` is fresh
    (:func:`output`); returns it, or the copy that :func:`.._numpy._runtime.parallel_into`
    finished when a pool thread was stuck in an item."""
    k = _k()
    nv_max = k.NV_MAX
    G, n = wts[0].shape[0], wts[0].shape[2]
    lanes, narrow = _width(dtype, n)
    b = np.zeros((G, n), dtype) if bias is None else np.asarray(bias, dtype).reshape(G, n)
    bf = _vectors(b, lanes).reshape(-1)
    padded = {}  # groups sharing one weights array share its padded form
    for wt in wts:
        if id(wt) not in padded:
            padded[id(wt)] = _vectors(wt, lanes)
    wts = [padded[id(wt)] for wt in wts]
    if spans is None:
        spans = [(0, g[2].shape[1], 0, g[3]) for g in groups]
    nvec = wts[0].shape[2] // lanes
    sf = src.reshape(-1)
    t = current()
    wblock = t.direct_weight_block_bytes
    nb = dynamic_blocks()
    vblocks = ((0, nvec),)
    if wts[0].nbytes // G >= t.direct_filter_split_bytes and nvec > nv_max and nb > 1:
        vblocks = tuple((v, min(v + nv_max, nvec)) for v in range(0, nvec, nv_max))
        nb = -(-nb // len(vblocks))
    flat = [w.reshape(-1) for w in wts]

    def run(_w, item, of):
        for i, q0, q1, va, vb in item:
            pos, ypos, offs, R, _ = groups[i]
            k.forward_positions(sf, pos, ypos, offs, R, flat[i], bf, wts[i].shape[2], of, n,
                                narrow, wblock, q0, q1, va, vb, spans[i])

    return parallel_into(run, group_items(groups, nb, vblocks), out)


def _input_grad(gy, w, spec, dtype):
    w = np.asarray(w, dtype=dtype)
    # read where it lies (see below) unless the groups' rows of big weights cost more
    if (gy.dtype == dtype and gy.flags.c_contiguous
            and w.nbytes * current().direct_input_grad_in_place_ratio <= gy.nbytes):
        return _input_grad_in_place(gy, w, spec, dtype)
    tshape, pads, passes, empty = input_grad_plans(spec)
    gp = padded_cotangent(gy, spec, pads, spec.F, dtype)
    gx = output(tshape, dtype)
    if empty:
        gx[...] = 0
    for pos, ypos, offs, R, taps in passes:
        gx = _run_groups(gp, [(pos, ypos, offs, R, None)], [_transposed(w, taps, spec)], None,
                         gx, dtype)
    return gx if spec.constant_padding else unpad(gx, spec)


def _transposed(w, taps, spec):
    """The weights of ``taps`` as the input gradient reads them: ``(G, T·Fg, Cg)``, by
    the compiled blocked copy of :mod:`._copy`, its taps split over the workers (from
    ``4 · Tuning.copy_block`` values, as :func:`.._numpy._copies.parallel_copy`)."""
    from ._copy import transpose_taps

    taps = np.asarray(taps).reshape(-1, spec.d)
    flat = np.ravel_multi_index(tuple(taps.T), spec.k).astype(np.int64)
    w4 = w.reshape(spec.K, spec.Cg, spec.Fg, spec.G)
    out = np.empty((spec.G, len(flat), spec.Fg, spec.Cg), dtype=w.dtype)
    # small weights on this thread: waking the pool costs more than the copy
    blocks = 1 if out.size < 4 * current().copy_block else min(len(flat), dynamic_blocks())
    parallel(lambda _w, r: transpose_taps(w4, flat, out, r[0], r[1]),
             row_ranges(len(flat), max(1, blocks)), dynamic=True)
    return out.reshape(spec.G, -1, spec.Cg)


def _input_grad_in_place(gy, w, spec, dtype):
    """The input gradient on the unpadded cotangent (channels-last C-contiguous): the
    targets of each phase grouped by the taps that read inside it
    (:func:`input_grad_border_plan`), one parallel phase for all. Dropping the taps that
    would read the cotangent's zero padding drops only ``0 · w`` terms: this entry runs
    with finite weights (non-finite ones go to the exact scatter)."""
    tshape, groups, zero = input_grad_border_plan(spec)
    gx = output(tshape, dtype)
    if groups:
        taps = np.stack(np.unravel_index(np.arange(spec.K), spec.k), axis=1)
        wt = _transposed(w, taps, spec)  # (G, K·Fg, Cg): rows tap·Fg + f
        gx = _run_groups(gy, groups, group_weights(wt, input_grad_border_rows(spec), 1), None,
                         gx, dtype)
    if len(zero):
        gx.reshape(-1, spec.C)[zero // spec.C] = 0
    return gx if spec.constant_padding else unpad(gx, spec)


#: output positions per weight-gradient tile
WGRAD_TILE_POSITIONS = 128


def _weight_grad(gy, x, spec, dtype):
    lanes, narrow = _width(dtype, spec.Fg)
    gp = packed(gy, spec.G, lanes, dtype)
    wbytes = spec.K * spec.Cg * spec.F * dtype.itemsize
    if (any(spec.pb + spec.pa) and spec.constant_padding and float(spec.value) == 0.0
            and x.dtype == dtype and x.flags.c_contiguous
            and wbytes * current().direct_in_place_ratio <= x.nbytes
            and not len(border_plan(spec)[1])):  # (as the forward's rule, see in_place)
        acc = _border_weight_grad(x, gp, spec, dtype)
        if all_finite(acc):  # else a non-finite cotangent may have met the padding
            return _gw(acc, spec)
    pos, _, offs, R = forward_plan(spec)
    acc = _weight_grad_sum(padded_input(x, spec, dtype).reshape(-1),
                           [(pos, gpos(spec, gp.shape[-1]), offs, R)], gp, spec, dtype)[0]
    return _gw(acc, spec)


def _gw(acc, spec):
    """``(G, K·Cg, Fp)`` sums as MATLAB's ``(*k, Cg, Fg, G)``."""
    gw = acc[..., :spec.Fg].reshape(spec.G, *spec.k, spec.Cg, spec.Fg)
    return gw.transpose(*range(1, spec.d + 3), 0)


def _border_weight_grad(x, gp, spec, dtype):
    """The weight gradient on the unpadded input, by the groups of :func:`border_plan`:
    each group sums into rows of its own, added into the taps' rows at the end."""
    groups, _ = border_plan(spec)
    where = border_gpos(spec, gp.shape[-1])
    parts = _weight_grad_sum(x.reshape(-1), [(g[0], q, g[2], g[3]) for g, q in
                                             zip(groups, where)], gp, spec, dtype)
    return summed_rows(parts, border_rows(spec), spec.K * spec.Cg, 1)


def group_weights(wt, rows, axis):
    """Each border group's rows of the weights ``wt`` (rows along ``axis``; ``rows``: the
    plan's :func:`.plans.border_rows`), by one gather: views of it, or ``wt`` itself for
    a group that reads all of them."""
    idx, spans, _ = rows
    cat = np.take(wt, idx, axis=axis) if len(idx) else None
    cut = (slice(None),) * axis
    return [wt if sp is None else cat[cut + (slice(*sp),)] for sp in spans]


def summed_rows(parts, rows, total, axis):
    """The border groups' sums over their rows (``parts``, rows along ``axis`` 0 or 1,
    groups of weights before it; ``rows``: the plan's :func:`.plans.border_rows`) added,
    group by group from zeros, into the ``total`` rows of the whole gradient
    (:mod:`._scatter`)."""
    from ._scatter import add_rows

    cat = np.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]
    cat3 = cat if axis == 1 else cat[None]
    acc = np.zeros((cat3.shape[0], total, cat3.shape[2]), dtype=cat.dtype)
    add_rows(acc, rows[2], np.ascontiguousarray(cat3))
    return acc if axis == 1 else acc[0]


def _weight_grad_sum(xf, groups, gp, spec, dtype):
    """Per group ``(pos, gpos, offs, R)``, ``Σ_p`` of its windows against the packed
    cotangent ``gp``: a list of ``(G, T·R, Fp)`` sums. Split over the workers by filter
    blocks for big gradients (each worker sums disjoint filter vectors over every
    position: no partials), else the first group by a fixed number of position blocks
    and each other group (the border groups of :func:`border_plan`) whole, each group
    summing into a buffer of its own, the first group's added in block order (the same
    bits whatever the number of threads, and however the small groups are bundled into
    items)."""
    k = _k()
    from ._wgrad_pieces import weight_grad as wg

    fill = current().numba_wgrad_pieces_min_fill
    nv_max = k.NV_MAX
    lanes, narrow = _width(dtype, spec.Fg)
    Fp = gp.shape[-1]
    gf = gp.reshape(-1)
    nvec = Fp // lanes
    shapes = [(spec.G, offs.shape[1] * R, Fp) for _, _, offs, R in groups]
    sizes = [math.prod(sh) for sh in shapes]
    starts = list(itertools.accumulate(sizes, initial=0))
    per = WGRAD_TILE_POSITIONS
    full = spec.G * spec.K * spec.Cg * Fp * dtype.itemsize  # the gradient's own bytes
    if nvec >= 2 and full >= current().direct_wgrad_split_bytes:
        flat = np.zeros(int(starts[-1]), dtype=dtype)
        step = nv_max if nvec >= 2 * nv_max else 1

        def by_filters(_w, v):
            for (pos, gq, offs, R), a in zip(groups, starts):
                wg(xf, pos, gq, offs, R, gf, flat[a:], Fp, narrow, per, 0, len(pos), v,
                   min(v + step, nvec), fill)

        parallel(by_filters, range(0, nvec, step), dynamic=True)
        return [flat[a:a + n].reshape(sh) for a, n, sh in zip(starts, sizes, shapes)]

    def run(i, q0, q1, a):
        pos, gq, offs, R = groups[i]
        wg(xf, pos, gq, offs, R, gf, a, Fp, narrow, per, q0, q1, 0, nvec, fill)

    blocks = sum_blocks(len(groups[0][0]), spec)
    nb = len(blocks)
    if len(groups) == 1 and nb > 1 and nb * full > current().ordered_sum_bytes:
        # partials too big to keep one per block: one sum per worker
        return [parallel_sum(lambda _w, q, a: run(0, q[0], q[1], a.reshape(-1)), blocks,
                             shapes[0], dtype)]
    # the first (interior) group by position blocks, each other group whole, the small
    # ones bundled in order into items of about a block's positions; every item sums
    # into a part of its own (a stuck pool thread's item is redone: parallel_parts), a
    # bundle's part its groups' parts one after the other; the first group's parts added
    # in block order
    size = max(1, sum(len(g[0]) for g in groups) // dynamic_blocks())
    items = [((0, q0, q1),) for q0, q1 in blocks] + [
        tuple(b) for b in bundles(groups, range(1, len(groups)), size)]

    def run_item(_w, item, a):
        at = 0
        for i, q0, q1 in item:
            run(i, q0, q1, a[at:at + sizes[i]])
            at += sizes[i]

    parts = parallel_parts(run_item, items, [sum(sizes[i] for i, _, _ in it) for it in items],
                           dtype)
    out = [in_order(parts[:nb]).reshape(shapes[0])]
    for item, part in zip(items[nb:], parts[nb:]):
        at = 0
        for i, _, _ in item:
            out.append(part[at:at + sizes[i]].reshape(shapes[i]))
            at += sizes[i]
    return out


def shared_cotangent(spec, layout, gy, x, w):
    """Both gradients by this module's entries (``Algo.cotangent``): a cotangent not
    stored channels-last C-contiguous in the result dtype is copied so once, for both,
    when at least one of them then reads it where it lies — the weight gradient when a
    group's filters fill whole vectors, the input gradient from
    ``direct_input_grad_in_place_ratio`` times the weights' bytes; otherwise each keeps
    its own padded or packed copy. Returns ``(gy, layout)`` in ``layout.dims`` order."""
    from ..spec import Layout
    from .._numpy._runtime import kernel_call

    dtype = np.dtype(spec.dtype)
    g = np.transpose(gy, layout.perm(layout.channels_last))  # (N, *out, F), a view
    if g.dtype == dtype and g.flags.c_contiguous:
        return gy, layout
    lanes, _ = _width(dtype, spec.Fg)
    w_bytes = int(np.size(w)) * dtype.itemsize
    if (spec.Fg % lanes
            and w_bytes * current().direct_input_grad_in_place_ratio > g.size * dtype.itemsize):
        return gy, layout
    out = np.empty(g.shape, dtype)
    with kernel_call(spec, blas1=False):  # the call's threads (a Dask block: its own)
        parallel_copy(out, g)
    gy = np.transpose(out, layout.inverse(layout.channels_last))
    return gy, Layout.of(layout.dims, x, gy)


def input_grad(gy, x, w, spec, needs, dtype):
    return _input_grad(gy, w, spec, dtype), None  # gy copied padded: any strides


def weight_grad(gy, x, w, spec, needs, dtype):
    return None, _weight_grad(gy, x, spec, dtype)  # gy packed: any strides
