"""The torch convolution entry (``torch.aten``): forced by name against the direct-loop
reference over its whole domain (1-3 dims, stride, dilation, groups and depthwise, every
padding form and value, float32 and float64; forward, input gradient, weight gradient),
the layouts users hold (``BCSS`` NCHW without copies, ``BSSC`` NHWC, canonical ``SSCB``,
``SCBT`` with ``STCU`` weights, ``SSCBT``), selection, the weight cache, and torch
autograd through ``fa.conv``."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fmtarray as fa  # noqa: E402
from fmtarray import FormattedArray  # noqa: E402
from fmtarray._kernels.conv import registry  # noqa: E402
from fmtarray._kernels.conv.spec import ConvSpec, Layout  # noqa: E402
from fmtarray._kernels.pad import PAD_MODES  # noqa: E402
from kernel_calls import conv_backward, conv_forward, nsc_dims  # noqa: E402

from conv_reference import ref_conv  # noqa: E402
from test_numpy_algos import ref_conv_vjp as ref_vjp  # noqa: E402  (exact direct-loop VJP)

import array_api_compat.torch as tns  # noqa: E402  (the namespace fmtarray uses for torch)

from fmtarray._kernels.conv import _torch as T  # noqa: E402

VALUES = [0.0, -1.5, *PAD_MODES]
TOL = {np.float32: 1e-5, np.float64: 1e-12}
ALGO = "torch.aten"


def rel_err(y, ref):
    if isinstance(y, torch.Tensor):
        y = y.detach().numpy()
    y = np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30)) if ref.size else 0.0


def _per_dim(v, d):
    return (v,) * d if np.isscalar(v) else tuple(v)


# ---------------------------------------------------------------------------------------
# the entry forced by name, over its domain (kernel level: channels-last (N, *sp, C))

GEOMS = [  # stride, dilation, groups, channels per group, filters per group
    dict(stride=1, dil=1, G=1, cg=2, fg=3),
    dict(stride=2, dil=1, G=2, cg=2, fg=2),
    dict(stride=1, dil=2, G=3, cg=1, fg=1),  # depthwise, dilated
    dict(stride=(2, 1, 3), dil=(1, 2, 1), G=1, cg=3, fg=2),
    dict(stride=1, dil=1, G=2, cg=1, fg=3),  # channel multiplier
]
PADS = [((0, 0, 0), (0, 0, 0)), ((1, 1, 1), (1, 1, 1)), ((2, 0, 1), (0, 1, 1)),
        ((1, 2, 0), (2, 1, 3)), ((4, 3, 5), (3, 5, 4))]  # the last: longer than the dims
DIMS = {1: ((7,), (3,)), 2: ((6, 5), (3, 2)), 3: ((4, 5, 3), (2, 2, 2))}


def _cases():
    for d in (1, 2, 3):
        for gi in range(len(GEOMS)):
            for pi in range(len(PADS)):
                for value in VALUES:
                    if d == 3 and (gi + pi) % 2:  # 3-D: half of the grid (slow reference)
                        continue
                    yield d, gi, pi, value


def _make(d, gi, pi, value, n=2, seed=0):
    geo = GEOMS[gi]
    sp, k = DIMS[d]
    pb, pa = (p[:d] for p in PADS[pi])
    kw = dict(stride=_per_dim(geo["stride"], 3)[:d], dilation=_per_dim(geo["dil"], 3)[:d],
              pad_before=pb, pad_after=pa, pad_value=value)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *sp, geo["G"] * geo["cg"]))
    w = rng.standard_normal((*k, geo["cg"], geo["fg"], geo["G"]))
    b = rng.standard_normal(geo["G"] * geo["fg"])
    return x, w, b, kw


def _ref(x, w, b, kw):
    return ref_conv(x, w, b, kw["stride"], kw["dilation"], kw["pad_before"], kw["pad_after"],
                    kw["pad_value"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d,gi,pi,value", list(_cases()))
def test_forced_entry_against_reference(d, gi, pi, value, dtype):
    x, w, b, kw = _make(d, gi, pi, value)
    tol = TOL[dtype]
    ref = _ref(x, w, b, kw)
    t = lambda a: torch.from_numpy(a.astype(dtype))  # noqa: E731
    y = conv_forward(tns, t(x), t(w), t(b), force=ALGO, **kw)
    assert y.dtype == t(x).dtype and tuple(y.shape) == ref.shape
    assert rel_err(y, ref) <= tol
    gy = np.random.default_rng(1).standard_normal(ref.shape)
    gx_ref, gw_ref = ref_vjp(x, w, gy, kw["stride"], kw["dilation"], kw["pad_before"],
                             kw["pad_after"], kw["pad_value"])
    for needs in ((True, True, True), (True, False, False), (False, True, False)):
        gx, gw, gb = conv_backward(tns, t(gy), t(x), t(w), needs=needs, force=ALGO, **kw)
        if needs[0]:
            assert gx.dtype == t(x).dtype and tuple(gx.shape) == x.shape
            assert rel_err(gx, gx_ref) <= 4 * tol
        else:
            assert gx is None
        if needs[1]:
            assert tuple(gw.shape) == w.shape
            assert rel_err(gw, gw_ref) <= 4 * tol
        else:
            assert gw is None
        if needs[2]:
            np.testing.assert_allclose(gb.numpy(), gy.reshape(-1, b.size).sum(0),
                                       rtol=4 * tol, atol=4 * tol)


@pytest.mark.parametrize("value", VALUES)
def test_batch_innermost_and_mixed_dtypes(value):
    """Kernel arrays in the canonical batch-innermost storage (copied once to
    channels-last), x float32 with float64 weights (result float64), and an empty batch."""
    x, w, b, kw = _make(2, 1, 2, value, n=3)
    ref = _ref(x, w, b, kw)
    xs = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 0, -1))).movedim(-1, 0)
    xs = xs.to(torch.float32)
    y = conv_forward(tns, xs, torch.from_numpy(w), torch.from_numpy(b), force=ALGO, **kw)
    assert y.dtype == torch.float64
    assert rel_err(y, ref) <= 1e-6
    gy = np.random.default_rng(1).standard_normal(ref.shape)
    gx_ref, gw_ref = ref_vjp(x, w, gy, kw["stride"], kw["dilation"], kw["pad_before"],
                             kw["pad_after"], kw["pad_value"])
    gys = torch.from_numpy(np.ascontiguousarray(np.moveaxis(gy, 0, -1))).movedim(-1, 0)
    gx, gw, _ = conv_backward(tns, gys, xs, torch.from_numpy(w), force=ALGO, **kw)
    assert rel_err(gx, gx_ref) <= 1e-6 and rel_err(gw, gw_ref) <= 1e-6
    x0 = torch.zeros((0, *x.shape[1:]), dtype=torch.float64)
    y0 = conv_forward(tns, x0, torch.from_numpy(w), None, force=ALGO, **kw)
    assert tuple(y0.shape) == (0, *ref.shape[1:])


def test_declines_input_dilation():
    x = torch.zeros((1, 5, 5, 2))
    w = torch.zeros((3, 3, 2, 2, 1))
    spec = ConvSpec.make(x.shape, w.shape, lhs_dilation=2)
    lay = Layout.of(nsc_dims(2), x)
    reason = T.applies(spec, lay)
    assert reason is not None and "input dilation" in reason
    assert registry.select("forward", spec, lay, "torch").name == "portable.im2col"
    with pytest.raises(ValueError, match="input dilation"):
        conv_forward(tns, x, w, force=ALGO, lhs_dilation=2)
    # the portable entry runs it, on torch tensors
    y = conv_forward(tns, x, w, lhs_dilation=2)
    assert tuple(y.shape) == (1, 7, 7, 2)


# ---------------------------------------------------------------------------------------
# layouts users hold, through fa.conv


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


COPIES = {"clone", "copy_", "_to_copy", "contiguous", "empty_like", "constant_pad_nd",
          "cat", "new_empty_strided", "empty_strided"}


@pytest.mark.parametrize("fmt", ["BCSS", "BSSC"])
def test_nchw_and_nhwc_enter_without_copies(fmt):
    """NCHW tensors formatted "BCSS" and NHWC tensors formatted "BSSC" reach torch's
    convolution as they are: no copy, cast or pad op runs (weights cached after the
    first call), and the output is torch's own output tensor seen through a view."""
    rng = np.random.default_rng(0)
    nchw = torch.from_numpy(rng.standard_normal((4, 8, 10, 9)).astype(np.float32))
    data = nchw if fmt == "BCSS" else nchw.permute(0, 2, 3, 1).contiguous()
    x = FormattedArray(data, fmt)
    w = torch.from_numpy(rng.standard_normal((3, 3, 8, 6)).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal(6).astype(np.float32))
    y0 = fa.conv(x, w, b, padding=1, stride=(1, 2))
    with _OpLog() as log:
        y = fa.conv(x, w, b, padding=1, stride=(1, 2))
    assert "convolution" in log.ops
    assert not COPIES & set(log.ops), log.ops
    ty = y.data.permute(3, 2, 0, 1)  # SSCB -> NCHW
    fmt_expected = torch.contiguous_format if fmt == "BCSS" else torch.channels_last
    assert ty.is_contiguous(memory_format=fmt_expected)
    assert y.data.untyped_storage().nbytes() == ty.numel() * 4  # no larger buffer behind it
    tw = w.permute(3, 2, 0, 1)
    ref = torch.nn.functional.conv2d(nchw, tw, b, stride=(1, 2), padding=1)
    torch.testing.assert_close(ty, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y0.data, y.data)


