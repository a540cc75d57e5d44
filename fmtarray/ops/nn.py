"""Neural-network functions on formatted arrays, with their VJPs.

* :func:`fully_connect` (MATLAB ``fullyconnect``): flattens the ``S``, ``C`` (and
  ``U``) dims of each observation into ``C``; ``B`` and ``T`` are kept.
* :func:`softmax` over ``C``.
* :func:`cross_entropy` (MATLAB ``crossentropy``, single-label).
* :func:`batch_norm` (MATLAB ``batchnorm``) per channel over every other dim.
* :func:`one_hot`: integer labels to ``CB`` one-hot targets.

``relu`` lives with the elementwise functions.

Unformatted input needs ``data_format=`` (the labels of its dims, in its own
order); the result is then unformatted too, in the caller's dim order.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend, _format, _tape
from .._kernels import elementwise as _kernels
from ..array import FormattedArray, stripdims

__all__ = ["fully_connect", "softmax", "cross_entropy", "batch_norm", "one_hot"]


# shared helpers ------------------------------------------------------------------


def _as_input(x, data_format, fn):
    """``(formatted x, data_format or None)``; unformatted input needs ``data_format``."""
    if not isinstance(x, FormattedArray):
        if not _backend.is_array(x):
            raise TypeError(
                f"{fn}: expected a FormattedArray or an array of an array-API library, got "
                f"{type(x).__module__}.{type(x).__name__}"
            )
        x = FormattedArray(x)
    if x.format:
        if data_format is not None:
            raise ValueError(
                f"{fn}: data_format={data_format!r} is only for unformatted input; the input "
                f"already has format {x.format!r}"
            )
        return x, None
    if data_format is None:
        raise ValueError(
            f"{fn}: the input (shape {x.shape}) is unformatted, so {fn} cannot tell which dim "
            "is which; pass data_format= (e.g. 'SSCB'), or give it a format with "
            "FormattedArray(x, fmt)"
        )
    _format.validate(data_format)
    return FormattedArray(x, data_format), data_format


def _to_caller(y, data_format):
    """Unformatted ``y`` in the caller's dim order (its labels as ordered in ``data_format``)."""
    if data_format is None:
        return y
    order = "".join(ch for ch in data_format if ch in y.format)
    extra = "".join(ch for ch in y.format if ch not in order)
    return stripdims(y, order + extra)


def _param(v, fn, name):
    """``(raw data or None, FormattedArray or None)`` of a parameter argument."""
    if v is None:
        return None, None
    if isinstance(v, FormattedArray):
        return v._data, v
    if _backend.is_array(v):
        return v, None
    raise TypeError(
        f"{fn}: {name} must be a FormattedArray or an array of an array-API library, got "
        f"{type(v).__module__}.{type(v).__name__}"
    )


def _shape_str(shape):
    return "\u00d7".join(str(n) for n in shape) or "scalar"


def _identity(perm):
    return tuple(perm) == tuple(range(len(perm)))


def _inverse(perm):
    return tuple(sorted(range(len(perm)), key=lambda i: perm[i]))


# fully_connect -------------------------------------------------------------------


def _matlab_to_rowmajor(xp, w, fsz):
    """``(O, In)`` weights, In in MATLAB (column-major) order of the feature dims
    ``fsz``, to row-major order of the same dims."""
    n = len(fsz)
    w = xp.reshape(w, (w.shape[0], *reversed(fsz)))
    w = xp.permute_dims(w, (0,) + tuple(range(n, 0, -1)))
    return xp.reshape(w, (w.shape[0], math.prod(fsz)))


def _rowmajor_to_matlab(xp, w, fsz):
    n = len(fsz)
    w = xp.reshape(w, (w.shape[0], *fsz))
    w = xp.permute_dims(w, (0,) + tuple(range(n, 0, -1)))
    return xp.reshape(w, (w.shape[0], math.prod(fsz)))


