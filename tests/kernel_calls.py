"""Kernel-level calls for the tests: channels-last ``(N, *sp, C)`` arrays straight into
the convolution registry (what :func:`fmtarray.conv` does after its format handling)."""

from __future__ import annotations

from fmtarray._kernels import conv as K
from fmtarray._kernels.conv.spec import ConvSpec, Layout


def nsc_dims(d):
    return "N" + "".join(str(i) for i in range(d)) + "C"


def spec_of(xp, x, w, *, stride=1, dilation=1, pad_before=0, pad_after=0, pad_value=0.0,
            groups=None, lhs_dilation=1):
    if groups is not None:
        assert int(groups) == w.shape[-1]
    return ConvSpec.make(x.shape, w.shape, stride=stride, dilation=dilation,
                         pad_before=pad_before, pad_after=pad_after, pad_value=pad_value,
                         lhs_dilation=lhs_dilation, dtype=xp.result_type(x.dtype, w.dtype))


def conv_forward(xp, x, w, b=None, *, force=None, **kw):
    spec = spec_of(xp, x, w, **kw)
    return K.forward(xp, spec, Layout.of(nsc_dims(spec.d), x), x, w, b, force=force)


def conv_backward(xp, gy, x, w, *, needs=(True, True, True), force=None, **kw):
    spec = spec_of(xp, x, w, **kw)
    needs = tuple(bool(n) for n in needs) + (False,) * (3 - len(needs))
    return K.backward(xp, spec, Layout.of(nsc_dims(spec.d), x, gy), gy, x, w, needs,
                      force=force)
