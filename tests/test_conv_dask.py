"""The Dask convolution entry (``dask.blockwise``): forced by name against the direct-loop
reference (forward, input and weight gradients, float32/float64, strides, dilation,
groups, padding forms and values) with the input chunked in several ways (a chunked
convolved dim keeps its chunks: tests/test_dask_halo.py covers the halo exchange); laziness,
bounded graphs, selection (no silent fall-back to the portable path) and autodiff
through ``fa.conv`` on Dask data."""

from __future__ import annotations

import threading

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import fmtarray as fa  # noqa: E402
from fmtarray import FormattedArray, _backend  # noqa: E402
from fmtarray._kernels import conv as K  # noqa: E402
from fmtarray._kernels.conv import registry  # noqa: E402

from conv_reference import ref_conv  # noqa: E402



def ref_conv_vjp(x, w, gy, stride, dilation, before, after, value):
    """Exact VJP of :func:`ref_conv` (float64), built from :func:`ref_conv` itself: the
    map is linear in each sample (the padding's linear part: constants count as 0), so
    one call on a batch of one-hot samples gives the Jacobian for the input gradient;
    it is linear in the weights, so one call per one-hot weight gives the weight
    gradient."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    gy = np.asarray(gy, dtype=np.float64)
    n, m = x.shape[0], x[0].size
    lin = value if isinstance(value, str) else 0.0
    eye = np.eye(m).reshape((m,) + x.shape[1:])
    jt = ref_conv(eye, w, None, stride, dilation, before, after, lin).reshape(m, -1)
    gx = (gy.reshape(n, -1) @ jt.T).reshape(x.shape)
    gw = np.zeros(w.size)
    for j in range(w.size):
        e = np.zeros(w.size)
        e[j] = 1.0
        gw[j] = np.sum(ref_conv(x, e.reshape(w.shape), None, stride, dilation, before, after,
                                value) * gy)
    return gx, gw.reshape(w.shape)

TOL = {np.float32: 2e-5, np.float64: 1e-12}
DXP = _backend.namespace(da.zeros(1))
NXP = _backend.namespace(np.zeros(1))

# ---------------------------------------------------------------------------------------
# kernel-level cases: kernel dims, filter, stride, dilation, pads, value, groups, sizes


CASES = {
    "2d 01CN stride dil asym-pad": dict(dims="01CN", k=(3, 2), stride=(1, 2), dil=(2, 1),
                                        pb=(1, 0), pa=(2, 1), value=0.0, G=1, cg=3, fg=2,
                                        sp=(7, 6), n=7),
    "2d 0CN1 groups mirror": dict(dims="0CN1", k=(3, 3), stride=(2, 1), dil=(1, 1),
                                  pb=(1, 1), pa=(1, 2), value="symmetric-include-edge", G=2,
                                  cg=2, fg=3, sp=(8, 5), n=5),
    "1d 0CN constant depthwise-ish": dict(dims="0CN", k=(3,), stride=(3,), dil=(2,), pb=(2,),
                                          pa=(0,), value=-1.5, G=3, cg=1, fg=2, sp=(11,),
                                          n=6),
    "3d 012CN replicate": dict(dims="012CN", k=(2, 2, 2), stride=(1, 2, 1), dil=(1, 1, 1),
                               pb=(1, 0, 1), pa=(0, 1, 1), value="replicate", G=1, cg=2,
                               fg=2, sp=(4, 5, 3), n=5),
    "2d 01CN reflect": dict(dims="01CN", k=(3, 3), stride=(1, 1), dil=(1, 1), pb=(2, 2),
                            pa=(2, 2), value="symmetric-exclude-edge", G=1, cg=4, fg=3,
                            sp=(5, 6), n=9),
    "2d 01CN depthwise": dict(dims="01CN", k=(3, 3), stride=(1, 1), dil=(1, 1), pb=(1, 1),
                              pa=(1, 1), value=0.0, G=4, cg=1, fg=1, sp=(6, 6), n=6),
}


def _n_chunks(n, how):
    if how == "one":
        return (n,)
    if how == "uneven":
        return (1, n - 3, 2)
    if how == "singles":
        return (1,) * n
    return (2,) * (n // 2) + ((n % 2,) if n % 2 else ())


#: how the input is chunked: per role, "N" by a rule of _n_chunks, others a chunk size
CHUNKINGS = {
    "batch whole": {"N": "one"},
    "batch uneven": {"N": "uneven"},
    "batch singles": {"N": "singles"},
    "convolved dim chunked": {"N": "pairs", "0": 2},
    "C chunked": {"N": "uneven", "C": 1},
}


def _spec(c, dtype):
    return K.ConvSpec(c["n"], c["sp"], c["G"] * c["cg"], c["k"], c["cg"], c["fg"], c["G"],
                      c["stride"], c["dil"], c["pb"], c["pa"], c["value"], (),
                      np.dtype(dtype).name)


def _to_dims(a, dims):
    """A channels-last ``(N, *sp, C)`` array in ``dims`` order."""
    src = "N" + "".join(str(i) for i in range(a.ndim - 2)) + "C"
    return np.transpose(a, [src.index(r) for r in dims])


def _from_dims(a, dims):
    d = a.ndim - 2
    return np.transpose(a, [dims.index(r) for r in "N" + "".join(map(str, range(d))) + "C"])


def _chunked(a, dims, chunking):
    chunks = []
    for r, n in zip(dims, a.shape):
        rule = chunking.get(r)
        if rule is None:
            chunks.append(n)
        elif r == "N":
            chunks.append(_n_chunks(n, rule))
        else:
            chunks.append(rule)
    return da.from_array(a, chunks=tuple(chunks))


def _data(c, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c["n"], *c["sp"], c["G"] * c["cg"])).astype(dtype)
    w = rng.standard_normal((*c["k"], c["cg"], c["fg"], c["G"])).astype(dtype)
    b = rng.standard_normal(c["G"] * c["fg"]).astype(dtype)
    return x, w, b


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("something was computed while the graph was being built")


def _tasks(*arrays):
    graph = {}
    for a in arrays:
        graph.update(dict(a.__dask_graph__()))
    return len(graph)


def _rel(a, ref):
    a = np.asarray(a, dtype=np.float64)
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30)) if ref.size else 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("case", CASES)
def test_forward_forced(case, chunking, dtype):
    c = CASES[case]
    dims = c["dims"]
    x, w, b = _data(c, dtype)
    spec = _spec(c, dtype)
    xd = _chunked(_to_dims(x, dims), dims, CHUNKINGS[chunking])
    wd, bd = da.from_array(w, chunks=1), da.from_array(b, chunks=1)  # chunked: rechunked
    with dask.config.set(scheduler=_no_compute):
        y = K.forward(DXP, spec, K.Layout.of(dims, xd), xd, wd, bd, force="dask.blockwise")
    assert isinstance(y, da.Array)
    assert y.dtype == dtype
    assert y.chunks[dims.index("N")] == xd.chunks[dims.index("N")]  # the N chunks are kept
    # a chunked convolved dim keeps its chunk count (halo exchange, not one block)
    assert len(y.chunks[dims.index("0")]) == len(xd.chunks[dims.index("0")])
    new = _tasks(y) - _tasks(xd, wd, bd)
    assert new <= 4 * (xd.npartitions + wd.npartitions + bd.npartitions) + 8, new
    ref = ref_conv(x, w, b, c["stride"], c["dil"], c["pb"], c["pa"], c["value"])
    got = _from_dims(y.compute(scheduler="threads"), dims)
    assert got.shape == ref.shape
    assert _rel(got, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("case", CASES)
def test_backward_forced(case, chunking, dtype):
    c = CASES[case]
    dims = c["dims"]
    x, w, _ = _data(c, dtype)
    spec = _spec(c, dtype)
    gy = np.random.default_rng(1).standard_normal((c["n"], *spec.out, spec.F)).astype(dtype)
    xd = _chunked(_to_dims(x, dims), dims, CHUNKINGS[chunking])
    # the cotangent chunked differently from the input along N: it is aligned to x's
    gyd = _chunked(_to_dims(gy, dims), dims, {"N": "pairs" if chunking != "batch uneven"
                                               else "singles"})
    wd = da.from_array(w, chunks=1)
    with dask.config.set(scheduler=_no_compute):
        lay = K.Layout.of(dims, xd, gyd)
        gx, gw, gb = K.backward(DXP, spec, lay, gyd, xd, wd, (True, True, True),
                                force="dask.blockwise")
    assert all(isinstance(a, da.Array) for a in (gx, gw, gb))
    assert gx.dtype == dtype and gw.dtype == dtype
    assert gx.chunks[dims.index("N")] == xd.chunks[dims.index("N")]
    assert gx.chunks[dims.index("0")] == xd.chunks[dims.index("0")]
    new = _tasks(gx, gw) - _tasks(xd, gyd, wd)
    assert new <= 6 * (xd.npartitions + gyd.npartitions + wd.npartitions) + 12, new
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, c["stride"], c["dil"], c["pb"], c["pa"],
                                  c["value"])
    gx_got, gw_got, gb_got = dask.compute(gx, gw, gb, scheduler="threads")
    assert _rel(_from_dims(gx_got, dims), gx_ref) <= TOL[dtype]
    assert gw_got.shape == w.shape
    assert _rel(gw_got, gw_ref) <= TOL[dtype]
    assert _rel(gb_got, gy.astype(np.float64).sum(axis=tuple(range(gy.ndim - 1)))) <= TOL[dtype]


@pytest.mark.parametrize("needs", [(True, False), (False, True)])
@pytest.mark.parametrize("case", ["2d 0CN1 groups mirror", "3d 012CN replicate"])
def test_backward_one_gradient(case, needs):
    c = CASES[case]
    dims = c["dims"]
    x, w, _ = _data(c, np.float64)
    spec = _spec(c, np.float64)
    gy = np.random.default_rng(1).standard_normal((c["n"], *spec.out, spec.F))
    xd = _chunked(_to_dims(x, dims), dims, CHUNKINGS["batch uneven"])
    gyd = _chunked(_to_dims(gy, dims), dims, CHUNKINGS["batch uneven"])
    gx, gw, gb = K.backward(DXP, spec, K.Layout.of(dims, xd, gyd), gyd, xd, da.from_array(w),
                            needs + (False,), force="dask.blockwise")
    assert gb is None
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, c["stride"], c["dil"], c["pb"], c["pa"],
                                  c["value"])
    if needs[0]:
        assert gw is None
        assert _rel(_from_dims(gx.compute(), dims), gx_ref) <= 1e-12
    else:
        assert gx is None
        assert _rel(gw.compute(), gw_ref) <= 1e-12


def test_each_block_runs_once_for_both_gradients(monkeypatch):
    """The fused backward: one kernel call per block computes both gradients, also when
    both are computed together after Dask's graph optimisations."""
    c = CASES["2d 01CN stride dil asym-pad"]
    x, w, _ = _data(c, np.float64)
    spec = _spec(c, np.float64)
    gy = np.ones((c["n"], *spec.out, spec.F))
    xd = _chunked(_to_dims(x, "01CN"), "01CN", CHUNKINGS["batch uneven"])
    gyd = _chunked(_to_dims(gy, "01CN"), "01CN", CHUNKINGS["batch uneven"])
    gx, gw, _ = K.backward(DXP, spec, K.Layout.of("01CN", xd, gyd), gyd, xd,
                           da.from_array(w), (True, True, False))
    calls = []
    real = registry.backward

    def spy(xp, spec, layout, *args, **kw):
        calls.append((registry.library_of(xp), spec.N, args[-1] if args else None))
        return real(xp, spec, layout, *args, **kw)

    monkeypatch.setattr(registry, "backward", spy)
    for scheduler in ("threads", "synchronous"):
        calls.clear()
        dask.compute(gx, gw, scheduler=scheduler)
        assert sorted(n for _, n, _ in calls) == sorted(xd.chunks[3])
        assert {lib for lib, _, _ in calls} == {"numpy"}


