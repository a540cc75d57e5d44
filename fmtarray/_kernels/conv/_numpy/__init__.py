"""NumPy's convolution algorithms (registered on import by :mod:`..registry`).

One algorithm family per module — :mod:`.winograd`, :mod:`.batch_innermost`,
:mod:`.depthwise`, :mod:`.last_innermost`, :mod:`.gemm` — on the threads, scratch
buffers and copies of :mod:`._runtime`; every threshold comes from
:func:`~fmtarray._kernels.conv.thresholds.current`.

The kernels work on channels-last views ``(N, *sp, C)`` of the kernel arrays (a
permutation of the strides, no copy) and return ``(N, *out, F)``, handed back as a view
in the layout's order. The entries are registered below in priority order (the first
that applies runs); each ``applies`` reads the strides the path relies on from the
:class:`~..spec.Layout` (a size-1 dim may carry any stride; ``as_strided`` is never
built from assumed strides), ``accepts`` checks the values where the path needs it
(dtypes of arrays read in place, Winograd's finite inputs). Every entry declines
input dilation (the portable entry materialises it) and computes a batch of 0 itself.
Entries whose input gradient convolves the zero-padded cotangent hand it to an exact
scatter when a weight is non-finite (:func:`_exact_near_non_finite_weights`).
"""

from __future__ import annotations

import numpy as np

from ..registry import Algo, register
from . import batch_innermost, depthwise, gemm, last_innermost, winograd
from .relayout import batch_innermost_worth, via_canonical, winograd_worth
from ._common import all_finite, data_dtypes_match, plain
from ._runtime import kernel_call, release_scratch

__all__ = ["to_channels_last", "from_channels_last", "release_scratch"]

ALL = ("forward", "input_grad", "weight_grad")
GRADS = ("input_grad", "weight_grad")


def to_channels_last(a, layout):
    return np.transpose(a, layout.perm(layout.channels_last))


def from_channels_last(a, layout):
    return np.transpose(a, layout.inverse(layout.channels_last))


def _forward(kernel, blas1):
    def run(xp, spec, layout, x, w, b):
        x = plain(to_channels_last(x, layout))
        w = np.asarray(w)
        dtype = np.result_type(x.dtype, w.dtype)
        if spec.N == 0:
            y = np.empty((0, *spec.out, spec.F), dtype=dtype)
        else:
            bias = None if b is None else np.asarray(b, dtype=dtype).reshape(spec.F)
            with kernel_call(spec, blas1):
                y = kernel(x, w, bias, spec, dtype)
        return from_channels_last(y, layout)

    return run


def _backward(kernel, blas1):
    def run(xp, spec, layout, gy, x, w, needs):
        gy = plain(to_channels_last(gy, layout))
        x = plain(to_channels_last(x, layout))
        w = np.asarray(w)
        dtype = np.result_type(gy.dtype, x.dtype, w.dtype)
        if spec.N == 0:
            gx = np.zeros(x.shape, dtype) if needs[0] else None
            gw = np.zeros(w.shape, dtype) if needs[1] else None
        else:
            with kernel_call(spec, blas1):
                gx, gw = kernel(gy, x, w, spec, needs, dtype)
        gx = from_channels_last(gx, layout) if needs[0] and gx is not None else None
        return gx, (gw if needs[1] else None)

    return run


def _exact_near_non_finite_weights(kernel, exact):
    """``kernel``, whose input gradient convolves the zero-padded (or gathers through
    zero-filled) cotangent, with the input gradient from ``exact`` (a scatter of
    ``gy·Wᵀ`` over the (output, tap) pairs that exist) when a weight is ±inf or NaN:
    ``0·inf`` would put NaN where no tap reaches (torch's and the definition's
    gradient have none there). One summing pass over the weights per call."""
    def run(gy, x, w, geo, needs, dtype):
        if not needs[0] or all_finite(w):
            return kernel(gy, x, w, geo, needs, dtype)
        gx = exact(gy, x, w, geo, (True, False), dtype)[0]
        gw = kernel(gy, x, w, geo, (False, True), dtype)[1] if needs[1] else None
        return gx, gw

    return run


def _exact_wgrad_near_non_finite_data(kernel, exact, data, padded_only):
    """``kernel``, whose weight gradient leaves out (or reorders) some products that are
    ``0·inf`` when the data hold ±inf or NaN, with the weight gradient from ``exact``
    (an im2col-style sum over every (output, tap) pair, padding included, as torch's)
    when ``data`` (``"gy"`` or ``"x"``) is not all finite — only for padded convolutions
    when ``padded_only``. One summing pass over that array per weight gradient."""
    def run(gy, x, w, geo, needs, dtype):
        a = gy if data == "gy" else x
        if (not needs[1] or (padded_only and not any(geo.pb + geo.pa))
                or all_finite(a)):
            return kernel(gy, x, w, geo, needs, dtype)
        gw = exact(gy, x, w, geo, (False, True), dtype)[1]
        gx = kernel(gy, x, w, geo, (True, False), dtype)[0] if needs[0] else None
        return gx, gw

    return run


def _no_input_dilation(applies):
    def check(spec, layout):
        if max(spec.lhs_dilation) > 1:
            return (f"input dilation {spec.lhs_dilation}: NumPy kernels do not dilate "
                    "(portable.im2col does)")
        return applies(spec, layout)

    return check


def _entry(name, ops, applies, domain, *, forward=None, backward=None, accepts=None,
           blas1=True):
    return register(Algo(f"numpy.{name}", "numpy", ops, _no_input_dilation(applies),
                         forward=None if forward is None else _forward(forward, blas1),
                         backward=None if backward is None else _backward(backward, blas1),
                         accepts=accepts, domain=domain))


