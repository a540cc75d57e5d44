"""The compiled transforms of :mod:`.winograd` (Winograd F(2×2, 3×3) on channels-last
data): plain Numba loops whose innermost loop runs over contiguous channels or filters,
which LLVM vectorises, and for the input tiles an intrinsic (:func:`_input_tile`).

Notation of :mod:`.._numpy.winograd`: ``V = Bᵀ d B`` (a 4×4 input tile ``d``), ``U = G
g Gᵀ`` (a 3×3 filter ``g``), ``Y = Aᵀ M A`` (the 4×4 products ``M``, summed over the
channels, to a 2×2 output block), with

    Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G  = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]
    Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]

Tile ``t`` is ``(n, i, j)`` in ``(N, th, tw)`` order; undilated, its input tile is rows
``2i .. 2i+3`` and columns ``2j .. 2j+3`` of the padded input, its outputs rows ``2i,
2i+1`` and columns ``2j, 2j+1`` (those inside the output). A dilation ``dl`` splits the
outputs into ``dl_h · dl_w`` phases (rows ≡ p, columns ≡ q), each an undilated
convolution of the input rows and columns with the same residues: the kernels take
a phase's offsets and steps.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._cache import install
from ._ir import at, mask, masked
from ._simd import VECTOR_BYTES, _data, _i, _I32, _Vec, forward_positions

install()  # the cached kernels' stamps: every file of this package (see ._cache)

__all__ = ["input_tiles", "filter_block", "output_block", "fused_item", "cotangent_tiles",
           "filter_grad"]

_JIT = dict(nogil=True, cache=True, boundscheck=False)
_u = np.uint64


@intrinsic
def _input_tile(typingctx, xf, pf, vf, offs, a):
    """One input tile: ``vf[vbase + (4a+b)·vstep + c] = (Bᵀ d B)[a, b]`` for ``c < C``,
    ``d[q, k]`` the channel run at ``xf[offs[4q+k]:]`` (``-1``: the padding ``pf``); ``a =
    (vbase, vstep, C)``. The 16 values of each channel vector stay in registers (in
    Numba's loops the runtime alias checks of 16 sources and 16 destinations kept LLVM
    from vectorising but in 8 loops of 4, each run 4 times for 64 channels)."""
    def codegen(context, builder, sig, args):
        v = _Vec(context, builder, sig.args[0].dtype, VECTOR_BYTES)
        xp, pp, vp, op = (_data(context, builder, t, x) for t, x in zip(sig.args[:4], args[:4]))
        vbase, vstep, C = (builder.extract_value(args[4], i) for i in range(3))
        src = []
        for i in range(16):
            o = builder.load(builder.gep(op, [_i(i)]))
            inside = builder.icmp_signed(">=", o, _i(0))
            src.append(builder.select(inside, builder.gep(xp, [builder.select(inside, o, _i(0))]),
                                      pp))
        dst = [builder.add(vbase, builder.mul(_i(i), vstep)) for i in range(16)]
        load, store = masked(v, False), masked(v, True)
        align = ir.Constant(_I32, v.align)

        def body(c, m):
            def get(i):
                p = at(v, src[i], c)
                if m is None:
                    return builder.load(p, align=v.align)
                return builder.call(load, [p, align, m, v.zero()])

            d = [[get(4 * q + k) for k in range(4)] for q in range(4)]
            e = [[builder.fsub(d[0][k], d[2][k]) for k in range(4)],  # Bᵀ over the rows
                 [builder.fadd(d[1][k], d[2][k]) for k in range(4)],
                 [builder.fsub(d[2][k], d[1][k]) for k in range(4)],
                 [builder.fsub(d[1][k], d[3][k]) for k in range(4)]]
            for r, row in enumerate(e):  # then B over the columns
                out = (builder.fsub(row[0], row[2]), builder.fadd(row[1], row[2]),
                       builder.fsub(row[2], row[1]), builder.fsub(row[1], row[3]))
                for k, val in enumerate(out):
                    p = at(v, vp, builder.add(dst[4 * r + k], c))
                    if m is None:
                        builder.store(val, p, align=v.align)
                    else:
                        builder.call(store, [val, p, align, m])

        lanes = _i(v.lanes)
        whole = builder.mul(builder.sdiv(C, lanes), lanes)
        with cgutils.for_range_slice(builder, _i(0), whole, lanes) as (c, _):
            body(c, None)
        rest = builder.sub(C, whole)
        with builder.if_then(builder.icmp_signed(">", rest, _i(0))):
            body(whole, mask(v, rest))
        return context.get_dummy_value()

    return types.void(xf, pf, vf, offs, a), codegen


@njit(**_JIT)
def input_tiles(x, pad, v, r0, c0, dr, dc, th, tw, t0, t1, base):
    """``v[4a+b, t - base, c] = (Bᵀ d B)[a, b]`` for the tiles ``t0 .. t1-1`` of ``x``
    ``(N, H, W, C)`` C-contiguous: tile ``(n, i, j)`` reads rows ``r0 + dr·(2i + q)`` and
    columns ``c0 + dc·(2j + k)``, ``q, k < 4`` (a padding ``p`` before: ``r0 = -p``; a
    dilation phase: its offset and the dilation as the step), the values outside ``x``
    from ``pad`` (``C`` copies of the padding value); ``v`` ``(16, ≥ t1 - base, C)``
    C-contiguous. Each tile by :func:`_input_tile`."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    vf = v.reshape(-1)
    step = v.shape[1] * C
    per = th * tw
    offs = np.empty(16, np.int64)
    for t in range(t0, t1):
        n = t // per
        r = t - n * per
        i = r // tw
        j = r - i * tw
        ra = r0 + 2 * dr * i
        ca = c0 + 2 * dc * j
        for q in range(4):
            row = ra + q * dr
            for k in range(4):
                col = ca + k * dc
                inside = 0 <= row < H and 0 <= col < W
                offs[4 * q + k] = ((n * H + row) * W + col) * C if inside else -1
        _input_tile(xf, pad, vf, offs, ((t - base) * C, step, C))


