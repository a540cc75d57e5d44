"""JAX's convolution: ``jax.lax.conv_general_dilated`` behind the registry.

Imported by :mod:`.registry` the first time a JAX array is convolved (JAX never becomes
a dependency of fmtarray).

* **No data transposes.** The kernel arrays' dim roles (:attr:`.spec.Layout.dims`,
  e.g. ``"01CN"`` for canonical ``SSCB`` data, JAX's ``'HWCN'``; ``"0CN1"`` for ``SCBT``
  convolved over ``S`` and ``T``) become the input's and the output's dimension
  numbers. MATLAB's weights ``(*k, Cg, Fg, G)`` are reshaped, not transposed, to
  ``(*k, Cg, F)`` (rhs dimension numbers ``(*k, I, O)``, JAX's ``'HWIO'``): output channel
  ``g·Fg + j`` must be filter ``j`` of group ``g`` (``feature_group_count`` splits ``O``
  into ``G`` contiguous blocks), which is the reshape's order when ``G == 1`` or
  ``Fg == 1``; otherwise the small ``(Fg, G)`` pair of the weights is swapped first.
* **Padding.** Zero padding, symmetric or not, and the input dilation (``lhs_dilation``)
  are the convolution's own ``padding`` pairs and ``lhs_dilation``. Other constant
  values pad with ``lax.pad``; the mirror modes with :func:`fmtarray._kernels.pad.pad`
  (after materialising any input dilation with ``lax.pad``'s interior padding); the
  convolution is then unpadded.
* **Gradients** (one entry, both ops, one call): ``jax.vjp`` of the same forward, so
  the input gradient and the weight gradient are JAX's transposed convolutions
  (``conv_general_dilated`` again, input dilation = forward stride) and the padding's
  adjoint is JAX's transpose of the pad; the forward product that ``jax.vjp`` traces is
  unused and removed by XLA.
* **Compiled once per call signature.** Forward and backward are ``jax.jit`` functions
  cached per :class:`~.spec.ConvSpec` and layout: an eager call is one dispatch of one
  fused XLA program, and inside a user's ``jax.jit`` / ``jax.grad`` / ``jax.vmap`` they
  are ordinary nested jitted calls (the Python here only reads shapes, never values).
* **Precision.** ``precision=None``: JAX's default, which is full float32 on CPU (the
  tests' 1e-5 relative bound holds) and follows ``jax.default_matmul_precision``
  elsewhere (on GPUs JAX's default may use TF32 for float32; set
  ``jax.default_matmul_precision("highest")`` for full float32 there).
* Result dtype: the spec's (``x`` and ``w`` are cast to it when they differ).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ..pad import pad
from .registry import Algo, register

__all__ = ["dimension_numbers", "forward", "backward"]

#: precision handed to ``conv_general_dilated`` (``None``: JAX's default, see above)
PRECISION = None


def dimension_numbers(dims: str) -> lax.ConvDimensionNumbers:
    """``ConvDimensionNumbers`` for kernel arrays whose dim roles are ``dims`` and weights
    ``(*k, Cg, F)`` (``'HWIO'``)."""
    d = len(dims) - 2
    io = (dims.index("N"), dims.index("C")) + tuple(dims.index(str(i)) for i in range(d))
    return lax.ConvDimensionNumbers(io, (d + 1, d) + tuple(range(d)), io)


def _kernel_weights(spec, w):
    """``(*k, Cg, Fg, G)`` → ``(*k, Cg, G·Fg)``, output channel ``g·Fg + j``."""
    d = spec.d
    if spec.G > 1 and spec.Fg > 1:
        w = jnp.swapaxes(w, d + 1, d + 2)
    return jnp.reshape(w, (*spec.k, spec.Cg, spec.F))


def _padded_input(spec, dims, x, value):
    """``(x, padding pairs, lhs_dilation)`` for the convolution: zero padding and input
    dilation stay the convolution's own; other values pad here."""
    if spec.zero_padding:
        return x, tuple(zip(spec.pb, spec.pa)), spec.lhs_dilation
    axes = tuple(dims.index(str(i)) for i in range(spec.d))
    zero = jnp.zeros((), x.dtype)
    if any(s > 1 for s in spec.lhs_dilation):
        cfg = [(0, 0, 0)] * x.ndim
        for ax, s in zip(axes, spec.lhs_dilation):
            cfg[ax] = (0, 0, s - 1)
        x = lax.pad(x, zero, cfg)
    if spec.constant_padding:
        cfg = [(0, 0, 0)] * x.ndim
        for ax, b, a in zip(axes, spec.pb, spec.pa):
            cfg[ax] = (b, a, 0)
        x = lax.pad(x, jnp.asarray(value, dtype=x.dtype), cfg)
    else:
        x = pad(jnp, x, spec.pb, spec.pa, axes, spec.value)
    return x, ((0, 0),) * spec.d, (1,) * spec.d