def _relaid(worth, threshold):
    """Register, right after ``base``, ``base`` on a canonical copy of other-layout data
    (:mod:`.relayout`), chosen where ``worth`` says the copies pay."""
    def add(base):
        register(via_canonical(base, f"{base.name}'s domain on data stored in another "
                                     "memory order (e.g. channels innermost): the operands "
                                     "copied once into canonical order, the data-shaped "
                                     f"result copied back channels-last; {threshold}",
                               worth))
        return base

    return add


_via_winograd = _relaid(winograd_worth, "≥ relayout_winograd_min_macs multiply-adds per "
                                        "copied value")
_via_bi = _relaid(batch_innermost_worth, "≥ relayout_bi_min_taps filter taps")


# ---- in priority order (the order of the former if-chains)

_via_winograd(_entry("winograd", ("forward",), winograd.applies_forward,
       "Winograd F(2×2, 3×3): 2-d 3×3 stride 1, one group, constant padding, batch innermost, "
       "channels, filters, batch and 2×2 tiles × batch ≥ winograd_min_c/_f/_n/_total_cols, "
       "finite values",
       forward=winograd.run_forward, accepts=winograd.accepts_forward))
_entry("batch_innermost", ("forward",), batch_innermost.applies_forward,
       "GEMM on batch-innermost data without transposing it: one group, N ≥ 2, "
       "kw·C ≤ bi_max_run",
       forward=batch_innermost.forward)
_entry("depthwise_bi", ALL, depthwise.applies_bi,
       "channel-wise, one channel and one filter per group, on batch-innermost data whose "
       "(C, N) values are one run (x and cotangent), N ≥ 2: fused einsum per row block",
       forward=depthwise.forward_bi,
       backward=_exact_wgrad_near_non_finite_data(
           _exact_near_non_finite_weights(depthwise.backward_bi, depthwise.backward),
           depthwise.backward, "gy", padded_only=True),
       accepts=data_dtypes_match, blas1=False)
_entry("depthwise", ALL, depthwise.applies,
       "channel-wise (one channel per group, any filters per group), any layout: "
       "multiply-accumulate over the taps on padded channels-last chunks",
       forward=depthwise.forward, backward=depthwise.backward)
_entry("flat_shift", GRADS, batch_innermost.applies_flat,
       "both gradients of a 2-d stride-1 one-group convolution on batch-innermost x and "
       "cotangent, channels and filters within flat_channels, N ≥ flat_min_n, Wo·N ≥ "
       "flat_min_row, finite constant padding: flat shifts of channel-major copies",
       backward=_exact_near_non_finite_weights(batch_innermost.backward_flat,
                                               gemm.input_grad_col2im))
_entry("winograd_weight_grad", ("weight_grad",), winograd.applies_weight_grad,
       "Winograd's adjoint F(3×3, 2×2): numpy.winograd's domain, batch-innermost cotangent "
       "of the result dtype, 16·C·F values < winograd_wide_u_bytes",
       backward=winograd.run_weight_grad, accepts=winograd.accepts_weight_grad)
_entry("last_innermost", ("forward", "weight_grad"), last_innermost.applies,
       "last convolved dim innermost in memory (e.g. SCBT over S and T), stride 1 along it, "
       "one group, C ≤ li_max_c, N·Wp ≥ li_min_run, padded input within the workspace: "
       "flat-shift columns, row ring",
       forward=last_innermost.forward,
       backward=_exact_wgrad_near_non_finite_data(last_innermost.weight_grad,
                                                  gemm.weight_grad_tiles, "x", padded_only=False),
       accepts=data_dtypes_match)
_via_bi(_entry("input_grad_bi", ("input_grad",), batch_innermost.applies_input_grad,
       "input gradient on batch-innermost x and cotangent, one group, N ≥ 2, C < F, one "
       "padded input per worker within the workspace, unless numpy.winograd_weight_grad "
       "applies: Wᵀ·gy scattered per tap",
       backward=batch_innermost.input_grad))
_via_winograd(_entry("winograd_input_grad", ("input_grad",), winograd.applies_input_grad,
       "stride-1 input gradient as a Winograd convolution of the cotangent with the "
       "flipped filters (numpy.winograd's domain, read on the cotangent)",
       backward=winograd.run_input_grad, accepts=winograd.accepts_input_grad))
_entry("last_innermost_input_grad", ("input_grad",), last_innermost.applies_input_grad,
       "stride-1 input gradient with constant padding as a last-dim-innermost convolution "
       "of the cotangent (numpy.last_innermost's domain, read on the cotangent)",
       backward=_exact_near_non_finite_weights(last_innermost.input_grad,
                                               gemm.input_grad_col2im),
       accepts=data_dtypes_match)
_entry("gemm_wide", ("forward", "weight_grad"), gemm.applies_wide,
       "im2col GEMM, weight matrix ≥ wide_weight_bytes: chunk-sized GEMMs split by rows "
       "over the workers",
       forward=gemm.forward_wide, backward=gemm.weight_grad_wide)
_entry("gemm", ("forward", "weight_grad"), lambda spec, layout: None,
       "every NumPy convolution: im2col in column tiles of tile_bytes, one GEMM per tile",
       forward=gemm.forward_tiles, backward=gemm.weight_grad_tiles)
_entry("grad_as_conv", ("input_grad",), gemm.applies_grad_as_conv,
       "stride-1 input gradient: im2col convolution of the cotangent with the flipped kernel",
       backward=_exact_near_non_finite_weights(gemm.input_grad_as_conv,
                                               gemm.input_grad_col2im))
_entry("col2im", ("input_grad",), lambda spec, layout: None,
       "every NumPy input gradient: gy·Wᵀ per tile scatter-added into padded samples "
       "(col2im)",
       backward=gemm.input_grad_col2im)