def fully_connect(x, weights, bias=None, *, data_format=None):
    """Fully connected operation (MATLAB ``fullyconnect``).

    Every observation's ``S``, ``C`` and ``U`` values (its *features*) are
    flattened into one vector of length ``InputSize`` and multiplied by
    ``weights`` (``OutputSize × InputSize``); ``bias`` (``OutputSize`` values, any
    shape, or None) is added. ``B`` and ``T`` are kept: ``SSCB`` input gives
    ``CB``, ``CBT`` gives ``CBT``.

    The features are flattened in MATLAB's (column-major) order: the first
    ``S`` dim varies fastest, then the next ``S`` dims, then ``C``. Weights
    exported from MATLAB therefore work as they are.

    Parameters
    ----------
    x
        Formatted input (or unformatted with ``data_format``).
    weights
        ``(OutputSize, InputSize)`` backend array or unformatted FormattedArray.
    bias
        ``OutputSize`` values (e.g. ``(OutputSize, 1)``), or None.
    """
    fn = "fully_connect"
    x, df = _as_input(x, data_format, fn)
    wd, W = _param(weights, fn, "weights")
    bd, Bf = _param(bias, fn, "bias")
    if wd is None:
        raise TypeError(f"{fn}: weights are required")
    if W is not None and W.format:
        raise ValueError(
            f"{fn}: weights must be an unformatted OutputSize×InputSize matrix, got format "
            f"{W.format!r}; use stripdims(weights) or the raw array"
        )
    xd = x._data
    xp = _backend.namespace(xd, wd, bd)
    _backend.check_same_device(xd, wd, bd)
    fmt = x._fmt
    shape = tuple(xd.shape)
    feat = [i for i, ch in enumerate(fmt) if ch in "SCU"]
    bat = [i for i, ch in enumerate(fmt) if ch in "BT"]
    fsz = tuple(shape[i] for i in feat)
    bsz = tuple(shape[i] for i in bat)
    n_in = math.prod(fsz)
    if wd.ndim != 2:
        raise ValueError(
            f"{fn}: weights must be a 2-D OutputSize×InputSize matrix, got shape "
            f"{tuple(wd.shape)}"
        )
    n_out = int(wd.shape[0])
    if int(wd.shape[1]) != n_in:
        feats = "".join(fmt[i] for i in feat)
        raise ValueError(
            f"{fn}: weights of shape {tuple(wd.shape)} expect InputSize {int(wd.shape[1])}, but "
            f"input of format {fmt!r} and shape {shape} has {n_in} features per observation "
            f"(its {feats!r} dims, {_shape_str(fsz)})"
        )
    if bd is not None and math.prod(tuple(bd.shape)) != n_out:
        raise ValueError(
            f"{fn}: bias of shape {tuple(bd.shape)} must have OutputSize = {n_out} values"
        )
    perm = tuple(feat + bat)
    xt = xd if _identity(perm) else xp.permute_dims(xd, perm)
    m = math.prod(bsz)
    xm = xp.reshape(xt, (n_in, m))
    reorder = sum(1 for n in fsz if n != 1) > 1
    wr = _matlab_to_rowmajor(xp, wd, fsz) if reorder else wd
    y = xp.matmul(wr, xm)
    if bd is not None:
        y = y + xp.reshape(bd, (n_out, 1))
    y = xp.reshape(y, (n_out, *bsz))
    out = FormattedArray._wrap(y, "C" + "".join(fmt[i] for i in bat))
    if _tape.traced(x, W, Bf):
        xt_shape = tuple(xt.shape)

        def back(g, needs):
            G = xp.reshape(g, (n_out, m))
            gx = gw = gb = None
            if needs[0]:
                gx = xp.reshape(xp.matmul(xp.matrix_transpose(wr), G), xt_shape)
                if not _identity(perm):
                    gx = xp.permute_dims(gx, _inverse(perm))
            if needs[1]:
                gw = xp.matmul(G, xp.matrix_transpose(xm))
                if reorder:
                    gw = _rowmajor_to_matlab(xp, gw, fsz)
                gw = xp.reshape(gw, tuple(wd.shape))
            if needs[2]:
                gb = xp.reshape(xp.sum(G, axis=1), tuple(bd.shape))
            return gx, gw, gb

        _tape.record(out, (x, W, Bf), back, fn)
    return _to_caller(out, df)


# softmax ---------------------------------------------------------------------------


def _channel_axis(x, fn):
    c = x._fmt.find("C")
    if c < 0:
        raise ValueError(
            f"{fn}: input of format {x._fmt!r} has no 'C' (channel) dim; {fn} works over "
            "'C', e.g. 'CB' or 'SSCB'"
        )
    return c


