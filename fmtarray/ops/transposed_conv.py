"""Transposed convolution: :func:`transposed_conv` (MATLAB ``dltranspconv``).

A transposed convolution is the adjoint of a convolution: its output is the input
gradient of the convolution whose output has the shape of its input. MATLAB lays its
weights out as ``[k1 … kd, numFilters, numChannels]`` (grouped:
``[k1 … kd, numFiltersPerGroup, numChannelsPerGroup, numGroups]``), which is exactly
the ``[k1 … kd, C/G, F/G, G]`` layout of that convolution (its channels are our
filters, its filters our channels). So the op describes the matching convolution once
(:class:`~fmtarray._kernels.conv.ConvSpec`: its input is our output, with
``pb``/``pa`` = the cropping) and runs the registry's ``input_grad`` entry on it
(torch's ``convolution_backward``, JAX's transposed ``conv_general_dilated``, the NumPy
kernels, the portable path; Dask blockwise). Its gradients are the registry's other
two ops: with respect to ``x`` a forward convolution of the cotangent, with respect to
the weights a convolution weight gradient with the roles of input and cotangent
swapped; the bias gradient sums.

Output size, per convolved dim: ``(in - 1)·stride + (k - 1)·dilation + 1 - cropBefore
- cropAfter``; ``cropping="same"`` gives ``in·stride``.
"""

from __future__ import annotations

import math

from .. import _backend, _format, _tape, _validate
from . import _conv_args as _ca
from .._kernels import conv as _k
from ..array import FormattedArray
from .convolution import _insert_c_user, _inverse, _maybe_permute, _size

__all__ = ["transposed_conv", "transposed_output_size"]

_keys = _ca.keys
_perm = _ca.perm
_F = "transposed_conv"


def transposed_output_size(in_sizes, filter_sizes, stride, dilation, cropping):
    """``(out, crop_before, crop_after)`` per convolved dim.

    ``cropping`` is ``"same"`` or ``(before, after)`` tuples (as
    :func:`fmtarray._validate.padding` returns them). ``out = (in - 1)·stride +
    effective - before - after``; ``"same"``: ``out = in·stride``, the cropping
    ``effective - stride`` split with the odd pixel after (the adjoint of ``conv``'s
    ``"same"`` padding); where the effective filter is shorter than the stride, nothing
    is cropped and the output ends in ``stride - effective`` zeros (plus bias)."""
    outs, bs, as_ = [], [], []
    for i, (n, k, s, dl) in enumerate(zip(in_sizes, filter_sizes, stride, dilation)):
        eff = _k.spec.effective_size(k, dl)
        if cropping == "same":
            total = max(eff - s, 0)
            b, a = total // 2, total - total // 2
            out = n * s
        else:
            b, a = cropping[0][i], cropping[1][i]
            out = (n - 1) * s + eff - b - a
        outs.append(out)
        bs.append(b)
        as_.append(a)
    return tuple(outs), tuple(bs), tuple(as_)


def _placeholder(xp, shape, dtype, like, n_axis):
    """Zeros standing for the matching convolution's input: the registry's gradient
    entries take it for its shape, layout and (Dask) chunks only."""
    dev = _backend.device(like)
    if _backend.library_name(like) == "dask":
        chunks = tuple(like.chunks[n_axis] if i == n_axis else (n,) for i, n in enumerate(shape))
        return xp.zeros(shape, dtype=dtype, device=dev, chunks=chunks)
    return xp.zeros(shape, dtype=dtype, device=dev)


