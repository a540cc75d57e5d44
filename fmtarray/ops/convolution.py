"""Format-dispatched convolution: :func:`conv` (MATLAB ``dlconv``), SPEC §3.1 / §3.3.

The format decides everything positional: which dims are convolved (every ``S``,
plus ``T`` when the weights say so), which are batch-like (``B``, ``T`` when not
convolved), where the channels are. The op merges the batch-like dims of the
canonical data into one ``N`` dim (a reshape, no permutation), describes the call
once (:class:`~fmtarray._kernels.conv.ConvSpec`, :class:`~fmtarray._kernels.conv.Layout`)
and hands it to the convolution registry (:mod:`fmtarray._kernels.conv`), which runs
the data library's own kernel when one applies. :func:`conv_plan` shows the choice.
"""

from __future__ import annotations

import dataclasses as _dc
import numbers
from dataclasses import dataclass

from .. import _backend, _format, _tape, _validate
from . import _conv_args as _ca
from ._chunks import match_chunks
from .._kernels import conv as _k
from .._kernels.conv.spec import resolve_padding
from ..array import FormattedArray

__all__ = ["conv", "conv_plan", "ConvPlan", "resolve_padding"]


_keys = _ca.keys
_perm = _ca.perm


_maybe_permute = _ca.maybe_permute


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


_CONV_DOC = """
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
    algorithm
        ``None`` (the registry chooses; see :func:`conv_plan`), the name of a
        registered algorithm for every op, or a dict ``{"forward": name,
        "input_grad": name, "weight_grad": name}``. A forced algorithm that cannot run
        the call is a ``ValueError`` saying why.
"""


@dataclass
class _Call:
    """One parsed convolution: the kernel operands and how to restore the output."""

    xp: object
    spec: object
    dims: str
    xk: object
    wk: object
    b: object
    kshape_out: tuple
    oshape: tuple
    ofmt: str
    cfmt: str
    cshape: tuple
    p1: tuple | None
    user_fmt: str
    data_format: str | None
    has_c: bool
    w_after: tuple
    perm_w: tuple
    X: object
    W: object
    B: object
    xd: object
    wd: object
    bd: object
    kshape_in: tuple = ()
    kshape_w: tuple = ()
    b_single: bool = False
    dtype: object = None


#: parsed calls without their arrays, keyed by everything but the arrays' values
#: (formats, shapes, dtypes, array types and the arguments); see :func:`_prepare`
_PLANS: dict = {}
_PLANS_MAX = 512


def _plan_key(x, weights, bias, args):
    """Hashable description of a call up to its arrays' values, or ``None``."""
    parts = []
    try:
        for a in (x, weights, bias):
            if isinstance(a, FormattedArray):
                d = a._data
                parts += (a._fmt, type(d), tuple(d.shape), d.dtype)
            elif a is None or isinstance(a, numbers.Real):
                parts += (None, type(a), None, None)
            else:
                parts += ("", type(a), tuple(a.shape), a.dtype)
        key = (*parts, *args)
        hash(key)
    except (AttributeError, TypeError):  # not arrays (the parse says so), a list argument
        return None
    return key


def _prepare(x, weights, bias, stride, dilation_factor, padding, padding_value, weights_format,
             data_format):
    """The parsed call (:class:`_Call`). The parse depends on the arrays only through
    their formats, shapes, dtypes and types, so it is done once per such signature
    (the op's plan, as in einops) and later calls only re-bind the arrays: reshape /
    permute views, the bias vector and the device check (~60 -> ~15 us per call)."""
    args = (stride, dilation_factor, padding, padding_value, weights_format, data_format)
    key = _plan_key(x, weights, bias, args)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        c = _prepare_full(x, weights, bias, *args)
        if key is not None:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[key] = _dc.replace(c, xk=None, wk=None, b=None, X=None, W=None, B=None,
                                      xd=None, wd=None, bd=None)
        return c
    return _rebind(plan, x, weights, bias, weights_format)