def test_empty_batch():
    c = CASES["2d 01CN reflect"]
    spec = _spec(c, np.float64).replace(N=0)
    xd = da.zeros((*c["sp"], c["cg"], 0), chunks=-1)
    w = da.from_array(_data(c, np.float64)[1])
    y = K.forward(DXP, spec, K.Layout.of("01CN", xd), xd, w, None, force="dask.blockwise")
    assert y.compute().shape == (*spec.out, spec.F, 0)
    gy = da.zeros(y.shape)
    gx, gw, _ = K.backward(DXP, spec, K.Layout.of("01CN", xd, gy), gy, xd, w,
                           (True, True, False), force="dask.blockwise")
    assert gx.compute().shape == xd.shape
    np.testing.assert_array_equal(gw.compute(), np.zeros(w.shape))


def test_tuning_reaches_the_blocks(monkeypatch):
    """Settings in force when the graph is built hold in the scheduler's threads."""
    c = CASES["2d 01CN depthwise"]
    x, w, b = _data(c, np.float64)
    xd = _chunked(_to_dims(x, "01CN"), "01CN", CHUNKINGS["batch singles"])
    seen = []
    real = registry.forward

    def spy(xp, *args, **kw):
        seen.append((threading.current_thread().name, K.current().tile_bytes))
        return real(xp, *args, **kw)

    with K.tuning(tile_bytes=12345):
        y = K.forward(DXP, _spec(c, np.float64), K.Layout.of("01CN", xd), xd,
                      da.from_array(w), da.from_array(b))
    monkeypatch.setattr(registry, "forward", spy)
    y.compute(scheduler="threads")
    assert len(seen) == c["n"] and {t for _, t in seen} == {12345}
    assert K.current().tile_bytes != 12345


