"""Argument checks of :func:`fmtarray.conv` that do not fit in the op's module: the
weights' layout (with hints for likely mistakes), the bias, the result dtype and the
memory a call would need. The generic normalisers are in :mod:`fmtarray._validate`.
"""

from __future__ import annotations

import math
import numbers

import numpy as _np

from .. import _backend, _format, _validate


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