def _rebind(plan, x, weights, bias, weights_format):
    """``plan`` (a :class:`_Call` without arrays) bound to this call's arrays: the
    array steps of :func:`_prepare_full`, nothing else."""
    xp = plan.xp
    X = x if isinstance(x, FormattedArray) else None
    xd = x._data if X is not None else x
    W = weights if isinstance(weights, FormattedArray) else None
    wd = weights._data if W is not None else weights
    B = bias if isinstance(bias, FormattedArray) else None
    bd = bias._data if B is not None else bias
    b_weak = _ca.weak_scalar(bd)
    b_is_array = bd is not None and b_weak is None
    _backend.check_same_device(xd, wd, bd if b_is_array else None)
    # x: canonical order, batch-like dims merged
    if plan.data_format is not None:
        xr = xd
        if len(plan.data_format) > xd.ndim:
            xr = xp.reshape(xd, tuple(xd.shape) + (1,) * (len(plan.data_format) - xd.ndim))
        xc = _maybe_permute(xp, xr, plan.p1)
    else:
        xc = xd
    kin = plan.kshape_in
    xk = _ca.cast(xp, xc if plan.cshape == kin else xp.reshape(xc, kin), plan.dtype)
    # weights: MATLAB layout (*k, Cg, Fg, G)
    w_fmt = W._fmt if W is not None and W._fmt else _format.as_format(weights_format)
    wk = _ca.kernel_weights(xp, wd, w_fmt, plan.perm_w, plan.kshape_w, plan.dtype)
    # bias: F values
    F = plan.spec.F
    if bd is None:
        b_arr = None
    elif not b_is_array:
        b_arr = xp.full((F,), b_weak, dtype=plan.dtype, device=_backend.device(xd))
    elif plan.b_single:
        b_arr = xp.broadcast_to(xp.reshape(_ca.cast(xp, bd, plan.dtype), (1,)), (F,))
    else:
        b_arr = xp.reshape(_ca.cast(xp, bd, plan.dtype), (F,))
    c = object.__new__(_Call)  # ``dataclasses.replace`` without its per-call introspection
    c.__dict__.update(plan.__dict__)
    c.xk, c.wk, c.b, c.X, c.W, c.B, c.xd, c.wd, c.bd = xk, wk, b_arr, X, W, B, xd, wd, bd
    return c


def _prepare_full(x, weights, bias, stride, dilation_factor, padding, padding_value,
                  weights_format, data_format):
    # ---- the input and its format
    X = x if isinstance(x, FormattedArray) else None
    xd = x._data if X is not None else x
    if not _backend.is_array(xd):
        raise TypeError(
            f"conv: x must be a FormattedArray or an array of an array-API library, got "
            f"{type(x).__module__}.{type(x).__name__}"
        )
    fmt_in = X._fmt if X is not None else ""
    data_format = _format.as_format(data_format, "data_format")
    weights_format = _format.as_format(weights_format, "weights_format")
    if data_format is not None:
        if fmt_in:
            raise ValueError(
                f"conv: data_format={data_format!r} given for x that already has format "
                f"{fmt_in!r}; data_format is only for unformatted input"
            )
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
    xp, dtype, bd, b_weak, b_src = _ca.operands("conv", xd, wd, bias)

    # ---- canonical layout of x
    (p1, cfmt, xc, cshape, ckeys, size, conv_keys, has_c, sp, C, N,
     labels) = _ca.canonical_x(xp, xd, fmt_in, data_format, n_s, conv_t)

    # ---- weights
    hint = _ca.weights_hint(wd, w_fmt_given, user_fmt, C, nconv)
    perm_w, w_after, kshape = _ca.weights_layout("conv", wd, w_fmt_given, n_s, conv_t, nconv,
                                                 hint)
    wk = _ca.kernel_weights(xp, wd, w_fmt_given, perm_w, kshape, dtype)
    ksz = kshape[:nconv]
    Cg, Fg, G = kshape[nconv:]
    if min(kshape) < 1:
        raise ValueError(f"conv: weights of shape {tuple(wd.shape)} have an empty dim")
    if C % G:
        raise ValueError(
            f"conv: groups={G} (last weights dim) does not divide the {C} input channels of x "
            f"(format {user_fmt!r}, shape {tuple(xd.shape)}){hint}"
        )
    _ca.check_channels("conv", wd, xd, user_fmt, nconv, Cg, G, C, hint)
    F = Fg * G
    b_arr = _ca.bias_vector("conv", xp, xd, bd, b_weak, b_src, dtype, Fg, G)

    # ---- geometry
    stride = _validate.ints("stride", stride, nconv, f"convolved dim {labels}", 1)
    dilation = _validate.ints("dilation_factor", dilation_factor, nconv,
                              f"convolved dim {labels}", 1)
    pform = _validate.padding(padding, nconv, labels)
    pval = _validate.padding_value(padding_value)
    out_sz, before, after = resolve_padding(sp, ksz, stride, dilation, pform)
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
    spec = _k.ConvSpec(N, sp, C, tuple(ksz), Cg, Fg, G, stride, dilation, before, after, pval,
                       (1,) * nconv, _k.spec.dtype_name(dtype))
    _ca.check_memory(spec, xd, labels, padding)

    dims, xk, kshape_in, kshape_out, ofmt, oshape = _ca.kernel_io(
        xp, xc, cfmt, size, conv_keys, n_s, conv_t, N, out_sz, F, dtype)
    return _Call(xp, spec, dims, xk, wk, b_arr, kshape_out, oshape, ofmt, cfmt, cshape, p1,
                 user_fmt, data_format, has_c, w_after, perm_w, X, W, B, xd, wd, bd,
                 kshape_in, kshape, b_src is not None and _size(bd.shape) == 1, dtype)


