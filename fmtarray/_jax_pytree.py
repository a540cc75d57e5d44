"""``FormattedArray`` as a JAX pytree, registered lazily (JAX is never imported by fmtarray).

The data is the single leaf; the format is static auxiliary data.  So ``jax.jit`` traces a
function of FormattedArrays once per (format, shape, dtype) and ``jax.grad`` returns a
FormattedArray gradient in the argument's format.  ``jax.vmap`` maps over an axis of the
*data* that the format does not describe: inside the mapped function each FormattedArray
is one example with the format; outside, the data has the mapped axis in addition to the
format's dims (see ``docs/jax.md``).

Registration happens once, at the first of: importing fmtarray while ``jax`` is imported;
the first FormattedArray built, or new array type met, after ``jax`` was imported
(:func:`fmtarray._backend.on_jax_import`); an explicit :func:`register_jax` (needed only
when FormattedArrays all built before ``import jax`` are handed to JAX).
"""

from __future__ import annotations

import threading

from . import _backend
from .array import FormattedArray

__all__ = ["register_jax"]

_LOCK = threading.Lock()
_registered = False


def _check_untraced(x):
    if x._node is not None:
        raise TypeError(
            "a FormattedArray being differentiated by fmtarray.grad/value_and_grad was handed "
            "to JAX (jax.jit, jax.vmap, jax.tree_util, ...); fmtarray's tape cannot follow it "
            "through JAX and the gradient would silently be zero. Differentiate with jax.grad "
            "instead, or apply fmtarray.grad outside the JAX transformation "
            "(jax.jit(fmtarray.grad(f)) works)"
        )


def _flatten(x):
    _check_untraced(x)
    return (x._data,), x._fmt


def _flatten_with_keys(x):
    from jax.tree_util import GetAttrKey

    _check_untraced(x)
    return ((GetAttrKey("data"), x._data),), x._fmt


def _unflatten(fmt, children):
    # JAX rebuilds pytrees with arbitrary leaves (tracers, None, sentinels, batched data
    # under vmap): wrap as they are, never validate or re-permute.
    return FormattedArray._wrap(children[0], fmt)


def register_jax() -> bool:
    """Register :class:`FormattedArray` as a JAX pytree (idempotent, thread-safe).

    Called automatically when fmtarray first meets a JAX array, and at import when JAX
    is already imported; call it yourself only if you pass FormattedArrays to
    ``jax.jit``/``grad``/``vmap`` before any JAX array went through fmtarray.
    Returns True once registered (False, doing nothing, when JAX is not installed).
    """
    global _registered
    if _registered:
        return True
    with _LOCK:
        if _registered:
            return True
        try:
            from jax import tree_util
        except ImportError:
            return False
        try:
            tree_util.register_pytree_with_keys(
                FormattedArray, _flatten_with_keys, _unflatten, flatten_func=_flatten
            )
        except ValueError:  # already registered (e.g. by a reloaded copy of this module)
            pass
        _registered = True
    return True


_backend.on_jax_import(register_jax)
