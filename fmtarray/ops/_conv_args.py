"""Argument checks shared by :func:`fmtarray.conv` and ``transposed_conv``: the
weights' layout (with hints for likely mistakes), the channels, the bias, the result
dtype and the memory a call would need. The generic normalisers are in
:mod:`fmtarray._validate`.
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


def _roles(func):
    """The two channel roles of ``func``'s weights after the filter dims, in order:
    MATLAB's ``dlconv`` layout ``[k1..kd, C, F]``, ``dltranspconv``'s ``[k1..kd, F, C]``."""
    return ("Filters", "Channels") if func == "transposed_conv" else ("Channels", "Filters")


def weights_layout(func, w, wfmt, n_s, conv_t, nconv, hint=""):
    """Permutation/reshape of ``func``'s raw weights to the kernel's ``(*k, Cg, Fg, G)``
    (``conv``) or ``(*k, Fg, Cg, G)`` (``transposed_conv``); ``hint`` ends the rank error.

    Returns ``(perm, shape_after_perm, kernel_shape)``; where ``wfmt`` is longer than
    ``w.ndim``, ``perm`` applies to ``w`` with trailing singletons (:func:`kernel_weights`).
    """
    a, b = _roles(func)
    if wfmt is None:
        if w.ndim not in (nconv + 2, nconv + 3):
            raise ValueError(
                f"{func}: weights of shape {tuple(w.shape)} have rank {w.ndim}; for {nconv} "
                f"convolved dim(s) they must be [k1..k{nconv}, num{a}, num{b}] (rank "
                f"{nconv + 2}) or [k1..k{nconv}, num{a}PerGroup, num{b}PerGroup, numGroups] "
                f"(rank {nconv + 3}){hint}")
        shape = tuple(w.shape) + ((1,) if w.ndim == nconv + 2 else ())
        return tuple(range(w.ndim)), tuple(w.shape), shape
    _format.validate(wfmt)
    if len(wfmt) < w.ndim:
        raise ValueError(
            f"{func}: weights_format={wfmt!r} has {len(wfmt)} labels but the weights have "
            f"{w.ndim} dims (shape {tuple(w.shape)})")
    nu = wfmt.count("U")
    want = "S" * n_s + ("T" if conv_t else "")
    lay = "UC" if a == "Filters" else "CU"
    if (wfmt.count("S") != n_s or "B" in wfmt or "C" not in wfmt or nu not in (1, 2)
            or ("T" in wfmt) != conv_t):
        raise ValueError(
            f"{func}: weights_format={wfmt!r} does not describe "
            f"{'transposed ' if a == 'Filters' else ''}filters for input with {n_s} S dim(s)"
            f"{' and a convolved T' if conv_t else ''}: label the filter dims {want}, the "
            f"input channels C and the filters U, e.g. {want + lay!r} (MATLAB's layout) or "
            f"{want + lay + 'U'!r} ({a.lower()} per group, {b.lower()} per group, groups)")
    shape = tuple(w.shape) + (1,) * (len(wfmt) - w.ndim)
    order = [("S", i) for i in range(n_s)] + ([("T", 0)] if conv_t else [])
    order += [(ch, 0) for ch in lay] + ([("U", 1)] if nu == 2 else [])
    p = perm(keys(wfmt), order)
    after = tuple(shape[i] for i in p)
    return p, after, after + ((1,) if nu == 1 else ())


def kernel_weights(xp, wd, wfmt, p, kshape, dtype):
    """The raw weights ``wd`` as the kernel's ``kshape`` array of ``dtype``: ``wfmt``'s
    trailing singletons appended, permuted by ``p`` (from :func:`weights_layout`)."""
    if wfmt is not None and len(wfmt) > wd.ndim:
        wd = xp.reshape(wd, tuple(wd.shape) + (1,) * (len(wfmt) - wd.ndim))
    wk = maybe_permute(xp, wd, p)
    return cast(xp, wk if tuple(wk.shape) == kshape else xp.reshape(wk, kshape), dtype)


def check_channels(func, wd, xd, x_fmt, nconv, Cg, G, C, hint=""):
    """Refuse weights whose ``Cg`` channels per group x ``G`` groups are not the ``C``
    channels of ``x`` (format ``x_fmt``); ``hint`` ends the message."""
    if Cg * G != C:
        a, b = _roles(func)
        raise ValueError(
            f"{func}: channel mismatch: the weights (shape {tuple(wd.shape)}, layout "
            f"[k1..k{nconv}, num{a}, num{b}(, numGroups)]) expect {Cg} channels per group x "
            f"{G} group(s) = {Cg * G} input channels, but x (format {x_fmt!r}, shape "
            f"{tuple(xd.shape)}) has {C}{hint}")


def bias_vector(func, xp, xd, bd, b_weak, b_src, dtype, Fg, G):
    """``func``'s bias (from :func:`operands`) as ``F = Fg·G`` values of ``dtype``, or
    ``None``: a scalar repeats; an array holds one value or ``F`` (any shape of that size)."""
    F = Fg * G
    if bd is None:
        return None
    if b_src is None:
        return xp.full((F,), b_weak, dtype=dtype, device=_backend.device(xd))
    nb = math.prod(bd.shape)
    if nb == 1:
        return xp.broadcast_to(xp.reshape(cast(xp, bd, dtype), (1,)), (F,))
    if nb == F and sum(1 for s in bd.shape if s != 1) <= 1:
        return xp.reshape(cast(xp, bd, dtype), (F,))
    raise ValueError(
        f"{func}: bias of shape {tuple(bd.shape)} has {nb} values; it must be a scalar or "
        f"have one value per output channel ({F} = {Fg} filters x {G} groups)")


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
    if v is None or type(v) is _np.ndarray:
        return None
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


def kernel_dims(cfmt, n_s, conv_t):
    """Roles of the kernel array's dims (see :mod:`fmtarray._kernels.conv.spec`) and,
    per canonical dim, the index of the kernel dim it belongs to (``None``: inserted)."""
    roles = []
    for ch, i in keys(cfmt):
        if ch == "S":
            r = str(i)
        elif ch == "C":
            r = "C"
        elif ch == "T" and conv_t:
            r = str(n_s)
        else:  # B, or a T that is not convolved: batch-like
            r = "N"
        if not (r == "N" and roles and roles[-1] == "N"):
            roles.append(r)
    if "C" not in roles:
        roles.insert(n_s, "C")
    if "N" not in roles:
        roles.insert(roles.index("C") + 1, "N")
    return "".join(roles)


def kernel_io(xp, xc, cfmt, size, conv_keys, n_s, conv_t, N, out, F, dtype):
    """The kernel's view of a convolution of canonical ``x`` (``xc``, format ``cfmt``,
    ``size`` per dim key; see :func:`canonical_x`): the batch-like dims merged into ``N``
    and a missing ``N`` / ``C`` inserted (no permutation); ``out`` over the convolved
    dims and ``F`` channels on the output side.

    Returns ``(dims, xk, kshape_in, kshape_out, ofmt, oshape)``: the kernel dims' roles,
    ``x`` as the kernel's input in ``dtype`` and its shape, the kernel output's shape,
    and the op's output format and shape (canonical order, ``C`` added where missing).
    """
    dims = kernel_dims(cfmt, n_s, conv_t)
    role = {str(i): size[k] for i, k in enumerate(conv_keys)}
    role.update(C=size.get(("C", 0), 1), N=N)
    kin = tuple(role[r] for r in dims)
    xk = cast(xp, xc if tuple(xc.shape) == kin else xp.reshape(xc, kin), dtype)
    role.update({str(i): n for i, n in enumerate(out)}, C=F)
    kout = tuple(role[r] for r in dims)
    ofmt = cfmt if ("C", 0) in size else _format.canonicalize(cfmt + "C")[0]
    osize = dict(size)
    osize.update(zip(conv_keys, out))
    osize[("C", 0)] = F
    return dims, xk, kin, kout, ofmt, tuple(osize[k] for k in keys(ofmt))
