"""Format-dispatched convolution: :func:`conv` (MATLAB ``dlconv``), SPEC §3.1 / §3.3.

The format decides everything positional: which dims are convolved (every ``S``,
plus ``T`` when the weights say so), which are batch-like (``B``, ``T`` when not
convolved), where the channels are. The op flattens the batch-like dims into one,
permutes to channels-last ``(N, *convolved, C)``, calls the positional kernel
(:mod:`fmtarray._kernels.conv`) and restores layout and format. On NumPy the
permutations are views: the kernel copies only chunk-sized blocks.
"""

from __future__ import annotations

import numbers
import operator

from .. import _backend, _format, _tape
from .._kernels import conv as _k
from .._kernels.pad import PAD_MODES
from ..array import FormattedArray

__all__ = ["conv", "conv_geometry"]


# ---------------------------------------------------------------------------------------
# argument parsing


def _ints(name, value, n, what, low):
    """``value`` (int or sequence of ``n`` ints) as a tuple of ``n`` ints ``>= low``."""
    legal = f"a positive integer or {n} positive integers (one per {what})" if low == 1 else ""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: expected {legal}")
    if isinstance(value, numbers.Integral):
        vals = (int(value),) * n
    else:
        try:
            vals = tuple(value)
        except TypeError:
            raise TypeError(f"{name}={value!r}: expected {legal}") from None
        if len(vals) == 1:
            vals = vals * n
        if len(vals) != n:
            raise ValueError(f"{name}={value!r} has {len(vals)} values; expected {legal}")
        out = []
        for v in vals:
            if isinstance(v, bool) or not _is_int(v):
                raise TypeError(f"{name}={value!r}: {v!r} is not an integer; expected {legal}")
            out.append(int(v))
        vals = tuple(out)
    if any(v < low for v in vals):
        raise ValueError(f"{name}={value!r}: values must be >= {low}; expected {legal}")
    return vals


def _is_int(v) -> bool:
    if isinstance(v, numbers.Integral):
        return True
    if isinstance(v, numbers.Real):
        return float(v).is_integer()
    try:
        operator.index(v)
        return True
    except TypeError:
        return False


def _padding(padding, n, labels):
    """``(before, after)`` tuples of ``n`` ints, or the strings ``"same"`` / ``"causal"``."""
    legal = (
        f"a non-negative integer, {n} integers (one per convolved dim {labels})"
        + (f", {2 * n} integers (before/after per dim, like MATLAB's [t b l r])" if n > 1
           else ", 2 integers (before, after)")
        + ", 'same' or 'causal' (one convolved dim only)"
    )
    if isinstance(padding, str):
        if padding == "same":
            return "same"
        if padding == "causal":
            if n != 1:
                raise ValueError(
                    f"padding='causal' needs exactly one convolved dim, but {n} are convolved "
                    f"({labels}); use an explicit padding or 'same'"
                )
            return "causal"
        raise ValueError(f"padding={padding!r} is not a padding form; use {legal}")
    if isinstance(padding, bool):
        raise TypeError(f"padding={padding!r}: expected {legal}")
    if isinstance(padding, numbers.Number) or _is_scalar_array(padding):
        vals = [padding]
    else:
        try:
            vals = list(padding)
        except TypeError:
            raise TypeError(f"padding={padding!r}: expected {legal}") from None
        # nested (2, n): [[before...], [after...]] (MATLAB's 2-by-d matrix)
        if len(vals) == 2 and all(_is_seq(v) for v in vals):
            rows = [list(v) for v in vals]
            if len(rows[0]) != n or len(rows[1]) != n:
                raise ValueError(f"padding={padding!r} fits no padding form; use {legal}")
            vals = [x for pair in zip(rows[0], rows[1]) for x in pair]
            if n == 1:
                vals = [rows[0][0], rows[1][0]]
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) and not _is_scalar_array(v):
            raise TypeError(f"padding={padding!r}: {v!r} is not an integer; expected {legal}")
        if not _is_int(v):
            raise ValueError(f"padding={padding!r}: {v!r} is not an integer; expected {legal}")
        if int(v) < 0:
            raise ValueError(f"padding={padding!r}: padding must be non-negative; expected {legal}")
    vals = [int(v) for v in vals]
    if len(vals) == 1:
        return (vals[0],) * n, (vals[0],) * n
    if len(vals) == 2 * n:
        return tuple(vals[0::2]), tuple(vals[1::2])
    if len(vals) == n:
        return tuple(vals), tuple(vals)
    raise ValueError(
        f"padding={padding!r} has {len(vals)} values, which fits no padding form; use {legal}"
    )


