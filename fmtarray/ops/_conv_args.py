"""Argument checks of :func:`fmtarray.conv` that do not fit in the op's module: the
weights' layout (with hints for likely mistakes), the bias, the result dtype and the
memory a call would need. The generic normalisers are in :mod:`fmtarray._validate`.
"""

from __future__ import annotations

import math
import numbers

import numpy as _np

from .. import _backend, _format, _validate
from ..array import FormattedArray


def keys(fmt):
    """One key per dim: ``('S', i)``, ``('C', 0)``, ..., numbering repeated labels."""
    seen = {}
    out = []
    for ch in fmt:
        i = seen.get(ch, 0)
        seen[ch] = i + 1
        out.append((ch, i))
    return out


def perm(src_keys, dst_keys):
    return tuple(src_keys.index(k) for k in dst_keys)


def weights_layout(w, wfmt, n_s, conv_t, nconv, x_fmt="", x_c=None):
    """Permutation/reshape of raw weights to the kernel's ``(*k, Cg, Fg, G)``.

    Returns ``(perm, shape_after_perm, kernel_shape)``.
    """
    if wfmt is None:
        if w.ndim not in (nconv + 2, nconv + 3):
            raise ValueError(
                f"conv: weights of shape {tuple(w.shape)} have rank {w.ndim}; for {nconv} "
                f"convolved dim(s) they must have rank {nconv + 2} [k1..k{nconv}, "
                f"channelsPerGroup, filtersPerGroup] or {nconv + 3} [..., numGroups]"
                + weights_hint(w, None, x_fmt, x_c, nconv)
            )
        shape = tuple(w.shape) + ((1,) if w.ndim == nconv + 2 else ())
        return tuple(range(w.ndim)), tuple(w.shape), shape
    _format.validate(wfmt)
    if len(wfmt) < w.ndim:
        raise ValueError(
            f"weights_format={wfmt!r} has {len(wfmt)} labels but the weights have {w.ndim} "
            f"dims (shape {tuple(w.shape)})"
        )
    nu = wfmt.count("U")
    want = "S" * n_s + ("T" if conv_t else "")
    if (wfmt.count("S") != n_s or "B" in wfmt or "C" not in wfmt or nu not in (1, 2)
            or ("T" in wfmt) != conv_t):
        raise ValueError(
            f"weights_format={wfmt!r} does not describe filters for input with {n_s} S dim(s)"
            f"{' and a convolved T' if conv_t else ''}: use {want}C U (filters) or "
            f"{want}CUU (filters per group, groups), e.g. {want + 'CU'!r}"
        )
    shape = tuple(w.shape) + (1,) * (len(wfmt) - w.ndim)
    order = [("S", i) for i in range(n_s)] + ([("T", 0)] if conv_t else []) + [("C", 0)]
    order += [("U", i) for i in range(nu)]
    p = perm(keys(wfmt), order)
    after = tuple(shape[i] for i in p)
    kshape = after + ((1,) if nu == 1 else ())
    if len(shape) != w.ndim:
        p = None  # caller reshapes first
    return p, after, kshape


def weights_hint(w, wfmt, x_fmt, x_c, nconv):
    """A sentence naming the likely cause of a weights/input mismatch, or ``""``."""
    if wfmt is not None:
        return ""
    shape = tuple(w.shape)
    if "T" in x_fmt and x_fmt.count("S") == nconv and len(shape) in (nconv + 3, 4):
        return ("; x has a T dim: for h\u00d7w\u00d7C\u00d7F filters over S and T (as "
                "Convolution2DLayer applies them to SCBT input) pass weights_format='STCU'")
    if len(shape) == nconv + 2 and x_c is not None and shape[1] == x_c:
        torch_fmt = "UC" + "S" * nconv
        return (f"; the weights look like torch's layout (F, C, {', '.join('k' * nconv)}) with "
                f"dim 2 = {x_c} = the channels of x: pass weights_format={torch_fmt!r} "
                "(fmtarray's own layout is MATLAB's [k1..kd, C, F])")
    return ""


def weak_scalar(v):
    """A Python or NumPy scalar bias as a float (it takes the arrays' dtype), ``None``
    when ``v`` is something else. Bools and complex numbers are refused."""
    if not isinstance(v, (numbers.Number, _np.generic)):
        return None
    if isinstance(v, (bool, _np.bool_)) or not isinstance(v, (numbers.Real, _np.integer,
                                                                 _np.floating)):
        raise TypeError(
            f"conv: bias={v!r} ({type(v).__name__}): expected None, a real number, or an "
            "array of one value per output channel (bias=True is not a bias)"
        )
    return float(v)


