"""Register-blocked SIMD tiles, as Numba intrinsics, and the compiled drivers around them.

Numba vectorises loops, but it cannot keep a block of partial sums in vector registers
across a reduction (loops over small local arrays stay in memory, and straight-line
scalar code is not vectorised: LLVM's SLP vectoriser is off in Numba). These
intrinsics write the LLVM IR of the inner tiles directly: vectors of ``VL`` filters
(one 64-byte vector with AVX-512, 32 bytes otherwise), a block of outputs × filter
vectors summed in registers with ``llvm.fma``, the outer-product form of a GEMM micro
kernel. The drivers (plain Numba functions) choose the tiles and pass flat offsets.

Output position ``p`` (in ``(N, *out)`` order) reads its window at ``xf[pos[p] + ...]``.

* :func:`forward_tile` ``(xf, wt, y, bias, offs, pos, ypos, a)`` with ``a = (p0, nx, R,
  wbase, ybase, nf, wstep, bbase, t0, t1, k0, k1, first)``: for the ``nx`` positions
  ``p = p0 + j`` and the ``NV`` filter vectors at ``wbase``, ``y[ypos[p] + ybase + f] = s
  + Σ_{t0 ≤ t < t1} Σ_{k0 ≤ k < k1} xf[pos[p] + offs[t] + k] · wt[wbase + (t·R +
  k)·wstep + f]`` for the ``f < nf`` valid filters (the weights and bias padded to whole
  vectors with zeros), ``s`` the bias ``bias[bbase + f]`` for the block that starts the
  reduction (``first`` non-zero), else the sum so far in ``y`` (weights too big for the
  cache are summed a block of runs, or of one run, at a time, and a window that reads
  padding may skip runs and offsets; ``y`` then needs a vector of slack past its end:
  whole vectors are read back).
* :func:`wgrad_tile` ``(xf, gy, acc, pos, gpos, a)`` with ``a = (p0, p1, xoff, nk, gbase,
  abase, astep)``: for each of the ``nk`` window offsets ``xoff + i`` and the ``NV``
  filter vectors at ``gbase``, ``acc[abase + i·astep + f] += Σ_{p0 ≤ p < p1}
  xf[pos[p] + xoff + i] · gy[gpos[p] + gbase + f]`` (the cotangent padded to whole
  vectors).
* channel-wise (one channel per group, one filter per channel: vectors of channels
  instead of filters): :func:`forward_tile` with ``channelwise`` and ``cb`` in place of
  ``first`` (``k0 = 0``, ``k1 = 1``; the first block is ``t0 = 0``): ``y[ypos[p] +
  ybase + c] = bias[bbase + c] + Σ_t xf[pos[p] + offs[t] + cb + c] · wt[wbase + t·wstep
  + c]`` (``R = 1``); :func:`channelwise_wgrad_tile` ``(xf, gy, acc,
  pos, gpos, offs, a)`` with ``a = (p0, p1, t0, nk, cb, abase, astep)``: ``acc[abase +
  i·astep + c] += Σ_p xf[pos[p] + offs[t0 + i] + cb + c] · gy[gpos[p] + cb + c]`` for the
  ``nk`` taps ``t0 + i``. The channels are padded to whole vectors in the source, the
  weights and the cotangent.
* both channel-wise gradients in one pass (:func:`channelwise_fused_tile` ``(gy, wt, gx,
  xf, acc, offs, pos, ypos, a)`` with ``a = (p0, cb, T, wstep)``, over an input-gradient
  plan: ``p`` an input position, ``ypos[p]`` where it lies in ``gx`` and in the input
  ``xf``): ``gx[ypos[p] + cb + c] = Σ_t gy[pos[p] + offs[t] + cb + c] · wt[t·wstep + cb +
  c]`` and ``acc[t·wstep + cb + c] += Σ_p gy[pos[p] + offs[t] + cb + c] · xf[ypos[p] +
  cb + c]``: each cotangent value read once for both.

Each output (or weight) is one running sum in a fixed order, so results do not depend
on the blocking, and every product of the definition is formed.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._cache import install

install()  # the cached kernels' stamps: every file of this package (see ._cache)

__all__ = ["VECTOR_BYTES", "BLOCK", "WGRAD_BLOCK", "NARROW", "forward_tile", "wgrad_tile",
           "channelwise_wgrad_tile", "forward_positions", "weight_grad_positions",
           "channelwise_positions", "channelwise_weight_grad_positions",
           "channelwise_fused_tile", "channelwise_gradients_positions"]


def _host():
    from llvmlite import binding

    feats = binding.get_host_cpu_features()
    return (64, 32) if feats.get("avx512f", False) else (32, 16)


#: bytes of one vector and the number of vector registers of this host
VECTOR_BYTES, _REGISTERS = _host()
#: filter vectors per tile (1 .. NV_MAX) -> outputs (forward) or window offsets (weight
#: gradient) per tile, as many as the registers hold next to the operands
NV_MAX = 4
#: measured with AVX-512 (32 registers: the widest blocks, 12 or 9 outputs, lost 5-20 %
#: on the 7×7 and 1×1 cases to 8 and 6); with 16 registers, as many as fit
BLOCK = ({1: 8, 2: 8, 3: 6, 4: 5} if _REGISTERS == 32 else
         {nv: min(12, (_REGISTERS - nv - 2) // nv) for nv in range(1, NV_MAX + 1)})
#: few filters (at most a half or a quarter of a vector: ``narrow`` 1 or 2) run on one
#: vector of that width, so that a channel or two does not fill 16 lanes of zeros
NARROW = (1, 2)
NARROW_BLOCK = 12
#: output positions per chunk of a forward over several groups: every group is summed
#: over a chunk before the next chunk (grouped 4×16→16 3×3 b8 56×56, one thread, thread
#: time in one process: 4.6–5.8 ms against 4.7–7.2 with each group over all the
#: positions in turn, the difference where other tenants load the L3)
GROUP_CHUNK = 256
#: window offsets per weight-gradient tile: as :data:`BLOCK`, but 6 for two filter
#: vectors, whose loop LLVM unrolls twice: 8 offsets then need 36 vector registers (16
#: sums, 2 × (8 broadcasts + 2 cotangent vectors)) and spilled to the stack in every
#: position (measured: the SCBT 16→32 weight gradient 7.2-9.8 → 5.0-5.3 ms; 4, 5, 6 or 8
#: for one, three or four vectors were within the noise)
WGRAD_BLOCK = {**BLOCK, **({2: 6} if _REGISTERS == 32 else {})}

_I64 = ir.IntType(64)
_I32 = ir.IntType(32)


def _i(v):
    return ir.Constant(_I64, v)


class _Vec:
    """The vector type of ``dt`` and its helpers, in one builder."""

    def __init__(self, context, builder, dt, vbytes):
        self.b = builder
        self.fty = context.get_value_type(dt)
        self.lanes = vbytes // (4 if dt == types.float32 else 8)
        self.vty = ir.VectorType(self.fty, self.lanes)
        self.align = 4 if dt == types.float32 else 8
        name = f"llvm.fma.v{self.lanes}{'f32' if dt == types.float32 else 'f64'}"
        self.fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.vty, [self.vty] * 3), name)

    def zero(self):
        return ir.Constant(self.vty, None)

    def load(self, base, idx):
        p = self.b.bitcast(self.b.gep(base, [idx]), self.vty.as_pointer())
        return self.b.load(p, align=self.align)

    def store(self, v, base, idx):
        p = self.b.bitcast(self.b.gep(base, [idx]), self.vty.as_pointer())
        self.b.store(v, p, align=self.align)

    def splat(self, base, idx):
        s = self.b.load(self.b.gep(base, [idx]))
        v = self.b.insert_element(ir.Constant(self.vty, None), s, ir.Constant(_I32, 0))
        mask = ir.Constant(ir.VectorType(_I32, self.lanes), [0] * self.lanes)
        return self.b.shuffle_vector(v, ir.Constant(self.vty, None), mask)

    def fmadd(self, slot, a, c):
        self.b.store(self.b.call(self.fma, [a, c, self.b.load(slot)]), slot)

    def store_first(self, v, n, base, idx):
        """Store lanes ``< n`` of ``v`` (all of them when ``n ≥ lanes``)."""
        b = self.b
        with b.if_else(b.icmp_signed(">=", n, _i(self.lanes))) as (full, part):
            with full:
                self.store(v, base, idx)
            with part:
                for lane in range(self.lanes):
                    with b.if_then(b.icmp_signed(">", n, _i(lane))):
                        b.store(b.extract_element(v, ir.Constant(_I32, lane)),
                                b.gep(base, [b.add(idx, _i(lane))]))


def _add_rows(v, accs, n, base, start, step):
    """``base[start + i·step + c·lanes :] += accs[i][c]`` for the rows ``i < n``."""
    b = v.b
    for i, row in enumerate(accs):
        with b.if_then(b.icmp_signed("<", _i(i), n)):
            at = b.add(start, b.mul(_i(i), step))
            for c, slot in enumerate(row):
                idx = b.add(at, _i(c * v.lanes))
                v.store(b.fadd(v.load(base, idx), b.load(slot)), base, idx)


def _data(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


def _clamped(builder, j, n):
    """``min(j, n - 1)`` for the compile-time ``j``."""
    last = builder.sub(n, _i(1))
    return builder.select(builder.icmp_signed("<", _i(j), n), _i(j), last)


@functools.lru_cache(maxsize=None)
def forward_tile(nv, narrow=0, channelwise=False):
    """The forward tile with ``nv`` filter vectors of ``VECTOR_BYTES >> narrow`` bytes and
    ``BLOCK[nv]`` (narrow vectors: ``NARROW_BLOCK``) outputs; ``channelwise``: the
    channel-wise form (see the module docstring)."""
    xb_n = NARROW_BLOCK if narrow else BLOCK[nv]

    @intrinsic
    def tile(typingctx, xf, wt, y, bias, offs, pos, ypos, a):
        def codegen(context, builder, sig, args):
            v = _Vec(context, builder, sig.args[0].dtype, VECTOR_BYTES >> narrow)
            xp, wp, yp, bp, op, pp, qp = (_data(context, builder, t, x)
                                          for t, x in zip(sig.args[:7], args[:7]))
            p0, nx, R, wbase, ybase, nf, wstep, bbase, t0, t1, k0, k1 = (
                builder.extract_value(args[7], i) for i in range(12))
            cb = builder.extract_value(args[7], 12) if channelwise else None
            accs = [[cgutils.alloca_once(builder, v.vty) for _ in range(nv)]
                    for _ in range(xb_n)]
            yoff = [builder.add(ybase, builder.load(builder.gep(
                qp, [builder.add(p0, _clamped(builder, j, nx))]))) for j in range(xb_n)]
            if channelwise:
                first = builder.and_(builder.icmp_signed("==", t0, _i(0)),
                                     builder.icmp_signed("==", k0, _i(0)))
            else:  # a[12]: this block starts the sums (from the bias)
                first = builder.icmp_signed("!=", builder.extract_value(args[7], 12), _i(0))
            with builder.if_else(first) as (start, more):
                with start:  # the bias
                    for c in range(nv):
                        bv = v.load(bp, builder.add(bbase, _i(c * v.lanes)))
                        for j in range(xb_n):
                            builder.store(bv, accs[j][c])
                with more:  # the sums over the earlier runs (whole vectors: the output
                    # has a vector of slack at its end, the lanes past nf are not stored)
                    for c in range(nv):
                        for j in range(xb_n):
                            builder.store(v.load(yp, builder.add(yoff[j], _i(c * v.lanes))),
                                          accs[j][c])
            xoff = [builder.load(builder.gep(pp, [builder.add(p0, _clamped(builder, j, nx))]))
                    for j in range(xb_n)]
            with cgutils.for_range_slice(builder, t0, t1, _i(1)) as (t, _):
                o = builder.load(builder.gep(op, [t]))
                wrow = builder.add(wbase, builder.mul(builder.mul(t, R), wstep))
                with cgutils.for_range_slice(builder, k0, k1, _i(1)) as (k, _):
                    wk = builder.add(wrow, builder.mul(k, wstep))
                    ws = [v.load(wp, builder.add(wk, _i(c * v.lanes))) for c in range(nv)]
                    ok = builder.add(o, k)
                    for j in range(xb_n):
                        if channelwise:
                            xo = builder.add(builder.add(xoff[j], ok), cb)
                            for c in range(nv):
                                xv = v.load(xp, builder.add(xo, _i(c * v.lanes)))
                                v.fmadd(accs[j][c], xv, ws[c])
                            continue
                        xs = v.splat(xp, builder.add(xoff[j], ok))
                        for c in range(nv):
                            v.fmadd(accs[j][c], xs, ws[c])
            for j in range(xb_n):
                with builder.if_then(builder.icmp_signed("<", _i(j), nx)):
                    yj = yoff[j]
                    for c in range(nv):
                        left = builder.sub(nf, _i(c * v.lanes))
                        v.store_first(builder.load(accs[j][c]), left, yp,
                                      builder.add(yj, _i(c * v.lanes)))
            return context.get_dummy_value()

        return types.void(xf, wt, y, bias, offs, pos, ypos, a), codegen

    return tile


@functools.lru_cache(maxsize=None)
def wgrad_tile(nv, narrow=0):
    """The weight-gradient tile with ``nv`` filter vectors of ``VECTOR_BYTES >> narrow``
    bytes and ``WGRAD_BLOCK[nv]`` (narrow vectors: ``NARROW_BLOCK``) offsets."""
    kb_n = NARROW_BLOCK if narrow else WGRAD_BLOCK[nv]

    @intrinsic
    def tile(typingctx, xf, gy, acc, pos, gpos, a):
        def codegen(context, builder, sig, args):
            v = _Vec(context, builder, sig.args[0].dtype, VECTOR_BYTES >> narrow)
            xp, gp, ap, pp, gq = (_data(context, builder, t, x)
                                  for t, x in zip(sig.args[:5], args[:5]))
            p0, p1, xoff, nk, gbase, abase, astep = (
                builder.extract_value(args[5], i) for i in range(7))
            accs = [[cgutils.alloca_once_value(builder, v.zero()) for _ in range(nv)]
                    for _ in range(kb_n)]
            koff = [builder.add(xoff, _clamped(builder, i, nk)) for i in range(kb_n)]
            with cgutils.for_range_slice(builder, p0, p1, _i(1)) as (p, _):
                xo = builder.load(builder.gep(pp, [p]))
                go = builder.add(gbase, builder.load(builder.gep(gq, [p])))
                gs = [v.load(gp, builder.add(go, _i(c * v.lanes))) for c in range(nv)]
                for i in range(kb_n):
                    xs = v.splat(xp, builder.add(xo, koff[i]))
                    for c in range(nv):
                        v.fmadd(accs[i][c], xs, gs[c])
            _add_rows(v, accs, nk, ap, abase, astep)
            return context.get_dummy_value()

        return types.void(xf, gy, acc, pos, gpos, a), codegen

    return tile


@functools.lru_cache(maxsize=None)
def channelwise_wgrad_tile(nv):
    """The channel-wise weight-gradient tile: ``nv`` channel vectors, ``BLOCK[nv]`` taps."""
    kb_n = BLOCK[nv]

    @intrinsic
    def tile(typingctx, xf, gy, acc, pos, gpos, offs, a):
        def codegen(context, builder, sig, args):
            v = _Vec(context, builder, sig.args[0].dtype, VECTOR_BYTES)
            xp, gp, ap, pp, gq, op = (_data(context, builder, t, x)
                                      for t, x in zip(sig.args[:6], args[:6]))
            p0, p1, t0, nk, cb, abase, astep = (
                builder.extract_value(args[6], i) for i in range(7))
            accs = [[cgutils.alloca_once_value(builder, v.zero()) for _ in range(nv)]
                    for _ in range(kb_n)]
            koff = [builder.add(cb, builder.load(builder.gep(
                op, [builder.add(t0, _clamped(builder, i, nk))]))) for i in range(kb_n)]
            with cgutils.for_range_slice(builder, p0, p1, _i(1)) as (p, _):
                xo = builder.load(builder.gep(pp, [p]))
                go = builder.add(cb, builder.load(builder.gep(gq, [p])))
                gs = [v.load(gp, builder.add(go, _i(c * v.lanes))) for c in range(nv)]
                for i in range(kb_n):
                    xi = builder.add(xo, koff[i])
                    for c in range(nv):
                        xv = v.load(xp, builder.add(xi, _i(c * v.lanes)))
                        v.fmadd(accs[i][c], xv, gs[c])
            _add_rows(v, accs, nk, ap, abase, astep)
            return context.get_dummy_value()

        return types.void(xf, gy, acc, pos, gpos, offs, a), codegen

    return tile


#: positions per fused channel-wise gradient tile, by channel vectors (1, 2 or 4): the
#: tile keeps the positions' input-gradient sums and input values in registers (4
#: vectors of 2 positions measured as fast as the two passes apart, one thread, data in
#: the cache: 1.6 against 0.8 + 0.8 ms; 2 vectors of 4 positions, or 6 or 12, 2-4× slower)
FUSED_BLOCK = {1: 8, 2: 4, 4: 2} if _REGISTERS == 32 else {1: 4, 2: 2, 4: 1}


@functools.lru_cache(maxsize=None)
def channelwise_fused_tile(nv, xb_n):
    """Both channel-wise gradients over ``xb_n`` positions of an input-gradient plan and
    ``nv`` channel vectors (see the module docstring)."""

    @intrinsic
    def tile(typingctx, gy, wt, gx, xf, acc, offs, pos, ypos, a):
        def codegen(context, builder, sig, args):
            v = _Vec(context, builder, sig.args[0].dtype, VECTOR_BYTES)
            gp, wp, gxp, xp, ap, op, pp, qp = (_data(context, builder, t, x)
                                               for t, x in zip(sig.args[:8], args[:8]))
            p0, cb, nt, wstep = (builder.extract_value(args[8], i) for i in range(4))
            gyo = [builder.add(cb, builder.load(builder.gep(pp, [builder.add(p0, _i(j))])))
                   for j in range(xb_n)]

            def xo(j):  # (loaded where used: kept across the tap loop, the offsets spilled)
                return builder.add(cb, builder.load(builder.gep(qp, [builder.add(p0, _i(j))])))

            accs = [[cgutils.alloca_once_value(builder, v.zero()) for _ in range(nv)]
                    for _ in range(xb_n)]
            xs = [[v.load(xp, builder.add(xj, _i(c * v.lanes))) for c in range(nv)]
                  for xj in (xo(j) for j in range(xb_n))]
            with cgutils.for_range_slice(builder, _i(0), nt, _i(1)) as (t, _):
                o = builder.load(builder.gep(op, [t]))
                row = builder.add(builder.mul(t, wstep), cb)
                ws = [v.load(wp, builder.add(row, _i(c * v.lanes))) for c in range(nv)]
                gw = [cgutils.alloca_once_value(builder, v.load(ap, builder.add(
                    row, _i(c * v.lanes)))) for c in range(nv)]
                for j in range(xb_n):
                    at = builder.add(gyo[j], o)
                    for c in range(nv):
                        g = v.load(gp, builder.add(at, _i(c * v.lanes)))
                        v.fmadd(accs[j][c], g, ws[c])
                        v.fmadd(gw[c], g, xs[j][c])
                for c in range(nv):
                    v.store(builder.load(gw[c]), ap, builder.add(row, _i(c * v.lanes)))
            for j in range(xb_n):
                xj = xo(j)
                for c in range(nv):
                    v.store(builder.load(accs[j][c]), gxp, builder.add(xj, _i(c * v.lanes)))
            return context.get_dummy_value()

        return types.void(gy, wt, gx, xf, acc, offs, pos, ypos, a), codegen

    return tile

# ---------------------------------------------------------------------------------------
# the drivers: the loops around the tiles (in this file, so that editing a tile
# invalidates Numba's on-disk cache of the drivers that inline it: the cache only
# watches the file of the function it stores)
#
# The source ``xf`` is flat; position ``p`` starts its window at ``xf[pos[p]]`` and writes
# at ``ypos[p]``; ``offs[g, t]`` is the offset of run ``t`` of group ``g``'s window, each
# run ``R`` contiguous values. The weights are ``wt[g, t·R + k, f]`` with ``Fp`` (``Fg``
# rounded up to whole vectors) filters innermost, zeros past ``Fg``; the bias ``(G, Fp)``
# likewise.

_JIT = dict(nogil=True, cache=True, boundscheck=False)

_f1, _f2, _f3, _f4 = (forward_tile(nv) for nv in range(1, NV_MAX + 1))
_w1, _w2, _w3, _w4 = (wgrad_tile(nv) for nv in range(1, NV_MAX + 1))
_B1, _B2, _B3, _B4 = (BLOCK[nv] for nv in range(1, NV_MAX + 1))
_V1, _V2, _V3, _V4 = (WGRAD_BLOCK[nv] for nv in range(1, NV_MAX + 1))
_fh, _fq = forward_tile(1, 1), forward_tile(1, 2)  # half and quarter vectors
_wh, _wq = wgrad_tile(1, 1), wgrad_tile(1, 2)
_c1, _c2, _c3, _c4 = (forward_tile(nv, 0, True) for nv in range(1, NV_MAX + 1))
_cw1, _cw2, _cw3, _cw4 = (channelwise_wgrad_tile(nv) for nv in range(1, NV_MAX + 1))
_g1, _g2, _g4 = (channelwise_fused_tile(nv, FUSED_BLOCK[nv]) for nv in (1, 2, 4))
_g1s, _g2s, _g4s = (channelwise_fused_tile(nv, 1) for nv in (1, 2, 4))
_GB1, _GB2, _GB4 = FUSED_BLOCK[1], FUSED_BLOCK[2], FUSED_BLOCK[4]


@njit(**_JIT)
def _block(nv, narrow, wgrad=False):
    """Outputs per forward tile, or (``wgrad``) window offsets per weight-gradient tile."""
    if narrow:
        return NARROW_BLOCK
    if nv == 1:
        return _V1 if wgrad else _B1
    if nv == 2:
        return _V2 if wgrad else _B2
    if nv == 3:
        return _V3 if wgrad else _B3
    return _V4 if wgrad else _B4


@njit(**_JIT)
def forward_positions(xf, pos, ypos, offs, R, wf, bf, Fp, y, Fg, narrow, wblock, q0, q1, va,
                      vb, span):
    """Positions ``q0 .. q1-1``: ``y[ypos[p] + g·Fg + f]`` for the filter vectors ``va ..
    vb-1`` of each group (``f`` in those vectors and ``< Fg``); ``wf`` ``(G, T·R, Fp)``,
    ``bf`` ``(G, Fp)`` and ``y``, flat; vectors of ``VECTOR_BYTES >> narrow`` bytes
    (``narrow`` > 0: ``Fp`` is one vector); the reduction in blocks of at most ``wblock``
    bytes of weights per filter block, over the runs ``span[0] <= t < span[1]`` and the
    offsets ``span[2] <= k < span[3]`` of each (all of them: ``(0, T, 0, R)``; fewer:
    the positions' windows read padding outside them); several groups in turn over
    chunks of :data:`GROUP_CHUNK` positions."""
    G, T = offs.shape
    tl, th, kl, kh = span
    lanes = (VECTOR_BYTES >> narrow) // xf.itemsize
    # several groups: all of them over a chunk of positions before the next chunk (their
    # channels interleave in each source value: one group at a time over all the
    # positions read the source from the L3 once per group)
    chunk = max(1, q1 - q0 if G == 1 else GROUP_CHUNK)
    for pc in range(q0, q1, chunk):
        pe = min(pc + chunk, q1)
        for g in range(G):
            og = offs[g]
            for v0 in range(va, vb, NV_MAX):
                nv = min(NV_MAX, vb - v0)
                f0 = v0 * lanes
                xb = _block(nv, narrow)
                # the reduction in blocks whose weights stay in the cache: whole runs, or
                # pieces of one run
                per_k = nv * lanes * xf.itemsize
                runs = max(1, wblock // (R * per_k))
                piece = R if R * per_k <= wblock else max(1, wblock // per_k)
                for b0 in range(0, T, runs):
                    t0, t1 = max(b0, tl), min(T, b0 + runs, th)
                    if t0 >= t1:
                        continue
                    for c0 in range(0, R, piece):
                        k0, k1 = max(c0, kl), min(R, c0 + piece, kh)
                        if k0 >= k1:
                            continue
                        first = 1 if t0 == tl and k0 == kl else 0
                        for p0 in range(pc, pe, xb):
                            a = (p0, min(xb, pe - p0), R, g * T * R * Fp + f0, g * Fg + f0,
                                 Fg - f0, Fp, g * Fp + f0, t0, t1, k0, k1, first)
                            if narrow == 1:
                                _fh(xf, wf, y, bf, og, pos, ypos, a)
                            elif narrow == 2:
                                _fq(xf, wf, y, bf, og, pos, ypos, a)
                            elif nv == 1:
                                _f1(xf, wf, y, bf, og, pos, ypos, a)
                            elif nv == 2:
                                _f2(xf, wf, y, bf, og, pos, ypos, a)
                            elif nv == 3:
                                _f3(xf, wf, y, bf, og, pos, ypos, a)
                            else:
                                _f4(xf, wf, y, bf, og, pos, ypos, a)


@njit(**_JIT)
def weight_grad_positions(xf, pos, gpos, offs, R, gf, af, Fp, narrow, per_tile, q0, q1, va,
                          vb):
    """``af += `` the weight gradient over output positions ``q0 .. q1-1`` for the filter
    vectors ``va .. vb-1`` of each group; ``gf`` is the cotangent ``(positions, G, Fp)``
    padded with zeros, position ``p``'s at ``gf[gpos[p]]``, ``af`` ``(G, T·R, Fp)``, both
    flat."""
    G, T = offs.shape
    lanes = (VECTOR_BYTES >> narrow) // xf.itemsize
    for pa in range(q0, q1, per_tile):
        pb = min(pa + per_tile, q1)
        for g in range(G):
            for t in range(T):
                for v0 in range(va, vb, NV_MAX):
                    nv = min(NV_MAX, vb - v0)
                    f0 = v0 * lanes
                    kb = _block(nv, narrow, True)
                    for k0 in range(0, R, kb):
                        a = (pa, pb, offs[g, t] + k0, min(kb, R - k0), g * Fp + f0,
                             (g * T * R + t * R + k0) * Fp + f0, Fp)
                        if narrow == 1:
                            _wh(xf, gf, af, pos, gpos, a)
                        elif narrow == 2:
                            _wq(xf, gf, af, pos, gpos, a)
                        elif nv == 1:
                            _w1(xf, gf, af, pos, gpos, a)
                        elif nv == 2:
                            _w2(xf, gf, af, pos, gpos, a)
                        elif nv == 3:
                            _w3(xf, gf, af, pos, gpos, a)
                        else:
                            _w4(xf, gf, af, pos, gpos, a)


@njit(**_JIT)
def channelwise_positions(xf, pos, ypos, offs, wf, bf, Cp, y, C, q0, q1):
    """Channel-wise, positions ``q0 .. q1-1``: ``y[ypos[p] + c] = bf[c] + Σ_t
    xf[pos[p] + offs[t] + c] · wf[t·Cp + c]`` for ``c < C`` (``Cp``: whole vectors)."""
    lanes = VECTOR_BYTES // xf.itemsize
    nvec = Cp // lanes
    for v0 in range(0, nvec, NV_MAX):
        nv = min(NV_MAX, nvec - v0)
        c0 = v0 * lanes
        xb = _block(nv, 0)
        for p0 in range(q0, q1, xb):
            a = (p0, min(xb, q1 - p0), 1, c0, c0, C - c0, Cp, c0, 0, offs.shape[0], 0, 1, c0)
            if nv == 1:
                _c1(xf, wf, y, bf, offs, pos, ypos, a)
            elif nv == 2:
                _c2(xf, wf, y, bf, offs, pos, ypos, a)
            elif nv == 3:
                _c3(xf, wf, y, bf, offs, pos, ypos, a)
            else:
                _c4(xf, wf, y, bf, offs, pos, ypos, a)


@njit(**_JIT)
def channelwise_weight_grad_positions(xf, pos, gpos, offs, gf, af, Cp, per_tile, q0, q1):
    """Channel-wise: ``af[t·Cp + c] += Σ_p xf[pos[p] + offs[t] + c] · gf[gpos[p] + c]``
    over positions ``q0 .. q1-1``."""
    T = offs.shape[0]
    lanes = VECTOR_BYTES // xf.itemsize
    nvec = Cp // lanes
    for pa in range(q0, q1, per_tile):
        pb = min(pa + per_tile, q1)
        for v0 in range(0, nvec, NV_MAX):
            nv = min(NV_MAX, nvec - v0)
            c0 = v0 * lanes
            kb = _block(nv, 0)
            for t0 in range(0, T, kb):
                a = (pa, pb, t0, min(kb, T - t0), c0, t0 * Cp + c0, Cp)
                if nv == 1:
                    _cw1(xf, gf, af, pos, gpos, offs, a)
                elif nv == 2:
                    _cw2(xf, gf, af, pos, gpos, offs, a)
                elif nv == 3:
                    _cw3(xf, gf, af, pos, gpos, offs, a)
                else:
                    _cw4(xf, gf, af, pos, gpos, offs, a)


@njit(**_JIT)
def channelwise_gradients_positions(gyf, pos, ypos, offs, wf, Cp, gx, xf, af, per_tile, q0,
                                    q1):
    """Channel-wise, both gradients over positions ``q0 .. q1-1`` of an input-gradient
    plan (whole vectors of channels, ``Cp`` of them): ``gx[ypos[p] + c] = Σ_t
    gyf[pos[p] + offs[t] + c] · wf[t·Cp + c]`` and ``af[t·Cp + c] += Σ_p gyf[pos[p] +
    offs[t] + c] · xf[ypos[p] + c]``, the input ``xf`` laid out as ``gx``; the weight
    gradient summed over ``per_tile`` positions at a time, each such sum then added to
    ``af`` (two levels, as :func:`channelwise_weight_grad_positions`)."""
    T = offs.shape[0]
    lanes = VECTOR_BYTES // gyf.itemsize
    nvec = Cp // lanes
    part = np.zeros(T * Cp, gyf.dtype)
    for pa in range(q0, q1, per_tile):
        pb = min(pa + per_tile, q1)
        v0 = 0
        while v0 < nvec:
            nv = 4 if nvec - v0 >= 4 else (2 if nvec - v0 >= 2 else 1)
            xb = _GB1 if nv == 1 else (_GB2 if nv == 2 else _GB4)
            p0 = pa
            while p0 < pb:
                a = (p0, v0 * lanes, T, Cp)
                if p0 + xb <= pb:
                    if nv == 1:
                        _g1(gyf, wf, gx, xf, part, offs, pos, ypos, a)
                    elif nv == 2:
                        _g2(gyf, wf, gx, xf, part, offs, pos, ypos, a)
                    else:
                        _g4(gyf, wf, gx, xf, part, offs, pos, ypos, a)
                    p0 += xb
                else:
                    if nv == 1:
                        _g1s(gyf, wf, gx, xf, part, offs, pos, ypos, a)
                    elif nv == 2:
                        _g2s(gyf, wf, gx, xf, part, offs, pos, ypos, a)
                    else:
                        _g4s(gyf, wf, gx, xf, part, offs, pos, ypos, a)
                    p0 += 1
            v0 += nv
        for i in range(T * Cp):
            af[i] += part[i]
            part[i] = 0
