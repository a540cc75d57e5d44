"""Elementwise operations with label broadcasting (SPEC §2), and their VJPs."""

from __future__ import annotations

import builtins
import math
import numbers

from .. import _backend, _format, _tape
from .._kernels import blocked_binary as _blocked
from .._kernels import elementwise as _k
from ..array import FormattedArray

__all__ = [
    "add", "subtract", "multiply", "divide", "pow", "negative",
    "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
    "abs", "exp", "log", "sqrt", "square", "tanh", "sigmoid", "relu", "sin", "cos",
    "leaky_relu",
    "maximum", "minimum", "where", "clip", "astype", "to_device", "getitem",
]


# operand handling --------------------------------------------------------------

def _is_scalar(v) -> bool:
    return isinstance(v, numbers.Number)


def _parts(v):
    """(raw data or scalar, format, FormattedArray-or-None)."""
    if isinstance(v, FormattedArray):
        return v._data, v._fmt, v
    if _is_scalar(v):
        if type(v) not in (int, float, complex) and hasattr(v, "item"):
            v = v.item()  # a NumPy scalar is weak, like a Python scalar (SPEC §2)
        return v, None, None
    if _backend.is_array(v):
        if v.ndim == 0:
            return v, None, None
        return v, "", None
    raise TypeError(
        f"operand must be a FormattedArray, an array of an array-API library or a Python "
        f"scalar, got {type(v).__module__}.{type(v).__name__}"
    )


def _shape(a):
    """``a``'s shape (``None`` for a Python scalar)."""
    return tuple(a.shape) if hasattr(a, "shape") else None


def _sum_to(xp, g, shape, final_shape=None):
    """Sum ``g`` down to ``shape`` (NumPy broadcasting in reverse), then reshape
    to ``final_shape`` (the operand's own shape, when it was aligned by label)."""
    shape = tuple(shape)
    final_shape = shape if final_shape is None else tuple(final_shape)
    if tuple(g.shape) == shape:
        return g if shape == final_shape else xp.reshape(g, final_shape)
    lead = g.ndim - len(shape)
    gs = tuple(g.shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gs[lead + i] != 1
    )
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return xp.reshape(g, final_shape)


def _align(a, fa, b, fb):
    """Bring two operands to a common positional layout.

    Returns ``(xp, a_aligned, b_aligned, out_fmt)``.  Scalars are returned as they are.
    """
    if fa is not None and fb is not None:
        xp = _backend.namespace(a, b)
        _backend.check_same_device(a, b)
    else:
        xp = _backend.namespace(*(v for v in (a, b) if not _is_scalar(v)))
    if fa is None and fb is None:  # scalars / 0-d arrays only
        return xp, a, b, ""
    if fa is None:
        return xp, a, b, fb
    if fb is None:
        return xp, a, b, fa
    if fa and fb:
        if fa == fb and tuple(a.shape) == tuple(b.shape):
            return xp, a, b, fa
        out_fmt, _, pa, pb = _format.broadcast(fa, tuple(a.shape), fb, tuple(b.shape))
        if pa != tuple(a.shape):
            a = xp.reshape(a, pa)
        if pb != tuple(b.shape):
            b = xp.reshape(b, pb)
        return xp, a, b, out_fmt
    # one (or both) unformatted: positional NumPy broadcasting; keep the format
    if fa and not fb and b.ndim > a.ndim or fb and not fa and a.ndim > b.ndim:
        f, s_f, s_u = (fa, a.shape, b.shape) if fa else (fb, b.shape, a.shape)
        raise ValueError(
            f"an unformatted operand of shape {tuple(s_u)} cannot broadcast against format "
            f"{f!r} (shape {tuple(s_f)}): it has more dims; give it a format or reshape it"
        )
    try:
        _broadcast_shapes(tuple(a.shape), tuple(b.shape))
    except ValueError:
        raise ValueError(
            f"cannot broadcast shapes {tuple(a.shape)} (format {fa!r}) and {tuple(b.shape)} "
            f"(format {fb!r}) positionally; sizes must be equal or 1"
        ) from None
    return xp, a, b, fa or fb


