"""Convolution on the NumPy paths over arbitrary memory layouts (strides are never
assumed): permuted storage, step-2 slices, negative strides, size-1 dims with odd
strides, read-only inputs, batch- and last-dim-innermost data, the flat-shift backward,
scratch reuse and serial small problems, against the direct-loop reference."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fmtarray as fa
from fmtarray import FormattedArray
from fmtarray._kernels.conv import tuning
from fmtarray._kernels.conv._numpy import _runtime, release_scratch
from kernel_calls import conv_backward, conv_forward
from test_conv import TOL, VALUES, _strided, kw_of, ref_of

from conv_reference import make, ref_conv
from test_numpy_algos import magnitudes, ref_conv_vjp, rel_err, selected

# ---------------------------------------------------------------------------------------
# arbitrary memory layouts on the NumPy fast path (strides are never assumed)

#: thresholds that let the flat-shift backward take small problems
FLAT_ANY = dict(flat_channels=(1, 32), flat_min_n=2, flat_min_row=1)


def _relayout(a, data, name):
    """The values of ``a`` in an arbitrary memory layout: stored in a random dim order,
    some dims every other element of a NaN-filled buffer (a read of a gap shows up),
    some reversed in memory (negative strides), size-1 dims with odd strides,
    maybe read-only."""
    nd = a.ndim
    perm = data.draw(st.permutations(range(nd)), label=f"{name} memory order")
    if data.draw(st.booleans(), label=f"{name} contiguous"):
        # C-contiguous as NumPy sees it: only the size-1 dims move in memory (their
        # strides then are not the C-order ones, e.g. a singleton C stored outermost)
        big = iter(sorted(p for p in perm if a.shape[p] > 1))
        perm = [p if a.shape[p] == 1 else next(big) for p in perm]
        step = flip = [False] * nd
    else:
        step = data.draw(st.lists(st.booleans(), min_size=nd, max_size=nd),
                         label=f"{name} step 2")
        flip = data.draw(st.lists(st.booleans(), min_size=nd, max_size=nd),
                         label=f"{name} reversed")
    buf = np.full([a.shape[p] * (2 if step[p] else 1) for p in perm], np.nan, dtype=a.dtype)
    view = buf.transpose(np.argsort(perm))[tuple(slice(None, None, 2 if s else 1) for s in step)]
    fl = tuple(slice(None, None, -1 if f else 1) for f in flip)
    view[...] = a[fl]
    r = view[fl]
    if data.draw(st.booleans(), label=f"{name} odd size-1 strides"):
        # a size-1 dim is never stepped: any stride is a valid view of the same memory
        odd = tuple(s if n > 1 else (8192 + 3 * a.itemsize) * (-1) ** i
                    for i, (s, n) in enumerate(zip(r.strides, r.shape)))
        r = np.lib.stride_tricks.as_strided(r, r.shape, odd, writeable=False)
    if data.draw(st.booleans(), label=f"{name} read-only"):
        r = r.view()
        r.flags.writeable = False
    np.testing.assert_array_equal(r, a)
    return r


@st.composite
def layout_config(draw):
    """Small configurations that reach every NumPy path, biased to size-1 dims and to
    no padding (the input then goes to the gathers without a copy)."""
    d = draw(st.sampled_from([1, 2, 2, 3]))
    k = tuple(draw(st.sampled_from([1, 2, 3, 3] if d < 3 else [1, 2, 2])) for _ in range(d))
    dil = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(d))
    stride = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(d))
    nopad = draw(st.booleans())
    pb = tuple(0 if nopad else draw(st.sampled_from([0, 1, 2])) for _ in range(d))
    pa = tuple(0 if nopad else draw(st.sampled_from([0, 0, 1])) for _ in range(d))
    value = draw(st.sampled_from(VALUES))
    sp = []
    for kk, dl, b, a in zip(k, dil, pb, pa):
        lo = max(1, (kk - 1) * dl + 1 - b - a)
        sp.append(draw(st.sampled_from([lo, lo, lo + 1, lo + 4])))
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    cg = draw(st.sampled_from([1, 1, 2, 3]))
    fg = draw(st.sampled_from([1, 1, 2, 3]))
    n = draw(st.sampled_from([1, 1, 2, 5]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return dict(d=d, k=k, dil=dil, stride=stride, pb=pb, pa=pa, value=value, sp=tuple(sp),
                groups=groups, cg=cg, fg=fg, n=n, dtype=dtype)


# path switches of the NumPy kernel: default; batch-innermost forced; tiny tiles and
# workspace (row tiles, many chunks); wide mode (chunk GEMMs)
LAYOUT_MODES = {
    "default": {},
    "batch-innermost": {"bi_max_run": 10**6},
    "last-innermost": {"li_min_run": 1},
    "tiny-tiles": {"tile_bytes": 200, "workspace_bytes": 1500},
    "wide": {"wide_weight_bytes": 1, "workspace_bytes": 1500},
    # every scratch buffer from the per-thread cache: stale contents of earlier calls
    # (other shapes and dtypes), evictions at the 2 x workspace cap
    "scratch-reuse": {"scratch_keep_bytes": 0, "workspace_bytes": 3000},
}


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cfg=layout_config(), mode=st.sampled_from(list(LAYOUT_MODES)), data=st.data())
def test_numpy_path_any_memory_layout(cfg, mode, data):
    """Forward and backward of the NumPy kernels on inputs, weights and cotangents in
    any memory layout (permuted storage, step-2 slices, negative strides, size-1 dims
    with odd strides, read-only) equal the direct-loop reference."""
    import array_api_compat.numpy as cnp

    x, w, b = make(cfg, seed=3)
    dt = cfg["dtype"]
    ref = ref_of(cfg, x, w, b)
    gy = np.random.default_rng(4).standard_normal(ref.shape)
    args = (cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"], cfg["value"])
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, *args)
    mags = magnitudes(x, w, gy, args, b)
    xl = _relayout(x.astype(dt), data, "x")
    wl = _relayout(w.astype(dt), data, "w")
    gyl = _relayout(gy.astype(dt), data, "gy")
    bl = b.astype(dt)
    tol = TOL[dt] if dt == np.float64 else 1e-5
    try:
        with tuning(**LAYOUT_MODES[mode]):
            y = conv_forward(cnp, xl, wl, bl, **kw_of(cfg))
            assert y.dtype == dt and y.shape == ref.shape
            assert rel_err(y, ref, mags[0]) <= tol
            gx, gw, gb = conv_backward(cnp, gyl, xl, wl, **kw_of(cfg))
    finally:
        if mode == "scratch-reuse":
            release_scratch()
    assert gx.dtype == dt and gw.dtype == dt
    assert rel_err(gx, gx_ref, mags[1]) <= 4 * tol
    assert rel_err(gw, gw_ref, mags[2]) <= 4 * tol
    np.testing.assert_allclose(gb, gy.reshape(-1, gb.size).sum(0), rtol=4 * tol, atol=4 * tol)
    # the inputs were only read
    np.testing.assert_array_equal(xl, x.astype(dt))
    np.testing.assert_array_equal(wl, w.astype(dt))


def test_a_value_summed_from_cancelling_terms_is_checked_against_their_size():
    """Found by the test above (CI, float32): a 1×1×1 input mirror-padded by up to 2 on
    each side folds 36 products into its one input-gradient value, 0.00484 from terms
    that sum to about 66 in magnitude. float32 rounding leaves it 2e-4 off relative to
    itself (the float64 result is exact): such values are checked relative to the sum
    of their terms' magnitudes, where one missing term still counts."""
    import array_api_compat.numpy as cnp

    cfg = {"d": 3, "k": (2, 1, 2), "dil": (1, 1, 1), "stride": (1, 1, 1),
           "pb": (0, 2, 1), "pa": (1, 1, 1), "value": "symmetric-include-edge",
           "sp": (1, 1, 1), "groups": 1, "cg": 1, "fg": 3, "n": 1, "dtype": np.float32}
    x, w, b = make(cfg, seed=3)
    gy = np.random.default_rng(4).standard_normal(ref_of(cfg, x, w, b).shape)
    args = (cfg["stride"], cfg["dil"], cfg["pb"], cfg["pa"], cfg["value"])
    gx_ref, _ = ref_conv_vjp(x, w, gy, *args)
    mag = magnitudes(x, w, gy, args)[1]
    assert mag.max() > 1000 * np.abs(gx_ref).max()  # the terms cancel
    gx64 = conv_backward(cnp, gy, x, w, **kw_of(cfg))[0]
    assert rel_err(gx64, gx_ref) <= TOL[np.float64]
    gx = conv_backward(cnp, gy.astype(np.float32), x.astype(np.float32),
                       w.astype(np.float32), **kw_of(cfg))[0]
    assert rel_err(gx, gx_ref, mag) <= 4e-5
    assert rel_err(gx + mag.max() / 36, gx_ref, mag) > 0.02  # one term's size is caught


