"""NumPy's convolution algorithms (registered on import by :mod:`..registry`).

The kernels work on channels-last views ``(N, *sp, C)`` of the kernel arrays (a
permutation of the strides, no copy) and return ``(N, *out, F)``, handed back as a view
in the layout's order.
"""

from __future__ import annotations

import numpy as np

from ..registry import Algo, register
from . import legacy

__all__ = ["to_channels_last", "from_channels_last"]


def to_channels_last(a, layout):
    return np.transpose(a, layout.perm(layout.channels_last))


def from_channels_last(a, layout):
    return np.transpose(a, layout.inverse(layout.channels_last))


def _always(spec, layout):
    if any(s > 1 for s in spec.lhs_dilation):
        return "input dilation is not supported"
    return None


def _fwd(xp, spec, layout, x, w, b):
    y = legacy.forward(to_channels_last(x, layout), w, b, spec)
    return from_channels_last(y, layout)


def _bwd(xp, spec, layout, gy, x, w, needs):
    gx, gw, _ = legacy.backward(to_channels_last(gy, layout), to_channels_last(x, layout), w,
                                spec, (needs[0], needs[1], False))
    return (None if gx is None else from_channels_last(gx, layout)), gw


register(Algo("numpy.legacy", "numpy", ("forward", "input_grad", "weight_grad"), _always,
              forward=_fwd, backward=_bwd, domain="every NumPy convolution"))