def softmax(x, *, data_format=None):
    """Softmax over the ``C`` dim (MATLAB ``softmax``); keeps the format."""
    fn = "softmax"
    x, df = _as_input(x, data_format, fn)
    c = _channel_axis(x, fn)
    xd = x._data
    xp = _backend.namespace(xd)
    if not _backend.isdtype(xp, xd.dtype, "real floating"):
        raise TypeError(f"{fn} needs a real floating-point array, got dtype {xd.dtype}")
    e = xp.exp(xd - xp.max(xd, axis=c, keepdims=True))
    y = e / xp.sum(e, axis=c, keepdims=True)
    out = FormattedArray._wrap(y, x._fmt)
    if x._node is not None:
        _tape.record(
            out, (x,), lambda g, needs: (y * (g - xp.sum(g * y, axis=c, keepdims=True)),), fn
        )
    return _to_caller(out, df)


# cross_entropy ------------------------------------------------------------------------


def cross_entropy(y, targets, *, normalization="batch", data_format=None):
    """Cross-entropy loss for single-label classification (MATLAB ``crossentropy``).

    ``loss = -sum(targets * log(y)) / N`` where ``N`` is the size of ``B`` (1
    when absent) with ``normalization="batch"`` (default), or 1 with
    ``"none"``. ``y`` (probabilities, e.g. a softmax output) must have a ``C``
    dim; ``targets`` must have the same format and shape (an unformatted
    ``targets`` is read in ``y``'s canonical layout). Probabilities below the
    dtype's machine epsilon are clamped to it, so ``log`` stays finite; a NaN
    prediction gives a NaN loss.

    Returns an unformatted scalar FormattedArray.
    """
    fn = "cross_entropy"
    y, df = _as_input(y, data_format, fn)
    if normalization not in ("batch", "none"):
        raise ValueError(
            f"{fn}: normalization must be 'batch' or 'none', got {normalization!r}"
        )
    td, T = _param(targets, fn, "targets")
    if td is None:
        raise TypeError(f"{fn}: targets are required")
    if T is not None and T.format:
        if T.format != y._fmt or tuple(td.shape) != y.shape:
            raise ValueError(
                f"{fn}: the targets have format {T.format!r} and shape {tuple(td.shape)} but the "
                f"predictions have format {y._fmt!r} and shape {y.shape}; the targets must have "
                "the predictions' format and shape (one value per class along 'C')"
            )
    elif df is not None:
        T2 = FormattedArray(T if T is not None else td, df)
        td, T = T2._data, (T2 if T is not None else None)
    if tuple(td.shape) != y.shape:
        raise ValueError(
            f"{fn}: unformatted targets of shape {tuple(td.shape)} do not match predictions of "
            f"format {y._fmt!r} and shape {y.shape}; give the targets the format "
            f"{y._fmt!r} or the same shape"
        )
    _channel_axis(y, fn)
    yd = y._data
    xp = _backend.namespace(yd, td)
    _backend.check_same_device(yd, td)
    if not _backend.isdtype(xp, yd.dtype, "real floating"):
        raise TypeError(f"{fn}: predictions must be real floating point, got dtype {yd.dtype}")
    if not _backend.isdtype(xp, td.dtype, "real floating"):
        td = xp.astype(td, yd.dtype)  # one-hot integers / booleans: an explicit cast
    b = y._fmt.find("B")
    n = y.shape[b] if (b >= 0 and normalization == "batch") else 1
    eps = xp.asarray(xp.finfo(yd.dtype).eps, dtype=yd.dtype, device=_backend.device(yd))
    yc = xp.maximum(yd, eps)  # a NaN prediction stays NaN (SPEC §2): the loss is NaN
    logy = xp.log(yc)
    loss = -xp.sum(td * logy) / n
    out = FormattedArray._wrap(loss, "")
    if _tape.traced(y, T):

        def back(g, needs):
            # torch.maximum's VJP: 0 where clamped, NaN passes through
            gy = _kernels.zero_where(xp, yd < eps, -g * td / yc) / n if needs[0] else None
            gt = -g * logy / n if needs[1] else None
            return gy, gt

        _tape.record(out, (y, T), back, fn)
    return out


# batch_norm ---------------------------------------------------------------------------


