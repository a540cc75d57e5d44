"""Compiled NumPy convolution kernels (Numba), registered ahead of the NumPy entries.

The entries run on NumPy arrays (registry library ``"numpy"``) and are named
``numba.*``. Each one applies only when

* its domain matches (``applies``), and then
* Numba can be used: ``FMTARRAY_NUMBA`` is unset or ``1`` (``0`` turns every compiled
  kernel off, the BLAS/NumPy entries then serve) and ``import numba`` works. Numba is
  imported here, on the first NumPy convolution that a compiled kernel would run, never
  at ``import fmtarray``.

Kernels are compiled on first use for each dtype and cached on disk (``cache=True``,
in ``__pycache__`` next to this package, or ``NUMBA_CACHE_DIR``): the first call in a
fresh environment pays the compilation, later processes load it.

Threads: the kernels are ``nogil`` functions over a range of rows, and the NumPy
runtime's own workers (:mod:`.._numpy._runtime`) split a call over the cores, as they
do for the NumPy entries. Numba's ``parallel=True`` is not used: its default ``omp``
threading layer aborts a forked child that calls a parallel function after the parent
did (``multiprocessing``'s default start method on Linux), the ``workqueue`` layer
refuses concurrent callers (threads, Dask's threaded scheduler), and the ``tbb`` layer
would be one more dependency. The runtime's workers already give fork safety, a
calling-thread mode for Dask blocks, reproducible sums and no oversubscription.
"""

from __future__ import annotations

import os

from .. import registry
from ..registry import Algo, register
from .._numpy import ALL, _backward, _exact_near_non_finite_weights, _forward, _no_input_dilation
from .._numpy import _copies
from .._numpy._common import data_dtypes_match, switched_off
from .._numpy.gemm import input_grad_col2im
from . import depthwise, direct, winograd

__all__ = ["unavailable"]

_import_error: list = []  # [reason] once ``import numba`` failed
_imported: list = []  # [True] once it worked


def unavailable():
    """``None`` when the compiled kernels can run, else why not."""
    off = switched_off("FMTARRAY_NUMBA", "compiled kernels off",
                       "on, the default when numba is installed")
    if off:
        return off
    if _imported:
        return None
    if _import_error:
        return _import_error[0]
    try:
        import numba  # noqa: F401
    except Exception as e:  # ImportError, or numba refusing this NumPy
        _import_error.append(f"numba cannot be imported ({type(e).__name__}: {e})")
        return _import_error[0]
    _imported.append(True)
    return None


def _transposing_copy(dst, src):
    """:data:`.._numpy._copies.transposing_copy`: :func:`._copy.copy` while the compiled
    kernels can run (``FMTARRAY_NUMBA=0`` keeps NumPy's copies), without importing Numba
    before a convolution has."""
    if unavailable() is not None:
        return False
    from . import _copy

    return _copy.copy(dst, src)


_copies.transposing_copy = _transposing_copy
# whether these entries apply depends on the switch too (tests and users flip it)
registry.STATE.append(lambda: os.environ.get("FMTARRAY_NUMBA"))


def _when_compiled(applies):
    def check(spec, layout):
        return applies(spec, layout) or unavailable()

    return check


def _entry(name, ops, applies, domain, *, forward=None, backward=None, accepts=None,
           cotangent=None, op_applies=None):
    register(Algo(f"numba.{name}", "numpy", ops,
                  _no_input_dilation(_when_compiled(applies)),
                  forward=None if forward is None else _forward(forward, False),
                  backward=None if backward is None else _backward(backward, False),
                  accepts=accepts, domain=domain, cotangent=cotangent,
                  op_applies=op_applies), front=True)


_entry("depthwise", ALL, depthwise.applies,
       "channel-wise (one channel per group), any stride, dilation and padding: one "
       "filter per channel on SIMD vectors of channels (any convolved dims, any memory "
       "order: channels-last data with whole vectors of channels read in place, zero "
       "padding never materialised, else copied channels-last and padded), several per "
       "channel by row kernels "
       "(1 or 2 convolved dims, input and cotangent channels-innermost C-contiguous, "
       "constant padding not materialised)",
       forward=depthwise.forward, backward=depthwise.backward, accepts=data_dtypes_match)
_entry("winograd", ("forward",), winograd.applies,
       "3×3, stride 1, any dilation (by phases), one group, two convolved dims, constant "
       "padding, input channels-innermost C-contiguous in the result's dtype: Winograd "
       "F(2×2, 3×3) with compiled transforms and the SIMD tiles' products (2.25× fewer "
       "multiply-adds), from numba_winograd_min_cf channels × filters; runs of tiles "
       "through every step in the cache where the transformed filters fit "
       "numba_winograd_u_bytes, else filter blocks transformed per item; a non-finite "
       "result is formed again by numba.direct",
       forward=winograd.forward, accepts=winograd.accepts)
_entry("winograd_input_grad", ("input_grad",), winograd.applies_input_grad,
       "numba.winograd's domain (any layout): the input gradient as that "
       "forward of the cotangent (copied channels-last C-contiguous unless it is) with the "
       "filters turned and transposed; a non-finite result is formed again by "
       "numba.direct_input_grad",
       backward=winograd.input_grad, accepts=data_dtypes_match,
       cotangent=direct.shared_cotangent)
_entry("winograd_weight_grad", ("weight_grad",), winograd.applies_weight_grad,
       "numba.winograd's domain from numba_winograd_wgrad_min_cf channels × filters, "
       "with transformed filters of at most numba_winograd_u_bytes: Winograd's adjoint, "
       "the transformed input tiles against the transformed cotangent on the "
       "weight-gradient SIMD tiles, fixed blocks of tiles added in block order; a "
       "non-finite result is formed again by numba.direct",
       backward=winograd.weight_grad, accepts=data_dtypes_match,
       cotangent=direct.shared_cotangent)
_entry("direct", ("forward", "weight_grad"), direct.applies,
       "dense or grouped (more than one channel per group), any convolved dims, any "
       "stride, dilation and padding: register-blocked SIMD sums over contiguous window "
       "runs; input channels-innermost C-contiguous (zero padding read in place when "
       "the input outweighs the weights direct_in_place_ratio times; the input "
       "gradient a channels-last cotangent direct_input_grad_in_place_ratio times "
       "them), or (copied channels-last) "
       "C·F ≤ direct_copy_max_cf; where numpy.winograd applies only up to C·F = "
       "direct_max_cf; the weight gradient of one group for weights under "
       "direct_wgrad_max_bytes (more: numpy.gemm_wide's BLAS GEMM)",
       forward=direct.forward, backward=direct.weight_grad, accepts=data_dtypes_match,
       cotangent=direct.shared_cotangent, op_applies=direct.applies_op)
_DIRECT_INPUT_GRAD = _exact_near_non_finite_weights(direct.input_grad, input_grad_col2im)
winograd.EXACT_INPUT_GRAD.append(_DIRECT_INPUT_GRAD)
_entry("direct_input_grad", ("input_grad",), direct.applies_input_grad,
       "numba.direct's domain, the input gradient by stride phase (no zeros inserted, no "
       "scatter); on input not stored channels innermost only from direct_copy_min_cg "
       "channels per group; with C·F > direct_max_cf only from "
       "direct_input_grad_min_positions output positions",
       backward=_DIRECT_INPUT_GRAD, accepts=data_dtypes_match,
       cotangent=direct.shared_cotangent)