def result_dtype(xp, xd, wd, bd):
    """SPEC §2: the array-API ``result_type`` of x, the weights and an array bias (a
    scalar bias is weak), the same on every library."""
    if bd is None:
        return xp.result_type(xd.dtype, wd.dtype) if xd.dtype != wd.dtype else xd.dtype
    return xp.result_type(xd.dtype, wd.dtype, bd.dtype)


def cast(xp, a, dtype):
    return a if a is None or a.dtype == dtype else xp.astype(a, dtype)


def check_memory(spec, xd, labels, padding):
    """Refuse (``MemoryError``) a call whose output plus padded-input copy cannot fit
    (:func:`fmtarray._validate.check_memory`); for Dask, one sample must fit."""
    item = 8 if spec.dtype == "float64" else 4
    n = 1 if _backend.library_name(xd) == "dask" else spec.N
    out_b = n * math.prod(spec.out) * spec.F * item
    pad_b = n * math.prod(spec.padded) * spec.C * item if any(spec.pb + spec.pa) else 0
    _validate.check_memory(
        "conv", out_b + pad_b,
        f"the output {'x'.join(map(str, spec.out))} over {labels} ({spec.F} channels, "
        f"{n} samples{' per sample: Dask' if n != spec.N else ''}, {_human(out_b)}) and the "
        f"padded input {'x'.join(map(str, spec.padded))} ({_human(pad_b)}; padding="
        f"{padding!r}, before {spec.pb} / after {spec.pa})", xd)


def _human(n):
    return _validate._human(n)


def maybe_permute(xp, a, perm):
    return a if perm == tuple(range(len(perm))) else xp.permute_dims(a, perm)


def operands(func, xd, wd, bias):
    """Check the weights and the bias of ``func`` (``conv``, ``transposed_conv``) against
    ``x``'s data ``xd``: one library and device, real floating dtypes.

    Returns ``(xp, dtype, bd, b_weak, b_src)``: the namespace, the result dtype, the
    bias's data, the bias as a weak scalar (or ``None``) and as an array (or ``None``).
    """
    bd = bias._data if isinstance(bias, FormattedArray) else bias
    b_weak = weak_scalar(bd)
    b_src = bd if b_weak is None else None  # an array bias, or None
    if b_src is not None and not _backend.is_array(b_src):
        raise TypeError(f"{func}: bias must be None, a real number or an array, got "
                        f"{type(bd).__name__} {bd!r}")
    if not _backend.is_array(wd):
        raise TypeError(f"{func}: weights must be an array of x's library or a FormattedArray, "
                        f"got {type(wd).__module__}.{type(wd).__name__}")
    xp = _backend.namespace(xd, wd, b_src)
    _backend.check_same_device(xd, wd, b_src)
    _validate.check_float(xp, xd, "x")
    _validate.check_float(xp, wd, "weights")
    if b_src is not None:
        _validate.check_float(xp, b_src, "bias")
    return xp, result_dtype(xp, xd, wd, b_src), bd, b_weak, b_src


def canonical_x(xp, xd, fmt_in, data_format, n_s, conv_t):
    """``x`` in canonical dim order and its sizes, for a convolution over ``n_s`` S dims
    (and T when ``conv_t``).

    Returns ``(p1, cfmt, xc, cshape, ckeys, size, conv_keys, has_c, sp, C, N, labels)``:
    the permutation from ``data_format`` (``None`` for formatted input), the canonical
    format, data and shape, the dim keys and their sizes, the convolved dims' keys, whether
    there is a ``C``, the convolved sizes, the channels, the batch-like size and the
    convolved dims' labels.
    """
    p1 = None
    if data_format is not None:
        xr = xd
        if len(data_format) > xd.ndim:
            xr = xp.reshape(xd, tuple(xd.shape) + (1,) * (len(data_format) - xd.ndim))
        cfmt, p1 = _format.canonicalize(data_format)
        xc = maybe_permute(xp, xr, p1)
    else:
        cfmt, xc = fmt_in, xd
    ckeys = keys(cfmt)
    cshape = tuple(xc.shape)
    size = dict(zip(ckeys, cshape))
    conv_keys = [("S", i) for i in range(n_s)] + ([("T", 0)] if conv_t else [])
    has_c = ("C", 0) in ckeys
    sp = tuple(size[k] for k in conv_keys)
    C = size[("C", 0)] if has_c else 1
    N = math.prod(size[k] for k in ckeys if k[0] in "BT" and k not in conv_keys)
    labels = "".join(k[0] for k in conv_keys)
    return p1, cfmt, xc, cshape, ckeys, size, conv_keys, has_c, sp, C, N, labels