def _like(template, raw, fallback_shape):
    """``raw`` reshaped like ``template`` (a FormattedArray, raw array or None)."""
    if isinstance(template, FormattedArray):
        xp = _backend.namespace(raw)
        return FormattedArray._wrap(xp.reshape(raw, template.shape), template._fmt)
    xp = _backend.namespace(raw)
    shape = tuple(template.shape) if template is not None else tuple(fallback_shape)
    return xp.reshape(raw, shape)


def batch_norm(x, offset, scale, mean=None, var=None, epsilon=1e-5, training=False, *,
               mean_decay=0.1, variance_decay=0.1, data_format=None):
    """Batch normalisation per channel (MATLAB ``batchnorm``).

    Each channel (``C``) is normalised over every other dim (``S``, ``B``,
    ``T``, ``U``), then scaled and shifted: ``y = scale · x̂ + offset``.

    * ``training=False`` (inference): ``x̂ = (x − mean) / sqrt(var + epsilon)``
      with the given (trained) ``mean`` and ``var``; returns ``y``.
    * ``training=True``: ``x̂`` uses the batch mean and (biased) variance;
      returns ``(y, new_mean, new_var)`` where, when ``mean``/``var`` are given,
      ``new_mean = mean_decay · batch_mean + (1 − mean_decay) · mean`` and
      ``new_var = variance_decay · batch_var_unbiased + (1 − variance_decay) · var``
      (``batch_var_unbiased`` has the ``m / (m − 1)`` correction), else the batch
      statistics themselves. The statistics are never traced.

    ``offset``, ``scale``, ``mean`` and ``var`` hold one value per channel, in
    any shape (e.g. ``1×1×C`` as MATLAB's layer stores them); statistics come
    back in the shape of ``mean``/``var`` (else of ``offset``).
    """
    fn = "batch_norm"
    x, df = _as_input(x, data_format, fn)
    c = _channel_axis(x, fn)
    xd = x._data
    shape = tuple(xd.shape)
    nc = shape[c]
    axes = tuple(i for i in range(len(shape)) if i != c)
    bshape = tuple(nc if i == c else 1 for i in range(len(shape)))
    od, O = _param(offset, fn, "offset")
    sd, S = _param(scale, fn, "scale")
    md, Mf = _param(mean, fn, "mean")
    vd, Vf = _param(var, fn, "var")
    xp = _backend.namespace(xd, od, sd, md, vd)
    _backend.check_same_device(xd, od, sd, md, vd)
    if not _backend.isdtype(xp, xd.dtype, "real floating"):
        raise TypeError(f"{fn} needs a real floating-point input, got dtype {xd.dtype}")

    def chan(d, name):
        if d is None:
            raise TypeError(f"{fn}: {name} is required")
        if math.prod(tuple(d.shape)) != nc:
            raise ValueError(
                f"{fn}: {name} of shape {tuple(d.shape)} must have one value per channel; the "
                f"input of format {x._fmt!r} and shape {shape} has {nc} channels"
            )
        return xp.reshape(d, bshape)

    o = chan(od, "offset")
    s = chan(sd, "scale")
    if epsilon <= 0:
        raise ValueError(f"{fn}: epsilon must be positive, got {epsilon!r}")
    if training:
        m = math.prod(shape[i] for i in axes)
        mu = xp.mean(xd, axis=axes, keepdims=True)
        xc = xd - mu
        v = xp.mean(xc * xc, axis=axes, keepdims=True)
        inv = 1 / xp.sqrt(v + epsilon)
        xhat = xc * inv
        y = s * xhat + o
        out = FormattedArray._wrap(y, x._fmt)
        if _tape.traced(x, O, S):

            def back(g, needs):
                gx = go = gs = None
                if needs[0]:
                    gh = g * s
                    gx = inv * (
                        gh - xp.mean(gh, axis=axes, keepdims=True)
                        - xhat * xp.mean(gh * xhat, axis=axes, keepdims=True)
                    )
                if needs[1]:
                    go = xp.reshape(xp.sum(g, axis=axes), tuple(od.shape))
                if needs[2]:
                    gs = xp.reshape(xp.sum(g * xhat, axis=axes), tuple(sd.shape))
                return gx, go, gs

            _tape.record(out, (x, O, S), back, fn)
        v_unb = v * (m / (m - 1)) if m > 1 else v
        new_mean = mu if md is None else mean_decay * mu + (1 - mean_decay) * chan(md, "mean")
        new_var = v_unb if vd is None else (
            variance_decay * v_unb + (1 - variance_decay) * chan(vd, "var")
        )
        new_mean = _like(mean, new_mean, od.shape)
        new_var = _like(var, new_var, od.shape)
        return _to_caller(out, df), new_mean, new_var
    if md is None or vd is None:
        raise ValueError(
            f"{fn}: inference (training=False) needs the trained mean and var; pass them, or "
            "training=True to normalise with the batch statistics"
        )
    mu = chan(md, "mean")
    vv = chan(vd, "var")
    inv = 1 / xp.sqrt(vv + epsilon)
    xc = xd - mu
    xhat = xc * inv
    y = s * xhat + o
    out = FormattedArray._wrap(y, x._fmt)
    if _tape.traced(x, O, S, Mf, Vf):

        def back_inf(g, needs):
            gx = go = gs = gm = gv = None
            gsi = g * s * inv
            if needs[0]:
                gx = gsi
            if needs[1]:
                go = xp.reshape(xp.sum(g, axis=axes), tuple(od.shape))
            if needs[2]:
                gs = xp.reshape(xp.sum(g * xhat, axis=axes), tuple(sd.shape))
            if needs[3]:
                gm = xp.reshape(-xp.sum(gsi, axis=axes), tuple(md.shape))
            if needs[4]:
                gv = xp.reshape(
                    xp.sum(gsi * xc * inv * inv, axis=axes) * -0.5, tuple(vd.shape)
                )
            return gx, go, gs, gm, gv

        _tape.record(out, (x, O, S, Mf, Vf), back_inf, fn)
    return _to_caller(out, df)


