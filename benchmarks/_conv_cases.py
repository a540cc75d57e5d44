"""Cases and data of ``benchmarks/conv.py``: one :class:`Case` per row, the same values
for fmtarray (in either memory layout) and for torch (contiguous ``NCHW`` /
``NCDHW``), the training-step and VJP closures on both sides, and their checks.

Layouts of fmtarray's input (the data is the same, only its memory order differs):

* ``"nhwc"`` — channels innermost, batch outermost in memory (NumPy's usual image
  layout), formatted e.g. ``"BSSC"`` / ``"BSSSC"`` / ``"BSTC"`` / ``"BTSSC"``;
* ``"canonical"`` — fmtarray's canonical layout (``SSCB``, ``SSSCB``, ...), C-contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import fmtarray as fa
from fmtarray import FormattedArray, _tape

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is optional
    torch = None

LAYOUTS = ("nhwc", "canonical")


@dataclass(frozen=True)
class Case:
    """One benchmark row.

    ``shape`` is the input's shape in the canonical format ``fmt``; ``mem`` the
    channels-last memory format of the ``"nhwc"`` layout (same dims as ``fmt``);
    ``torch_axes`` the canonical axes, in order, of torch's ``(N, C, *spatial)`` input
    (``merge_nt``: the first two of them merged into N, for SSCBT)."""

    name: str
    fmt: str
    mem: str
    shape: tuple
    k: tuple
    C: int
    F: int
    groups: int = 1
    kwargs: dict = field(default_factory=dict)
    wfmt: str | None = None
    dtype: str = "float32"
    torch_axes: tuple = ()
    merge_nt: bool = False
    quick: bool = False

    def legacy(self):
        """The 9-tuple of the earlier ``CASES`` (``benchmarks/backends.py`` reads it)."""
        return (self.name, self.fmt, self.shape, self.k, self.C, self.F, self.groups,
                self.kwargs, self.wfmt)


_SSCB = (3, 2, 0, 1)  # (H, W, C, N) -> (N, C, H, W)

CASES = [
    Case("b32 56x56 64->64 3x3 p1", "SSCB", "BSSC", (56, 56, 64, 32), (3, 3), 64, 64,
         kwargs=dict(padding=1), torch_axes=_SSCB),
    Case("b32 224x224 3->64 7x7 s2 p3", "SSCB", "BSSC", (224, 224, 3, 32), (7, 7), 3, 64,
         kwargs=dict(stride=2, padding=3), torch_axes=_SSCB),
    Case("b64 14x14 256->256 3x3 p1", "SSCB", "BSSC", (14, 14, 256, 64), (3, 3), 256, 256,
         kwargs=dict(padding=1), torch_axes=_SSCB),
    Case("b128 28x28 1->20 5x5", "SSCB", "BSSC", (28, 28, 1, 128), (5, 5), 1, 20,
         torch_axes=_SSCB, quick=True),
    Case("b8 7x7 512->512 3x3 p1", "SSCB", "BSSC", (7, 7, 512, 8), (3, 3), 512, 512,
         kwargs=dict(padding=1), torch_axes=_SSCB),
    Case("depthwise b16 28x28 128 3x3 p1", "SSCB", "BSSC", (28, 28, 128, 16), (3, 3), 128,
         128, groups=128, kwargs=dict(padding=1), torch_axes=_SSCB, quick=True),
    Case("dilated b8 56x56 64->64 3x3 d2 p2", "SSCB", "BSSC", (56, 56, 64, 8), (3, 3), 64, 64,
         kwargs=dict(dilation_factor=2, padding=2), torch_axes=_SSCB),
    Case("SCBT S64 T200 16->32 3x3 (S,T)", "SCBT", "BSTC", (64, 16, 8, 200), (3, 3), 16, 32,
         kwargs=dict(padding="same"), wfmt="STCU", torch_axes=(2, 1, 0, 3)),
    Case("SSCBT 32x32 16->16 b4 T16 same", "SSCBT", "BTSSC", (32, 32, 16, 4, 16), (3, 3), 16,
         16, kwargs=dict(padding="same"), torch_axes=(3, 4, 2, 0, 1), merge_nt=True,
         quick=True),
    Case("1x1 b16 32x32 32->96", "SSCB", "BSSC", (32, 32, 32, 16), (1, 1), 32, 96,
         torch_axes=_SSCB, quick=True),
    Case("b4 64x64 48->48 5x5 s2 p2", "SSCB", "BSSC", (64, 64, 48, 4), (5, 5), 48, 48,
         kwargs=dict(stride=2, padding=2), torch_axes=_SSCB, quick=True),
    Case("grouped g4 b8 56x56 64->64 3x3 p1", "SSCB", "BSSC", (56, 56, 64, 8), (3, 3), 64, 64,
         groups=4, kwargs=dict(padding=1), torch_axes=_SSCB),
    Case("3-D b4 16^3 16->16 3x3x3 p1", "SSSCB", "BSSSC", (16, 16, 16, 16, 4), (3, 3, 3), 16,
         16, kwargs=dict(padding=1), torch_axes=(4, 3, 0, 1, 2), quick=True),
    Case("b32 56x56 64->64 3x3 p1 float64", "SSCB", "BSSC", (56, 56, 64, 32), (3, 3), 64, 64,
         kwargs=dict(padding=1), dtype="float64", torch_axes=_SSCB),
]

#: the first nine cases as the earlier 9-tuples (``benchmarks/backends.py`` imports them)
LEGACY_CASES = [c.legacy() for c in CASES[:9]]


def select(spec, quick):
    """Cases chosen by ``--cases`` (comma-separated indices or name substrings), else all
    (``--quick``: the cases marked quick)."""
    if not spec:
        return [c for c in CASES if c.quick or not quick]
    out = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        if tok.isdigit():
            i = int(tok)
            if not 0 <= i < len(CASES):
                raise SystemExit(f"--cases: index {i} out of range 0..{len(CASES) - 1}")
            hits = [CASES[i]]
        else:
            hits = [c for c in CASES if tok.lower() in c.name.lower()]
            if not hits:
                raise SystemExit(f"--cases: {tok!r} matches no case name; names: "
                                 + "; ".join(c.name for c in CASES))
        out += [c for c in hits if c not in out]
    return out


def _to_mem(data, fmt, mem):
    """``data`` in format ``fmt`` copied into memory order ``mem`` (same labels)."""
    rest = list(enumerate(fmt))
    perm = []
    for lab in mem:
        j = next(j for j, (i, f) in enumerate(rest) if f == lab)
        perm.append(rest.pop(j)[0])
    return np.ascontiguousarray(np.transpose(data, perm))


def _torch_order(case, data):
    """Canonical-format ``data`` (input or output) as torch's contiguous ``(N, C, ...)``."""
    t = np.ascontiguousarray(np.transpose(data, case.torch_axes))
    if case.merge_nt:
        t = t.reshape(-1, *t.shape[2:])
    return t