def test_forced_portable_on_dask_still_works():
    """The portable entry has no Dask special cases left; forced, it is still right."""
    c = CASES["2d 0CN1 groups mirror"]
    dims = c["dims"]
    x, w, b = _data(c, np.float64)
    xd = _chunked(_to_dims(x, dims), dims, CHUNKINGS["batch uneven"])
    y = K.forward(DXP, _spec(c, np.float64), K.Layout.of(dims, xd), xd, da.from_array(w),
                  da.from_array(b), force="portable.im2col")
    ref = ref_conv(x, w, b, c["stride"], c["dil"], c["pb"], c["pa"], c["value"])
    assert isinstance(y, da.Array)
    assert _rel(_from_dims(y.compute(), dims), ref) <= 1e-12
    gy = np.random.default_rng(1).standard_normal(ref.shape)
    gyd = _chunked(_to_dims(gy, dims), dims, CHUNKINGS["batch singles"])
    gx, gw, _ = K.backward(DXP, _spec(c, np.float64), K.Layout.of(dims, xd, gyd), gyd, xd,
                           da.from_array(w), (True, True, False), force="portable.im2col")
    gx_ref, gw_ref = ref_conv_vjp(x, w, gy, c["stride"], c["dil"], c["pb"], c["pa"],
                                  c["value"])
    gx, gw = dask.compute(gx, gw)
    assert _rel(_from_dims(gx, dims), gx_ref) <= 1e-12 and _rel(gw, gw_ref) <= 1e-12