def _parse(x, weights, bias, stride, dilation_factor, cropping, weights_format, data_format):
    X = x if isinstance(x, FormattedArray) else None
    xd = x._data if X is not None else x
    if not _backend.is_array(xd):
        raise TypeError(f"{_F}: x must be a FormattedArray or an array of an array-API "
                        f"library, got {type(x).__module__}.{type(x).__name__}")
    fmt_in = X._fmt if X is not None else ""
    data_format = _format.as_format(data_format, "data_format")
    weights_format = _format.as_format(weights_format, "weights_format")
    if data_format is not None:
        if fmt_in:
            raise ValueError(f"{_F}: data_format={data_format!r} given for x that already has "
                             f"format {fmt_in!r}; data_format is only for unformatted input")
        if len(data_format) < xd.ndim:
            raise ValueError(f"{_F}: data_format={data_format!r} has {len(data_format)} labels "
                             f"but x has {xd.ndim} dims (shape {tuple(xd.shape)})")
        user_fmt = data_format
    elif not fmt_in:
        raise ValueError(f"{_F}: x is unformatted; give it a format (FormattedArray(x, 'SSCB'))"
                         " or pass data_format= (e.g. data_format='SSCB')")
    else:
        user_fmt = fmt_in
    if "U" in user_fmt:
        raise ValueError(f"{_F}: x has format {user_fmt!r} with 'U' dims; label them S, C, B "
                         "or T (accepted labels: S (1-3, convolved), C, B, T)")
    W = weights if isinstance(weights, FormattedArray) else None
    wd = weights._data if W is not None else weights
    w_fmt = weights_format
    if W is not None and W._fmt:
        if weights_format is not None and _format.canonicalize(weights_format)[0] != W._fmt:
            raise ValueError(f"{_F}: weights have format {W._fmt!r} but "
                             f"weights_format={weights_format!r}")
        w_fmt = W._fmt
    conv_t = w_fmt is not None and "T" in w_fmt
    n_s = user_fmt.count("S")
    if conv_t and "T" not in user_fmt:
        raise ValueError(f"{_F}: weights_format={w_fmt!r} convolves over T but x (format "
                         f"{user_fmt!r}) has no T dim")
    nconv = n_s + (1 if conv_t else 0)
    if not 1 <= nconv <= 3:
        raise ValueError(
            f"{_F}: x has format {user_fmt!r}: {nconv} convolvable dims; transposed_conv needs "
            "1 to 3 S dims (plus T when weights_format contains T), e.g. 'SCB', 'SSCB', "
            "'SSSCB', 'SCBT' with 'STUC' weights")
    B = bias if isinstance(bias, FormattedArray) else None
    xp, dtype, bd, b_weak, b_src = _ca.operands(_F, xd, wd, bias)

    # canonical layout of x
    (p1, cfmt, xc, cshape, ckeys, size, conv_keys, has_c, sp, C, N,
     labels) = _ca.canonical_x(xp, xd, fmt_in, data_format, n_s, conv_t)

    # weights: (*k, Fg, Cg, G)
    perm_w, w_after, kshape = _ca.weights_layout(_F, wd, w_fmt, n_s, conv_t, nconv)
    wk = _ca.kernel_weights(xp, wd, w_fmt, perm_w, kshape, dtype)
    if min(kshape) < 1:
        raise ValueError(f"{_F}: weights of shape {tuple(wd.shape)} have an empty dim")
    ksz = kshape[:nconv]
    Fg, Cg, G = kshape[nconv:]
    _ca.check_channels(
        _F, wd, xd, user_fmt, nconv, Cg, G, C,
        "; the weights look like dlconv's layout [k, numChannels, numFilters]: transposed "
        "weights put the filters first (MATLAB's dltranspconv layout)" if Fg * G == C else "")
    F = Fg * G
    b_arr = _ca.bias_vector(_F, xp, xd, bd, b_weak, b_src, dtype, Fg, G)

    # geometry
    stride = _validate.ints("stride", stride, nconv, f"convolved dim {labels}", 1)
    dilation = _validate.ints("dilation_factor", dilation_factor, nconv,
                              f"convolved dim {labels}", 1)
    crop = _validate.padding(cropping, nconv, labels, strings=("same",), name="cropping")
    if any(n < 1 for n in sp):
        raise ValueError(f"{_F}: x (format {user_fmt!r}, shape {tuple(xd.shape)}) has an empty "
                         f"convolved dim (sizes {sp} over {labels})")
    out, cb, ca = transposed_output_size(sp, ksz, stride, dilation, crop)
    if any(o < 1 for o in out):
        eff = tuple(_k.spec.effective_size(k, dl) for k, dl in zip(ksz, dilation))
        raise ValueError(
            f"{_F}: output size {out} < 1 over dims {labels}: input size {sp}, filter size "
            f"{ksz} (effective {eff} with dilation_factor {dilation}), stride {stride}, "
            f"cropping before {cb} / after {ca}; output = (in - 1) * stride + effective - "
            "before - after must be >= 1")
    # the matching convolution: input = our output (F channels), output = our input
    spec = _k.ConvSpec(N, out, F, tuple(ksz), Fg, Cg, G, stride, dilation, cb, ca, 0.0,
                       (1,) * nconv, _k.spec.dtype_name(dtype))
    if spec.out != sp:  # pragma: no cover - the output-size rule guarantees it
        raise AssertionError(f"{_F}: adjoint convolution maps {out} to {spec.out}, not {sp}")
    item = 8 if spec.dtype == "float64" else 4
    n_mem = 1 if _backend.library_name(xd) == "dask" else N
    _validate.check_memory(
        _F, n_mem * math.prod(out) * F * item,
        f"the output {'x'.join(map(str, out))} over {labels} ({F} channels, {n_mem} samples)",
        xd)

    dims, xk, kin, kout, ofmt, oshape = _ca.kernel_io(
        xp, xc, cfmt, size, conv_keys, n_s, conv_t, N, out, F, dtype)
    return dict(xp=xp, spec=spec, dims=dims, xk=xk, wk=wk, b=b_arr, kin=kin, kout=kout,
                oshape=oshape, ofmt=ofmt, cshape=cshape, p1=p1, data_format=data_format,
                has_c=has_c, w_after=w_after, perm_w=perm_w, X=X, W=W, B=B, xd=xd, wd=wd,
                bd=bd, dtype=dtype)


