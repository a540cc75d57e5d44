"""Running an entry on a canonical copy of data stored in another memory order.

Some NumPy entries (Winograd, the batch-innermost input gradient) read the batch as
the innermost run in memory: canonical ``S…S C B`` data. A NumPy user's images are usually
stored channels innermost, batch outermost (``"BSSC"``), where those entries decline.
:func:`via_canonical` wraps such an entry into one more entry, named
``"via canonical copy: <entry>"``, which copies the operands once into canonical
memory order (one blocked, parallel transposing copy each: ``x`` for the forward, the
cotangent for the input gradient), runs the entry on the copies,
and copies the data-shaped result (``y``, or the input gradient) back into
channels-last order ``N…C`` — the order the direct NumPy entries return, so that a
chain of convolutions on channels-last data stays channels-last.

It applies only where it pays end to end: the data is not canonical already, the
wrapped entry applies to the canonical copy, and the entry's rule says the copies pay
(:func:`winograd_worth`, :func:`batch_innermost_worth`: thresholds in
:class:`~..thresholds.Tuning`, chosen by measurement). Winograd's weight gradient has
no such entry: copying both the cotangent and ``x`` cost more than it saved in every
case measured (3×3 256→256 b64 14×14: 111 ms direct, 112–116 ms via the copies).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from ..registry import Algo
from ..spec import Layout
from ..thresholds import current
from ._copies import _outer_axis, copy_blocked, parallel_copy
from ._runtime import kernel_call, n_workers, parallel

__all__ = ["via_canonical", "canonical_layout", "winograd_worth", "batch_innermost_worth",
           "PREFIX"]

#: the wrappers' names: ``"via canonical copy: numpy.winograd"`` (not ``"numpy.…"``:
#: the ``numpy.``/``numba.`` names are the entries that compute, each with its own domain)
PREFIX = "via canonical copy: "


def _shape(spec, dims, which):
    """Shape in ``dims`` order of ``x`` (``"x"``) or of the cotangent (``"gy"``)."""
    if which == "x":
        sizes = {"N": spec.N, "C": spec.C, **{str(i): n for i, n in enumerate(spec.sp)}}
    else:
        sizes = {"N": spec.N, "C": spec.F, **{str(i): n for i, n in enumerate(spec.out)}}
    return tuple(sizes[c] for c in dims)


def _c_order_stand_in(shape, dtype):
    """What :meth:`Layout.of` reads of a C-contiguous array of ``shape`` (no memory)."""
    item = np.dtype(dtype).itemsize
    strides, step = [], item
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return SimpleNamespace(shape=shape, strides=tuple(reversed(strides)),
                           dtype=np.dtype(dtype))


def canonical_layout(spec, layout) -> Layout:
    """``layout`` with ``x`` (and the cotangent, for a gradient) C-contiguous in
    ``layout.dims`` order: the layout of the copies this module makes."""
    dt = spec.dtype if spec.dtype in ("float32", "float64") else "float64"
    x = _c_order_stand_in(_shape(spec, layout.dims, "x"), dt)
    gy = None
    if layout.gy_memory is not None:
        gy = _c_order_stand_in(_shape(spec, layout.dims, "gy"), dt)
    return Layout.of(layout.dims, x, gy)


def _is_canonical(spec, layout) -> bool:
    ref = canonical_layout(spec, layout)
    same_x = layout.x_memory == ref.x_memory
    same_gy = layout.gy_memory is None or layout.gy_memory == ref.gy_memory
    return same_x and same_gy


def _copied_values(spec):
    """Values a wrapper copies per call: ``x`` (or the input gradient) and ``y`` (or the
    cotangent), one pass each."""
    return spec.N * spec.C * math.prod(spec.sp) + spec.N * spec.F * spec.P


def winograd_worth(spec):
    """Winograd on a canonical copy pays when the convolution does at least
    ``Tuning.relayout_winograd_min_macs`` multiply-adds per copied value.

    Measured on the 2-core VM (float32, NHWC-memory input, 2026-12-06; direct entry →
    via the copy): 3×3 256→256 b64 14×14 (1152 per value) forward 143 → 86–90 ms, input
    gradient 149 → 65–74 ms; 3×3 64→64 b32 56×56 (288) forward 66 → 75–91 ms, input
    gradient 61 → 79–86 ms; 3×3 8→8 b32 28×28 (36) 1.2 → 2.6 ms. The copies (about
    9 ms each way for 25 MB) cost as much as Winograd saves on the narrower cases."""
    per = spec.macs / max(_copied_values(spec), 1)
    limit = current().relayout_winograd_min_macs
    if per < limit:
        return (f"{per:.0f} multiply-adds per copied value < "
                f"Tuning.relayout_winograd_min_macs = {limit}: the copies would cost more "
                "than Winograd saves")
    return None


def batch_innermost_worth(spec):
    """The batch-innermost input gradient on a canonical copy pays for filters of at
    least ``Tuning.relayout_bi_min_taps`` taps, where the direct entries' im2col
    gathers or col2im scatters of few channels dominate.

    Measured as above: 5×5 1→20 b128 28×28 26–31 → 4–5 ms; 7×7 stride-2 3→64 b32
    224×224 458 → 210–242 ms; 3×3 3→16 b32 32×32 2.6 → 2.1–2.7 ms (even); 1×1 32→96
    b16 32×32 1.4 → 3.3 ms (channels-last data is the GEMM operand in place). The
    batch-innermost forward has no such entry: on the 5×5 1→20 case it ran even with
    the direct ``numpy.last_innermost`` (7.0 against 7.1 ms, interleaved, 40 turns)."""
    limit = current().relayout_bi_min_taps
    if spec.K < limit:
        return (f"{spec.K} filter taps < Tuning.relayout_bi_min_taps = {limit}: the copies "
                "would cost more than the batch-innermost entry saves")
    return None


def _copy_to(a, memory, dims):
    """``a`` (``dims`` order) copied into an array stored in ``memory`` order (outermost
    first), returned in ``dims`` order; caller holds a :class:`kernel_call`.

    The copy is split over the workers along the destination's outermost dim when that
    dim is not the source's outermost one: each part then writes one compact block and
    reads a few runs per source line, in cache (NHWC → canonical, b32 56×56×64 float32:
    9 ms against 25 ms for :func:`parallel_copy`, which splits along the source's
    outermost dim, the better split for the copy back: 8.7 ms against 11 ms)."""
    perm = tuple(dims.index(c) for c in memory)
    buf = np.empty(tuple(a.shape[i] for i in perm), dtype=a.dtype)
    out = np.transpose(buf, tuple(memory.index(c) for c in dims))
    outer = next((i for i in perm if a.shape[i] > 1), None)
    src_outer = _outer_axis(a)
    if outer is None or outer == src_outer or n_workers() == 1 or a.shape[outer] < 2:
        parallel_copy(out, a)
        return out
    block = current().copy_block
    n = a.shape[outer]
    step = -(-n // min(3 * n_workers(), n))
    parts = [(slice(None),) * outer + (slice(i, i + step),) for i in range(0, n, step)]
    parallel(lambda _w, sl: copy_blocked(out[sl], a[sl], block), parts, dynamic=True)
    return out


def via_canonical(base: Algo, domain: str, worth) -> Algo:
    """The entry ``base`` on canonical copies of the operands (see the module
    docstring); ``base`` must be a NumPy entry serving the forward or the input
    gradient alone (the ops whose result is data-shaped); ``worth(spec)`` is the
    end-to-end rule (``None`` when the copies pay, else why not)."""
    if base.ops not in (("forward",), ("input_grad",)):
        raise ValueError(f"via_canonical: {base.name!r} serves {base.ops}; legal: "
                         "('forward',) or ('input_grad',)")
    (op,) = base.ops
    name = PREFIX + base.name

    def applies(spec, layout):
        if layout.x_strides is None:
            return "the data has no strides"
        if _is_canonical(spec, layout):
            return f"the data is canonical already: {base.name} reads it in place"
        canon = canonical_layout(spec, layout)
        r = base.applies(spec, canon)
        if r is not None:
            return f"{base.name} on the canonical copy: {r}"
        return worth(spec)

    def accepts(spec, layout, *arrays):
        if base.accepts is None:
            return None
        return base.accepts(spec, canonical_layout(spec, layout), *arrays)

    def canon(spec, layout, *arrays):
        dims = layout.dims
        with kernel_call(spec):
            return [np.asarray(a) if np.asarray(a).flags.c_contiguous
                    else _copy_to(np.asarray(a), dims, dims) for a in arrays]

    def back_to(spec, layout, a):
        if np.transpose(a, layout.perm(layout.channels_last)).flags.c_contiguous:
            return a  # the entry returned it channels-last already
        with kernel_call(spec):
            return _copy_to(a, layout.channels_last, layout.dims)

    def forward(xp, spec, layout, x, w, b):
        (xc,) = canon(spec, layout, x)
        y = base.forward(xp, spec, canonical_layout(spec, layout), xc, w, b)
        return back_to(spec, layout, np.asarray(y))

    def backward(xp, spec, layout, gy, x, w, needs):
        # the input gradient reads x's shape only: x is not copied
        (gyc,) = canon(spec, layout, gy)
        gx = base.backward(xp, spec, canonical_layout(spec, layout), gyc, x, w,
                           (True, False))[0]
        return back_to(spec, layout, np.asarray(gx)), None

    return Algo(name, base.library, base.ops, applies,
                forward=forward if op == "forward" else None,
                backward=None if op == "forward" else backward,
                accepts=accepts, domain=domain)