@njit(**_JIT)
def filter_block(w, u, f0, f1, flip):
    """``u[4a+b, c, f - f0] = (G g Gᵀ)[a, b]`` for the filters ``f0 .. f1-1`` of ``w``
    ``(3, 3, C, F)`` C-contiguous (``g = w[:, :, c, f]``; ``flip``: of the filters turned
    by 180°, ``g = w[::-1, ::-1, c, f]``); ``u`` ``(16, C, m)`` C-contiguous, ``m ≥ f1 -
    f0``, its columns past ``f1 - f0`` set to zero. (Flat indices are unsigned: Numba
    then adds no negative-index check, and LLVM vectorises the loops over ``f``.)"""
    C, F, m = _u(w.shape[2]), _u(w.shape[3]), _u(u.shape[2])
    n = _u(f1 - f0)
    h = w.dtype.type(0.5)
    wf = w.reshape(-1)
    uf = u.reshape(-1)
    row = np.empty(12 * u.shape[2], u.dtype)  # one channel's G over the filter rows
    cf, cm = C * F, C * m
    for c in range(C):
        for j in range(_u(3)):  # G over the filter rows i, for each filter column j
            jj = _u(2) - j if flip else j
            base = c * F + _u(f0)
            g0 = (_u(6) if flip else _u(0)) * cf + jj * cf + base
            g1 = _u(3) * cf + jj * cf + base
            g2 = (_u(0) if flip else _u(6)) * cf + jj * cf + base
            r = j * m
            for f in range(n):
                a0 = wf[g0 + f]
                a1 = wf[g1 + f]
                a2 = wf[g2 + f]
                s = a0 + a2
                row[r + f] = a0
                row[r + _u(3) * m + f] = h * (s + a1)
                row[r + _u(6) * m + f] = h * (s - a1)
                row[r + _u(9) * m + f] = a2
        for a in range(_u(4)):  # then Gᵀ over the columns j
            q = _u(3) * a * m
            o = _u(4) * a * cm + c * m
            for f in range(n):
                b0 = row[q + f]
                b1 = row[q + m + f]
                b2 = row[q + _u(2) * m + f]
                s = b0 + b2
                uf[o + f] = b0
                uf[o + cm + f] = h * (s + b1)
                uf[o + _u(2) * cm + f] = h * (s - b1)
                uf[o + _u(3) * cm + f] = b2
            for f in range(n, m):
                uf[o + f] = 0
                uf[o + cm + f] = 0
                uf[o + _u(2) * cm + f] = 0
                uf[o + _u(3) * cm + f] = 0