# ---------------------------------------------------------------------------------------
# through fa.conv: formats, padding forms, selection, autodiff

OP_CASES = {
    # format, canonical shape, chunks, weights shape, weights_format, conv kwargs
    "SSCB same": ("SSCB", (7, 6, 4, 5), (7, 6, 4, (2, 3)), (3, 3, 4, 3), None,
                  dict(padding="same")),
    "SSCB [t b l r] stride": ("SSCB", (8, 7, 3, 6), (4, 7, 2, (1, 4, 1)), (3, 2, 3, 4), None,
                              dict(padding=[1, 0, 2, 1], stride=(2, 1), padding_value=0.5)),
    "SSCB groups dilation": ("SSCB", (9, 8, 4, 4), (9, 8, 4, 1), (3, 3, 2, 3, 2), None,
                             dict(padding=[2, 1], dilation_factor=2,
                                  padding_value="symmetric-include-edge")),
    "SCBT over S and T": ("SCBT", (9, 3, 4, 8), (9, 3, 2, 3), (3, 3, 3, 2), "STCU",
                          dict(padding="same", padding_value="replicate")),
    "SSCBT (T batch-like)": ("SSCBT", (6, 5, 2, 3, 4), (6, 5, 2, 2, (1, 3)), (3, 3, 2, 2),
                             None, dict(padding=1)),
    "SSB (no C)": ("SSB", (6, 6, 5), (6, 3, 2), (3, 3, 1, 2), None,
                   dict(padding_value="symmetric-exclude-edge", padding=1)),
    "SSC (no B)": ("SSC", (6, 6, 3), (3, 6, 3), (2, 2, 3, 2), None, dict(stride=2)),
}


def _op_data(case, dtype):
    fmt, shape, chunks, wshape, wfmt, kw = OP_CASES[case]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    nconv = fmt.count("S") + (1 if wfmt and "T" in wfmt else 0)
    nf = wshape[-2] * wshape[-1] if len(wshape) == nconv + 3 else wshape[-1]
    b = rng.standard_normal(nf).astype(dtype)
    return fmt, x, w, b, chunks, wfmt, kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", OP_CASES)