@pytest.mark.parametrize("n", [1, 2, 32, 300])
@pytest.mark.parametrize("stored", ["BSSC", "SSCB", "CBSS", "BCSS"])
def test_op_any_stored_layout(n, stored):
    """``fa.conv`` (forward and gradients) on a FormattedArray built from data stored
    in any dim order, C = 1 included: the digits-demo case (``BSSC`` images with a
    singleton C, batch outermost in memory) gave NaN / crashed."""
    rng = np.random.default_rng(0)
    canon = rng.standard_normal((8, 8, 1, n)).astype(np.float32)  # SSCB
    order = [("SSCB".index(ch) if ch != "S" else None) for ch in stored]
    s_pos = iter([0, 1])
    perm = [o if o is not None else next(s_pos) for o in order]
    data = np.ascontiguousarray(np.transpose(canon, perm))
    x = FormattedArray(data, stored) - 0.5
    w = rng.standard_normal((5, 5, 1, 20)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    y = fa.conv(x, w, b)
    xk = np.moveaxis(canon - 0.5, -1, 0)  # (N, 8, 8, 1)
    ref = ref_conv(xk, w[..., None], b)  # (N, 4, 4, 20)
    assert y.format == "SSCB"
    assert rel_err(np.moveaxis(y.data, -1, 0), ref) <= 1e-5

    r = np.cos(np.arange(np.prod(y.shape))).reshape(y.shape).astype(np.float32)

    def loss(xx, ww):
        return fa.sum(fa.conv(xx, ww, b) * FormattedArray._wrap(r, "SSCB"))

    gx, gw = fa.grad(loss, argnums=(0, 1))(x, FormattedArray(w))
    gx_ref, gw_ref = ref_conv_vjp(xk, w[..., None], np.moveaxis(r, -1, 0), (1, 1), (1, 1),
                                  (0, 0), (0, 0), 0.0)
    assert rel_err(np.moveaxis(np.asarray(gx.data), -1, 0), gx_ref) <= 1e-5
    assert rel_err(gw.data, gw_ref[..., 0]) <= 1e-5


def _geometry(d, *args):
    """Each of stride, dilation and the pads for ``d`` dims (a scalar or a 2-tuple
    repeated), and the spatial and kernel sizes of the batch-innermost tests."""
    def per_dim(v):
        v = v if isinstance(v, tuple) else (v,) * 2
        return (v * 2)[:d]

    return (*(per_dim(v) for v in args), (7, 6, 5)[:d], (3, 2, 3)[:d])


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("stride,dil,pb,pa", [(1, 1, (1, 1), (1, 1)), (1, 2, (2, 0), (1, 2)),
                                              (2, 1, (1, 0), (0, 1)), ((1, 2), (2, 1), (0, 3), (2, 0)),
                                              (1, 1, (0, 0), (0, 0))])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_depthwise_batch_innermost(value, stride, dil, pb, pa, d):
    """Channel-wise fast path on the canonical batch-innermost layout (fused windows,
    unmaterialised zero padding, border patches) against the reference, with VJP."""
    import array_api_compat.numpy as cnp

    stride, dil, pb, pa, sp, k = _geometry(d, stride, dil, pb, pa)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, *sp, 3))
    w = rng.standard_normal((*k, 1, 1, 3))
    b = rng.standard_normal(3)
    kw = dict(stride=stride, dilation=dil, pad_before=pb, pad_after=pa, pad_value=value, groups=3)
    ref = ref_conv(x, w, b, stride, dil, pb, pa, value)
    y = conv_forward(cnp, _strided(x), w, b, **kw)
    assert rel_err(y, ref) <= 1e-12
    gy = rng.standard_normal(ref.shape)
    gx, gw, gb = conv_backward(cnp, _strided(gy), _strided(x), w, **kw)
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, stride, dil, pb, pa, value)
    assert rel_err(gx, gx_ref) <= 1e-12
    assert rel_err(gw, gw_ref) <= 1e-12


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("stride,dil,pb,pa", [(1, 1, (0, 0), (0, 0)), (1, 2, (2, 0), (1, 2)),
                                              (2, 1, (1, 0), (0, 1)), ((1, 3), (2, 1), (0, 3), (2, 0))])
