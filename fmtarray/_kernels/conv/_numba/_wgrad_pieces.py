"""The weight-gradient tile for one filter vector: window values in the vector lanes.

:func:`._simd.weight_grad_positions`' tile (:func:`._simd.wgrad_tile`) puts filters in
the lanes and broadcasts window values. With one vector of filters (16 → 16 channels in
float32, grouped convolutions with 16 filters per group) each position then loads its
two offsets, a cotangent vector and a broadcast per FMA: 11 loads for 8 FMAs, bound by
the loads (measured on AVX-512, one thread, the 3-D 16 → 16 weight gradient: 150-166
GFLOP/s, 66-73 % of the FMA peak).

This tile turns it around: up to :data:`KP` pieces of a window run (up to a vector of
consecutive window values each, masked loads for a shorter one) in the lanes, and
:data:`NF` cotangent values broadcast: per position ``KP`` vector loads and ``NF``
broadcasts for ``KP · NF`` FMAs (2 × 8: 12 loads for 16 FMAs). Its sums lie transposed
(filters × window offsets) in a buffer of the driver (:func:`weight_grad_pieces`) and
are added into the gradient at its end. Each sum is the same chain as the other tile's
(per ``per_tile`` positions an FMA chain from zero, the chains added in position order),
so from a zero gradient the bits are the same.

Only on hosts with 32 vector registers (AVX-512: ``KP · NF`` sums, ``KP`` window
vectors and the ``NF`` broadcasts in registers); elsewhere :data:`PIECES` is false and
the other tile serves.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._cache import install
from ._ir import at as _at, mask as _mask, masked as _masked, no_unroll as _no_unroll
from ._simd import (_REGISTERS, VECTOR_BYTES, _clamped, _data, _i, _I32, _Vec,
                    weight_grad_positions)

install()  # the cached kernels' stamps: every file of this package (see ._cache)

__all__ = ["PIECES", "KP", "NF", "pieces_fill", "weight_grad", "weight_grad_pieces"]

#: pieces of window runs and filters per tile (measured, one and two threads, 16 → 16
#: channels 3-D, 2-D and grouped: 2 × 8 and 3 × 6 1.06-1.21× the other tile, 4 × 4
#: 1.0-1.2×; 3 × 8 spilled: LLVM loads the 8 broadcasts ahead, 35 registers)
KP, NF = 2, 8
#: whether this host has the registers for it
PIECES = _REGISTERS == 32


@functools.lru_cache(maxsize=None)
def _tile():
    """``acc[abase + j·astep + pc[i] + l] += Σ_{p0 ≤ p < p1} xf[pos[p] + px[i] + l] ·
    gy[gpos[p] + gbase + j]`` for the pieces ``i0 ≤ i < i0 + npc`` (``npc ≤ KP``), their
    lanes ``l < pn[i]``, and the filters ``j < nf`` (``nf ≤ NF``); ``a = (p0, p1, i0, npc,
    gbase, nf, abase, astep)``."""

    @intrinsic
    def tile(typingctx, xf, gy, acc, pos, gpos, px, pc, pn, a):
        def codegen(context, builder, sig, args):
            v = _Vec(context, builder, sig.args[0].dtype, VECTOR_BYTES)
            xp, gp, ap, pp, gq, pxp, pcp, pnp = (_data(context, builder, t, x)
                                                 for t, x in zip(sig.args[:8], args[:8]))
            p0, p1, i0, npc, gbase, nf, abase, astep = (
                builder.extract_value(args[8], i) for i in range(8))
            load, store = _masked(v, False), _masked(v, True)
            align = ir.Constant(_I32, v.align)
            idx = [builder.add(i0, _clamped(builder, i, npc)) for i in range(KP)]
            xo = [builder.load(builder.gep(pxp, [k])) for k in idx]
            masks = [_mask(v, builder.load(builder.gep(pnp, [k]))) for k in idx]
            fo = [builder.add(gbase, _clamped(builder, j, nf)) for j in range(NF)]
            accs = [[cgutils.alloca_once_value(builder, v.zero()) for _ in range(NF)]
                    for _ in range(KP)]
            with cgutils.for_range_slice(builder, p0, p1, _i(1)) as (p, _):
                xb = builder.load(builder.gep(pp, [p]))
                gb = builder.load(builder.gep(gq, [p]))
                xs = [builder.call(load, [_at(v, xp, builder.add(xb, xo[i])), align, masks[i],
                                          v.zero()]) for i in range(KP)]
                for j in range(NF):
                    gs = v.splat(gp, builder.add(gb, fo[j]))
                    for i in range(KP):
                        v.fmadd(accs[i][j], xs[i], gs)
                body = builder.basic_block
            _no_unroll(builder, body)
            for i in range(KP):
                with builder.if_then(builder.icmp_signed("<", _i(i), npc)):
                    col = builder.add(abase, builder.load(builder.gep(pcp, [idx[i]])))
                    for j in range(NF):
                        with builder.if_then(builder.icmp_signed("<", _i(j), nf)):
                            at = _at(v, ap, builder.add(col, builder.mul(_i(j), astep)))
                            old = builder.call(load, [at, align, masks[i], v.zero()])
                            builder.call(store, [builder.fadd(old, builder.load(accs[i][j])),
                                                 at, align, masks[i]])
            return context.get_dummy_value()

        return types.void(xf, gy, acc, pos, gpos, px, pc, pn, a), codegen

    return tile


_JIT = dict(nogil=True, cache=True, boundscheck=False)
_t = _tile()


@njit(**_JIT)
def pieces_fill(R, itemsize):
    """The share of the lanes that a run of ``R`` window values fills, cut into vectors."""
    lanes = VECTOR_BYTES // itemsize
    return R / (-(-R // lanes) * lanes)


@njit(**_JIT)
def weight_grad_pieces(xf, pos, gpos, offs, R, gf, af, Fp, per_tile, q0, q1, f0, f1):
    """``af += `` the weight gradient over the output positions ``q0 .. q1-1`` for the
    filters ``f0 .. f1-1`` of each group (as :func:`._simd.weight_grad_positions`: ``gf``
    the cotangent ``(positions, G, Fp)``, position ``p``'s at ``gf[gpos[p]]``, ``af``
    ``(G, T·R, Fp)``, both flat), the runs of each group's windows in pieces of a vector,
    the sums transposed in a buffer and added into ``af`` at the end."""
    G, T = offs.shape
    lanes = VECTOR_BYTES // xf.itemsize
    TR = T * R
    per = -(-R // lanes)
    npieces = T * per
    px = np.empty(G * npieces, np.int64)
    pc = np.empty(G * npieces, np.int64)
    pn = np.empty(G * npieces, np.int64)
    for g in range(G):
        for t in range(T):
            for k in range(per):
                i = g * npieces + t * per + k
                px[i] = offs[g, t] + k * lanes
                pc[i] = t * R + k * lanes
                pn[i] = min(lanes, R - k * lanes)
    nf = f1 - f0
    acc = np.zeros(G * nf * TR, xf.dtype)  # (G, nf, T·R)
    for pa in range(q0, q1, per_tile):
        pb = min(pa + per_tile, q1)
        for g in range(G):
            for i0 in range(0, npieces, KP):
                for fb in range(f0, f1, NF):
                    a = (pa, pb, g * npieces + i0, min(KP, npieces - i0), g * Fp + fb,
                         min(NF, f1 - fb), (g * nf + fb - f0) * TR, TR)
                    _t(xf, gf, acc, pos, gpos, px, pc, pn, a)
    for g in range(G):
        for f in range(nf):
            src = (g * nf + f) * TR
            dst = g * TR * Fp + f0 + f
            for k in range(TR):
                af[dst + k * Fp] += acc[src + k]


@njit(**_JIT)
def weight_grad(xf, pos, gpos, offs, R, gf, af, Fp, narrow, per_tile, q0, q1, va, vb, fill):
    """:func:`._simd.weight_grad_positions`' sums (same arguments), by
    :func:`weight_grad_pieces` for one whole filter vector (``vb = va + 1``, ``narrow``
    0) where a run of ``R`` window values fills at least ``fill`` of the lanes it takes
    (``Tuning.numba_wgrad_pieces_min_fill``) and the host has the registers."""
    lanes = VECTOR_BYTES // xf.itemsize
    if PIECES and narrow == 0 and vb == va + 1 and pieces_fill(R, xf.itemsize) >= fill:
        weight_grad_pieces(xf, pos, gpos, offs, R, gf, af, Fp, per_tile, q0, q1, va * lanes,
                           vb * lanes)
    else:
        weight_grad_positions(xf, pos, gpos, offs, R, gf, af, Fp, narrow, per_tile, q0, q1,
                              va, vb)