def _broadcast_shapes(sa, sb):
    n = builtins.max(len(sa), len(sb))
    sa = (1,) * (n - len(sa)) + sa
    sb = (1,) * (n - len(sb)) + sb
    out = []
    for x, y in zip(sa, sb):
        if x != y and x != 1 and y != 1:
            raise ValueError
        out.append(y if x == 1 else x)
    return tuple(out)


def _scalar_as_array(xp, s, like):
    if isinstance(s, bool) or not isinstance(s, numbers.Number):
        return s
    dt = like.dtype
    if isinstance(s, float) and not xp.isdtype(dt, ("real floating", "complex floating")):
        raise TypeError(
            f"cannot combine the float scalar {s!r} with an array of dtype {dt} without a "
            "silent cast; convert the array with astype() first"
        )
    return xp.asarray(s, dtype=dt, device=_backend.device(like))


def _binary(name, fn, vjp=None, *, scalar_ok=True, reads=("aby", "aby")):
    """Make a label-broadcasting binary op. ``vjp(xp, g, a, b, out, needs) -> (ga, gb)``
    in the aligned layout (before summing back over broadcast dims). ``reads``: which
    of ``a``, ``b`` and the output ``y`` the VJP reads for ``ga`` and for ``gb``; the
    recorded VJP keeps only those of the traced operands' gradients (``None`` in place
    of the others), as torch autograd saves only what each backward formula reads: the
    product ``y * g`` with ``g`` untraced keeps ``g``, not ``y``, so a training step's
    intermediate arrays are freed as soon as the forward is done with them."""

    def op(a, b):
        da, fa, A = _parts(a)
        db, fb, B = _parts(b)
        xp, a_al, b_al, out_fmt = _align(da, fa, db, fb)
        if not scalar_ok:
            if _is_scalar(a_al):
                a_al = _scalar_as_array(xp, a_al, b_al)
            if _is_scalar(b_al):
                b_al = _scalar_as_array(xp, b_al, a_al)
        y = _blocked.apply(name, a_al, b_al) if _backend.is_numpy(xp) else None
        if y is None:
            y = fn(xp, a_al, b_al)
        out = FormattedArray._wrap(y, out_fmt)
        if vjp is not None and _tape.traced(A, B):
            read = (reads[0] if _tape.traced(A) else "") + (reads[1] if _tape.traced(B) else "")
            ka, kb, ky = (a_al if "a" in read else None, b_al if "b" in read else None,
                          y if "y" in read else None)
            shapes = (_shape(a_al), _shape(da), _shape(b_al), _shape(db))

            def back(g, needs):
                ga, gb = vjp(xp, g, ka, kb, ky, needs)
                ra = _sum_to(xp, ga, shapes[0], shapes[1]) if needs[0] else None
                rb = _sum_to(xp, gb, shapes[2], shapes[3]) if needs[1] else None
                return ra, rb

            _tape.record(out, (A, B), back, name)
        return out

    op.__name__ = name
    op.__qualname__ = name
    op.__doc__ = (
        f"Elementwise ``{name}`` of two operands with label broadcasting (SPEC §2).\n\n"
        "Operands are FormattedArrays (matched by label), unformatted arrays (matched by "
        "position against the formatted operand) or Python scalars."
    )
    return op


add = _binary("add", lambda xp, a, b: a + b, lambda xp, g, a, b, y, n: (g, g), reads=("", ""))
subtract = _binary("subtract", lambda xp, a, b: a - b,
                   lambda xp, g, a, b, y, n: (g, -g if n[1] else None), reads=("", ""))