@pytest.mark.parametrize("d,c", [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_few_channels_batch_innermost_vjp(value, stride, dil, pb, pa, d, c):
    """Input gradient for few input channels on the batch-innermost layout (per-tap
    scatter of ``Wᵀ·gy`` into per-worker padded inputs) against the reference VJP."""
    import array_api_compat.numpy as cnp

    stride, dil, pb, pa, sp, k = _geometry(d, stride, dil, pb, pa)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, *sp, c))
    w = rng.standard_normal((*k, c, 4, 1))
    kw = dict(stride=stride, dilation=dil, pad_before=pb, pad_after=pa, pad_value=value)
    ref = ref_conv(x, w, None, stride, dil, pb, pa, value)
    gy = rng.standard_normal(ref.shape)
    assert selected("input_grad", _strided(x), w, _strided(gy), **kw) == "numpy.input_grad_bi"
    gx, gw, _ = conv_backward(cnp, _strided(gy), _strided(x), w, **kw)
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, stride, dil, pb, pa, value)
    assert rel_err(gx, gx_ref) <= 1e-12
    assert rel_err(gw, gw_ref) <= 1e-12


@pytest.mark.usefixtures("numpy_entries")
@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("stride,dil", [(1, 1), ((2, 1), (1, 2)), ((1, 3, 1), (2, 1, 3))])
@tuning(li_min_run=1)
def test_last_dim_innermost(value, d, stride, dil):
    """Inputs whose last convolved dim is innermost in memory (canonical ``SCBT``
    convolved over S and T): flat-shift columns on a padded copy, against the reference."""
    import array_api_compat.numpy as cnp

    stride = (stride * 3)[:d] if isinstance(stride, tuple) else (stride,) * d
    dil = (dil * 3)[:d] if isinstance(dil, tuple) else (dil,) * d
    stride = stride[:-1] + (1,)
    sp = (7, 6, 9)[:d]
    k = (3, 2, 3)[:d]
    pb, pa = (1, 0, 2)[:d], (2, 1, 0)[:d]
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, *sp, 2))
    w = rng.standard_normal((*k, 2, 3, 1))
    b = rng.standard_normal(3)
    # memory (*outer, C, N, W): the last convolved dim innermost
    order = tuple(range(1, d)) + (d + 1, 0, d)
    xl = np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))
    kw = dict(stride=stride, dilation=dil, pad_before=pb, pad_after=pa, pad_value=value)
    assert selected("forward", xl, w, **kw) == "numpy.last_innermost"
    y = conv_forward(cnp, xl, w, b, **kw)
    assert rel_err(y, ref_conv(x, w, b, stride, dil, pb, pa, value)) <= 1e-12
    gy = rng.standard_normal(y.shape)
    gyl = np.ascontiguousarray(gy.transpose(order)).transpose(np.argsort(order))
    assert selected("weight_grad", xl, w, gyl, **kw) == "numpy.last_innermost"
    gx, gw, _ = conv_backward(cnp, gyl, xl, w, **kw)
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, stride, dil, pb, pa, value)
    assert rel_err(gx, gx_ref) <= 1e-12
    assert rel_err(gw, gw_ref) <= 1e-12


