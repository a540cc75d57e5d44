"""Independent reference for convolution: direct loops in float64 NumPy.

Written from the definition (MATLAB ``dlconv``: cross-correlation, no kernel flip),
sharing no code with :mod:`fmtarray._kernels`. Padding uses ``numpy.pad``.
"""

from __future__ import annotations

import itertools

import numpy as np

NUMPY_MODE = {
    "symmetric-include-edge": "symmetric",
    "symmetric-exclude-edge": "reflect",
    "replicate": "edge",
}


def ref_pad(x, before, after, axes, value):
    """``numpy.pad`` of ``x`` along ``axes`` with fmtarray's padding-value names."""
    widths = [(0, 0)] * x.ndim
    for ax, b, a in zip(axes, before, after):
        widths[ax] = (b, a)
    if isinstance(value, str):
        return np.pad(x, widths, mode=NUMPY_MODE[value])
    return np.pad(x, widths, mode="constant", constant_values=value)


def ref_conv(x, w, b=None, stride=1, dilation=1, before=0, after=0, value=0.0):
    """Channels-last direct convolution.

    ``x``: ``(N, *sp, C)``; ``w``: ``(*k, Cg, Fg, G)``; ``b``: ``None`` or ``(F,)``.
    Returns float64 ``(N, *out, F)`` with channel ``g * Fg + j``.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    d = x.ndim - 2
    k = w.shape[:d]
    cg, fg, g = w.shape[d:]
    stride = (stride,) * d if np.isscalar(stride) else tuple(stride)
    dilation = (dilation,) * d if np.isscalar(dilation) else tuple(dilation)
    before = (before,) * d if np.isscalar(before) else tuple(before)
    after = (after,) * d if np.isscalar(after) else tuple(after)
    xp = ref_pad(x, before, after, tuple(range(1, d + 1)), value)
    out = tuple(
        (xp.shape[1 + i] - ((k[i] - 1) * dilation[i] + 1)) // stride[i] + 1 for i in range(d)
    )
    n = x.shape[0]
    y = np.zeros((n, *out, fg * g))
    for pos in itertools.product(*(range(o) for o in out)):
        for grp in range(g):
            acc = np.zeros((n, fg))
            for off in itertools.product(*(range(kk) for kk in k)):
                idx = tuple(p * s + o * dl for p, s, o, dl in zip(pos, stride, off, dilation))
                v = xp[(slice(None),) + idx + (slice(grp * cg, (grp + 1) * cg),)]  # (n, cg)
                acc += v @ w[off + (slice(None), slice(None), grp)]
            y[(slice(None),) + pos + (slice(grp * fg, (grp + 1) * fg),)] = acc
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape(-1)
    return y


def numeric_grad(f, x, eps=1e-6):
    """Central finite differences of the scalar function ``f`` at float64 ``x``."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def make(cfg, seed=0):
    """Random channels-last ``x``, MATLAB-layout weights ``(*k, Cg, Fg, G)`` and a bias for a
    config dict with ``n``, ``sp``, ``k``, ``cg``, ``fg``, ``groups``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["n"], *cfg["sp"], cfg["groups"] * cfg["cg"]))
    w = rng.standard_normal((*cfg["k"], cfg["cg"], cfg["fg"], cfg["groups"]))
    b = rng.standard_normal(cfg["groups"] * cfg["fg"])
    return x, w, b