multiply = _binary(
    "multiply",
    lambda xp, a, b: a * b,
    lambda xp, g, a, b, y, n: (g * b if n[0] else None, g * a if n[1] else None),
    reads=("b", "a"),
)
divide = _binary(
    "divide",
    lambda xp, a, b: a / b,
    lambda xp, g, a, b, y, n: (g / b if n[0] else None, -g * (y / b) if n[1] else None),
    reads=("b", "by"),
)


def _pow_vjp(xp, g, a, b, y, n):
    # torch autograd's formulas, including where they meet 0 · inf: an exponent of
    # 0 gives the base an exact 0, and a base of 0 (exponent >= 0) gives the
    # exponent 0 · g; NaN and inf elsewhere propagate as the formula says
    ga = gb = None
    if n[0]:
        if not _is_scalar(b):
            ga = _k.zero_where(xp, b == 0, g * (b * a ** (b - 1)))
        else:
            ga = g * (b * a ** (b - 1)) if b != 0 else xp.zeros_like(g)
    if n[1]:
        if not _is_scalar(a):
            gb = g * _k.zero_where(xp, (a == 0) & (b >= 0), y * xp.log(a))
        else:
            la = math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan)
            gb = y * la
            if a == 0:
                gb = _k.zero_where(xp, b >= 0, gb)
            gb = g * gb
    return ga, gb


pow = _binary("pow", lambda xp, a, b: a ** b, _pow_vjp, reads=("ab", "aby"))
less = _binary("less", lambda xp, a, b: a < b)
less_equal = _binary("less_equal", lambda xp, a, b: a <= b)
greater = _binary("greater", lambda xp, a, b: a > b)
greater_equal = _binary("greater_equal", lambda xp, a, b: a >= b)
equal = _binary("equal", lambda xp, a, b: a == b)
not_equal = _binary("not_equal", lambda xp, a, b: a != b)


# maximum / minimum: the cotangent goes to the selected operand (to ``a`` on a tie),
# and to both where the result is NaN, as in torch autograd; ``where``, never a mask
# multiplication, so a NaN cotangent does not leak into the unselected operand.
maximum = _binary(
    "maximum",
    lambda xp, a, b: xp.maximum(a, b),
    lambda xp, g, a, b, y, n: (
        _k.zero_where(xp, a < b, g) if n[0] else None,
        _k.zero_where(xp, a >= b, g) if n[1] else None,
    ),
    scalar_ok=False, reads=("ab", "ab"),
)
minimum = _binary(
    "minimum",
    lambda xp, a, b: xp.minimum(a, b),
    lambda xp, g, a, b, y, n: (
        _k.zero_where(xp, a > b, g) if n[0] else None,
        _k.zero_where(xp, a <= b, g) if n[1] else None,
    ),
    scalar_ok=False, reads=("ab", "ab"),
)


# unary -----------------------------------------------------------------------

def _is_float(xp, dtype) -> bool:
    """``xp.isdtype(dtype, floating)`` (remembered: it is on every unary call)."""
    return _backend.isdtype(xp, dtype, ("real floating", "complex floating"))


def _unary(name, fn, vjp, *, float_only=True, reads="xy"):
    """Make an elementwise op keeping the format; ``vjp(xp, g, x, y)``. ``reads``: which
    of the input ``x`` and the output ``y`` the VJP reads (the recorded VJP keeps only
    those, ``None`` in place of the other: see :func:`_binary`)."""

    def op(x):
        if not isinstance(x, FormattedArray):
            x = FormattedArray(x) if not _is_scalar(x) else x
            if _is_scalar(x):
                raise TypeError(f"{name} expects an array, got the scalar {x!r}")
        xd = x._data
        xp = _backend.namespace(xd)
        if float_only and not _is_float(xp, xd.dtype):
            raise TypeError(
                f"{name} needs a floating-point array, got dtype {xd.dtype}; "
                "convert with astype() first (fmtarray never casts silently)"
            )
        y = fn(xp, xd)
        out = FormattedArray._wrap(y, x._fmt)
        if x._node is not None:
            kx, ky = (xd if "x" in reads else None), (y if "y" in reads else None)
            _tape.record(out, (x,), lambda g, needs: (vjp(xp, g, kx, ky),), name)
        return out

    op.__name__ = name
    op.__qualname__ = name
    op.__doc__ = f"Elementwise ``{name}``; keeps the format."
    return op