def test_scratch_buffers_reused_with_stale_contents(monkeypatch):
    """Scratch buffers kept between calls (per thread and role) may hold anything: fill
    them with NaN between calls of different geometries, every path still matches the
    reference; the cache stays within 2 x the workspace."""
    import array_api_compat.numpy as cnp

    monkeypatch.setenv("FMTARRAY_NUMBA", "0")  # the NumPy entries use scratch, not Numba's

    cfgs = [
        dict(d=2, k=(3, 3), dil=(1, 1), stride=(1, 1), pb=(1, 1), pa=(1, 1), value=0.0,
             sp=(7, 6), groups=1, cg=3, fg=4, n=5, dtype=np.float32),
        dict(d=2, k=(2, 3), dil=(2, 1), stride=(1, 2), pb=(0, 2), pa=(1, 0), value="replicate",
             sp=(6, 9), groups=1, cg=2, fg=3, n=3, dtype=np.float64),
        dict(d=1, k=(3,), dil=(1,), stride=(1,), pb=(2,), pa=(0,), value=1.5,
             sp=(11,), groups=1, cg=4, fg=2, n=6, dtype=np.float32),
    ]
    try:
        for wide in (2 * 2**20, 1):
            with tuning(scratch_keep_bytes=0, workspace_bytes=6000, wide_weight_bytes=wide):
                for cfg in cfgs + cfgs[::-1]:
                    x, w, b = make(cfg, seed=5)
                    ref = ref_of(cfg, x, w, b)
                    gy = np.random.default_rng(6).standard_normal(ref.shape)
                    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, cfg["stride"], cfg["dil"],
                                                  cfg["pb"], cfg["pa"], cfg["value"])
                    dt = cfg["dtype"]
                    tol = 1e-5 if dt == np.float32 else TOL[dt]
                    for buf in _runtime.cached_scratch().values():
                        buf.fill(0xFF)  # NaN in float32 and float64
                    y = conv_forward(cnp, x.astype(dt), w.astype(dt), b.astype(dt), **kw_of(cfg))
                    assert rel_err(y, ref) <= tol
                    gx, gw, _ = conv_backward(cnp, gy.astype(dt), x.astype(dt), w.astype(dt),
                                              **kw_of(cfg))
                    assert rel_err(gx, gx_ref) <= 4 * tol and rel_err(gw, gw_ref) <= 4 * tol
                    cached = sum(v.nbytes for v in _runtime.cached_scratch().values())
                    assert 0 < cached <= 2 * 6000
    finally:
        release_scratch()