# one_hot ----------------------------------------------------------------------------------


def _num_classes(k, fn):
    """``k`` as an int >= 1; integral floats are fine, anything else is an error."""
    legal = "it must be a positive integer (the number of classes)"
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise TypeError(f"{fn}: invalid num_classes={k!r} ({type(k).__name__}); {legal}")
    if isinstance(k, numbers.Integral):
        n = int(k)
    else:
        f = float(k)
        if not (math.isfinite(f) and f.is_integer()):
            raise ValueError(f"{fn}: invalid num_classes={k!r}; {legal}")
        n = int(f)
    if n < 1:
        raise ValueError(f"{fn}: invalid num_classes={k!r}; {legal}")
    return n


def one_hot(labels, num_classes, *, dtype=None):
    """``CB`` one-hot targets from integer class labels ``0 … num_classes-1``.

    ``labels`` is a 1-D integer array (any array-API library, or a FormattedArray
    of format ``B``); the result lives in the same library and device, with
    ``dtype`` (default ``float32``). ``num_classes`` must be a positive integer (a
    float only when it is integral) and every label must lie in
    ``0 … num_classes-1``: anything else is an error naming the value (a label out of
    range would otherwise become an all-zero column).
    """
    fn = "one_hot"
    ld = labels._data if isinstance(labels, FormattedArray) else labels
    if not _backend.is_array(ld):
        raise TypeError(
            f"{fn}: labels must be a 1-D integer array, got {type(labels).__name__}"
        )
    xp = _backend.namespace(ld)
    if ld.ndim != 1 or not xp.isdtype(ld.dtype, "integral"):
        raise ValueError(
            f"{fn}: labels must be a 1-D integer array, got shape {tuple(ld.shape)} and "
            f"dtype {ld.dtype}"
        )
    num_classes = _num_classes(num_classes, fn)
    if ld.shape[0]:
        lo, hi = int(xp.min(ld)), int(xp.max(ld))
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{fn}: invalid labels: label {bad} is out of range; labels must be in "
                f"0..{num_classes - 1} (num_classes={num_classes}); got values in {lo}..{hi}"
            )
    dev = _backend.device(ld)
    classes = xp.arange(num_classes, dtype=ld.dtype, device=dev)
    hot = xp.reshape(ld, (1, -1)) == xp.reshape(classes, (-1, 1))
    return FormattedArray._wrap(xp.astype(hot, dtype if dtype is not None else xp.float32), "CB")
