"""Compiled drivers of :mod:`.direct`: the loops around the SIMD tiles of :mod:`._simd`.

The padded input ``xf`` is flat; output row ``r`` (every output position but the one
along the innermost convolved dim) starts its first window at ``xf[rbase[r]]``;
``offs[g, t]`` is the offset of run ``t`` of group ``g``'s window, each run ``R``
contiguous values; neighbouring outputs of a row are ``pstep`` apart. The weights are
``wt[g, t·R + k, f]`` with ``Fp`` (``Fg`` rounded up to whole vectors) filters innermost,
zeros past ``Fg``; the bias ``(G, Fp)`` likewise.
"""

import numpy as np
from numba import njit

from ._simd import BLOCK, NV_MAX, VECTOR_BYTES, forward_tile, wgrad_tile

_JIT = dict(nogil=True, cache=True, boundscheck=False)

_f1, _f2, _f3, _f4 = (forward_tile(nv) for nv in range(1, NV_MAX + 1))
_w1, _w2, _w3, _w4 = (wgrad_tile(nv) for nv in range(1, NV_MAX + 1))
_B1, _B2, _B3, _B4 = (BLOCK[nv] for nv in range(1, NV_MAX + 1))


@njit(**_JIT)
def _block(nv):
    if nv == 1:
        return _B1
    if nv == 2:
        return _B2
    if nv == 3:
        return _B3
    return _B4


@njit(**_JIT)
def forward_rows(xf, rbase, offs, R, pstep, wf, bf, Fp, y, W, F, Fg, r0, r1):
    """Output rows ``r0 .. r1-1`` of ``y`` (``(rows, W, F)``); ``wf``, ``bf`` and ``y``
    flat."""
    G, T = offs.shape
    lanes = VECTOR_BYTES // xf.itemsize
    nvec = Fp // lanes
    for r in range(r0, r1):
        for g in range(G):
            og = offs[g]
            for v0 in range(0, nvec, NV_MAX):
                nv = min(NV_MAX, nvec - v0)
                f0 = v0 * lanes
                xb = _block(nv)
                for ox0 in range(0, W, xb):
                    a = (rbase[r] + ox0 * pstep, pstep, R, g * T * R * Fp + f0,
                         (r * W + ox0) * F + g * Fg + f0, F, min(xb, W - ox0), Fg - f0, Fp,
                         g * Fp + f0)
                    if nv == 1:
                        _f1(xf, wf, y, bf, og, a)
                    elif nv == 2:
                        _f2(xf, wf, y, bf, og, a)
                    elif nv == 3:
                        _f3(xf, wf, y, bf, og, a)
                    else:
                        _f4(xf, wf, y, bf, og, a)


@njit(**_JIT)
def weight_grad_rows(xf, rbase, offs, R, pstep, gf, af, Fp, W, rows_per_tile, r0, r1):
    """``af += `` the weight gradient over output rows ``r0 .. r1-1``; ``gf`` is the
    cotangent ``(rows·W, G, Fp)`` padded with zeros, ``af`` ``(G, T·R, Fp)``, both flat."""
    G, T = offs.shape
    lanes = VECTOR_BYTES // xf.itemsize
    nvec = Fp // lanes
    for ra in range(r0, r1, rows_per_tile):
        rb = min(ra + rows_per_tile, r1)
        for g in range(G):
            for t in range(T):
                for v0 in range(0, nvec, NV_MAX):
                    nv = min(NV_MAX, nvec - v0)
                    f0 = v0 * lanes
                    kb = _block(nv)
                    for k0 in range(0, R, kb):
                        a = (ra, rb, W, pstep, offs[g, t] + k0, min(kb, R - k0),
                             g * Fp + f0, G * Fp, (g * T * R + t * R + k0) * Fp + f0, Fp)
                        if nv == 1:
                            _w1(xf, gf, af, rbase, a)
                        elif nv == 2:
                            _w2(xf, gf, af, rbase, a)
                        elif nv == 3:
                            _w3(xf, gf, af, rbase, a)
                        else:
                            _w4(xf, gf, af, rbase, a)