def test_op_matches_numpy(case, dtype):
    fmt, x, w, b, chunks, wfmt, kw = _op_data(case, dtype)
    kw = dict(kw, weights_format=wfmt)
    xd = FormattedArray(da.from_array(x, chunks=chunks), fmt)
    wd, bd = da.from_array(w), da.from_array(b)

    def loss(x, w, b, **extra):
        y = fa.conv(x, w, b, **kw, **extra)
        return fa.sum(y * y) * 0.5

    with dask.config.set(scheduler=_no_compute):
        y = fa.conv(xd, wd, bd, algorithm="dask.blockwise", **kw)
        grads = fa.grad(loss, argnums=(0, 1, 2))(xd, FormattedArray(wd), FormattedArray(bd),
                                                algorithm="dask.blockwise")
    ref = fa.conv(FormattedArray(x, fmt), w, b, **kw)
    assert isinstance(y.data, da.Array)
    assert y.format == ref.format and y.shape == ref.shape and y.dtype == ref.dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert _rel(y.data.compute(), ref.data.astype(np.float64)) <= tol
    refg = fa.grad(loss, argnums=(0, 1, 2))(FormattedArray(x, fmt), FormattedArray(w),
                                            FormattedArray(b))
    got = dask.compute(*(g.data for g in grads))
    for g, a, r in zip(grads, got, refg):
        assert isinstance(g.data, da.Array)
        assert g.format == r.format and a.shape == r.shape and a.dtype == r.dtype
        assert _rel(a, r.data.astype(np.float64)) <= 20 * tol


def test_plan_selects_dask_for_dask_data():
    """Dask data gets the Dask entry for every op (a silent fall-back to the portable
    path fails here), and its blocks get NumPy's own entries."""
    fmt, x, w, b, chunks, wfmt, kw = _op_data("SCBT over S and T", np.float32)
    xd = FormattedArray(da.from_array(x, chunks=chunks), fmt)
    plan = fa.conv_plan(xd, da.from_array(w), weights_format=wfmt, **kw)
    assert plan.library == "dask"
    assert plan.chosen() == {op: "dask.blockwise" for op in K.OPS}
    assert [a.name for a in K.algorithms("dask")][0] == "dask.blockwise"
    plan = fa.conv_plan(FormattedArray(x[..., :3], fmt), w, weights_format=wfmt, **kw)
    assert plan.library == "numpy"
    assert all(name.startswith(("numpy.", "numba.")) for name in plan.chosen().values())


def test_unforced_conv_runs_the_dask_entry_and_numpy_blocks(monkeypatch):
    fmt, x, w, b, chunks, wfmt, kw = _op_data("SSCB same", np.float64)
    xd = FormattedArray(da.from_array(x, chunks=chunks), fmt)
    chosen = []
    real = registry.select

    def spy(op, spec, layout, library, force=None, arrays=None):
        a = real(op, spec, layout, library, force, arrays)
        chosen.append((op, library, a.name))
        return a

    monkeypatch.setattr(registry, "select", spy)

    def loss(x, w):
        return fa.sum(fa.conv(x, w, **kw) ** 2)

    gx, gw = fa.grad(loss, argnums=(0, 1))(xd, FormattedArray(da.from_array(w)))
    assert {(op, name) for op, lib, name in chosen if lib == "dask"} == {
        ("forward", "dask.blockwise"), ("input_grad", "dask.blockwise"),
        ("weight_grad", "dask.blockwise")}
    chosen.clear()
    dask.compute(gx.data, gw.data)
    assert chosen and all(lib == "numpy" and not name.startswith("portable")
                          for _, lib, name in chosen), chosen