@njit(**_JIT)
def output_block(mf, y, bias, sink, p, q, dr, dc, hp, wp, th, tw, t0, t1, f0, nf):
    """``y[n, p + dr·(2i+a), q + dc·(2j+b), f0 + f] = bias[f0 + f] + (Aᵀ M A)[a, b]`` for
    the tiles ``t0 .. t1-1`` (``2i + a < hp``, ``2j + b < wp``: the outputs of the
    dilation phase ``(p, q)``) and ``f < nf``, inside ``y`` ``(N, Ho, Wo, F)``
    C-contiguous; ``mf`` flat, ``M[4x+z]`` of tile ``t`` at ``mf[((t - t0)·16 + 4x+z)·nf
    + f]``; ``sink`` (``nf`` values) takes the outputs past the edge."""
    Ho, Wo, F = y.shape[1], y.shape[2], y.shape[3]
    yf = y.reshape(-1)
    per = th * tw
    n_ = _u(nf)
    bf = bias[f0:f0 + nf]
    for t in range(t0, t1):
        n = t // per
        r = t - n * per
        i = r // tw
        j = r - i * tw
        k = _u((t - t0) * 16 * nf)
        o00 = _u(((n * Ho + p + 2 * dr * i) * Wo + q + 2 * dc * j) * F + f0)
        right, down = 2 * j + 1 < wp, 2 * i + 1 < hp
        out01 = yf if right else sink
        out10 = yf if down else sink
        out11 = yf if right and down else sink
        o01 = o00 + _u(dc * F) if right else _u(0)
        o10 = o00 + _u(dr * Wo * F) if down else _u(0)
        o11 = o00 + _u(dr * Wo * F + dc * F) if right and down else _u(0)
        for f in range(n_):
            z = k + f
            m4, m5, m6, m7 = mf[z + _u(4) * n_], mf[z + _u(5) * n_], mf[z + _u(6) * n_], mf[
                z + _u(7) * n_]
            m8, m9, m10, m11 = (mf[z + _u(8) * n_], mf[z + _u(9) * n_], mf[z + _u(10) * n_],
                                mf[z + _u(11) * n_])
            # Aᵀ over the rows x, for each column z
            p0 = mf[z] + m4 + m8
            p1 = mf[z + n_] + m5 + m9
            p2 = mf[z + _u(2) * n_] + m6 + m10
            p3 = mf[z + _u(3) * n_] + m7 + m11
            q0 = m4 - m8 - mf[z + _u(12) * n_]
            q1 = m5 - m9 - mf[z + _u(13) * n_]
            q2 = m6 - m10 - mf[z + _u(14) * n_]
            q3 = m7 - m11 - mf[z + _u(15) * n_]
            # then A over the columns
            b = bf[f]
            yf[o00 + f] = b + (p0 + p1 + p2)
            out01[o01 + f] = b + (p1 - p2 - p3)
            out10[o10 + f] = b + (q0 + q1 + q2)
            out11[o11 + f] = b + (q1 - q2 - q3)