def conv(x, weights, bias=None, *, stride=1, dilation_factor=1, padding=0, padding_value=0,
         weights_format=None, data_format=None, algorithm=None):
    """Deep-learning convolution of ``x`` with ``weights`` (MATLAB ``dlconv``).
    {params}
    Returns
    -------
    FormattedArray with the format of ``x`` (plus ``C``), on ``x``'s library,
    device and dtype. Differentiable with respect to ``x``, ``weights`` and ``bias``.
    """
    c = _prepare(x, weights, bias, stride, dilation_factor, padding, padding_value,
                 weights_format, data_format)
    xp = c.xp
    layout = _k.Layout.of(c.dims, c.xk)
    y = _k.forward(xp, c.spec, layout, c.xk, c.wk, c.b, force=algorithm)
    y = xp.reshape(y, c.oshape) if tuple(y.shape) != c.oshape else y
    if c.data_format is None and _backend.is_dask(xp):  # the batch-like dims keep x's chunks
        y = match_chunks(xp, y, c.xd, _batch_like(c.ofmt, c.cfmt, c.oshape, c.xd.shape))
    if c.data_format is not None:
        okeys = _keys(c.ofmt)
        ufmt = c.data_format if c.has_c else _insert_c_user(c.data_format)
        ukeys = _keys(ufmt)
        y = _maybe_permute(xp, y, _perm(okeys, ukeys))
        out = FormattedArray._wrap(y, "")
    else:
        out = FormattedArray._wrap(y, c.ofmt)

    if _tape.traced(c.X, c.W, c.B):
        def back(g, needs):
            if c.data_format is not None:
                g = _maybe_permute(xp, g, _perm(ukeys, okeys))
            g = xp.reshape(g, c.kshape_out) if tuple(g.shape) != c.kshape_out else g
            lay = _k.Layout.of(c.dims, c.xk, g)
            gx, gw, gb = _k.backward(xp, c.spec, lay, g, c.xk, c.wk, needs, force=algorithm)
            rx = rw = rb = None
            if needs[0]:
                gx = xp.reshape(gx, c.cshape) if tuple(gx.shape) != c.cshape else gx
                if c.p1 is not None:
                    gx = _maybe_permute(xp, gx, _inverse(c.p1))
                rx = xp.reshape(gx, tuple(c.xd.shape)) if tuple(gx.shape) != tuple(c.xd.shape) else gx
                rx = match_chunks(xp, rx, c.xd, range(len(c.xd.shape)))
            if needs[1]:
                gw = xp.reshape(gw, c.w_after) if tuple(gw.shape) != c.w_after else gw
                gw = _maybe_permute(xp, gw, _inverse(c.perm_w))
                rw = xp.reshape(gw, tuple(c.wd.shape)) if tuple(gw.shape) != tuple(c.wd.shape) else gw
            if needs[2]:
                F = c.spec.F
                nb = _size(c.bd.shape)
                if nb == F and F != 1 or nb == 1 and F == 1:
                    rb = xp.reshape(gb, tuple(c.bd.shape))
                else:  # a scalar bias broadcast over the F channels
                    rb = xp.reshape(xp.sum(gb), tuple(c.bd.shape))
            # each gradient in its operand's dtype (the op computed in the promoted one)
            return (_ca.cast(xp, rx, c.xd.dtype), _ca.cast(xp, rw, c.wd.dtype),
                    _ca.cast(xp, rb, None if rb is None else c.bd.dtype))

        _tape.record(out, (c.X, c.W, c.B), back, "conv")
    return out