def _ref_op(xk, w, b, stride, pad):
    """Reference for kernel-ordered channels-last input (n, *sp, C)."""
    return ref_conv(xk, w, b, stride, 1, pad, pad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts_through_the_op(dtype):
    """Canonical SSCB, SCBT convolved over (S, T) with STCU weights, SSCBT (B and T
    merged), 1-D SCB and 3-D SSSCB on torch tensors: values and the fa.grad gradients
    equal the reference, and torch.aten is what runs."""
    rng = np.random.default_rng(2)
    tol = TOL[dtype]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a).astype(dtype))  # noqa: E731
    # (format, canonical shape, weights shape (MATLAB), weights_format, kernel perm to NSC)
    cases = [
        ("SSCB", (7, 6, 3, 2), (3, 3, 3, 4), None, (3, 0, 1, 2)),
        ("SCBT", (7, 3, 2, 6), (3, 2, 3, 4), "STCU", (2, 0, 3, 1)),
        ("SSCBT", (6, 5, 2, 2, 3), (3, 3, 2, 4), None, None),
        ("SCB", (9, 3, 2), (3, 3, 5), None, (2, 0, 1)),
        ("SSSCB", (4, 5, 3, 2, 2), (2, 2, 2, 2, 3), None, (4, 0, 1, 2, 3)),
    ]
    for fmt, shape, wshape, wfmt, perm in cases:
        xd = rng.standard_normal(shape)
        w = rng.standard_normal(wshape)
        F = wshape[-1]
        b = rng.standard_normal(F)
        x = FormattedArray(t(xd), fmt)
        plan = fa.conv_plan(x, t(w), t(b), padding=1, weights_format=wfmt)
        assert set(plan.chosen().values()) == {ALGO}, str(plan)
        y = fa.conv(x, t(w), t(b), padding=1, weights_format=wfmt)
        assert y.format == fmt
        if fmt == "SSCBT":  # (H, W, C, B, T) -> (B*T, H, W, C)
            xk = np.transpose(xd, (3, 4, 0, 1, 2)).reshape(-1, *shape[:2], shape[2])
        else:
            xk = np.transpose(xd, perm)
        ref = _ref_op(xk, w[..., None], b, 1, 1)
        r = np.cos(np.arange(ref.size)).reshape(ref.shape)
        if fmt == "SSCBT":
            got = np.transpose(y.data.numpy(), (3, 4, 0, 1, 2)).reshape(ref.shape)
            rr = np.transpose(r.reshape(shape[3], shape[4], *ref.shape[1:]), (2, 3, 4, 0, 1))
        else:
            got = np.transpose(y.data.numpy(), perm)
            rr = np.transpose(r, np.argsort(perm))
        assert rel_err(got, ref) <= tol
        rf = FormattedArray._wrap(t(rr), fmt)

        def loss(xx, ww, bb, wfmt=wfmt, rf=rf):
            return fa.sum(fa.conv(xx, ww, bb, padding=1, weights_format=wfmt) * rf)

        gx, gw, gb = fa.grad(loss, argnums=(0, 1, 2))(x, FormattedArray(t(w)),
                                                      FormattedArray(t(b)))
        one = (1,) * (xk.ndim - 2)
        gx_ref, gw_ref = ref_vjp(xk, w[..., None], r, one, one, one, one, 0.0)
        if fmt == "SSCBT":
            gx_got = np.transpose(gx.data.numpy(), (3, 4, 0, 1, 2)).reshape(gx_ref.shape)
        else:
            gx_got = np.transpose(gx.data.numpy(), perm)
        assert rel_err(gx_got, gx_ref) <= 4 * tol
        assert rel_err(gw.data.numpy(), gw_ref[..., 0]) <= 4 * tol
        assert rel_err(gb.data.numpy(), r.reshape(-1, F).sum(0)) <= 4 * tol