class Data:
    """The inputs of one case in one layout, fmtarray's and torch's, same values."""

    def __init__(self, case, layout):
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
        self.case, self.layout = case, layout
        dt = np.dtype(case.dtype)
        G, k = case.groups, case.k
        rng = np.random.default_rng(0)
        xd = rng.standard_normal(case.shape).astype(dt)
        w = (rng.standard_normal((*k, case.C // G, case.F // G, G)) /
             math.sqrt(math.prod(k) * case.C / G)).astype(dt)
        self.b = rng.standard_normal(case.F).astype(dt)
        self.w_user = w[..., 0] if G == 1 else w
        self.w_fa = FormattedArray(self.w_user)  # unformatted: differentiable by fa.grad
        self.call = dict(case.kwargs, weights_format=case.wfmt)
        if layout == "nhwc":
            self.x = FormattedArray(_to_mem(xd, case.fmt, case.mem), case.mem)
        else:
            self.x = FormattedArray(np.ascontiguousarray(xd), case.fmt)
        assert self.x.format == case.fmt, (self.x.format, case.fmt)
        self.y = fa.conv(self.x, self.w_user, self.b, **self.call)
        yfmt = self.y.format
        self.flops = 2 * int(np.prod(self.y.shape)) * math.prod(k) * (case.C // G)
        # the cotangent g: values in the output's canonical format, stored like the input
        gd = np.random.default_rng(1).standard_normal(self.y.shape).astype(dt)
        if layout == "nhwc":
            self.g = FormattedArray(_to_mem(gd, yfmt, case.mem), case.mem)
        else:
            self.g = FormattedArray(gd, yfmt)
        assert self.g.format == yfmt and self.g.shape == self.y.shape
        self.gd = gd
        self.conv_fn = {2: F.conv2d, 3: F.conv3d}[len(k)] if torch is not None else None
        if torch is not None:
            self.tx = torch.from_numpy(_torch_order(case, xd))
            self.tw = torch.from_numpy(np.ascontiguousarray(
                np.moveaxis(w, (-1, -2, -3), (0, 1, 2)).reshape(case.F, case.C // G, *k)))
            self.tb = torch.from_numpy(self.b)
            self.tg = torch.from_numpy(_torch_order(case, gd))
            pad = case.kwargs.get("padding", 0)  # 'same': stride 1 and odd k in these cases
            self.tkw = dict(stride=case.kwargs.get("stride", 1), padding=pad,
                            dilation=case.kwargs.get("dilation_factor", 1), groups=G)

    # ---- fmtarray side ------------------------------------------------------------
    def forward(self):
        return fa.conv(self.x, self.w_user, self.b, **self.call)

    def train_step(self):
        """``fa.grad`` of ``sum(conv(x, w, b) * g)`` with respect to x and w: the
        forward, the product, the sum and the backward, as a training step pays."""
        b, call, g = self.b, self.call, self.g
        if not hasattr(self, "_grad"):
            self._grad = fa.grad(lambda x, w: fa.sum(fa.conv(x, w, b, **call) * g),
                                 argnums=(0, 1))
        return self._grad(self.x, self.w_fa)

    def vjp_closure(self):
        """The recorded VJP of the conv alone (what ``fa.grad`` runs after the
        forward): the earlier benchmark's backward figure."""
        xt = FormattedArray._wrap(self.x.data, self.x.format)
        xt._node = _tape.leaf(self.x.shape, self.x.dtype, "x")
        wt = FormattedArray._wrap(self.w_user, "")
        wt._node = _tape.leaf(self.w_user.shape, self.w_user.dtype, "w")
        y = fa.conv(xt, wt, self.b, **self.call)
        node, gd = y._node, self.g.data
        return lambda: node.vjp(gd, (True, True, False))

    def algorithms(self):
        """The registry's choices for this call: forward / input grad / weight grad."""
        ch = fa.conv_plan(self.x, self.w_user, self.b, **self.call).chosen()
        return "/".join(str(ch.get(op)) for op in ("forward", "input_grad", "weight_grad"))

    # ---- torch side ---------------------------------------------------------------
    def torch_forward(self):
        return self.conv_fn(self.tx, self.tw, self.tb, **self.tkw)

    def torch_train_step(self):
        """torch autograd: forward, ``(y * g).sum()``, ``backward()`` to x and w."""
        if not hasattr(self, "_txr"):
            self._txr = self.tx.clone().requires_grad_(True)
            self._twr = self.tw.clone().requires_grad_(True)
        xr, wr = self._txr, self._twr
        xr.grad = wr.grad = None
        (self.conv_fn(xr, wr, self.tb, **self.tkw) * self.tg).sum().backward()
        return xr.grad, wr.grad

    def torch_vjp_closure(self):
        xr = self.tx.clone().requires_grad_(True)
        wr = self.tw.clone().requires_grad_(True)
        ty = self.conv_fn(xr, wr, self.tb, **self.tkw)
        return lambda: torch.autograd.grad(ty, (xr, wr), self.tg, retain_graph=True)

    # ---- checks -------------------------------------------------------------------
    def check(self, backward):
        """fmtarray's output (and training-step gradients) against torch's, same data."""
        tol = 1e-4 if self.case.dtype == "float32" else 1e-10
        name = f"{self.case.name} ({self.layout})"
        _close(self.y.data, self.torch_forward().numpy(), self.case, tol, f"{name}: output")
        if not backward:
            return
        gx, gw = self.train_step()
        tgx, tgw = self.torch_train_step()
        _close(gx.data, tgx.numpy(), self.case, tol, f"{name}: input gradient")
        G = self.case.groups
        wmine = np.asarray(gw.data) if G > 1 else np.asarray(gw.data)[..., None]
        k = self.case.k
        wmine = np.moveaxis(wmine, (-1, -2, -3), (0, 1, 2)).reshape(
            self.case.F, self.case.C // G, *k)
        _rel(wmine, tgw.numpy(), tol, f"{name}: weight gradient")


def _close(mine, ref_torch, case, tol, what):
    _rel(_torch_order(case, np.asarray(mine)).reshape(ref_torch.shape), ref_torch, tol, what)


def _rel(mine, ref, tol, what):
    err = float(np.max(np.abs(mine - ref)) / np.max(np.abs(ref)))
    if not err < tol:
        raise AssertionError(f"{what} differs from torch: max relative error {err:.2e} "
                             f"(tolerance {tol:.0e})")


class Chain:
    """``conv → relu → conv`` (two b32 56×56 64→64 3×3 p1 convolutions), the issue's
    layout-chain measurement: whether the first output's memory layout lets the second
    conv and the backward run without transposing back and forth."""

    name = "chain conv->relu->conv b32 56x56 64->64 3x3 p1"

    def __init__(self, layout, batch=32):
        case = Case(self.name, "SSCB", "BSSC", (56, 56, 64, batch), (3, 3), 64, 64,
                    kwargs=dict(padding=1), torch_axes=_SSCB)
        self.d = d = Data(case, layout)
        self.layout = layout
        rng = np.random.default_rng(2)
        w2 = (rng.standard_normal((3, 3, 64, 64)) / math.sqrt(9 * 64)).astype(np.float32)
        self.w2, self.w2_fa = w2, FormattedArray(w2)
        self.b2 = rng.standard_normal(64).astype(np.float32)
        self.tw2 = torch.from_numpy(np.ascontiguousarray(np.moveaxis(w2, (-1, -2), (0, 1))))
        self.tb2 = torch.from_numpy(self.b2)
        self.flops = 2 * d.flops
        b, b2, g = d.b, self.b2, d.g

        def loss(x, w, w2):
            h = fa.relu(fa.conv(x, w, b, padding=1))
            return fa.sum(fa.conv(h, w2, b2, padding=1) * g)

        self._grad = fa.grad(loss, argnums=(0, 1, 2))

    def intermediate_layout(self):
        """The first conv's output memory order (labels, outermost first)."""
        h = fa.conv(self.d.x, self.d.w_user, self.d.b, padding=1)
        order = sorted(range(h.data.ndim), key=lambda i: -h.data.strides[i])
        return "".join(h.format[i] for i in order)

    def forward(self):
        h = fa.relu(fa.conv(self.d.x, self.d.w_user, self.d.b, padding=1))
        return fa.conv(h, self.w2, self.b2, padding=1)

    def train_step(self):
        return self._grad(self.d.x, self.d.w_fa, self.w2_fa)

    def torch_forward(self):
        d = self.d
        h = torch.relu(F.conv2d(d.tx, d.tw, d.tb, padding=1))
        return F.conv2d(h, self.tw2, self.tb2, padding=1)

    def torch_train_step(self):
        d = self.d
        if not hasattr(self, "_t"):
            self._t = [t.clone().requires_grad_(True) for t in (d.tx, d.tw, self.tw2)]
        x, w, w2 = self._t
        x.grad = w.grad = w2.grad = None
        h = torch.relu(F.conv2d(x, w, d.tb, padding=1))
        (F.conv2d(h, w2, self.tb2, padding=1) * d.tg).sum().backward()
        return x.grad, w.grad, w2.grad

    def check(self):
        d = self.d
        _close(self.forward().data, self.torch_forward().numpy(), d.case, 1e-4,
               f"{self.name} ({self.layout}): output")
        gx = self.train_step()[0]
        _close(gx.data, self.torch_train_step()[0].numpy(), d.case, 1e-4,
               f"{self.name} ({self.layout}): input gradient")