negative = _unary("negative", lambda xp, x: -x, lambda xp, g, x, y: -g, float_only=False,
                  reads="")
# abs: torch's sign(NaN) is 0, so the gradient at a NaN input is 0 · g
abs = _unary(
    "abs", lambda xp, x: xp.abs(x),
    lambda xp, g, x, y: g * _k.zero_where(xp, xp.isnan(x), xp.sign(x)), float_only=False,
    reads="x",
)
exp = _unary("exp", lambda xp, x: xp.exp(x), lambda xp, g, x, y: g * y, reads="y")
log = _unary("log", lambda xp, x: xp.log(x), lambda xp, g, x, y: g / x, reads="x")
sqrt = _unary("sqrt", lambda xp, x: xp.sqrt(x), lambda xp, g, x, y: g / (2 * y), reads="y")
square = _unary("square", lambda xp, x: x * x, lambda xp, g, x, y: 2 * g * x, float_only=False,
                reads="x")
tanh = _unary("tanh", lambda xp, x: xp.tanh(x), lambda xp, g, x, y: g * (1 - y * y), reads="y")
sigmoid = _unary("sigmoid", _k.sigmoid, lambda xp, g, x, y: _k.sigmoid_vjp(xp, g, y), reads="y")
sin = _unary("sin", lambda xp, x: xp.sin(x), lambda xp, g, x, y: g * xp.cos(x), reads="x")
cos = _unary("cos", lambda xp, x: xp.cos(x), lambda xp, g, x, y: -g * xp.sin(x), reads="x")
# relu: the library's own relu / maximum (NaN in, NaN out); the VJP reads only the
# output and is torch's threshold_backward: 0 where y <= 0, else g (NaN y included)
relu = _unary("relu", _k.relu, lambda xp, g, x, y: _k.relu_vjp(xp, g, y), reads="y")