def test_autodiff_through_conv_on_dask():
    """fa.grad through a small network of conv, relu and a label-broadcast bias on Dask
    equals NumPy's, and every gradient stays a lazy Dask array."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 8, 3, 6))
    w1 = rng.standard_normal((3, 3, 3, 4)) / 3
    w2 = rng.standard_normal((3, 3, 4, 2)) / 3
    b1 = rng.standard_normal(4)

    def loss(x, w1, b1, w2):
        h = fa.relu(fa.conv(x, w1, b1, padding="same"))
        y = fa.conv(h, w2, stride=2)
        return fa.mean(y * y)

    args_np = [FormattedArray(x, "SSCB"), FormattedArray(w1), FormattedArray(b1),
               FormattedArray(w2)]
    args_da = [FormattedArray(da.from_array(x, chunks=(8, 4, 3, (2, 1, 3))), "SSCB"),
               FormattedArray(da.from_array(w1)), FormattedArray(da.from_array(b1)),
               FormattedArray(da.from_array(w2))]
    with dask.config.set(scheduler=_no_compute):
        val, grads = fa.value_and_grad(loss, argnums=(0, 1, 2, 3))(*args_da)
    rval, rgrads = fa.value_and_grad(loss, argnums=(0, 1, 2, 3))(*args_np)
    assert isinstance(val.data, da.Array)
    np.testing.assert_allclose(float(val.data.compute()), float(rval.data), rtol=1e-12)
    for g, r in zip(grads, rgrads):
        assert isinstance(g.data, da.Array) and g.format == r.format
        np.testing.assert_allclose(g.data.compute(), r.data, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("one_per_core", [True, False])
def test_blocks_leave_blas_threads_alone(monkeypatch, one_per_core):
    """Whether the blocks run one per scheduler thread (concurrent kernel calls, each
    holding BLAS at one thread through the runtime's shared, counted limit) or take
    turns, BLAS's process-wide thread count is what it was, and the values are the same
    bit for bit on every compute."""
    from fmtarray._kernels.conv import _dask

    monkeypatch.setattr(_dask, "_one_per_core", lambda cxp, n_blocks: one_per_core)
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas():
        return sorted(i["num_threads"] for i in threadpoolctl.threadpool_info()
                      if i["user_api"] == "blas")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16, 16, 16), dtype=np.float32)  # 01CN, blocks of 4
    w = rng.standard_normal((3, 3, 16, 16, 1), dtype=np.float32)
    spec = K.ConvSpec(16, (16, 16), 16, (3, 3), 16, 16, 1, (1, 1), (1, 1), (1, 1), (1, 1))
    xd = da.from_array(x, chunks=(16, 16, 16, 4))
    gx, gw, _ = K.backward(DXP, spec, K.Layout.of("01CN", xd, xd), xd, xd,
                           da.from_array(w), (True, True, False))
    before = blas()
    first = dask.compute(gx, gw, scheduler="threads", num_workers=4)
    for _ in range(10):
        again = dask.compute(gx, gw, scheduler="threads", num_workers=4)
        for a, b in zip(again, first):
            np.testing.assert_array_equal(a, b)
    assert blas() == before


@pytest.mark.parametrize("cores, blocks, expected", [
    (2, 4, True), (2, 2, True), (2, 5, False), (2, 3, False), (2, 1, False),
    (4, 7, True), (4, 6, False), (1, 8, False)])
def test_blocks_run_one_per_core_only_when_they_fill_the_cores(monkeypatch, cores, blocks,
                                                               expected):
    """Blocks of NumPy chunks run on their scheduler thread alone when every round of
    blocks keeps at least ``MIN_LAST_ROUND`` of the cores busy; otherwise they take
    turns, each spread over every core by the kernels' own pool."""
    from fmtarray._kernels.conv import _dask
    from fmtarray._kernels.conv._numpy import _runtime

    monkeypatch.setattr(_runtime, "n_workers", lambda: cores)
    assert _dask._one_per_core(NXP, blocks) is expected
    try:
        import array_api_strict as xs
    except ImportError:
        return
    assert _dask._one_per_core(xs, blocks) is False  # another chunk library: turns


def test_one_block_per_core_runs_on_the_scheduler_threads(monkeypatch):
    """With 4 batch blocks on 2 kernel workers, each block enters the runtime's
    calling-thread mode (no pool, BLAS at one thread) and the values match NumPy's."""
    from fmtarray._kernels.conv._numpy import _runtime

    monkeypatch.setattr(_runtime, "n_workers", lambda: 2)
    entered = []
    real = _runtime.on_calling_thread

    def spy():
        entered.append(threading.get_ident())
        return real()

    monkeypatch.setattr(_runtime, "on_calling_thread", spy)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 12, 8, 8), dtype=np.float64)  # 01CN, 4 blocks of 2
    gy = rng.standard_normal((12, 12, 8, 8), dtype=np.float64)
    w = rng.standard_normal((3, 3, 8, 8, 1), dtype=np.float64)
    spec = K.ConvSpec(8, (12, 12), 8, (3, 3), 8, 8, 1, (1, 1), (1, 1), (1, 1), (1, 1),
                      0.0, (), "float64")
    xd, gyd = da.from_array(x, chunks=(12, 12, 8, 2)), da.from_array(gy, chunks=(12, 12, 8, 2))
    gx, gw, _ = K.backward(DXP, spec, K.Layout.of("01CN", xd, gyd), gyd, xd,
                           da.from_array(w), (True, True, False))
    got = dask.compute(gx, gw, scheduler="threads", num_workers=2)
    ref = K.backward(NXP, spec, K.Layout.of("01CN", x, gy), gy, x, w, (True, True, False))
    assert len(entered) == 4
    for a, r in zip(got, ref[:2]):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)
