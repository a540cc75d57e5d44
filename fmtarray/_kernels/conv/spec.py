"""What one convolution is (:class:`ConvSpec`) and how its data lie (:class:`Layout`).

Both are computed once per call by the op (:mod:`fmtarray.ops.conv`) and handed to the
registry (:mod:`.registry`), which asks each algorithm whether it applies. The
output-size, ``"same"`` and ``"causal"`` rules live here only: the op, the layer,
pooling and the kernels call :func:`output_size` / :func:`resolve_padding`.

Kernel arrays. The op reshapes the canonical data (``S…S C B T``) so that every
batch-like dim (``B``, a ``T`` that is not convolved) is merged into one ``N`` dim and a
missing ``N`` or ``C`` is a size-1 dim at its canonical place; nothing is permuted.
The kernel array then has ``d + 2`` dims whose roles :attr:`Layout.dims` spells with
``N``, ``C`` and the digits ``0 … d-1`` of the convolved dims (in the order of the
filter dims): canonical ``SSCB`` data is ``"01CN"`` (JAX's ``'HWCN'``), ``SCBT``
convolved over ``S`` and ``T`` is ``"0CN1"`` (``'HCNW'``). Outputs have the same dims
(``C`` holding the ``F`` filters). Weights are in MATLAB's layout ``(*k, C/G, F/G, G)``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

__all__ = ["ConvSpec", "Layout", "output_size", "same_padding", "causal_padding",
           "resolve_padding", "effective_size", "dtype_name"]


def effective_size(k: int, dilation: int) -> int:
    """Extent of a dilated filter: ``(k - 1) · dilation + 1``."""
    return (k - 1) * dilation + 1


def output_size(n: int, k: int, stride: int, dilation: int, before: int, after: int,
                lhs_dilation: int = 1) -> int:
    """``floor((n' + before + after - effective) / stride) + 1`` with
    ``n' = (n - 1) · lhs_dilation + 1`` (may be < 1; callers report it)."""
    n = (n - 1) * lhs_dilation + 1 if n > 0 else 0
    return (n + before + after - effective_size(k, dilation)) // stride + 1


def same_padding(n: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """MATLAB's ``"same"``: output ``ceil(n / stride)``; the odd pixel goes after."""
    out = -(-n // stride)
    total = max((out - 1) * stride + effective_size(k, dilation) - n, 0)
    return total // 2, total - total // 2


def causal_padding(k: int, dilation: int = 1) -> tuple[int, int]:
    """``"causal"``: ``(k - 1) · dilation`` before, nothing after."""
    return (k - 1) * dilation, 0


def resolve_padding(in_sizes, filter_sizes, stride, dilation, padding):
    """``(out, before, after)`` tuples for parsed arguments; ``padding`` is ``"same"``,
    ``"causal"`` or ``(before, after)`` tuples."""
    if padding == "same":
        pads = [same_padding(*a) for a in zip(in_sizes, filter_sizes, stride, dilation)]
    elif padding == "causal":
        pads = [causal_padding(k, dl) for k, dl in zip(filter_sizes, dilation)]
    else:
        pads = list(zip(*padding))
    before = tuple(p[0] for p in pads)
    after = tuple(p[1] for p in pads)
    out = tuple(output_size(*a) for a in zip(in_sizes, filter_sizes, stride, dilation, before,
                                                after))
    return out, before, after


def dtype_name(dtype) -> str:
    """``'float32'`` for NumPy, torch, JAX, CuPy and array-API dtypes alike."""
    return str(dtype).rsplit(".", 1)[-1]


def _tuple(v, d, name, low):
    from ... import _validate  # the shared normaliser (2.5 is an error, not 2)

    return _validate.int_list(f"conv kernel: {name}", v, (d,), low,
                              f"one integer or {d} integers >= {low}")


@dataclass(frozen=True)
class ConvSpec:
    """Sizes and parameters of one convolution (frozen, hashable).

    ``N`` samples (all batch-like dims merged), ``sp`` convolved input sizes, ``C``
    channels, filters ``k`` with ``Cg`` channels and ``Fg`` filters per group, ``G``
    groups; ``stride``, ``dilation`` (filter dilation), ``lhs_dilation`` (input
    dilation: ``s - 1`` zeros between input elements, so that a transposed
    convolution or a strided input gradient is a convolution too), pads ``pb``/``pa``
    and the padding ``value`` (a float, or a mode of :data:`~fmtarray._kernels.pad.PAD_MODES`),
    ``dtype`` the result's dtype name. Derived: ``d``, ``F``, ``K``, ``out``, ``P``,
    ``padded`` (padded input sizes) and ``used`` (padded extent the windows read).
    """

    N: int
    sp: tuple
    C: int
    k: tuple
    Cg: int
    Fg: int
    G: int
    stride: tuple
    dilation: tuple
    pb: tuple
    pa: tuple
    value: object = 0.0
    lhs_dilation: tuple = ()
    dtype: str = "float32"
    d: int = field(init=False, compare=False, repr=False)
    F: int = field(init=False, compare=False, repr=False)
    K: int = field(init=False, compare=False, repr=False)
    out: tuple = field(init=False, compare=False, repr=False)
    P: int = field(init=False, compare=False, repr=False)
    padded: tuple = field(init=False, compare=False, repr=False)
    used: tuple = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        d = len(self.sp)
        s = object.__setattr__
        if not self.lhs_dilation:
            s(self, "lhs_dilation", (1,) * d)
        if len(self.k) != d or d < 1:
            raise ValueError(f"conv kernel: {d} convolved dims but filter sizes {self.k}")
        if self.Cg * self.G != self.C:
            raise ValueError(f"conv kernel: x has {self.C} channels, weights expect "
                             f"{self.Cg} x {self.G} groups = {self.Cg * self.G}")
        s(self, "d", d)
        s(self, "F", self.Fg * self.G)
        s(self, "K", math.prod(self.k))
        out = tuple(output_size(*a) for a in zip(self.sp, self.k, self.stride, self.dilation,
                                                    self.pb, self.pa, self.lhs_dilation))
        if any(o < 1 for o in out):
            raise ValueError(
                f"conv kernel: output size {out} < 1 for input {self.sp}, filter {self.k}, "
                f"stride {self.stride}, dilation {self.dilation}, padding {self.pb}/{self.pa}")
        s(self, "out", out)
        s(self, "P", math.prod(out))
        s(self, "padded", tuple((n - 1) * ld + 1 + b + a if n else b + a for n, ld, b, a in
                                zip(self.sp, self.lhs_dilation, self.pb, self.pa)))
        s(self, "used", tuple((o - 1) * st + effective_size(k, dl) for o, st, k, dl in
                              zip(out, self.stride, self.k, self.dilation)))

    @classmethod
    def make(cls, x_shape, w_shape, *, stride=1, dilation=1, pad_before=0, pad_after=0,
             pad_value=0.0, lhs_dilation=1, dtype="float32"):
        """From a channels-last shape ``(N, *sp, C)`` and MATLAB weights ``(*k, Cg, Fg, G)``."""
        from ..pad import check_pad_value

        d = len(x_shape) - 2
        if d < 1 or len(w_shape) != d + 3:
            raise ValueError(
                f"conv kernel: x of shape {tuple(x_shape)} needs weights of rank {d + 3} "
                f"(*k, C/groups, F/groups, groups), got shape {tuple(w_shape)}")
        Cg, Fg, G = (int(v) for v in w_shape[d:])
        return cls(int(x_shape[0]), tuple(int(v) for v in x_shape[1:-1]), int(x_shape[-1]),
                   tuple(int(v) for v in w_shape[:d]), Cg, Fg, G,
                   _tuple(stride, d, "stride", 1), _tuple(dilation, d, "dilation", 1),
                   _tuple(pad_before, d, "pad_before", 0), _tuple(pad_after, d, "pad_after", 0),
                   check_pad_value(pad_value), _tuple(lhs_dilation, d, "lhs_dilation", 1),
                   dtype_name(dtype))

    def replace(self, **changes) -> ConvSpec:
        kw = {f: getattr(self, f) for f in ("N", "sp", "C", "k", "Cg", "Fg", "G", "stride",
                                            "dilation", "pb", "pa", "value", "lhs_dilation",
                                            "dtype")}
        kw.update(changes)
        return ConvSpec(**kw)

    # ---- properties the algorithms ask about
    @property
    def constant_padding(self) -> bool:
        return not isinstance(self.value, str)

    @property
    def zero_padding(self) -> bool:
        return self.constant_padding and self.value == 0.0

    @property
    def symmetric_padding(self) -> bool:
        return self.pb == self.pa

    @property
    def macs(self) -> int:
        """Multiply-adds of the direct method."""
        return self.N * self.P * self.K * self.Cg * self.F

    def offsets(self):
        """Kernel offsets in C order (the order of the ``K`` axis of column buffers)."""
        return itertools.product(*(range(k) for k in self.k))

    def window(self, off, rows=None):
        """Slices (over the spatial axes of a padded block) of the view for offset ``off``;
        ``rows=(r0, r1)`` restricts the first output dim (the block then starts at
        padded row ``r0 * stride[0]``)."""
        sl = []
        for i, (o, st, dl, out) in enumerate(zip(off, self.stride, self.dilation, self.out)):
            start = o * dl
            if i == 0 and rows is not None:
                out = rows[1] - rows[0]
            sl.append(slice(start, start + (out - 1) * st + 1, st))
        return tuple(sl)

    def chunks(self, itemsize, budget):
        """``(n0, n1, rows)`` tiles keeping ``n · P · K · C · itemsize`` within ``budget``;
        ``rows`` is ``None`` (whole samples) or ``(r0, r1)`` over the first output dim."""
        per_sample = self.P * self.K * self.C * itemsize
        if per_sample <= budget or self.out[0] == 1:
            nb = max(1, budget // max(per_sample, 1))
            return [(n0, min(n0 + nb, self.N), None) for n0 in range(0, self.N, nb)]
        per_row = per_sample // self.out[0]
        rb = max(1, budget // max(per_row, 1))
        return [(n, n + 1, (r0, min(r0 + rb, self.out[0])))
                for n in range(self.N) for r0 in range(0, self.out[0], rb)]

    def describe(self) -> str:
        pads = "" if not any(self.pb + self.pa) else f" pad {self.pb}/{self.pa}"
        extra = "".join([
            f" stride {self.stride}" if any(s > 1 for s in self.stride) else "",
            f" dilation {self.dilation}" if any(s > 1 for s in self.dilation) else "",
            f" lhs_dilation {self.lhs_dilation}" if any(s > 1 for s in self.lhs_dilation) else "",
            f" groups {self.G}" if self.G > 1 else "",
            f" value {self.value!r}" if not self.zero_padding else "",
        ])
        k = "x".join(map(str, self.k))
        sp = "x".join(map(str, self.sp))
        return f"N={self.N} {sp} {self.C}->{self.F} {k}{pads}{extra} {self.dtype}"


def _memory_order(dims, shape, strides):
    """``dims`` sorted from the largest stride to the smallest (size-1 dims, whose
    strides mean nothing, keep their logical place relative to the others)."""
    if strides is None:
        return dims
    keyed = [(abs(st) if n > 1 else None, i) for i, (n, st) in enumerate(zip(shape, strides))]
    big = sorted((k for k in keyed if k[0] is not None), key=lambda t: (-t[0], t[1]))
    order = [i for _, i in big]
    for st, i in keyed:  # size-1 dims: insert at their logical rank
        if st is None:
            order.insert(min(i, len(order)), i)
    return "".join(dims[i] for i in order)


@dataclass(frozen=True)
class Layout:
    """Dimension numbers of the kernel arrays (see the module docstring).

    ``dims``: the roles of the kernel array's dims in their logical order, e.g.
    ``"01CN"``. ``x_memory`` / ``gy_memory``: the same roles ordered from the
    outermost to the innermost dim in memory (from the strides; equal to ``dims`` for
    libraries without strides). ``x_strides`` / ``gy_strides``: element strides in
    ``dims`` order, or ``None``. ``gy_*`` are set for gradients only.
    """

    dims: str
    x_memory: str
    x_strides: tuple | None = None
    gy_memory: str | None = None
    gy_strides: tuple | None = None

    @staticmethod
    def of(dims, x, gy=None) -> Layout:
        """The layout of ``x`` (and ``gy``), memoised on dims, shapes and strides."""
        xs = _element_strides(x)
        if gy is None:
            return _layout(dims, tuple(x.shape), xs, None, None)
        return _layout(dims, tuple(x.shape), xs, tuple(gy.shape), _element_strides(gy))

    @property
    def d(self) -> int:
        return len(self.dims) - 2

    def with_dense_gy(self, gy_shape) -> Layout:
        """This layout with a cotangent of ``gy_shape`` stored densely in ``x``'s memory
        order (what :func:`fmtarray.conv_plan` assumes for the gradients)."""
        strides = [0] * len(self.dims)
        step = 1
        for role in reversed(self.x_memory):
            i = self.dims.index(role)
            strides[i] = step
            step *= gy_shape[i]
        st = tuple(strides) if self.x_strides is not None else None
        return Layout(self.dims, self.x_memory, self.x_strides, self.x_memory, st)

    def perm(self, target: str) -> tuple:
        """Axes that take a ``dims``-ordered array to ``target`` order (e.g. ``"N01C"``)."""
        return _axes(self.dims, target)

    def inverse(self, source: str) -> tuple:
        """Axes that take a ``source``-ordered array back to ``dims`` order."""
        return _axes(source, self.dims)

    @property
    def channels_last(self) -> str:
        """``"N01C"`` (the NumPy kernels' order)."""
        return _channels_last(len(self.dims) - 2)

    @property
    def channels_first(self) -> str:
        """``"NC01"`` (torch's and cuDNN's order)."""
        return "NC" + "".join(str(i) for i in range(self.d))

    def strides_in(self, target: str, which: str = "x"):
        """Element strides of ``x`` (or ``gy``) in ``target`` order, or ``None``."""
        st = self.x_strides if which == "x" else self.gy_strides
        return None if st is None else tuple(st[self.dims.index(c)] for c in target)

    def memory(self, which: str = "x") -> str:
        return self.x_memory if which == "x" else self.gy_memory


@functools.lru_cache(maxsize=256)
def _axes(dims, target):
    """Where each role of ``target`` sits in ``dims`` (every kernel call asks)."""
    return tuple(dims.index(c) for c in target)


@functools.lru_cache(maxsize=8)
def _channels_last(d):
    return "N" + "".join(str(i) for i in range(d)) + "C"


@functools.lru_cache(maxsize=1024)
def _layout(dims, shape, xs, gshape, gs):
    return Layout(dims, _memory_order(dims, shape, xs), xs,
                  None if gshape is None else _memory_order(dims, gshape, gs), gs)


def _element_strides(a):
    st = getattr(a, "strides", None)
    if st is None:
        stride = getattr(a, "stride", None)
        if callable(stride):  # torch
            try:
                return tuple(stride())
            except Exception:  # pragma: no cover - tensors without strides
                return None
        return None
    if not isinstance(st, tuple):
        return None
    item = getattr(getattr(a, "dtype", None), "itemsize", None)
    if not item:
        return None
    return tuple(s // item for s in st)