def leaky_relu(x, scale=0.01):
    """Leaky ReLU (MATLAB ``leakyrelu``): ``x`` where ``x > 0``, else ``scale · x``;
    keeps the format. The VJP is torch's: ``g`` where ``x > 0``, else ``scale · g``
    (so a NaN input gives ``scale · g``); NaN in, NaN out."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) \
            or not math.isfinite(float(scale)):
        raise TypeError(f"leaky_relu: scale must be a finite real number, got {scale!r}")
    s = float(scale)
    if not isinstance(x, FormattedArray):
        if _is_scalar(x):
            raise TypeError(f"leaky_relu expects an array, got the scalar {x!r}")
        x = FormattedArray(x)
    xd = x._data
    xp = _backend.namespace(xd)
    if not _is_float(xp, xd.dtype):
        raise TypeError(
            f"leaky_relu needs a floating-point array, got dtype {xd.dtype}; "
            "convert with astype() first (fmtarray never casts silently)"
        )
    pos = xd > 0
    out = FormattedArray._wrap(xp.where(pos, xd, xd * s), x._fmt)
    if x._node is not None:
        _tape.record(out, (x,), lambda g, needs: (xp.where(pos, g, g * s),), "leaky_relu")
    return out


# where / clip ------------------------------------------------------------------

def where(cond, a, b):
    """``a`` where ``cond`` is true, else ``b``; all three broadcast by label."""
    dc, fc, _ = _parts(cond)
    if _is_scalar(dc):
        raise TypeError(f"where: cond must be a boolean array, got the scalar {cond!r}")
    # align a with b first, then cond with that layout
    da, fa, A = _parts(a)
    db, fb, B = _parts(b)
    xp, a1, b1, fab = _align(da, fa, db, fb)
    if _is_scalar(a1):
        a1 = _scalar_as_array(xp, a1, b1) if not _is_scalar(b1) else xp.asarray(a1)
    if _is_scalar(b1):
        b1 = _scalar_as_array(xp, b1, a1)
    # align cond with the (a, b) layout
    xp2, c2, a2, fout = _align(dc, fc, a1, fab if fab is not None else "")
    _, c3, b2, _ = _align(dc, fc, b1, fab if fab is not None else "")
    if not xp2.isdtype(c2.dtype, "bool"):
        raise TypeError(f"where: cond must have a boolean dtype, got {c2.dtype}")
    y = xp.where(c2, a2, b2)
    out = FormattedArray._wrap(y, fout)
    if _tape.traced(A, B):

        def back(g, needs):
            ga = _sum_to(xp, _k.keep_where(xp, c2, g), a2.shape, da.shape) if needs[0] else None
            gb = _sum_to(xp, _k.zero_where(xp, c3, g), b2.shape, db.shape) if needs[1] else None
            return ga, gb

        _tape.record(out, (A, B), back, "where")
    return out


def clip(x, min=None, max=None):
    """Clip ``x`` to ``[min, max]`` (scalars or arrays broadcast by label).

    NaN stays NaN. With scalar (or absent) bounds this is the library's own
    ``clip`` in one pass, and its gradient is torch's ``clamp``: ``g`` where
    ``min <= x <= max``, else 0 (0 at a NaN ``x`` too). Array bounds are
    ``minimum(maximum(x, min), max)`` with those ops' gradients.
    """
    out = x if isinstance(x, FormattedArray) else FormattedArray(x)
    if (min is None or _is_scalar(min)) and (max is None or _is_scalar(max)):
        return out if min is None and max is None else _clip_scalars(out, min, max)
    if min is not None:
        out = maximum(out, min)
    if max is not None:
        out = minimum(out, max)
    return out


def _clip_scalars(x, lo, hi):
    xd = x._data
    xp = _backend.namespace(xd)
    for b in (lo, hi):
        if isinstance(b, float) and not _is_float(xp, xd.dtype):
            _scalar_as_array(xp, b, xd)  # raises: no silent cast of an integer array
    y = xp.clip(xd, lo, hi)
    out = FormattedArray._wrap(y, x._fmt)
    if x._node is not None:

        def back(g, needs):
            inside = None if lo is None else xd >= lo
            if hi is not None:
                inside = xd <= hi if inside is None else inside & (xd <= hi)
            return (_k.keep_where(xp, inside, g),)

        _tape.record(out, (x,), back, "clip")
    return out


# dtype / device / relabel --------------------------------------------------------

def astype(x, dtype):
    """Cast to ``dtype`` explicitly (the only way fmtarray changes a dtype)."""
    xp = _backend.namespace(x._data)
    src = x._data.dtype
    y = xp.astype(x._data, dtype)
    out = FormattedArray._wrap(y, x._fmt)
    if x._node is not None:
        _tape.record(out, (x,), lambda g, needs: (xp.astype(g, src),), "astype")
    return out


def to_device(x, device):
    """Move to ``device`` explicitly (the only way fmtarray moves data)."""
    src = x.device
    y = _backend.to_device(x._data, device)
    out = FormattedArray._wrap(y, x._fmt)
    if x._node is not None:
        _tape.record(out, (x,), lambda g, needs: (_backend.to_device(g, src),), "to_device")
    return out


def _relabel(x, fmt):
    """Give the (canonical) data of ``x`` the new format ``fmt``; differentiable."""
    from ..array import _apply_format

    src_shape = tuple(x._data.shape)
    y, f = _apply_format(x._data, fmt)
    out = FormattedArray._wrap(y, f)
    if x._node is not None:
        xp = _backend.namespace(y)
        _, perm = _format.canonicalize(fmt) if fmt else ("", ())
        inv = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))

        def back(g, needs):
            if inv and inv != tuple(range(len(inv))):
                g = xp.permute_dims(g, inv)
            return (xp.reshape(g, src_shape),)

        _tape.record(out, (x,), back, "relabel")
    return out


def _relabel_strip(x, fmt):
    """Unformatted copy of ``x``, permuted to ``fmt`` (a permutation of its format)."""
    if fmt is None:
        out = FormattedArray._wrap(x._data, "")
        if x._node is not None:
            _tape.record(out, (x,), lambda g, needs: (g,), "stripdims")
        return out
    _format.validate(fmt)
    if sorted(fmt) != sorted(x._fmt):
        raise ValueError(
            f"stripdims: fmt {fmt!r} must be a permutation of the array's format {x._fmt!r}"
        )
    canon, perm = _format.canonicalize(fmt)  # canonical[i] = fmt[perm[i]]
    # data is canonical; we want order fmt: fmt position j holds canonical axis inv[j]
    inv = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    xp = _backend.namespace(x._data)
    y = xp.permute_dims(x._data, inv) if inv != tuple(range(len(inv))) else x._data
    out = FormattedArray._wrap(y, "")
    if x._node is not None:
        _tape.record(
            out, (x,), lambda g, needs: (xp.permute_dims(g, perm) if inv != tuple(range(len(inv))) else g,),
            "stripdims",
        )
    return out


# indexing --------------------------------------------------------------------------

def getitem(x, key):
    """Basic indexing with ints and step-1 slices on the canonical dims.

    An integer index drops that dim and its label; a slice keeps it.
    """
    if not isinstance(key, tuple):
        key = (key,)
    if builtins.any(k is Ellipsis for k in key):
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - len(key) + 1) + key[i + 1:]
    if len(key) > x.ndim:
        raise IndexError(f"too many indices ({len(key)}) for an array of format {x._fmt!r} and shape {x.shape}")
    key = key + (slice(None),) * (x.ndim - len(key))
    fmt, starts, stops, keep = [], [], [], []
    for ax, (k, n) in enumerate(zip(key, x.shape)):
        if isinstance(k, bool) or not isinstance(k, (int, slice)):
            raise TypeError(
                f"index {k!r} on dim {ax}: only integers and slices with step 1 are supported"
            )
        if isinstance(k, int):
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of range for dim {ax} of size {n}")
            k = k % n
            starts.append(k)
            stops.append(k + 1)
        else:
            s, e, st = k.indices(n)
            if st != 1:
                raise TypeError(f"index {k!r} on dim {ax}: only slices with step 1 are supported")
            starts.append(s)
            stops.append(builtins.max(s, e))
            keep.append(ax)
            if x._fmt:
                fmt.append(x._fmt[ax])
    xp = _backend.namespace(x._data)
    y = x._data[tuple(key)]
    out = FormattedArray._wrap(y, "".join(fmt))
    if x._node is not None:
        src = x.shape

        def back(g, needs):
            g = xp.reshape(g, tuple(stop - s for s, stop in zip(starts, stops)))
            for ax, n in enumerate(src):
                before, after = starts[ax], n - stops[ax]
                parts = []
                if before:
                    parts.append(xp.zeros(g.shape[:ax] + (before,) + g.shape[ax + 1:], dtype=g.dtype, device=_backend.device(g)))
                parts.append(g)
                if after:
                    parts.append(xp.zeros(g.shape[:ax] + (after,) + g.shape[ax + 1:], dtype=g.dtype, device=_backend.device(g)))
                if len(parts) > 1:
                    g = xp.concat(parts, axis=ax)
            return (g,)

        _tape.record(out, (x,), back, "getitem")
    return out
