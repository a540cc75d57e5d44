"""Halo exchange for chunked convolved and pooled dims of Dask arrays (SPEC §6).

Through ``fa.conv`` / ``fa.max_pool`` / ``fa.avg_pool`` on Dask-backed FormattedArrays
with many chunk layouts (chunks smaller than the filter, one-element chunks, uneven
chunks, strides that do not divide the chunk sizes, pads larger than a chunk or than
the whole dim), every padding form and value, groups, dilation, 1 to 3 convolved dims
(``S``; ``S`` and ``T``; ``S``, ``S`` and ``T``): the Dask result equals NumPy's on the
same data to 1e-14 relative in float64 (not bit for bit: each block is a NumPy kernel
call of its own size, and BLAS rounds the same sums differently for other matrix sizes;
the gradients also add the halos' overlapping contributions in block order: 1e-13),
bit for bit for pooling (the same maxima and sums per window), within 1e-5 in float32; the output and the input gradient keep the input's chunk count along every
convolved dim; nothing is computed while the graph is built; the graph grows linearly
with the number of chunks. The window planner is checked exhaustively on small cases.
"""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
from dask.callbacks import Callback  # noqa: E402

import fmtarray as fa  # noqa: E402
from fmtarray import FormattedArray  # noqa: E402
from fmtarray._kernels.conv._dask_halo import plan_dim  # noqa: E402
from fmtarray._kernels.conv.spec import same_padding  # noqa: E402

from conv_reference import ref_conv  # noqa: E402


class _Computes(Callback):
    """Counts the computations started while it is active."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def _start(self, dsk):
        self.n += 1


def _rel(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _tasks(a):
    return len(dict(a.__dask_graph__()))


# ---------------------------------------------------------------------------------------
# the planner


@pytest.mark.parametrize("stride", [1, 2, 3, 5])
@pytest.mark.parametrize("eff", [1, 2, 3, 7])
@pytest.mark.parametrize("chunks", [(11,), (1,) * 11, (2, 3, 1, 5), (4, 0, 7), (6, 5)])
def test_planner_assigns_each_output_once_with_its_exact_window(chunks, eff, stride):
    """Every output ``j`` belongs to exactly one block, the one whose chunk holds input
    position ``j·stride`` (the last block past the data), and each block reads exactly
    its outputs' windows: source part plus the padding its kernel adds."""
    n = sum(chunks)
    offs = np.concatenate([[0], np.cumsum(chunks)])
    for before in range(0, 4):
        for after in range(0, 4):
            n_out = (n + before + after - eff) // stride + 1
            if n_out < 1:
                continue
            plan = plan_dim(chunks, [int(o) for o in offs[1:-1]], n_out, stride, eff,
                            before, after)
            assert len(plan.blocks) == len(chunks)
            assert sum(plan.out_chunks) == n_out
            j = 0
            for i, blk in enumerate(plan.blocks):
                assert blk.j0 == j
                j = blk.j1
                for jj in range(blk.j0, blk.j1):
                    pos = jj * stride
                    owner = min(len(chunks) - 1,
                                int(np.searchsorted(offs, pos, side="right")) - 1)
                    assert owner == i, (jj, pos, owner, i)
                if blk.n_out and len(chunks) > 1:
                    lo = blk.j0 * stride - before
                    hi = (blk.j1 - 1) * stride - before + eff
                    assert blk.width == hi - lo
                    if blk.reads:
                        assert (blk.a, blk.b) == (max(lo, 0), min(hi, n))
                        assert offs[blk.c0] <= blk.a < offs[blk.c0 + 1]
                        assert offs[blk.c1 - 1] < blk.b <= offs[blk.c1]


# ---------------------------------------------------------------------------------------
# convolution