@pytest.mark.usefixtures("numpy_entries")
@pytest.mark.parametrize("value", [0.0, 1.5, "replicate", "symmetric-exclude-edge"])
@pytest.mark.parametrize("k,pb,pa,dil_w", [((3, 3), (1, 1), (1, 1), 1), ((4, 2), (2, 0), (0, 1), 2),
                                           ((2, 3), (0, 2), (3, 0), 1), ((5, 1), (4, 0), (4, 0), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@tuning(li_min_run=1)
def test_last_dim_innermost_row_ring(value, k, pb, pa, dil_w, dtype):
    """2-D last-dim-innermost convolution with stride 1 over rows: the ring of row
    blocks (one new input row per output row, the weights' row taps permuted to the
    ring's phase), several row blocks per worker, padding rows outside the input."""
    import array_api_compat.numpy as cnp

    rng = np.random.default_rng(11)
    sp = (13, 8)
    x = rng.standard_normal((3, *sp, 4))
    w = rng.standard_normal((*k, 4, 5, 1))
    b = rng.standard_normal(5)
    stride, dil = (1, 1), (1, dil_w)
    order = (1, 3, 0, 2)  # memory (S, C, N, T): T innermost
    xl = np.ascontiguousarray(x.transpose(order).astype(dtype)).transpose(np.argsort(order))
    kw = dict(stride=stride, dilation=dil, pad_before=pb, pad_after=pa, pad_value=value)
    assert selected("forward", xl, w.astype(dtype), **kw) == "numpy.last_innermost"
    y = conv_forward(cnp, xl, w.astype(dtype), b.astype(dtype), **kw)
    tol = TOL[dtype]
    assert rel_err(y, ref_conv(x, w, b, stride, dil, pb, pa, value)) <= tol
    gy = rng.standard_normal(y.shape)
    gyl = np.ascontiguousarray(gy.transpose(order).astype(dtype)).transpose(np.argsort(order))
    gx, gw, _ = conv_backward(cnp, gyl, xl, w.astype(dtype), **kw)
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, stride, dil, pb, pa, value)
    assert rel_err(gx, gx_ref) <= 4 * tol
    assert rel_err(gw, gw_ref) <= 4 * tol


@pytest.mark.usefixtures("numpy_entries")
@pytest.mark.parametrize("value", [0.0, -1.5, "replicate"])
@pytest.mark.parametrize("k,dil,pb,pa", [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 1), (2, 0), (1, 2)),
                                         ((1, 3), (1, 3), (0, 3), (2, 0)), ((2, 2), (1, 1), (0, 0), (0, 0))])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("tile", [7, 2048])