def _is_seq(v):
    return isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, str)


def _is_scalar_array(v):
    return _backend.is_array(v) and getattr(v, "ndim", None) == 0


def _padding_value(v):
    if isinstance(v, str):
        if v not in PAD_MODES:
            raise ValueError(
                f"padding_value={v!r} is not a padding mode; use a number or one of "
                + ", ".join(repr(m) for m in PAD_MODES)
            )
        return v
    if isinstance(v, bool) or not (isinstance(v, numbers.Real) or _is_scalar_array(v)):
        raise TypeError(
            f"padding_value={v!r}: expected a real number or one of "
            + ", ".join(repr(m) for m in PAD_MODES)
        )
    return float(v)


# ---------------------------------------------------------------------------------------
# layouts


_FLOAT_OK: dict = {}


def _is_float(xp, dtype) -> bool:
    """float32/float64 (not float16), cached per (namespace, dtype): the array-API
    ``isdtype`` and the dtype's name cost microseconds per call."""
    try:
        return _FLOAT_OK[(xp, dtype)]
    except KeyError:
        ok = bool(xp.isdtype(dtype, "real floating")) and not str(dtype).endswith("float16")
        _FLOAT_OK[(xp, dtype)] = ok
        return ok
    except TypeError:  # an unhashable dtype object
        return bool(xp.isdtype(dtype, "real floating")) and not str(dtype).endswith("float16")


def _check_float(xp, a, name):
    if not _is_float(xp, a.dtype):
        raise TypeError(
            f"conv: {name} has dtype {a.dtype}; convolution needs float32 or float64 "
            "(convert with astype first)"
        )


def _keys(fmt):
    """One key per dim: ``('S', i)``, ``('C', 0)``, ..., numbering repeated labels."""
    seen = {}
    out = []
    for ch in fmt:
        i = seen.get(ch, 0)
        seen[ch] = i + 1
        out.append((ch, i))
    return out


def _perm(src_keys, dst_keys):
    return tuple(src_keys.index(k) for k in dst_keys)


def _maybe_permute(xp, a, perm):
    return a if perm == tuple(range(len(perm))) else xp.permute_dims(a, perm)


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _weights_layout(xp, w, wfmt, n_s, conv_t, nconv):
    """Permutation/reshape of raw weights to the kernel's ``(*k, Cg, Fg, G)``.

    Returns ``(perm, shape_after_perm, kernel_shape)``.
    """
    if wfmt is None:
        if w.ndim not in (nconv + 2, nconv + 3):
            raise ValueError(
                f"weights of shape {tuple(w.shape)} have rank {w.ndim}; for {nconv} convolved "
                f"dim(s) they must have rank {nconv + 2} [k1..k{nconv}, channelsPerGroup, "
                f"filtersPerGroup] or {nconv + 3} [..., numGroups]"
            )
        shape = tuple(w.shape) + ((1,) if w.ndim == nconv + 2 else ())
        return tuple(range(w.ndim)), tuple(w.shape), shape
    _format.validate(wfmt)
    if len(wfmt) < w.ndim:
        raise ValueError(
            f"weights_format={wfmt!r} has {len(wfmt)} labels but the weights have {w.ndim} "
            f"dims (shape {tuple(w.shape)})"
        )
    bad = [c for c in wfmt if c == "B"]
    nu = wfmt.count("U")
    want = "S" * n_s + ("T" if conv_t else "")
    if (wfmt.count("S") != n_s or bad or "C" not in wfmt or nu not in (1, 2)
            or ("T" in wfmt) != conv_t):
        raise ValueError(
            f"weights_format={wfmt!r} does not describe filters for input with {n_s} S dim(s)"
            f"{' and a convolved T' if conv_t else ''}: use {want}C U (filters) or "
            f"{want}CUU (filters per group, groups), e.g. {want + 'CU'!r}"
        )
    shape = tuple(w.shape) + (1,) * (len(wfmt) - w.ndim)
    keys = _keys(wfmt)
    order = [("S", i) for i in range(n_s)] + ([("T", 0)] if conv_t else []) + [("C", 0)]
    order += [("U", i) for i in range(nu)]
    perm = _perm(keys, order)
    after = tuple(shape[p] for p in perm)
    kshape = after + ((1,) if nu == 1 else ())
    if len(shape) != w.ndim:
        perm = None  # caller reshapes first
    return perm, after, kshape