# format, shape, chunks, weights shape, weights_format, conv kwargs
CASES = {
    "S causal dilated, one-element chunks": (
        "SCB", (13, 2, 3), ((1,) * 13, 2, (2, 1)), (3, 2, 4), None,
        dict(padding="causal", dilation_factor=2)),
    "S stride 3 not dividing chunks, [b a] constant": (
        "SCB", (17, 2, 2), ((5, 5, 7), 2, 2), (4, 2, 3), None,
        dict(stride=3, padding=[2, 1], padding_value=0.75)),
    "S same, stride, dilation, exclude-edge": (
        "SCB", (14, 3, 2), ((3, 4, 2, 5), 3, 2), (3, 3, 2), None,
        dict(stride=2, dilation_factor=2, padding="same",
             padding_value="symmetric-exclude-edge")),
    "S pads larger than the dim, include-edge": (
        "SCB", (5, 2, 2), ((1, 1, 1, 2), 2, 2), (3, 2, 2), None,
        dict(padding=6, padding_value="symmetric-include-edge")),
    "S replicate, pads larger than chunks, stride": (
        "SCB", (9, 1, 2), ((2, 2, 2, 3), 1, 2), (5, 1, 2), None,
        dict(padding=[4, 3], padding_value="replicate", stride=2)),
    "S stride larger than chunks (empty output chunks)": (
        "SCB", (12, 2, 2), ((1,) * 12, 2, 2), (2, 2, 3), None, dict(stride=4, padding=1)),
    "SS both chunked, C chunked, groups, same": (
        "SSCB", (10, 9, 4, 2), ((3, 3, 4), (2, 2, 2, 3), 2, (1, 1)), (3, 3, 2, 3, 2), None,
        dict(padding="same", stride=(2, 1))),
    "SS [t b l r] constant, chunks smaller than the filter": (
        "SSCB", (9, 8, 3, 2), ((1, 2, 1, 5), (3, 1, 4), 3, 2), (5, 3, 3, 2), None,
        dict(padding=[3, 1, 0, 2], padding_value=-2, dilation_factor=(1, 2))),
    "SS depthwise, mirror": (
        "SSCB", (8, 8, 4, 2), ((3, 5), (2, 3, 3), 4, 2), (3, 3, 1, 2, 4), None,
        dict(padding=1, padding_value="symmetric-include-edge")),
    "S and T, T chunked, replicate same": (
        "SCBT", (9, 3, 2, 12), ((4, 5), 3, 2, (2, 3, 1, 4, 2)), (3, 3, 3, 4), "STCU",
        dict(padding="same", padding_value="replicate", stride=(1, 2))),
    "S and T, one-element T chunks, dilated, causal-like on T": (
        "SCBT", (6, 2, 2, 10), (6, 2, 2, 1), (2, 3, 2, 3), "STCU",
        dict(dilation_factor=(1, 3), padding=[1, 0, 6, 0])),
    "S, S and T (3-D filter), mirror, strides": (
        "SSCBT", (6, 5, 2, 2, 9), ((3, 3), (2, 3), 2, 2, (2, 2, 5)), (3, 2, 3, 2, 3), "SSTCU",
        dict(padding=1, stride=(1, 2, 2), padding_value="symmetric-include-edge")),
    "SSS chunked, same": (
        "SSSCB", (5, 6, 4, 2, 2), ((2, 3), (1, 5), 4, 2, 2), (2, 3, 2, 2, 2), None,
        dict(padding="same")),
}


def _conv_data(case, dtype):
    fmt, shape, chunks, wshape, wfmt, kw = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    nconv = fmt.count("S") + (1 if wfmt and "T" in wfmt else 0)
    nf = wshape[-2] * wshape[-1] if len(wshape) == nconv + 3 else wshape[-1]  # groups
    b = rng.standard_normal(nf).astype(dtype)
    return fmt, x, w, b, chunks, dict(kw, weights_format=wfmt)


def _conv_dims(fmt, wfmt):
    """Indices (in the canonical format) of the convolved dims."""
    dims = [i for i, ch in enumerate(fmt) if ch == "S"]
    if wfmt and "T" in wfmt:
        dims.append(fmt.index("T"))
    return dims


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_conv_forward_equals_numpy(case, dtype):
    """Within rounding of NumPy's result on the whole array: each block runs NumPy's
    kernels on its window, and BLAS's (and the registry's) choices depend on the
    matrix sizes, so a block's sums may be rounded differently (measured: a few ulps)."""
    fmt, x, w, b, chunks, kw = _conv_data(case, dtype)
    xd = FormattedArray(da.from_array(x, chunks=chunks), fmt)
    with _Computes() as c:
        y = fa.conv(xd, da.from_array(w), da.from_array(b), **kw)
        assert c.n == 0  # nothing computed while the graph is built
        got = y.data.compute()
        assert c.n == 1
    ref = fa.conv(FormattedArray(x, fmt), w, b, **kw)
    assert isinstance(y.data, da.Array) and y.format == ref.format
    assert got.shape == ref.shape and got.dtype == ref.dtype
    if dtype == np.float64:
        assert _rel(got, ref.data) <= 1e-14
        # and NumPy's is the convolution (independent direct loops)
        assert _rel(ref.data, _ref_conv_fmt(x, w, b, fmt, kw)) <= 1e-12
    else:
        assert _rel(got, ref.data) <= 1e-5
    for ax in _conv_dims(fmt, kw["weights_format"]):  # never collapsed
        assert len(y.data.chunks[ax]) == len(xd.data.chunks[ax]), (ax, y.data.chunks)
        if kw.get("padding") in ("same", "causal") and kw.get("stride", 1) == 1:
            assert y.data.chunks[ax] == xd.data.chunks[ax]  # output j sits over input j
    c_ax = y.format.index("C")
    assert len(y.data.chunks[c_ax]) == 1  # a chunked C was rechunked to one block


