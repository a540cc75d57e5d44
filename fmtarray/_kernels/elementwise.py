"""Each array library's fastest primitive for the hot elementwise ops.

Positional math on raw arrays (no formats, no tracing). The format-aware ops
in :mod:`fmtarray.ops` call these so that ``relu(x)`` costs what the library's
own ``relu`` costs:

* ``relu``: NumPy ``maximum(x, 0)``, ``torch.relu``, ``jax.nn.relu``, else
  ``maximum(x, 0-d zero)``;
* ``relu_vjp``: NumPy a bit mask (below), torch ``threshold_backward`` (what
  torch autograd runs), else ``where``;
* ``sigmoid``: NumPy an in-place ``exp`` chain, ``torch.sigmoid``,
  ``jax.nn.sigmoid``, else ``1 / (1 + exp(-x))``;
* ``sigmoid_vjp``: NumPy in place, torch ``sigmoid_backward``, else
  ``g · y · (1 − y)``;
* ``zero_where`` / ``keep_where`` (selections in VJPs): NumPy a bit mask, else
  ``where``.

Non-finite values follow IEEE arithmetic and torch autograd exactly (SPEC §2):
``relu(NaN)`` is NaN (``maximum`` propagates NaN on every library), and
``relu_vjp`` passes the cotangent through wherever ``y <= 0`` is false —
NaN included — and writes an exact ``+0`` elsewhere even where the cotangent is
NaN or inf, as torch's ``threshold_backward`` does. A mask multiplication
(``g * (y > 0)``) would get both cases wrong, so it is never used.

NumPy's ``where`` with a random mask runs at a tenth of the memory bandwidth
(branch mispredictions: 16 ms on 4 M float32 values against 1.6 ms for
``maximum``), so NumPy selects by bits instead: the boolean mask becomes an
all-ones/all-zeros integer mask ANDed with the float's bit pattern (4 ms).

Which implementation serves a namespace is decided once per namespace and
cached; a library is imported only when one of its arrays is seen.
"""

from __future__ import annotations

import numpy as _np

from .. import _backend

__all__ = ["relu", "relu_vjp", "sigmoid", "sigmoid_vjp", "zero_where", "keep_where", "implementation"]


# generic array-API versions ---------------------------------------------------------


def _zero(xp, like):
    return xp.zeros((), dtype=like.dtype, device=_backend.device(like))


def _relu_generic(xp, x):
    return xp.maximum(x, _zero(xp, x))


def _relu_vjp_generic(xp, g, y):
    return xp.where(y <= 0, _zero(xp, g), g)


def _sigmoid_generic(xp, x):
    return 1 / (1 + xp.exp(-x))


def _sigmoid_vjp_generic(xp, g, y):
    return g * y * (1 - y)


def _zero_where_generic(xp, mask, g):
    return xp.where(mask, _zero(xp, g), g)


def _keep_where_generic(xp, mask, g):
    return xp.where(mask, g, _zero(xp, g))


# NumPy --------------------------------------------------------------------------------

_INT_OF = {
    _np.dtype(_np.float16): _np.int16,
    _np.dtype(_np.float32): _np.int32,
    _np.dtype(_np.float64): _np.int64,
}


def _np_select(mask, g, keep: bool):
    """``where(mask, g, 0)`` (``keep``) or ``where(mask, 0, g)``, by bits."""
    g = _np.asarray(g)
    mask = _np.asarray(mask)
    it = _INT_OF.get(g.dtype)
    if it is None or mask.dtype != _np.bool_:
        return _np.where(mask, g, 0) if keep else _np.where(mask, 0, g)
    m = mask.view(_np.uint8).astype(it)  # 1 where mask, else 0
    if keep:
        _np.negative(m, out=m)  # all ones where kept
    else:
        m -= 1  # all ones where not masked
    out = m if m.shape == _np.broadcast_shapes(m.shape, g.shape) else None
    return _np.bitwise_and(m, g.view(it), out=out).view(g.dtype)


def _np_relu(xp, x):
    return _np.maximum(x, 0)


def _np_relu_vjp(xp, g, y):
    return _np_select(_np.less_equal(y, 0), g, keep=False)


def _np_sigmoid(xp, x):
    t = _np.negative(x)
    if not isinstance(t, _np.ndarray):  # a NumPy scalar: no in-place ops
        return _sigmoid_generic(xp, x)
    with _np.errstate(over="ignore"):  # exp(-x) = inf gives the exact limit 0
        _np.exp(t, out=t)
    t += 1
    return _np.reciprocal(t, out=t)


