"""Compiled drivers of :mod:`.direct`: the loops around the SIMD tiles of :mod:`._simd`.

The source ``xf`` is flat; position ``p`` starts its window at ``xf[pos[p]]`` and writes
at ``ypos[p]``; ``offs[g, t]`` is the offset of run ``t`` of group ``g``'s window, each
run ``R`` contiguous values. The weights are
``wt[g, t·R + k, f]`` with ``Fp`` (``Fg`` rounded up to whole vectors) filters innermost,
zeros past ``Fg``; the bias ``(G, Fp)`` likewise.
"""

from numba import njit

from ._simd import (BLOCK, NARROW_BLOCK, NV_MAX, VECTOR_BYTES, channelwise_wgrad_tile,
                    forward_tile, wgrad_tile)

_JIT = dict(nogil=True, cache=True, boundscheck=False)

_f1, _f2, _f3, _f4 = (forward_tile(nv) for nv in range(1, NV_MAX + 1))
_w1, _w2, _w3, _w4 = (wgrad_tile(nv) for nv in range(1, NV_MAX + 1))
_B1, _B2, _B3, _B4 = (BLOCK[nv] for nv in range(1, NV_MAX + 1))
_fh, _fq = forward_tile(1, 1), forward_tile(1, 2)  # half and quarter vectors
_wh, _wq = wgrad_tile(1, 1), wgrad_tile(1, 2)
_c1, _c2, _c3, _c4 = (forward_tile(nv, 0, True) for nv in range(1, NV_MAX + 1))
_cw1, _cw2, _cw3, _cw4 = (channelwise_wgrad_tile(nv) for nv in range(1, NV_MAX + 1))


@njit(**_JIT)
def _block(nv, narrow):
    if narrow:
        return NARROW_BLOCK
    if nv == 1:
        return _B1
    if nv == 2:
        return _B2
    if nv == 3:
        return _B3
    return _B4


@njit(**_JIT)
def forward_positions(xf, pos, ypos, offs, R, wf, bf, Fp, y, Fg, narrow, wblock, q0, q1):
    """Positions ``q0 .. q1-1``: ``y[ypos[p] + g·Fg + f]`` for the ``Fg`` filters of each
    group; ``wf`` ``(G, T·R, Fp)``, ``bf`` ``(G, Fp)`` and ``y``, flat; vectors of
    ``VECTOR_BYTES >> narrow`` bytes (``narrow`` > 0: ``Fp`` is one vector); the
    reduction in blocks of at most ``wblock`` bytes of weights per filter block."""
    G, T = offs.shape
    lanes = (VECTOR_BYTES >> narrow) // xf.itemsize
    nvec = Fp // lanes
    for g in range(G):
        og = offs[g]
        for v0 in range(0, nvec, NV_MAX):
            nv = min(NV_MAX, nvec - v0)
            f0 = v0 * lanes
            xb = _block(nv, narrow)
            # the reduction in blocks whose weights stay in the cache: whole runs, or
            # pieces of one run
            per_k = nv * lanes * xf.itemsize
            runs = max(1, wblock // (R * per_k))
            piece = R if R * per_k <= wblock else max(1, wblock // per_k)
            for t0 in range(0, T, runs):
                t1 = min(T, t0 + runs)
                for k0 in range(0, R, piece):
                    k1 = min(R, k0 + piece)
                    for p0 in range(q0, q1, xb):
                        a = (p0, min(xb, q1 - p0), R, g * T * R * Fp + f0, g * Fg + f0,
                             Fg - f0, Fp, g * Fp + f0, t0, t1, k0, k1)
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
def weight_grad_positions(xf, pos, offs, R, gf, af, Fp, narrow, per_tile, q0, q1, va, vb):
    """``af += `` the weight gradient over output positions ``q0 .. q1-1`` for the filter
    vectors ``va .. vb-1`` of each group; ``gf`` is the cotangent ``(positions, G, Fp)``
    padded with zeros, ``af`` ``(G, T·R, Fp)``, both flat."""
    G, T = offs.shape
    lanes = (VECTOR_BYTES >> narrow) // xf.itemsize
    for pa in range(q0, q1, per_tile):
        pb = min(pa + per_tile, q1)
        for g in range(G):
            for t in range(T):
                for v0 in range(va, vb, NV_MAX):
                    nv = min(NV_MAX, vb - v0)
                    f0 = v0 * lanes
                    kb = _block(nv, narrow)
                    for k0 in range(0, R, kb):
                        a = (pa, pb, offs[g, t] + k0, min(kb, R - k0), g * Fp + f0, G * Fp,
                             (g * T * R + t * R + k0) * Fp + f0, Fp)
                        if narrow == 1:
                            _wh(xf, gf, af, pos, a)
                        elif narrow == 2:
                            _wq(xf, gf, af, pos, a)
                        elif nv == 1:
                            _w1(xf, gf, af, pos, a)
                        elif nv == 2:
                            _w2(xf, gf, af, pos, a)
                        elif nv == 3:
                            _w3(xf, gf, af, pos, a)
                        else:
                            _w4(xf, gf, af, pos, a)


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
def channelwise_weight_grad_positions(xf, pos, offs, gf, af, Cp, per_tile, q0, q1):
    """Channel-wise: ``af[t·Cp + c] += Σ_p xf[pos[p] + offs[t] + c] · gf[p·Cp + c]`` over
    positions ``q0 .. q1-1``."""
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
                a = (pa, pb, t0, min(kb, T - t0), c0, Cp, t0 * Cp + c0, Cp)
                if nv == 1:
                    _cw1(xf, gf, af, pos, offs, a)
                elif nv == 2:
                    _cw2(xf, gf, af, pos, offs, a)
                elif nv == 3:
                    _cw3(xf, gf, af, pos, offs, a)
                else:
                    _cw4(xf, gf, af, pos, offs, a)