@njit(**_JIT)
def fused_item(x, pad, v, m, uall, uoff, blk, zero, bias, y, sink, a):
    """The tiles ``t0 .. t1-1`` of one dilation phase through all three steps (``a = (r0,
    c0, dr, dc, th, tw, p, q, hp, wp, t0, t1, wblock)``: :func:`input_tiles`' and
    :func:`output_block`'s arguments, and the products' weight block): their
    transformed input into ``v`` ``(16, ≥ t1 - t0, C)``, then per filter block ``i``
    (``blk[i] = (f0, nf, width)``, its transformed filters ``(16, C, width)`` at
    ``uall[uoff[i]:]``) the 16 products into ``m`` (``(t1 - t0) · 16 · nf`` values and a
    vector) by :func:`._simd.forward_positions` and the outputs into ``y`` ``(N, Ho, Wo,
    F)``. One compiled call per item (the Python between the kernels cost about 25 µs
    an item)."""
    r0, c0, dr, dc, th, tw, p, q, hp, wp, t0, t1, wblock = a
    C = x.shape[3]
    n = t1 - t0
    input_tiles(x, pad, v, r0, c0, dr, dc, th, tw, t0, t1, t0)
    lanes = VECTOR_BYTES // x.itemsize
    offs = (np.arange(16) * (v.shape[1] * C)).reshape(16, 1)
    pos = np.arange(n) * C
    vf = v.reshape(-1)
    for i in range(blk.shape[0]):
        f0, nf, fp = blk[i, 0], blk[i, 1], blk[i, 2]
        mpos = np.arange(n) * (16 * nf)
        forward_positions(vf, pos, mpos, offs, C, uall[uoff[i]:uoff[i + 1]], zero, fp, m, nf,
                          0, wblock, 0, n, 0, fp // lanes, (0, 1, 0, C))
        output_block(m, y, bias, sink, p, q, dr, dc, hp, wp, th, tw, t0, t1, f0, nf)


@njit(**_JIT)
def cotangent_tiles(gy, g, p, q, dr, dc, hp, wp, th, tw, t0, t1):
    """``g[t - t0, 4x+z, f] = (A ∂Y Aᵀ)[x, z]`` for the tiles ``t0 .. t1-1`` of the
    cotangent ``gy`` ``(N, Ho, Wo, F)`` C-contiguous: tile ``(n, i, j)``'s 2×2 block
    ``∂Y`` is ``gy[n, p + dr·(2i + a), q + dc·(2j + b)]`` where ``2i + a < hp`` and ``2j
    + b < wp`` (the dilation phase ``(p, q)``), zero past them; ``g`` ``(≥ t1 - t0, 16,
    m)`` C-contiguous, ``m ≥ F``, its columns past ``F`` set to zero. With ``A`` the
    rows ``[1, 0], [1, 1], [1, -1], [0, -1]`` (``Aᵀ`` of the output transform)."""
    Ho, Wo, F = gy.shape[1], gy.shape[2], gy.shape[3]
    m = g.shape[2]
    yf = gy.reshape(-1)
    gf = g.reshape(-1)
    per = th * tw
    F_ = _u(F)
    m_ = _u(m)
    zero = gy.dtype.type(0)
    for t in range(t0, t1):
        n = t // per
        r = t - n * per
        i = r // tw
        j = r - i * tw
        o00 = _u(((n * Ho + p + 2 * dr * i) * Wo + q + 2 * dc * j) * F)
        right, down = 2 * j + 1 < wp, 2 * i + 1 < hp
        # (past the edge: a valid address, not read)
        o01 = o00 + _u(dc * F) if right else o00
        o10 = o00 + _u(dr * Wo * F) if down else o00
        o11 = o10 + _u(dc * F) if right and down else o00
        k = _u((t - t0) * 16 * m)
        for f in range(F_):
            a = yf[o00 + f]
            b = yf[o01 + f] if right else zero
            c = yf[o10 + f] if down else zero
            d = yf[o11 + f] if right and down else zero
            # A over the rows: u_x0 = A[x]·(a, c), u_x1 = A[x]·(b, d)
            s0, s1, s2, s3 = a, a + c, a - c, -c
            e0, e1, e2, e3 = b, b + d, b - d, -d
            # then Aᵀ over the columns: g[x, z] = A[z]·(s_x, e_x)
            gf[k + f] = s0
            gf[k + m_ + f] = s0 + e0
            gf[k + _u(2) * m_ + f] = s0 - e0
            gf[k + _u(3) * m_ + f] = -e0
            gf[k + _u(4) * m_ + f] = s1
            gf[k + _u(5) * m_ + f] = s1 + e1
            gf[k + _u(6) * m_ + f] = s1 - e1
            gf[k + _u(7) * m_ + f] = -e1
            gf[k + _u(8) * m_ + f] = s2
            gf[k + _u(9) * m_ + f] = s2 + e2
            gf[k + _u(10) * m_ + f] = s2 - e2
            gf[k + _u(11) * m_ + f] = -e2
            gf[k + _u(12) * m_ + f] = s3
            gf[k + _u(13) * m_ + f] = s3 + e3
            gf[k + _u(14) * m_ + f] = s3 - e3
            gf[k + _u(15) * m_ + f] = -e3
        for x in range(16):
            for f in range(F, m):
                g[t - t0, x, f] = 0


@njit(**_JIT)
def filter_grad(du, gw, c0, c1):
    """``gw[i, j, c, f] = (Gᵀ ∂U G)[i, j]`` of ``du`` ``(16, C, m)`` (``∂U[4a+b]``) for the
    channels ``c0 .. c1-1``, into ``gw`` ``(3, 3, C, F)`` C-contiguous, ``F ≤ m``."""
    F = gw.shape[3]
    h = du.dtype.type(0.5)
    row = np.empty((3, 4, F), du.dtype)  # Gᵀ over a: rows i, columns b
    for c in range(c0, c1):
        for b in range(4):
            d0 = du[b, c]
            d1 = du[4 + b, c]
            d2 = du[8 + b, c]
            d3 = du[12 + b, c]
            r0 = row[0, b]
            r1 = row[1, b]
            r2 = row[2, b]
            for f in range(F):
                s = h * (d1[f] + d2[f])
                r0[f] = d0[f] + s
                r1[f] = h * (d1[f] - d2[f])
                r2[f] = s + d3[f]
        for i in range(3):
            e0 = row[i, 0]
            e1 = row[i, 1]
            e2 = row[i, 2]
            e3 = row[i, 3]
            o0 = gw[i, 0, c]
            o1 = gw[i, 1, c]
            o2 = gw[i, 2, c]
            for f in range(F):
                s = h * (e1[f] + e2[f])
                o0[f] = e0[f] + s
                o1[f] = h * (e1[f] - e2[f])
                o2[f] = s + e3[f]