def _conv(spec, dims, x, w, value):
    dt = jnp.dtype(spec.dtype)
    x = x if x.dtype == dt else x.astype(dt)
    w = w if w.dtype == dt else w.astype(dt)
    x, padding, lhs_dilation = _padded_input(spec, dims, x, value)
    return lax.conv_general_dilated(
        x, _kernel_weights(spec, w), window_strides=spec.stride, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=spec.dilation,
        dimension_numbers=dimension_numbers(dims), feature_group_count=spec.G,
        precision=PRECISION)


def _key(spec):
    """The spec with a non-zero constant padding value replaced by a marker: the value
    is a traced argument, so each value does not compile its own program."""
    return spec.replace(value=1.0) if spec.constant_padding and not spec.zero_padding else spec


@functools.lru_cache(maxsize=256)
def _forward_fn(spec, dims, bias):
    def run(x, w, b, value):
        y = _conv(spec, dims, x, w, value)
        if bias:
            shape = [1] * len(dims)
            shape[dims.index("C")] = spec.F
            y = y + jnp.reshape(b, shape)
        return y

    return jax.jit(run)


@functools.lru_cache(maxsize=256)
def _backward_fn(spec, dims, needs):
    def run(gy, x, w, value):
        dt = jnp.dtype(spec.dtype)
        gy = gy if gy.dtype == dt else gy.astype(dt)
        if needs == (True, True):
            _, vjp = jax.vjp(lambda x, w: _conv(spec, dims, x, w, value), x, w)
            return vjp(gy)
        if needs[0]:
            _, vjp = jax.vjp(lambda x: _conv(spec, dims, x, w, value), x)
            return vjp(gy)[0], None
        _, vjp = jax.vjp(lambda w: _conv(spec, dims, x, w, value), w)
        return None, vjp(gy)[0]

    return jax.jit(run)


def _value(spec):
    return spec.value if spec.constant_padding else 0.0


def forward(xp, spec, layout, x, w, b):
    """``y`` in ``layout.dims`` order (see :class:`~.registry.Algo`)."""
    return _forward_fn(_key(spec), layout.dims, b is not None)(x, w, b, _value(spec))


def backward(xp, spec, layout, gy, x, w, needs):
    """``(gx, gw)``, ``None`` where ``needs`` is false."""
    needs = (bool(needs[0]), bool(needs[1]))
    if not any(needs):
        return None, None
    return _backward_fn(_key(spec), layout.dims, needs)(gy, x, w, _value(spec))


def _applies(spec, layout):
    return None


register(Algo(
    "jax.conv_general_dilated", "jax", ("forward", "input_grad", "weight_grad"), _applies,
    forward=forward, backward=backward,
    domain="every convolution of JAX arrays (1-3 dims, stride, dilation, groups, input "
           "dilation, every padding; dimension numbers from the layout, no transposes; "
           "gradients: jax.vjp, i.e. transposed conv_general_dilated)"))