# ---------------------------------------------------------------------------------------
# selection: torch data runs torch's kernels (a silent fall-back to portable fails here)


@pytest.mark.parametrize("fmt,shape,wshape,kw", [
    ("BCSS", (2, 8, 9, 9), (3, 3, 8, 8), dict(padding=1)),
    ("SSCB", (9, 9, 8, 2), (3, 3, 8, 8), dict(padding="same", stride=2)),
    ("BSSC", (2, 9, 9, 8), (3, 3, 1, 1, 8), dict(padding=1)),  # depthwise
    ("SSCB", (9, 9, 8, 2), (3, 3, 4, 4, 2), dict(padding=(0, 1, 2, 0), padding_value=1.0)),
    ("SSCB", (9, 9, 3, 2), (5, 5, 3, 4), dict(padding=2, padding_value="symmetric-include-edge")),
    ("SSCB", (9, 9, 3, 2), (3, 3, 3, 4), dict(dilation_factor=2, padding_value="replicate",
                                              padding=2)),
    ("SCBT", (16, 4, 2, 20), (3, 3, 4, 5), dict(padding="same", weights_format="STCU")),
    ("SSCBT", (8, 8, 3, 2, 4), (3, 3, 3, 4), dict(padding="same")),
    ("SCB", (20, 3, 2), (5, 3, 4), dict(padding="causal")),
    ("SSSCB", (5, 5, 5, 2, 2), (3, 3, 3, 2, 2), dict(padding=1)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_data_selects_torch(fmt, shape, wshape, kw, dtype):
    x = FormattedArray(torch.zeros(shape, dtype=dtype), fmt)
    w = torch.zeros(wshape, dtype=dtype)
    plan = fa.conv_plan(x, w, **kw)
    assert plan.library == "torch"
    assert plan.chosen() == {"forward": ALGO, "input_grad": ALGO, "weight_grad": ALGO}, str(plan)


# ---------------------------------------------------------------------------------------
# the weight cache


def test_weight_cache_sees_in_place_updates():
    rng = np.random.default_rng(3)
    x = FormattedArray(torch.from_numpy(rng.standard_normal((5, 5, 3, 2))), "SSCB")
    w = torch.from_numpy(rng.standard_normal((3, 3, 3, 4)))
    ref = lambda: _ref_op(np.moveaxis(x.data.numpy(), -1, 0), w.numpy()[..., None], None, 1, 1)  # noqa: E731
    y1 = fa.conv(x, w, padding=1)
    hits = T._CACHE.hits
    y1b = fa.conv(x, w, padding=1)
    assert T._CACHE.hits == hits + 1  # the converted weights were reused
    torch.testing.assert_close(y1.data, y1b.data)
    w.add_(1)  # in place: the version counter moves
    y2 = fa.conv(x, w, padding=1)
    assert rel_err(np.moveaxis(y2.data.numpy(), -1, 0), ref()) <= 1e-12
    with torch.no_grad():
        w[0, 0, 0, 0] = 100.0  # an in-place write through a view
    y3 = fa.conv(x, w, padding=1)
    assert rel_err(np.moveaxis(y3.data.numpy(), -1, 0), ref()) <= 1e-12
    # a parameter updated by an optimizer
    p = torch.nn.Parameter(w.clone())
    opt = torch.optim.SGD([p], lr=0.1)
    with torch.no_grad():
        fa.conv(x, p, padding=1)
    p.grad = torch.ones_like(p)
    opt.step()
    with torch.no_grad():
        y4 = fa.conv(x, p, padding=1)
    want = _ref_op(np.moveaxis(x.data.numpy(), -1, 0), p.detach().numpy()[..., None], None, 1, 1)
    assert rel_err(np.moveaxis(y4.data.numpy(), -1, 0), want) <= 1e-12


def test_weight_cache_entries_die_with_their_tensor():
    T.clear_weight_cache()
    x = FormattedArray(torch.ones((5, 5, 3, 2)), "SSCB")
    w = torch.ones((3, 3, 3, 4))
    fa.conv(x, w)
    assert len(T._CACHE._d) == 1
    del w
    assert len(T._CACHE._d) == 0
    assert T._CACHE._bytes == 0


def test_weight_cache_threads():
    """Several threads convolving with their own and shared weights at once."""
    rng = np.random.default_rng(4)
    x = FormattedArray(torch.from_numpy(rng.standard_normal((6, 6, 4, 3))), "SSCB")
    ws = [torch.from_numpy(rng.standard_normal((3, 3, 4, 5))) for _ in range(4)]
    want = [fa.conv(x, w, padding=1).data.clone() for w in ws]
    errors = []

    def work(i):
        try:
            for j in range(30):
                k = (i + j) % len(ws)
                torch.testing.assert_close(fa.conv(x, ws[k], padding=1).data, want[k])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors


# ---------------------------------------------------------------------------------------
# torch autograd through fa.conv


@pytest.mark.parametrize("fmt,kw", [
    ("BCSS", dict(padding=1, stride=2)),
    ("SSCB", dict(padding=(0, 2, 1, 0))),
    ("BCSS", dict(padding=2, padding_value="symmetric-include-edge", dilation_factor=2)),
    ("BCSS", dict(padding=1, padding_value="symmetric-exclude-edge")),
    ("SSCB", dict(padding=1, padding_value=-0.5)),
])
@pytest.mark.parametrize("groups", [1, 2])
def test_torch_autograd_through_fa_conv(fmt, kw, groups):
    """loss.backward() through fa.conv on requires_grad tensors equals plain torch (the
    weights' re-layout is recorded, not cached), twice in a row with an update."""
    rng = np.random.default_rng(5)
    nchw = rng.standard_normal((2, 4, 7, 8))
    w_np = rng.standard_normal((3, 3, 4 // groups, 6 // groups, groups))
    b_np = rng.standard_normal(6)
    xt = torch.tensor(nchw if fmt == "BCSS" else np.transpose(nchw, (2, 3, 1, 0)),
                      requires_grad=True)
    wt = torch.tensor(w_np, requires_grad=True)
    bt = torch.tensor(b_np, requires_grad=True)
    # plain torch on NCHW with the same padding, written out
    xr = torch.tensor(nchw, requires_grad=True)
    wr = torch.tensor(w_np, requires_grad=True)
    br = torch.tensor(b_np, requires_grad=True)
    pad = kw.get("padding", 0)
    if isinstance(pad, tuple):
        t_, b_, l_, r_ = pad
    else:
        t_ = b_ = l_ = r_ = pad
    mode = {None: "constant", "symmetric-exclude-edge": "reflect"}
    for _ in range(2):
        x = FormattedArray(xt, fmt)
        y = fa.conv(x, wt, bt, **kw)
        loss = (y.data.permute(3, 2, 0, 1) ** 2).sum()  # SSCB -> NCHW
        loss.backward()
        value = kw.get("padding_value")
        xin = xr
        if value == "symmetric-include-edge":
            # torch has no such mode: index with numpy's symmetric map
            ih = torch.from_numpy(np.pad(np.arange(7), (t_, b_), mode="symmetric"))
            iw = torch.from_numpy(np.pad(np.arange(8), (l_, r_), mode="symmetric"))
            xin = xr[:, :, ih][:, :, :, iw]
        else:
            v = 0.0 if value is None else value
            m = mode.get(value, "constant")
            xin = torch.nn.functional.pad(xr, (l_, r_, t_, b_), mode=m,
                                          **({"value": v} if m == "constant" else {}))
        tw = wr.permute(4, 3, 2, 0, 1).reshape(6, 4 // groups, 3, 3)
        ref = torch.nn.functional.conv2d(xin, tw, br, stride=kw.get("stride", 1),
                                         dilation=kw.get("dilation_factor", 1), groups=groups)
        (ref ** 2).sum().backward()
        gx = xt.grad if fmt == "BCSS" else xt.grad.permute(3, 2, 0, 1)
        torch.testing.assert_close(loss, (ref ** 2).sum())
        torch.testing.assert_close(gx, xr.grad)
        torch.testing.assert_close(wt.grad, wr.grad)
        torch.testing.assert_close(bt.grad, br.grad)
        with torch.no_grad():  # an SGD step on both, then again
            for p in (xt, wt, bt, xr, wr, br):
                p -= 0.01 * p.grad
                p.grad = None


# ---------------------------------------------------------------------------------------
# CUDA: torch tensors on the GPU, and CuPy arrays through torch's cuDNN (DLPack)

CUDA = torch.cuda.is_available()


def test_cupy_entry_says_why_it_does_not_apply():
    from fmtarray._kernels.conv import _cupy

    spec = ConvSpec.make((1, 5, 5, 2), (3, 3, 2, 2, 1))
    lay = Layout("N01C", "N01C")
    reason = _cupy.applies(spec, lay)
    if CUDA:
        assert reason is None
        assert "input dilation" in _cupy.applies(spec.replace(lhs_dilation=(2, 2)), lay)
    else:
        assert reason is not None and ("CPU-only" in reason or "is_available" in reason), reason
    assert any(a.name == "cupy.torch_cudnn" for a in registry.algorithms("cupy"))


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_cuda_tensors_against_reference(d, value):
    """The entry on CUDA tensors (cuDNN), float64 (no TF32), forward and both gradients."""
    x, w, b, kw = _make(d, 1, 2, value)
    ref = _ref(x, w, b, kw)
    t = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
    y = conv_forward(tns, t(x), t(w), t(b), force=ALGO, **kw)
    assert y.device.type == "cuda" and rel_err(y.cpu(), ref) <= 1e-10
    gy = np.random.default_rng(1).standard_normal(ref.shape)
    gx_ref, gw_ref = ref_vjp(x, w, gy, kw["stride"], kw["dilation"], kw["pad_before"],
                             kw["pad_after"], kw["pad_value"])
    gx, gw, _ = conv_backward(tns, t(gy), t(x), t(w), force=ALGO, **kw)
    assert rel_err(gx.cpu(), gx_ref) <= 1e-10 and rel_err(gw.cpu(), gw_ref) <= 1e-10
    X = FormattedArray(t(np.moveaxis(x, 0, -1)), "S" * d + "CB")
    plan = fa.conv_plan(X, t(w), padding=1, padding_value=value)
    assert set(plan.chosen().values()) == {ALGO}, str(plan)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("value", [0.0, "symmetric-include-edge"])
def test_cupy_through_torch_cudnn(value):
    cupy = pytest.importorskip("cupy")
    import array_api_compat.cupy as cns

    x, w, b, kw = _make(2, 1, 2, value)
    ref = _ref(x, w, b, kw)
    y = conv_forward(cns, cupy.asarray(x), cupy.asarray(w), cupy.asarray(b),
                     force="cupy.torch_cudnn", **kw)
    assert isinstance(y, cupy.ndarray) and rel_err(cupy.asnumpy(y), ref) <= 1e-10
    gy = np.random.default_rng(1).standard_normal(ref.shape)
    gx_ref, gw_ref = ref_vjp(x, w, gy, kw["stride"], kw["dilation"], kw["pad_before"],
                             kw["pad_after"], kw["pad_value"])
    gx, gw, _ = conv_backward(cns, cupy.asarray(gy), cupy.asarray(x), cupy.asarray(w),
                              force="cupy.torch_cudnn", **kw)
    assert isinstance(gx, cupy.ndarray) and isinstance(gw, cupy.ndarray)
    assert rel_err(cupy.asnumpy(gx), gx_ref) <= 1e-10
    assert rel_err(cupy.asnumpy(gw), gw_ref) <= 1e-10
    # selection, and the DLPack hand-over shares memory (no copy of x)
    xc = cupy.asarray(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))  # NCHW
    X = FormattedArray(xc, "BCSS")
    plan = fa.conv_plan(X, cupy.asarray(w), padding=1)
    assert set(plan.chosen().values()) == {"cupy.torch_cudnn"}, str(plan)
    from fmtarray._kernels.conv import _cupy

    assert _cupy._to_torch(xc).data_ptr() == xc.data.ptr


# ---------------------------------------------------------------------------------------
# the op's plan cache (fmtarray/ops/convolution.py): later calls re-bind the arrays


@pytest.mark.parametrize("call", [
    dict(fmt="BCSS", xs=(2, 3, 6, 5), ws=(3, 3, 3, 4), bias="vector"),
    dict(fmt=None, data_format="SSCB", xs=(6, 5, 3, 2), ws=(3, 3, 3, 4), bias="scalar"),
    dict(fmt=None, data_format="BSS", xs=(2, 6, 5), ws=(3, 3, 1, 4), bias="one"),
    dict(fmt="SSCB", xs=(6, 5, 4, 2), ws=(3, 3, 2, 3, 2), bias="matlab"),
    dict(fmt="SSCB", xs=(6, 5, 3, 2), ws=(3, 3, 3, 4), weights_format="SSCUU", bias=None),
    dict(fmt="SSCB", xs=(6, 5, 3, 2), ws=(3, 3, 3, 4), w_fa="SSCU", bias="fa"),
    dict(fmt="SCBT", xs=(7, 3, 2, 6), ws=(3, 2, 3, 4), weights_format="STCU", bias="vector"),
])
def test_op_plan_cache_rebinds_the_arrays(call):
    from fmtarray.ops import convolution as opc

    call = dict(call)
    fmt, xs, ws, bias = call.pop("fmt"), call.pop("xs"), call.pop("ws"), call.pop("bias")
    w_fa = call.pop("w_fa", None)
    F = ws[-2] * ws[-1] if len(ws) == 5 else ws[-1]

    def arrays(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(xs, generator=g, dtype=torch.float64)
        w = torch.randn(ws, generator=g, dtype=torch.float64)
        b = {None: None, "scalar": 0.5, "one": torch.tensor([0.25], dtype=torch.float64),
             "vector": torch.randn(F, generator=g, dtype=torch.float64),
             "matlab": torch.randn((1, 1, F), generator=g, dtype=torch.float64),
             "fa": FormattedArray(torch.randn(F, generator=g, dtype=torch.float64), "C")}[bias]
        return (FormattedArray(x, fmt) if fmt else x), (FormattedArray(w, w_fa) if w_fa else w), b

    def run(x, w, b):
        y = fa.conv(x, w, b, padding=1, **call)
        r = FormattedArray(torch.cos(torch.arange(y.data.numel(), dtype=torch.float64))
                           .reshape(y.data.shape), y.format)
        if not isinstance(x, FormattedArray):  # gradients need formatted leaves
            return y.data, None
        wl = w if isinstance(w, FormattedArray) else FormattedArray(w)
        gx, gw = fa.grad(lambda a, c: fa.sum(fa.conv(a, c, b, padding=1, **call) * r),
                         argnums=(0, 1))(x, wl)
        return y.data, (gx.data, gw.data)

    opc._PLANS.clear()
    fresh = [run(*arrays(s)) for s in (1, 2)]  # the second call of each pair is re-bound
    assert len(opc._PLANS) >= 1
    for s, (y0, g0) in zip((1, 2), fresh):
        opc._PLANS.clear()
        y1, g1 = run(*arrays(s))  # parsed from scratch
        torch.testing.assert_close(y0, y1, rtol=0, atol=0)
        if g0 is not None:
            torch.testing.assert_close(g0, g1, rtol=0, atol=0)
    assert not torch.equal(fresh[0][0], fresh[1][0])


def test_op_plan_cache_still_checks_devices_and_arguments():
    from fmtarray.ops import convolution as opc

    x = FormattedArray(torch.randn(6, 5, 3, 2), "SSCB")
    fa.conv(x, torch.randn(3, 3, 3, 4), padding=[1, 1])  # a list: not cached, still works
    fa.conv(x, torch.randn(3, 3, 3, 4))
    fa.conv(x, torch.randn(3, 3, 3, 4))
    with pytest.raises(ValueError, match="channel"):
        fa.conv(x, torch.randn(3, 3, 2, 4))
    with pytest.raises(ValueError, match="bias"):
        fa.conv(x, torch.randn(3, 3, 3, 4), torch.randn(3))
    assert any(k is not None for k in opc._PLANS)