def _ref_conv_fmt(x, w, b, fmt, kw):
    """The direct-loop reference on the canonical data (SCB, SSCB, SSSCB only: the
    S+T cases are compared with NumPy, which tests/test_conv.py checks)."""
    if "T" in fmt:
        return fa.conv(FormattedArray(x, fmt), w, b, **kw).data
    d = fmt.count("S")
    xn = np.moveaxis(x, -1, 0)  # (B, *sp, C)
    k = w.shape[:d]
    w5 = w if w.ndim == d + 3 else w[..., None]
    stride = np.broadcast_to(kw.get("stride", 1), (d,))
    dil = np.broadcast_to(kw.get("dilation_factor", 1), (d,))
    p = kw.get("padding", 0)
    n = x.shape[:d]
    if p == "same":
        pads = [same_padding(ni, ki, si, di) for ni, ki, si, di in zip(n, k, stride, dil)]
        pb, pa = [q[0] for q in pads], [q[1] for q in pads]
    elif p == "causal":
        pb, pa = [(ki - 1) * di for ki, di in zip(k, dil)], [0] * d
    else:
        p = np.atleast_1d(p)
        if p.size == 1:
            pb = pa = [int(p[0])] * d
        else:
            pb, pa = [int(v) for v in p[0::2]], [int(v) for v in p[1::2]]
    y = ref_conv(xn, w5, b, tuple(stride), tuple(dil), pb, pa, kw.get("padding_value", 0))
    return np.moveaxis(y, 0, -1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_conv_gradients_equal_numpy(case, dtype):
    fmt, x, w, b, chunks, kw = _conv_data(case, dtype)
    ref_y = fa.conv(FormattedArray(x, fmt), w, b, **kw)
    g = np.random.default_rng(7).standard_normal(ref_y.shape).astype(dtype)

    def loss(x, w, b, g):
        return fa.sum(fa.conv(x, w, b, **kw) * g)

    xd = FormattedArray(da.from_array(x, chunks=chunks), fmt)
    args = (xd, FormattedArray(da.from_array(w)), FormattedArray(da.from_array(b)),
            FormattedArray(da.from_array(g, chunks=2), ref_y.format))
    with _Computes() as c:
        gx, gw, gb = fa.grad(loss, argnums=(0, 1, 2))(*args)
        assert c.n == 0
        got = dask.compute(gx.data, gw.data, gb.data)
        assert c.n == 1
    ref = fa.grad(loss, argnums=(0, 1, 2))(FormattedArray(x, fmt), FormattedArray(w),
                                           FormattedArray(b), FormattedArray(g, ref_y.format))
    tol = 1e-13 if dtype == np.float64 else 1e-5
    for a, r in zip(got, ref):
        assert a.shape == r.shape and a.dtype == r.dtype
        assert _rel(a, r.data) <= tol
    for ax in _conv_dims(fmt, kw["weights_format"]):  # the input gradient keeps the chunks
        assert gx.data.chunks[ax] == xd.data.chunks[ax]


def test_chained_convs_over_t_keep_t_chunked():
    """conv–relu–conv over S and T of SCBT with T in many chunks (the first conv's
    stride leaves empty output chunks): every result keeps T's chunk count, values equal
    NumPy's to rounding, and the gradient with respect to the input too."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 2, 2, 20))
    w1 = rng.standard_normal((3, 3, 2, 3)) / 3
    w2 = rng.standard_normal((2, 3, 3, 2)) / 3

    def net(x):
        h = fa.relu(fa.conv(x, w1, padding="same", stride=(1, 3), weights_format="STCU"))
        return fa.conv(h, w2, padding=[0, 1, 2, 0], weights_format="STCU")

    xd = FormattedArray(da.from_array(x, chunks=(7, 2, 2, 2)), "SCBT")
    xdw = [FormattedArray(da.from_array(a)) for a in (w1, w2)]
    w1d, w2d = (a.data for a in xdw)

    def net_d(x):
        h = fa.relu(fa.conv(x, w1d, padding="same", stride=(1, 3), weights_format="STCU"))
        return fa.conv(h, w2d, padding=[0, 1, 2, 0], weights_format="STCU")

    y = net_d(xd)
    assert len(y.data.chunks[3]) == 10
    # to rounding: a block's memory order may select another kernel than the whole array's
    assert _rel(y.data.compute(), net(FormattedArray(x, "SCBT")).data) <= 1e-14
    gx = fa.grad(lambda x: fa.sum(net_d(x) ** 2))(xd)
    gr = fa.grad(lambda x: fa.sum(net(x) ** 2))(FormattedArray(x, "SCBT"))
    assert gx.data.chunks == xd.data.chunks
    assert _rel(gx.data.compute(), gr.data) <= 1e-13


@pytest.mark.parametrize("what", ["forward", "gradients"])
def test_graph_grows_linearly_with_the_chunks(what):
    """Doubling the number of T chunks (and the data) at most doubles the tasks (+10 %):
    a bounded number of tasks per chunk."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5, 2, 3))
    counts = []
    for m in (16, 32):
        x = da.from_array(rng.standard_normal((6, 2, 3, 3 * m)), chunks=(6, 2, 3, 3))
        X = FormattedArray(x, "SCBT")
        if what == "forward":
            out = fa.conv(X, da.from_array(w), padding="same", stride=(1, 2),
                          weights_format="STCU").data
            counts.append(_tasks(out) - _tasks(x))
        else:
            gx, gw = fa.grad(lambda x, w: fa.sum(fa.conv(x, w, padding="same", stride=(1, 2),
                                                         weights_format="STCU") ** 2),
                             argnums=(0, 1))(X, FormattedArray(da.from_array(w)))
            counts.append(len(dict(gx.data.__dask_graph__()) | dict(gw.data.__dask_graph__()))
                          - _tasks(x))
    assert counts[1] <= 2.2 * counts[0], counts


# ---------------------------------------------------------------------------------------
# pooling

POOL = {
    # fn, format, shape, chunks, kwargs
    "max SS stride 2, chunks of 1 and 2": (
        "max_pool", "SSCB", (11, 10, 2, 3), ((2, 1, 1, 4, 3), (1, 2, 7), 1, (2, 1)),
        dict(pool_size=3, stride=2, padding=1)),
    "avg SS same, mean, strides not dividing": (
        "avg_pool", "SSCB", (11, 10, 2, 3), ((5, 6), (4, 6), 2, 3),
        dict(pool_size=(3, 2), stride=(2, 3), padding="same", padding_value="mean")),
    "avg SS one-element chunks, [t b l r]": (
        "avg_pool", "SSCB", (9, 6, 2, 2), (1, (3, 3), 2, 2),
        dict(pool_size=(3, 2), stride=(1, 2), padding=[2, 1, 0, 1])),
    "max S and T, T chunked": (
        "max_pool", "SCBT", (11, 2, 3, 10), ((4, 7), 1, 2, (3, 3, 4)),
        dict(pool_size=(3, 3), stride=(2, 3), dims="ST")),
    "avg S and T, stride larger than T chunks": (
        "avg_pool", "SCBT", (6, 2, 2, 12), (6, 2, 2, 1),
        dict(pool_size=(2, 4), stride=(2, 4), dims="ST", padding=[0, 1, 1, 2])),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", POOL)
def test_pool_equals_numpy(case, dtype):
    fn, fmt, shape, chunks, kw = POOL[case]
    f = getattr(fa, fn)
    rng = np.random.default_rng(sum(map(ord, case)))
    x = rng.standard_normal(shape).astype(dtype)
    xd = FormattedArray(da.from_array(x, chunks=chunks), fmt)
    with _Computes() as c:
        y = f(xd, **kw)
        gx = fa.grad(lambda x: fa.sum(f(x, **kw) ** 2))(xd)
        assert c.n == 0
        got, ggot = dask.compute(y.data, gx.data)
        assert c.n == 1
    ref = f(FormattedArray(x, fmt), **kw)
    gref = fa.grad(lambda x: fa.sum(f(x, **kw) ** 2))(FormattedArray(x, fmt))
    assert got.dtype == ref.dtype and ggot.dtype == gref.dtype
    np.testing.assert_array_equal(got, ref.data)  # max/mean of the same windows
    assert _rel(ggot, gref.data) <= (1e-13 if dtype == np.float64 else 1e-5)
    pooled = [i for i, ch in enumerate(fmt) if ch == "S" or ch == "T" and kw.get("dims") == "ST"]
    for ax in pooled:
        assert len(y.data.chunks[ax]) == len(xd.data.chunks[ax])
    assert gx.data.chunks == xd.data.chunks


def test_pool_graph_grows_linearly():
    rng = np.random.default_rng(0)
    counts = []
    for m in (16, 32):
        x = da.from_array(rng.standard_normal((6, 2, 2, 4 * m)), chunks=(6, 2, 2, 4))
        y = fa.max_pool(FormattedArray(x, "SCBT"), (2, 3), stride=(2, 2), dims="ST",
                        padding="same")
        counts.append(_tasks(y.data) - _tasks(x))
    assert counts[1] <= 2.2 * counts[0], counts