def transposed_conv(x, weights, bias=None, *, stride=1, dilation_factor=1, cropping=0,
                    weights_format=None, data_format=None, algorithm=None):
    """Deep-learning transposed convolution of ``x`` (MATLAB ``dltranspconv``).

    Parameters
    ----------
    x
        A :class:`FormattedArray` (e.g. ``"SSCB"``), or an unformatted one / raw array
        with ``data_format``. Upsamples every ``S`` dim (1 to 3), and ``T`` when
        ``weights_format`` contains ``T``; ``B`` and a ``T`` that is not convolved are
        batch-like; no ``C`` means one channel (the output gains ``C``).
    weights
        MATLAB's layout ``[k1 … kd, numFilters, numChannels]``, or grouped
        ``[k1 … kd, numFiltersPerGroup, numChannelsPerGroup, numGroups]``
        (``numChannels`` = the channels of ``x``; output channels = ``numFilters``, or
        ``numFiltersPerGroup · numGroups``). A raw array of ``x``'s library or a
        FormattedArray labelled with ``U`` for the filters and ``C`` for the channels.
    bias
        ``None``, a scalar, or one value per output channel.
    stride, dilation_factor
        A positive integer, or one per convolved dim (``S…S`` then ``T``).
    cropping
        ``c`` (every edge); one per convolved dim; ``2·d`` values before/after per dim
        (MATLAB's ``[t b l r]``); a ``(2, d)`` nested sequence ``[[before…], [after…]]``;
        or ``"same"`` (output ``in · stride``). Output size per dim:
        ``(in - 1)·stride + (k - 1)·dilation + 1 - before - after``.
    weights_format
        Labels of raw weights: ``"SSUC"`` (MATLAB's layout), ``"SSUCU"`` (grouped),
        ``"STUC"`` (filters over ``S`` and ``T``); a FormattedArray's own format is used.
    data_format
        Labels of an unformatted ``x``; the result is then unformatted, in the same dim
        order (with ``C`` inserted after the last ``S`` dim when ``x`` had none).
    algorithm
        ``None`` (the convolution registry chooses), or the name of a registered
        convolution algorithm, or a dict ``{"input_grad": …, "forward": …,
        "weight_grad": …}``: the transposed convolution runs the registry's
        ``input_grad`` op, its gradients the ``forward`` (for ``x``) and
        ``weight_grad`` (for the weights) ops.

    Returns
    -------
    FormattedArray with the format of ``x`` (plus ``C``), on ``x``'s library, device
    and dtype (the array-API promotion of ``x``, ``weights`` and an array ``bias``).
    Differentiable with respect to ``x``, ``weights`` and ``bias``.
    """
    c = _parse(x, weights, bias, stride, dilation_factor, cropping, weights_format, data_format)
    xp, spec, dims = c["xp"], c["spec"], c["dims"]
    n_axis = dims.index("N")
    ph = _placeholder(xp, c["kout"], c["dtype"], c["xk"], n_axis)
    layout = _k.Layout.of(dims, ph, c["xk"])
    y = _k.backward(xp, spec, layout, c["xk"], ph, c["wk"], (True, False, False),
                    force=algorithm)[0]
    if c["b"] is not None:
        bshape = tuple(spec.C if r == "C" else 1 for r in dims)
        y = y + xp.reshape(c["b"], bshape)
    y = xp.reshape(y, c["oshape"]) if tuple(y.shape) != c["oshape"] else y
    okeys = _keys(c["ofmt"])
    if c["data_format"] is not None:
        ufmt = c["data_format"] if c["has_c"] else _insert_c_user(c["data_format"])
        ukeys = _keys(ufmt)
        y = _maybe_permute(xp, y, _perm(okeys, ukeys))
        out = FormattedArray._wrap(y, "")
    else:
        ukeys = okeys
        out = FormattedArray._wrap(y, c["ofmt"])

    if _tape.traced(c["X"], c["W"], c["B"]):
        def back(g, needs):
            if c["data_format"] is not None:
                g = _maybe_permute(xp, g, _perm(ukeys, okeys))
            g = xp.reshape(g, c["kout"]) if tuple(g.shape) != c["kout"] else g
            g = _ca.cast(xp, g, c["dtype"])
            rx = rw = rb = None
            if needs[0]:  # the adjoint of the adjoint: a forward convolution of g
                gx = _k.forward(xp, spec, _k.Layout.of(dims, g), g, c["wk"], None,
                                force=algorithm)
                gx = xp.reshape(gx, c["cshape"]) if tuple(gx.shape) != c["cshape"] else gx
                if c["p1"] is not None:
                    gx = _maybe_permute(xp, gx, _inverse(c["p1"]))
                xs = tuple(c["xd"].shape)
                rx = xp.reshape(gx, xs) if tuple(gx.shape) != xs else gx
            if needs[1]:  # the convolution's weight gradient, input g, cotangent x
                lay = _k.Layout.of(dims, g, c["xk"])
                gw = _k.backward(xp, spec, lay, c["xk"], g, c["wk"], (False, True, False),
                                 force=algorithm)[1]
                gw = xp.reshape(gw, c["w_after"]) if tuple(gw.shape) != c["w_after"] else gw
                gw = _maybe_permute(xp, gw, _inverse(c["perm_w"]))
                ws = tuple(c["wd"].shape)
                rw = xp.reshape(gw, ws) if tuple(gw.shape) != ws else gw
            if needs[2]:
                axes = tuple(i for i, r in enumerate(dims) if r != "C")
                gb = xp.sum(g, axis=axes)
                bshape = tuple(c["bd"].shape)
                nb = _size(bshape)
                nf = spec.C  # the output channels (the matching convolution's input channels)
                if nb == nf and nf != 1 or nb == 1 and nf == 1:
                    rb = xp.reshape(gb, bshape)
                else:  # a scalar bias broadcast over the F channels
                    rb = xp.reshape(xp.sum(gb), bshape)
            return (_ca.cast(xp, rx, c["xd"].dtype), _ca.cast(xp, rw, c["wd"].dtype),
                    _ca.cast(xp, rb, None if rb is None else c["bd"].dtype))

        _tape.record(out, (c["X"], c["W"], c["B"]), back, "transposed_conv")
    return out
