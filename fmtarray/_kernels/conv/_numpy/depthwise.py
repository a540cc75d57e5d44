"""Channel-wise (depthwise) NumPy convolution: ``C/groups == 1``, no GEMM.

* ``numpy.depthwise_bi`` (one filter per channel on the canonical batch-innermost
  layout, where the ``(C, N)`` values of a position are one contiguous run): a fused
  multiply-accumulate (``einsum`` over ``sliding_window_view`` windows) per block of
  output rows, zero padding never materialised; the weight gradient per tap over the
  valid outputs; the stride-1 input gradient is this path's convolution of the
  cotangent with the flipped kernel.
* ``numpy.depthwise`` (any layout, any filters per channel): a multiply-accumulate
  over the ``K`` offsets on cache-sized channels-last tiles of padded chunks.

Kernel functions take channels-last views and the call's
:class:`~..spec.ConvSpec` (named ``geo``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...pad import fill_border_numpy
from ..thresholds import current
from ._common import chunk_size, cl_strides, grad_input, has_gy, padded_bytes, unpad
from ._copies import Chunked, parallel_copy
from ._runtime import n_workers, parallel, parallel_add, single_threaded_blas
from ._sums import parallel_sum

__all__ = ["applies_bi", "applies", "forward_bi", "backward_bi", "forward", "backward"]


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
    nw = n_workers()
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

    parallel(work, tasks, dynamic=True)
    y = out.reshape(*geo.out, C, N)
    return np.moveaxis(y, -1, 0)


def _depthwise_tiles(geo, n):
    per_sample = geo.P * geo.F * 4
    nb = max(1, current().depthwise_tile_bytes // max(per_sample, 1))
    nw = n_workers()
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
    nb = chunk_size(math.prod(geo.padded) * geo.C * it)
    chunker = Chunked(x, geo, min(nb, geo.N), dtype, geo.pb, geo.pa, geo.value)
    nw = n_workers()
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

        parallel(work, _depthwise_tiles(geo, n1 - n0))


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
            g, wt, g2, padded = grad_input(gy, w, geo, dtype)
            gx = _depthwise_forward_bi(g, wt, g2, dtype, None)
            if padded:
                gx = unpad(gx, geo)
        else:
            with single_threaded_blas():
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
        nw = n_workers()
        inner = math.prod(geo.out[1:]) * cn * dtype.itemsize
        rb = max(1, min(current().depthwise_wgrad_tile_bytes // max(inner, 1),
                        -(-geo.out[0] // nw)))
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

        gk = parallel_sum(work, tiles, (geo.K, cn), dtype).reshape(geo.K, C, N).sum(axis=-1)
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
    with single_threaded_blas():
        parallel_copy(src[centre], xb)
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
            gx[n0:n1] = unpad(gpad, geo)

    parallel(work, list(enumerate(tiles)))
    gw = None
    if needs[1]:
        gk = partial.sum(axis=0)  # (K, G, Fg)
        gw = gk.reshape(*geo.k, geo.G, geo.Fg)
        gw = np.ascontiguousarray(np.moveaxis(gw, -2, -1)[..., None, :, :])  # (*k, 1, Fg, G)
    return gx, gw



# ---------------------------------------------------------------------------------------
# registry entries


def applies(spec, layout):
    if not (spec.Cg == 1 and spec.G > 1):
        return f"{spec.Cg} channels per group, {spec.G} group(s): channel-wise only"
    return None


def applies_bi(spec, layout):
    if not (spec.Cg == 1 and spec.G > 1 and spec.Fg == 1):
        return (f"{spec.Cg} channel(s) and {spec.Fg} filter(s) per group, {spec.G} group(s): "
                "one channel and one filter per group only")
    if spec.N < 2:
        return f"batch of {spec.N}: needs at least 2 samples innermost"
    for which, name in (("x", "x"), ("gy", "the cotangent")):
        if which == "gy" and not has_gy(layout):
            continue
        st = cl_strides(spec, layout, which)
        if st is None or st[0] != 1 or st[-1] != spec.N:
            return f"{name} is not batch-innermost with its (C, N) values one contiguous run"
    ws = current().workspace_bytes
    if not spec.zero_padding and padded_bytes(spec) > ws:
        return (f"padding {spec.value!r}: a padded copy of {padded_bytes(spec)} bytes > "
                f"Tuning.workspace_bytes = {ws}")
    return None


def forward_bi(x, w, bias, geo, dtype):
    return _depthwise_forward_bi(x, w, geo, dtype, bias)


def backward_bi(gy, x, w, geo, needs, dtype):
    return _depthwise_backward_bi(gy, x, w, geo, needs, dtype)


def forward(x, w, bias, geo, dtype):
    out = np.empty((geo.N, *geo.out, geo.F), dtype=dtype)
    _depthwise_forward(x, w, geo, out, dtype)
    if bias is not None:
        parallel_add(out, bias)
    return out


def backward(gy, x, w, geo, needs, dtype):
    return _depthwise_backward(gy, x, w, geo, needs, dtype)
