"""Helpers shared by the NumPy algorithm families: the channels-last strides the
``applies`` predicates read from a :class:`~..spec.Layout`, the weight matrices, the
input gradient as a convolution of the cotangent, and the padding's adjoint.

The kernels work on channels-last views ``(N, *sp, C)`` of the kernel arrays (a
permutation of the strides, no copy). Their layout checks are made on the strides of
those views as :func:`plain` sees them: NumPy calls an array C-contiguous whatever the
strides of its size-1 dims, so a C-contiguous view is given the canonical strides
first (:func:`cl_strides` computes the same from the layout alone).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from ...pad import pad_vjp
from ..spec import ConvSpec
from ..thresholds import current

__all__ = ["switched_off", "plain", "cl_strides", "has_gy", "itemsize", "all_finite",
           "data_dtypes_match", "row_ranges", "sum_blocks",
           "weight_matrix",
           "gemm", "transposed_weights", "grad_conv", "grad_input", "unpad", "chunk_size",
           "padded_bytes"]


def switched_off(name, off, on):
    """``"NAME=0"`` when the environment switch ``name`` is ``0``, ``None`` when it is
    unset or ``1``; any other value raises, naming both (``off`` / ``on``: what each
    means)."""
    env = os.environ.get(name, "").strip()
    if env == "0":
        return f"{name}=0"
    if env not in ("", "1"):
        raise ValueError(f"{name}={env!r}: expected 0 ({off}) or 1 ({on})")
    return None


def plain(a):
    """``a`` itself, or — when it is C-contiguous — a view with the canonical strides.

    NumPy calls an array C-contiguous whatever the strides of its size-1 dims (e.g. a
    channels-last view of batch-outermost data with ``C == 1`` carries the batch
    stride on its ``C`` dim); code that reads strides must not see those.
    """
    a = np.asarray(a)
    if a.flags.c_contiguous and a.size:
        return a.reshape(-1).reshape(a.shape)
    return a


def _canonical(shape, strides):
    """:func:`plain`'s strides (in elements) for an array of ``shape`` and ``strides``."""
    if 0 in shape:
        return strides
    step, contiguous = 1, True
    for n, s in zip(reversed(shape), reversed(strides)):
        if n > 1 and s != step:
            contiguous = False
            break
        step *= n
    if not contiguous:
        return strides
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


@functools.lru_cache(maxsize=1024)
def cl_strides(spec, layout, which="x"):
    """Element strides of ``x`` (``which="x"``, shape ``(N, *sp, C)``) or of the cotangent
    (``"gy"``, ``(N, *out, F)``) in channels-last order, as :func:`plain` leaves them;
    ``None`` when the layout has none. Cached: every entry's ``applies`` asks."""
    st = layout.strides_in(layout.channels_last, which)
    if st is None:
        return None
    shape = (spec.N, *spec.sp, spec.C) if which == "x" else (spec.N, *spec.out, spec.F)
    return _canonical(shape, st)