def _np_sigmoid_vjp(xp, g, y):
    t = _np.subtract(1, y)
    if (not isinstance(t, _np.ndarray) or t.shape != _np.broadcast_shapes(t.shape, _np.shape(g))
            or _np.result_type(t, g) != t.dtype):
        return _sigmoid_vjp_generic(xp, g, y)
    t *= y  # in place on our own temporary: one pass fewer than g * y * (1 - y)
    t *= g
    return t


def _np_zero_where(xp, mask, g):
    return _np_select(mask, g, keep=False)


def _np_keep_where(xp, mask, g):
    return _np_select(mask, g, keep=True)


# torch ----------------------------------------------------------------------------------


def _torch_table():
    import torch

    def relu_vjp(xp, g, y):
        if g.shape == y.shape:
            return torch.ops.aten.threshold_backward(g, y, 0)
        return _relu_vjp_generic(xp, g, y)

    return {
        "name": "torch",
        "relu": lambda xp, x: torch.relu(x),
        "relu_vjp": relu_vjp,
        "sigmoid": lambda xp, x: torch.sigmoid(x),
        "sigmoid_vjp": lambda xp, g, y: torch.ops.aten.sigmoid_backward(g, y),
        "zero_where": _zero_where_generic,
        "keep_where": _keep_where_generic,
    }


# JAX ---------------------------------------------------------------------------------------


def _jax_table():
    import jax.nn
    import jax.numpy as jnp

    return {
        "name": "jax",
        "relu": lambda xp, x: jax.nn.relu(x),
        "relu_vjp": lambda xp, g, y: jnp.where(y <= 0, 0, g),
        "sigmoid": lambda xp, x: jax.nn.sigmoid(x),
        "sigmoid_vjp": _sigmoid_vjp_generic,
        "zero_where": lambda xp, mask, g: jnp.where(mask, 0, g),
        "keep_where": lambda xp, mask, g: jnp.where(mask, g, 0),
    }


_NUMPY = {
    "name": "numpy",
    "relu": _np_relu,
    "relu_vjp": _np_relu_vjp,
    "sigmoid": _np_sigmoid,
    "sigmoid_vjp": _np_sigmoid_vjp,
    "zero_where": _np_zero_where,
    "keep_where": _np_keep_where,
}
_GENERIC = {
    "name": "array-api",
    "relu": _relu_generic,
    "relu_vjp": _relu_vjp_generic,
    "sigmoid": _sigmoid_generic,
    "sigmoid_vjp": _sigmoid_vjp_generic,
    "zero_where": _zero_where_generic,
    "keep_where": _keep_where_generic,
}
_TABLES: dict[int, tuple[object, dict]] = {}


def _table(xp) -> dict:
    hit = _TABLES.get(id(xp))
    if hit is not None and hit[0] is xp:
        return hit[1]
    if _backend.is_numpy(xp):
        table = _NUMPY
    elif _backend.is_torch(xp):
        table = _torch_table()
    elif getattr(xp, "__name__", "").startswith("jax"):
        table = _jax_table()
    else:  # Dask, CuPy, array_api_strict, unknown libraries
        table = _GENERIC
    _TABLES[id(xp)] = (xp, table)
    return table


def implementation(xp) -> str:
    """Which family serves ``xp``: ``numpy``, ``torch``, ``jax`` or ``array-api``."""
    return _table(xp)["name"]


def relu(xp, x):
    """``max(x, 0)``; NaN stays NaN."""
    return _table(xp)["relu"](xp, x)


def relu_vjp(xp, g, y):
    """The cotangent of ``relu`` from its output ``y``: ``0`` where ``y <= 0``, else ``g``."""
    return _table(xp)["relu_vjp"](xp, g, y)


def sigmoid(xp, x):
    """``1 / (1 + exp(-x))``."""
    return _table(xp)["sigmoid"](xp, x)


def sigmoid_vjp(xp, g, y):
    """The cotangent of ``sigmoid`` from its output: ``g · y · (1 − y)``."""
    return _table(xp)["sigmoid_vjp"](xp, g, y)


def zero_where(xp, mask, g):
    """``where(mask, 0, g)``: an exact ``+0`` where ``mask``, even where ``g`` is NaN or inf."""
    return _table(xp)["zero_where"](xp, mask, g)


def keep_where(xp, mask, g):
    """``where(mask, g, 0)``: an exact ``+0`` where not ``mask``, even where ``g`` is NaN or inf."""
    return _table(xp)["keep_where"](xp, mask, g)