conv.__doc__ = conv.__doc__.replace("{params}", _CONV_DOC)


@dataclass(frozen=True)
class ConvPlan:
    """What :func:`conv` would run for given arguments (see :func:`conv_plan`)."""

    spec: object
    layout: object
    library: str
    forward: object
    input_grad: object
    weight_grad: object

    def __str__(self):
        head = f"conv plan on {self.library}: {self.spec.describe()}, layout {self.layout.dims}"
        return "\n".join([head, str(self.forward), str(self.input_grad), str(self.weight_grad)])

    def chosen(self) -> dict:
        """``{op: algorithm name}``."""
        return {c.op: c.chosen for c in (self.forward, self.input_grad, self.weight_grad)}


def conv_plan(x, weights, bias=None, *, stride=1, dilation_factor=1, padding=0, padding_value=0,
              weights_format=None, data_format=None, algorithm=None) -> ConvPlan:
    """The algorithms :func:`conv` chooses for these arguments, without running them.

    Takes the same arguments as :func:`conv`. Returns a :class:`ConvPlan` whose
    ``forward``, ``input_grad`` and ``weight_grad`` give the chosen registered
    algorithm and, for every other one, why it was not chosen (``print(plan)`` shows
    it). The gradient choices assume a cotangent laid out in memory like ``x``.
    """
    c = _prepare(x, weights, bias, stride, dilation_factor, padding, padding_value,
                 weights_format, data_format)
    layout = _k.Layout.of(c.dims, c.xk)
    glayout = layout.with_dense_gy(c.kshape_out)
    lib = _k.registry.library_of(c.xp)
    return ConvPlan(
        c.spec, layout, lib,
        _k.explain("forward", c.spec, layout, lib, algorithm, (c.xk, c.wk)),
        _k.explain("input_grad", c.spec, glayout, lib, algorithm, None),
        _k.explain("weight_grad", c.spec, glayout, lib, algorithm, None),
    )


def _batch_like(ofmt, cfmt, oshape, xshape):
    """The batch-like dims of ``x`` (``B``, ``U``, a ``T`` the convolution kept at its
    size) as ``(output axis, x axis)`` pairs; ``x`` is canonical (``cfmt``), and the
    output may have gained a ``C`` (the other labels keep their order)."""
    out, seen = [], {}
    for i, lab in enumerate(ofmt):
        k = seen.get(lab, 0)
        seen[lab] = k + 1
        j = [n for n, m in enumerate(cfmt) if m == lab]
        if lab in "BTU" and k < len(j) and oshape[i] == xshape[j[k]]:
            out.append((i, j[k]))
    return out


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _insert_c_user(fmt):
    """User-order format with ``C`` inserted right after its last ``S`` dim."""
    last = max(i for i, ch in enumerate(fmt) if ch == "S") if "S" in fmt else len(fmt) - 1
    return fmt[: last + 1] + "C" + fmt[last + 1:]