def row_ranges(total, n_blocks):
    """``[r0, r1)`` ranges: ``total`` rows in at most ``n_blocks`` blocks."""
    step = max(1, -(-total // n_blocks))
    return [(r, min(r + step, total)) for r in range(0, total, step)]


#: the most row blocks of a sum split by rows (see :func:`sum_blocks`)
SUM_BLOCKS = 16


def sum_blocks(n, spec):
    """Row blocks of a weight gradient summed over ``n`` rows (positions): 4 to
    ``SUM_BLOCKS``, one per 4096 rows — a fixed number for the problem (the partials,
    added in block order, give the same bits whatever the number of threads), few
    enough that their zero-filled partial sums stay small (16 blocks of 4096 positions
    cost 1.3 ms more than 4 in a 5×5 48→48 training step); one block for a problem
    below ``Tuning.serial_macs``, which runs on the calling thread alone (partials would
    only cost: zero-filled buffers, kernel calls and their sum)."""
    if spec.macs < current().serial_macs:
        return [(0, n)]
    return row_ranges(n, max(4, min(SUM_BLOCKS, n // 4096)))


def has_gy(layout) -> bool:
    """Whether the layout describes a gradient call (it carries the cotangent's)."""
    return layout.gy_memory is not None


def itemsize(spec) -> int:
    return np.dtype(spec.dtype).itemsize


def all_finite(a) -> bool:
    """Whether every value of ``a`` is finite: one summing pass (a sum that overflows reads
    as non-finite, which only sends the caller to its exact path)."""
    with np.errstate(all="ignore"):
        return bool(np.isfinite(np.sum(a)))


def data_dtypes_match(spec, layout, *arrays):
    """``accepts``: the data arrays (``x`` / ``gy``, not the weights) already have the
    result dtype (paths that read them in place)."""
    for a in arrays:
        if a.ndim == spec.d + 2 and np.dtype(a.dtype) != np.dtype(spec.dtype):
            return f"an input is {a.dtype}, the result {spec.dtype} (this path reads it in place)"
    return None


def chunk_size(per_sample_bytes):
    """Samples per chunk within the workspace."""
    return max(1, current().workspace_bytes // max(per_sample_bytes, 1))


def weight_matrix(w, spec, dtype):
    """``(G, K·Cg, Fg)`` from MATLAB layout ``(*k, Cg, Fg, G)``.

    When ``Cg`` is the contiguous dim of ``w`` (the flipped, transposed weights of the
    input gradient, a view), the copy is made as ``(G, Fg, K·Cg)`` — long contiguous
    runs instead of an element-wise transpose, several ms for 512×512 taps — and the
    transposed view is returned: BLAS reads it as a transposed operand."""
    w = np.asarray(w)
    wm = np.moveaxis(w, spec.d + 2, 0)  # (G, *k, Cg, Fg)
    it = w.itemsize
    if (w.dtype == dtype and spec.Cg > 1 and spec.Fg > 1 and wm.strides[-2] == it
            and wm.strides[-1] != it):
        t = np.ascontiguousarray(np.moveaxis(wm, -1, 1))  # (G, Fg, *k, Cg)
        return t.reshape(spec.G, spec.Fg, spec.K * spec.Cg).transpose(0, 2, 1)
    wm = wm.reshape(spec.G, spec.K * spec.Cg, spec.Fg)
    return np.ascontiguousarray(wm, dtype=dtype)


def gemm(a, wm, out):
    """``out[:, g, :] = a[:, g, :] @ wm[g]`` for each group (BLAS on strided views)."""
    if wm.shape[0] == 1:
        np.matmul(a[:, 0, :], wm[0], out=out[:, 0, :])
    else:
        np.matmul(a.transpose(1, 0, 2), wm, out=out.transpose(1, 0, 2))


def transposed_weights(w, spec, dtype):
    """The flipped kernel with ``Cg`` and ``Fg`` swapped, a view: consumers copy it in
    the order that suits them (see :func:`weight_matrix`)."""
    d = spec.d
    wf = np.flip(np.asarray(w, dtype=dtype), axis=tuple(range(d)))
    return wf.transpose(tuple(range(d)) + (d + 1, d, d + 2))


@functools.lru_cache(maxsize=256)
def grad_conv(spec):
    """The stride-1 input gradient as a forward convolution: ``(crop, g2, padded)``,
    ``g2`` the spec of ``conv(g, wt)`` with ``wt`` the flipped, transposed kernel and
    ``g = gy[crop]``. Constant padding: the result is ``gx`` itself (``g`` is ``gy``
    padded by ``(K-1)·d - pb`` before and ``(K-1)·d - pa`` after, negative pads cropping
    it). Otherwise (``padded`` true, ``crop`` ``None``): the result is the gradient of
    the padded input, whose padding adjoint :func:`unpad` folds back."""
    reach = tuple((k - 1) * dl for k, dl in zip(spec.k, spec.dilation))
    wt_shape = (*spec.k, spec.Fg, spec.Cg, spec.G)
    if not spec.constant_padding:
        g2 = ConvSpec.make((spec.N, *spec.out, spec.F), wt_shape, dilation=spec.dilation,
                           pad_before=reach, pad_after=reach, dtype=spec.dtype)
        return None, g2, True
    before = tuple(r - p for r, p in zip(reach, spec.pb))
    after = tuple(r - p for r, p in zip(reach, spec.pa))
    crop = (slice(None),) + tuple(
        slice(max(-b, 0), n - max(-a, 0)) for b, a, n in zip(before, after, spec.out))
    gsp = tuple(len(range(*s.indices(n))) for s, n in zip(crop[1:], spec.out))
    g2 = ConvSpec.make((spec.N, *gsp, spec.F), wt_shape, dilation=spec.dilation,
                       pad_before=tuple(max(b, 0) for b in before),
                       pad_after=tuple(max(a, 0) for a in after), dtype=spec.dtype)
    return crop, g2, False


def grad_input(gy, w, spec, dtype):
    """``(g, wt, g2, padded)`` of :func:`grad_conv` for the arrays at hand."""
    crop, g2, padded = grad_conv(spec)
    g = gy if crop is None else gy[crop]
    return g, transposed_weights(w, spec, dtype), g2, padded


def unpad(gpad, spec):
    """The padding's adjoint: the gradient of the padded input folded onto the input."""
    return pad_vjp(np, gpad, spec.pb, spec.pa, tuple(range(1, spec.d + 1)), spec.value)


def padded_bytes(spec, channels=None, n=None):
    """Bytes of a padded copy of the input (``channels`` / ``n`` default to ``C`` / ``N``)."""
    c = spec.C if channels is None else channels
    return math.prod(spec.padded) * c * (spec.N if n is None else n) * itemsize(spec)