def conv_geometry(in_sizes, filter_sizes, stride, dilation, padding):
    """Output sizes and ``(before, after)`` pads for already-parsed arguments."""
    n = len(in_sizes)
    if padding == "same":
        pads = [_k.same_padding(i, k, s, d) for i, k, s, d in zip(in_sizes, filter_sizes, stride,
                                                                   dilation)]
        before, after = tuple(p[0] for p in pads), tuple(p[1] for p in pads)
    elif padding == "causal":
        before = tuple((k - 1) * d for k, d in zip(filter_sizes, dilation))
        after = (0,) * n
    else:
        before, after = padding
    out = tuple(_k.conv_output_size(i, k, s, d, b, a) for i, k, s, d, b, a in
                zip(in_sizes, filter_sizes, stride, dilation, before, after))
    return out, before, after


# ---------------------------------------------------------------------------------------
# the op


def conv(x, weights, bias=None, *, stride=1, dilation_factor=1, padding=0, padding_value=0,
         weights_format=None, data_format=None):
    """Deep-learning convolution of ``x`` with ``weights`` (MATLAB ``dlconv``).

    Parameters
    ----------
    x
        A :class:`FormattedArray` (e.g. ``"SSCB"``), or an unformatted one / raw array
        together with ``data_format``. Convolves over every ``S`` dim (1 to 3), and
        over ``T`` when ``weights_format`` contains ``T``. ``B``, a ``T`` that is not
        convolved, are batch-like. No ``C`` means one channel (the output gains ``C``).
        ``U`` dims are not allowed.
    weights
        ``[k1 … kd, C/groups, F/groups]`` or ``[k1 … kd, C/groups, F/groups, groups]``
        (raw array of ``x``'s library, or a FormattedArray); ``d`` = number of
        convolved dims, ordered as ``S…S`` then ``T``.
    bias
        ``None``, a scalar, or ``F = F/groups · groups`` values (any shape of that size,
        e.g. ``(F,)`` or MATLAB's ``1×1×F``).
    stride, dilation_factor
        A positive integer, or one per convolved dim.
    padding
        ``p``; one per convolved dim; ``2·d`` values before/after per dim (MATLAB's
        ``[t b l r]``); a ``(2, d)`` nested sequence ``[[before…], [after…]]``;
        ``"same"`` (output ``ceil(in/stride)``, odd pixel after); ``"causal"``
        (single convolved dim: ``(k-1)·dilation`` before, 0 after).
    padding_value
        A number, or ``"symmetric-include-edge"``, ``"symmetric-exclude-edge"``,
        ``"replicate"``.
    weights_format
        Labels of the weights' dims when they are a raw array, e.g. ``"SSCU"``,
        ``"SSCUU"`` (grouped), ``"STCU"`` (filters over ``S`` and ``T``).
    data_format
        Labels of an unformatted ``x``; the result is then unformatted, in the
        same dim order (with ``C`` inserted after the last ``S``/``T`` dim when
        ``x`` had none).

    Returns
    -------
    FormattedArray with the format of ``x`` (plus ``C``), on ``x``'s library,
    device and dtype. Differentiable with respect to ``x``, ``weights`` and ``bias``.
    """
    # ---- the input and its format
    X = x if isinstance(x, FormattedArray) else None
    xd = x._data if X is not None else x
    if not _backend.is_array(xd):
        raise TypeError(
            f"conv: x must be a FormattedArray or an array of an array-API library, got "
            f"{type(x).__module__}.{type(x).__name__}"
        )
    fmt_in = X._fmt if X is not None else ""
    if data_format is not None:
        if fmt_in:
            raise ValueError(
                f"conv: data_format={data_format!r} given for x that already has format "
                f"{fmt_in!r}; data_format is only for unformatted input"
            )
        if not isinstance(data_format, str):
            raise TypeError(f"conv: data_format must be a str of labels, got {data_format!r}")
        _format.validate(data_format)
        if len(data_format) < xd.ndim:
            raise ValueError(
                f"conv: data_format={data_format!r} has {len(data_format)} labels but x has "
                f"{xd.ndim} dims (shape {tuple(xd.shape)})"
            )
        user_fmt = data_format
    else:
        if not fmt_in:
            raise ValueError(
                "conv: x is unformatted; give it a format (FormattedArray(x, 'SSCB')) or pass "
                "data_format= (e.g. data_format='SSCB')"
            )
        user_fmt = fmt_in
    if "U" in user_fmt:
        raise ValueError(
            f"conv: x has format {user_fmt!r} with 'U' dims; conv cannot tell what a 'U' dim "
            "is — label it S, C, B or T (accepted labels: S (1-3, convolved), C, B, T)"
        )
    w_fmt_given = weights_format
    W = weights if isinstance(weights, FormattedArray) else None
    wd = weights._data if W is not None else weights
    if W is not None and W._fmt:
        if weights_format is not None and _format.canonicalize(weights_format)[0] != W._fmt:
            raise ValueError(
                f"conv: weights have format {W._fmt!r} but weights_format={weights_format!r}"
            )
        w_fmt_given = W._fmt
    if w_fmt_given is not None and not isinstance(w_fmt_given, str):
        raise TypeError(f"conv: weights_format must be a str of labels, got {w_fmt_given!r}")
    conv_t = w_fmt_given is not None and "T" in w_fmt_given
    n_s = user_fmt.count("S")
    if conv_t and "T" not in user_fmt:
        raise ValueError(
            f"conv: weights_format={w_fmt_given!r} convolves over T but x (format "
            f"{user_fmt!r}) has no T dim"
        )
    nconv = n_s + (1 if conv_t else 0)
    if not 1 <= nconv <= 3:
        raise ValueError(
            f"conv: x has format {user_fmt!r}: {nconv} convolvable dims (S"
            f"{' and T' if conv_t else ''}); conv needs 1 to 3 S dims (plus T when "
            "weights_format contains T), e.g. 'SCB', 'SSCB', 'SSSCB', 'SCBT' with 'STCU' weights"
        )
    B = bias if isinstance(bias, FormattedArray) else None
    bd = bias._data if B is not None else bias
    if bd is not None and not (_backend.is_array(bd) or isinstance(bd, numbers.Real)):
        raise TypeError(f"conv: bias must be None, a scalar or an array, got {type(bd).__name__}")
    if not _backend.is_array(wd):
        raise TypeError(
            f"conv: weights must be an array of x's library or a FormattedArray, got "
            f"{type(wd).__module__}.{type(wd).__name__}"
        )
    xp = _backend.namespace(xd, wd, bd if _backend.is_array(bd) else None)
    _backend.check_same_device(xd, wd, bd if _backend.is_array(bd) else None)
    _check_float(xp, xd, "x")
    _check_float(xp, wd, "weights")
    if _backend.is_array(bd):
        _check_float(xp, bd, "bias")

    # ---- canonical layout of x, then the kernel layout (N, *conv, C)
    if data_format is not None:
        if len(data_format) > xd.ndim:
            xr = xp.reshape(xd, tuple(xd.shape) + (1,) * (len(data_format) - xd.ndim))
        else:
            xr = xd
        cfmt, p1 = _format.canonicalize(data_format)
        xc = _maybe_permute(xp, xr, p1)
    else:
        cfmt, p1, xr, xc = fmt_in, None, xd, xd
    ckeys = _keys(cfmt)
    cshape = tuple(xc.shape)
    conv_keys = [("S", i) for i in range(n_s)] + ([("T", 0)] if conv_t else [])
    batch_keys = [k for k in ckeys if k[0] in "BT" and k not in conv_keys]
    has_c = ("C", 0) in ckeys
    kern_keys = batch_keys + conv_keys + ([("C", 0)] if has_c else [])
    p2 = _perm(ckeys, kern_keys)
    size = dict(zip(ckeys, cshape))
    bsizes = tuple(size[k] for k in batch_keys)
    N = 1
    for s in bsizes:
        N *= s
    sp = tuple(size[k] for k in conv_keys)
    C = size[("C", 0)] if has_c else 1
    labels = "".join(k[0] for k in conv_keys)

    # ---- weights
    perm_w, w_after, kshape = _weights_layout(xp, wd, w_fmt_given, n_s, conv_t, nconv)
    wsrc = wd
    if perm_w is None:  # weights_format longer than the data: trailing singletons
        wsrc = xp.reshape(wsrc, tuple(wsrc.shape) + (1,) * (len(w_fmt_given) - wsrc.ndim))
        perm_w = _perm(_keys(w_fmt_given), [("S", i) for i in range(n_s)]
                       + ([("T", 0)] if conv_t else []) + [("C", 0)]
                       + [("U", i) for i in range(w_fmt_given.count("U"))])
    wk = _maybe_permute(xp, wsrc, perm_w)
    if tuple(wk.shape) != kshape:
        wk = xp.reshape(wk, kshape)
    ksz = kshape[:nconv]
    Cg, Fg, G = kshape[nconv:]
    if min(kshape) < 1:
        raise ValueError(f"conv: weights of shape {tuple(wd.shape)} have an empty dim")
    if C % G:
        raise ValueError(
            f"conv: groups={G} (last weights dim) does not divide the {C} input channels of x "
            f"(format {user_fmt!r}, shape {tuple(xd.shape)})"
        )
    if Cg * G != C:
        raise ValueError(
            f"conv: channel mismatch: the weights (shape {tuple(wd.shape)}) expect "
            f"{Cg} channels per group x {G} group(s) = {Cg * G} input channels, but x "
            f"(format {user_fmt!r}, shape {tuple(xd.shape)}) has {C}"
        )
    F = Fg * G

    # ---- bias
    b_arr = None
    if bd is not None:
        if isinstance(bd, numbers.Real):
            b_arr = xp.full((F,), float(bd), dtype=xd.dtype, device=_backend.device(xd))
        else:
            nb = 1
            for s in bd.shape:
                nb *= s
            if nb == 1:
                b_arr = xp.broadcast_to(xp.reshape(bd, (1,)), (F,))
            elif nb == F and sum(1 for s in bd.shape if s != 1) <= 1:
                b_arr = xp.reshape(bd, (F,))
            else:
                raise ValueError(
                    f"conv: bias of shape {tuple(bd.shape)} has {nb} values; it must be a scalar "
                    f"or have one value per output channel ({F} = {Fg} filters x {G} groups)"
                )

    # ---- geometry
    stride = _ints("stride", stride, nconv, f"convolved dim {labels}", 1)
    dilation = _ints("dilation_factor", dilation_factor, nconv, f"convolved dim {labels}", 1)
    pform = _padding(padding, nconv, labels)
    pval = _padding_value(padding_value)
    out_sz, before, after = conv_geometry(sp, ksz, stride, dilation, pform)
    if any(o < 1 for o in out_sz):
        eff = tuple((k - 1) * d + 1 for k, d in zip(ksz, dilation))
        raise ValueError(
            f"conv: output size {out_sz} < 1 over dims {labels}: input size {sp}, filter size "
            f"{ksz} (effective {eff} with dilation_factor {dilation}), stride {stride}, padding "
            f"before {before} / after {after}; output = floor((in + before + after - effective)"
            " / stride) + 1 must be >= 1"
        )
    if any(s == 0 for s in sp) and isinstance(pval, str) and (any(before) or any(after)):
        raise ValueError(f"conv: padding_value={pval!r} cannot pad an empty dim (sizes {sp})")

    # ---- run the kernel
    xk = _maybe_permute(xp, xc, p2)
    kin_shape = (N, *sp, C)
    if tuple(xk.shape) != kin_shape:
        xk = xp.reshape(xk, kin_shape)
    kw = dict(stride=stride, dilation=dilation, pad_before=before, pad_after=after,
              pad_value=pval, groups=G)
    y = _k.conv_forward(xp, xk, wk, b_arr, **kw)  # (N, *out, F)

    # ---- back to the output format
    y = xp.reshape(y, bsizes + out_sz + (F,))
    ykeys = batch_keys + conv_keys + [("C", 0)]
    ofmt = cfmt if has_c else _insert_c(cfmt)
    okeys = _keys(ofmt)
    y = _maybe_permute(xp, y, _perm(ykeys, okeys))
    if data_format is not None:
        ufmt = data_format if has_c else _insert_c_user(data_format)
        ukeys = _keys(ufmt)
        y = _maybe_permute(xp, y, _perm(okeys, ukeys))
        out = FormattedArray._wrap(y, "")
    else:
        out = FormattedArray._wrap(y, ofmt)

    if _tape.traced(X, W, B):
        def back(g, needs):
            # g: output cotangent in out.data layout -> kernel layout (N, *out, F)
            if data_format is not None:
                g = _maybe_permute(xp, g, _perm(ukeys, okeys))
            g = _maybe_permute(xp, g, _perm(okeys, ykeys))
            g = xp.reshape(g, (N, *out_sz, F))
            gx, gw, gb = _k.conv_backward(xp, g, xk, wk, needs=needs, **kw)
            rx = rw = rb = None
            if needs[0]:
                gx = xp.reshape(gx, tuple(size[k] for k in kern_keys))
                gx = _maybe_permute(xp, gx, _perm(kern_keys, ckeys))  # canonical
                if p1 is not None:
                    gx = _maybe_permute(xp, gx, _inverse(p1))
                rx = xp.reshape(gx, tuple(xd.shape)) if tuple(gx.shape) != tuple(xd.shape) else gx
            if needs[1]:
                gw = xp.reshape(gw, w_after) if tuple(gw.shape) != w_after else gw
                gw = _maybe_permute(xp, gw, _inverse(perm_w))
                rw = xp.reshape(gw, tuple(wd.shape)) if tuple(gw.shape) != tuple(wd.shape) else gw
            if needs[2]:
                if _size(bd.shape) == F and F != 1 or _size(bd.shape) == 1 and F == 1:
                    rb = xp.reshape(gb, tuple(bd.shape))
                else:  # a scalar bias broadcast over the F channels
                    rb = xp.reshape(xp.sum(gb), tuple(bd.shape))
            return rx, rw, rb

        _tape.record(out, (X, W, B), back, "conv")
    return out


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _insert_c(cfmt):
    """Canonical format with a ``C`` added (after the ``S`` dims)."""
    return _format.canonicalize(cfmt + "C")[0]


def _insert_c_user(fmt):
    """User-order format with ``C`` inserted right after its last ``S`` dim."""
    last = max(i for i, ch in enumerate(fmt) if ch == "S") if "S" in fmt else len(fmt) - 1
    return fmt[: last + 1] + "C" + fmt[last + 1:]