def test_flat_shift_backward_batch_innermost(value, k, dil, pb, pa, needs, tile):
    """Stride-1 2-d backward on batch-innermost data by flat shifts of channel-major
    padded copies (``numpy.flat_shift``) against the reference VJP; small tiles cut
    the flat positions anywhere."""
    import array_api_compat.numpy as cnp

    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 7, 6, 3))
    w = rng.standard_normal((*k, 3, 4, 1))
    kw = dict(stride=1, dilation=dil, pad_before=pb, pad_after=pa, pad_value=value)
    ref = ref_conv(x, w, None, 1, dil, pb, pa, value)
    gy = rng.standard_normal(ref.shape)
    xs, gs = _strided(x), _strided(gy)
    with tuning(**FLAT_ANY, flat_tile=tile):
        flat = selected("weight_grad", xs, w, gs, **kw) == "numpy.flat_shift"
        assert flat == (not isinstance(value, str))
        gx, gw, _ = conv_backward(cnp, gs, xs, w, needs=needs + (False,), **kw)
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, (1, 1), dil, pb, pa, value)
    if needs[0]:
        assert rel_err(gx, gx_ref) <= 1e-12
    else:
        assert gx is None
    if needs[1]:
        assert rel_err(gw, gw_ref) <= 1e-12
    else:
        assert gw is None
    # float32 and the default thresholds (16 channels, batch 16, 'same' 3x3)
    x = rng.standard_normal((16, 9, 40, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 12, 1)).astype(np.float32)
    gy = rng.standard_normal((16, 9, 40, 12)).astype(np.float32)
    xs, gs = _strided(x), _strided(gy)
    assert selected("input_grad", xs, w, gs, pad_before=1, pad_after=1) == "numpy.flat_shift"
    gx, gw, _ = conv_backward(cnp, gs, xs, w, pad_before=1, pad_after=1)
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, (1, 1), (1, 1), (1, 1), (1, 1), 0.0)
    assert rel_err(gx, gx_ref) <= 1e-5
    assert rel_err(gw, gw_ref) <= 1e-5


@pytest.mark.usefixtures("numpy_entries")
@tuning(**FLAT_ANY)
def test_flat_shift_backward_non_finite_input():
    """The flat shifts never multiply a value across a row gap: an infinite input
    reaches only the weight-gradient taps that read it."""
    import array_api_compat.numpy as cnp

    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 6, 7, 2))
    x[1, 2, 0, 0] = np.inf
    x[2, 3, 6, 1] = -np.inf
    w = rng.standard_normal((3, 3, 2, 3, 1))
    gy = rng.standard_normal((4, 4, 5, 3))
    assert selected("weight_grad", _strided(x), w, _strided(gy)) == "numpy.flat_shift"
    _, gw, _ = conv_backward(cnp, _strided(gy), _strided(x), w, needs=(False, True, False))
    _, gw_ref = ref_conv_vjp(x, w, gy, (1, 1), (1, 1), (0, 0), (0, 0), 0.0)
    np.testing.assert_array_equal(np.isfinite(gw), np.isfinite(gw_ref))
    assert not np.isfinite(gw_ref).all()
    fin = np.isfinite(gw_ref)
    assert rel_err(gw[fin], gw_ref[fin]) <= 1e-12


def test_small_problems_run_serially_with_the_same_numbers(monkeypatch):
    """Below ``Tuning.serial_macs`` the kernel never hands work to the pool, and the numbers are
    the ones the workers compute (forward and both gradients)."""
    import array_api_compat.numpy as cnp

    cfg = dict(d=2, k=(3, 3), dil=(1, 1), stride=(1, 1), pb=(1, 1), pa=(1, 1), value=0.0,
               sp=(9, 8), groups=1, cg=8, fg=8, n=5, dtype=np.float64)
    x, w, b = make(cfg)
    x = _strided(x)
    y = np.asarray(conv_forward(cnp, x, w, b, **kw_of(cfg)))
    gy = _strided(np.random.default_rng(2).standard_normal(y.shape))
    grads = [np.asarray(g) for g in conv_backward(cnp, gy, x, w, **kw_of(cfg))]
    calls = []
    pool = _runtime.workers()[0]
    monkeypatch.setattr(pool, "submit", lambda *a, **k: calls.append(a) or pool.__class__.submit(pool, *a, **k))
    with tuning(serial_macs=1 << 40):
        np.testing.assert_allclose(np.asarray(conv_forward(cnp, x, w, b, **kw_of(cfg))), y,
                                   rtol=1e-13, atol=1e-13)
        for g, e in zip(conv_backward(cnp, gy, x, w, **kw_of(cfg)), grads):
            np.testing.assert_allclose(np.asarray(g), e, rtol=1e-12, atol=1e-13)
    assert calls == []
    # above the threshold the workers are used (the autouse fixture sets it to 0)
    conv_forward(cnp, x, w, b, **kw_of(cfg))
    assert calls or _runtime.n_workers() == 1
    assert rel_err(y, ref_of(cfg, x, w, b)) <= 1e-12
