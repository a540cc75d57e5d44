"""``grad`` and ``value_and_grad`` (JAX style) over FormattedArrays and pytrees of them."""

from __future__ import annotations

import functools

from . import _backend, _tape
from ._kernels import blocked_binary as _blocked
from .array import FormattedArray

__all__ = ["grad", "value_and_grad"]


def _flatten(tree, path="arg"):
    """Leaves (FormattedArrays) of a dict/list/tuple tree, with their paths."""
    out = []
    _leaves(tree, path, out)
    return out


_PATHS: dict = {}  # (path, key's type, key) -> f"{path}[{key!r}]": the same trees each step


def _child(path, key):
    k = (path, type(key), key)  # the type: 0 and False are equal keys, not equal paths
    try:
        return _PATHS[k]
    except KeyError:
        pass
    except TypeError:  # an unhashable key
        return f"{path}[{key!r}]"
    if len(_PATHS) > 4096:
        _PATHS.clear()
    p = _PATHS[k] = f"{path}[{key!r}]"
    return p


def _leaves(tree, path, out):
    if isinstance(tree, dict):
        for k, v in tree.items():
            _leaves(v, _child(path, k), out)
    elif isinstance(tree, (list, tuple)) and not isinstance(tree, FormattedArray):
        for i, v in enumerate(tree):
            _leaves(v, _child(path, i), out)
    else:
        out.append((path, tree))


def _unflatten(tree, leaves):
    return _rebuild(tree, iter(leaves))


def _rebuild(t, it):
    # a module-level recursion, not a closure that refers to itself: such a closure is a
    # reference cycle, which kept every call's traced leaves alive until the cyclic GC
    # ran (142 objects of cyclic garbage per training step)
    if isinstance(t, FormattedArray):
        return next(it)
    if isinstance(t, dict):
        return type(t)((k, _rebuild(v, it)) for k, v in t.items())
    if isinstance(t, tuple):
        vals = [_rebuild(v, it) for v in t]
        return type(t)(*vals) if hasattr(t, "_fields") else tuple(vals)
    if isinstance(t, list):
        return [_rebuild(v, it) for v in t]
    return next(it)


def _trace_leaf(path, x):
    if not isinstance(x, FormattedArray):
        raise TypeError(
            f"cannot differentiate with respect to {path}: it is a "
            f"{type(x).__module__}.{type(x).__name__}, not a FormattedArray (or a dict/list/"
            "tuple of them); wrap arrays with FormattedArray(...) or move non-differentiable "
            "values out of argnums"
        )
    xp = _backend.namespace(x._data)
    if not _backend.isdtype(xp, x.dtype, "real floating"):
        raise TypeError(
            f"cannot differentiate with respect to {path}: its dtype is {x.dtype}, "
            "gradients need float32 or float64"
        )
    t = FormattedArray._wrap(x._data, x._fmt)
    t._node = _tape.leaf(x.shape, x.dtype, path)
    return t


def value_and_grad(fn, argnums=0, has_aux=False):
    """Return a function computing ``fn(*args)`` and its gradient.

    ``fn`` must return a scalar FormattedArray (0-d, or a single element), or
    ``(scalar, aux)`` when ``has_aux``.  ``argnums`` (int or tuple) selects the
    arguments to differentiate; each may be a FormattedArray or a dict/list/tuple
    of them (e.g. a network's learnables).  Gradients come back in the same
    structure, with the same formats, dtype and device.

    Only fmtarray operations on FormattedArrays are recorded: a value computed from
    ``x.data`` / ``extractdata(x)`` or with NumPy/torch on the backend array is a
    constant, so the gradient through it is silently zero (``np.asarray(x)`` and
    ``torch.as_tensor(x)`` of a traced array raise a ``TypeError`` instead). See
    ``docs/custom_layers.md``, "Gradients through .data or NumPy are zero".
    """
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        args = list(args)
        traced_leaves = []
        for n in nums:
            if n >= len(args):
                raise TypeError(f"argnums={argnums!r} but the function got only {len(args)} arguments")
            flat = _flatten(args[n], f"argument {n}")
            tl = [_trace_leaf(p, v) for p, v in flat]
            traced_leaves.append(tl)
            args[n] = _unflatten(args[n], tl)
        result = fn(*args, **kwargs)
        if has_aux:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise TypeError("with has_aux=True the function must return (loss, aux)")
            loss, aux = result
        else:
            loss, aux = result, None
        if not isinstance(loss, FormattedArray):
            raise TypeError(
                f"the function must return a scalar FormattedArray to differentiate, got "
                f"{type(loss).__name__}"
            )
        size = 1
        for s in loss.shape:
            size *= s
        if size != 1:
            raise ValueError(
                f"the function must return a scalar loss, got shape {loss.shape} (format "
                f"{loss.format!r}); reduce it first, e.g. fmtarray.sum(loss) or mean(loss)"
            )
        xp = _backend.namespace(loss.data)
        nodes = [t._node for tl in traced_leaves for t in tl]
        if loss._node is None:
            gs = [None] * len(nodes)
        else:
            g0 = xp.ones(loss.shape, dtype=loss.dtype, device=loss.device)
            gs = _tape.backward(loss._node, g0, nodes, _blocked.add)
        # zeros where the output does not depend on a leaf
        flat_leaves = [t for tl in traced_leaves for t in tl]
        outs = []
        for t, g in zip(flat_leaves, gs):
            txp = _backend.namespace(t._data)
            if g is None:
                g = txp.zeros(t.shape, dtype=t.dtype, device=t.device)
            outs.append(FormattedArray._wrap(g, t._fmt))
        grads, k = [], 0
        for n, tl in zip(nums, traced_leaves):
            grads.append(_unflatten(args[n], outs[k:k + len(tl)]))
            k += len(tl)
        g_out = grads[0] if single else tuple(grads)
        value = FormattedArray._wrap(loss._data, loss._fmt)
        if has_aux:
            return (value, aux), g_out
        return value, g_out

    return wrapped


def grad(fn, argnums=0, has_aux=False):
    """Return a function computing the gradient of scalar-valued ``fn``; see
    :func:`value_and_grad`."""
    vg = value_and_grad(fn, argnums, has_aux)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        (val, g) = vg(*args, **kwargs)
        if has_aux:
            return g, val[1]
        return g

    return wrapped
