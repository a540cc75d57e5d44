"""What the compiled (Numba) kernels keep and copy around their tiles: the index plans'
cache (bounded, shared by threads), the border groups' weight rows, the transposing copies
of batch-innermost data and of the input gradient's weights."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

import array_api_compat.numpy as cnp

from fmtarray._kernels.conv import _numba
from kernel_calls import spec_of

needs_numba = pytest.mark.skipif(os.environ.get("FMTARRAY_NUMBA") == "0"
                                 or _numba.unavailable() is not None,
                                 reason="numba unavailable or FMTARRAY_NUMBA=0")


def test_plan_cache_is_bounded_by_bytes(monkeypatch):
    """The plans' index arrays (16 bytes per output position) are kept for the next calls
    within PLAN_CACHE_BYTES, the least recently used going first; a hit returns the same
    arrays."""
    from fmtarray._kernels.conv._numba import plans as direct

    rng = np.random.default_rng(0)
    specs = [spec_of(cnp, rng.standard_normal((2, n, n, 3)), np.zeros((3, 3, 3, 4, 1)))
             for n in (9, 10, 11, 12)]
    direct.forward_plan.cache_clear()
    first = direct.forward_plan(specs[0])
    assert direct.forward_plan(specs[0])[0] is first[0]
    for s in specs[1:3]:
        direct.forward_plan(s)
    assert len(direct.forward_plan.cache) == 3
    direct.forward_plan(specs[0])  # a hit: now the most recently used
    monkeypatch.setattr(direct, "PLAN_CACHE_BYTES", 4000)  # one 10×10 output's plan
    direct.forward_plan(specs[3])  # 2·10·10 positions × 16 bytes: the others go
    assert list(direct.forward_plan.cache) == [(specs[3], None)]
    monkeypatch.setattr(direct, "PLAN_CACHE_BYTES", 7000)
    direct.forward_plan(specs[2])  # 2·9·9 positions fit beside it
    assert list(direct.forward_plan.cache) == [(specs[3], None), (specs[2], None)]
    held = [a.nbytes for plan, _ in direct.forward_plan.cache.values() for a in plan
            if isinstance(a, np.ndarray)]
    assert direct.forward_plan.cache_bytes() == sum(held) >= 16 * 2 * (10 * 10 + 9 * 9)


class _SlowHash:
    """A key whose hash runs Python code and gives the GIL away, as a ConvSpec's does."""

    def __init__(self, n):
        self.n = n

    def __hash__(self):
        time.sleep(0)
        return hash(self.n)

    def __eq__(self, other):
        return isinstance(other, _SlowHash) and other.n == self.n


def test_plan_cache_is_safe_across_threads(monkeypatch):
    """Dask runs blocks in several threads at once: lookups, insertions and evictions
    of one plan cache interleave (a CI run once raised "OrderedDict mutated during
    iteration" here). Every caller gets its own key's plan, and the cache's byte count
    stays the sum of what it holds, within the bound."""
    import threading

    from fmtarray._kernels.conv._numba import plans

    monkeypatch.setattr(plans, "PLAN_CACHE_BYTES", 5 * 80)
    get = plans._cached(lambda key, channels: np.full(10, key.n, np.int64))  # 80 bytes
    errors, barrier = [], threading.Barrier(4)

    def work(seed):
        rng = np.random.default_rng(seed)
        barrier.wait()
        try:
            for n in rng.integers(0, 12, 3000).tolist():
                got = get(_SlowHash(n))
                assert got.shape == (10,) and (got == n).all(), (n, got)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    held = list(get.cache.values())
    assert 1 <= len(held) <= 5
    assert get.cache_bytes() == sum(nbytes for _, nbytes in held) == 80 * len(held)


@pytest.mark.parametrize("ndim", [3, 4, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposing_copy_of_batch_innermost_data(monkeypatch, ndim, dtype):
    """The blocked copy hands a batch-innermost source (canonical data, a Dask
    batch chunk's view, a flipped view) to the compiled transposing copy: the same values
    as NumPy's copyto into any destination strides (20 samples × 11 channels: 8×8 blocks
    and both remainders); channels-innermost sources, batches under ``MIN_BATCH``, other
    dtypes and ``FMTARRAY_NUMBA=0`` keep NumPy's copy."""
    from fmtarray._kernels.conv._numba import _copy
    from fmtarray._kernels.conv._numpy import _copies as rt

    used = []
    real = _copy.copy
    monkeypatch.setattr(_copy, "copy", lambda d, s: used.append(real(d, s)) or used[-1])
    rng = np.random.default_rng(ndim)
    shape = (20, *(9, 7, 5)[:ndim - 2], 11)  # (N, *sp, C)
    whole = rng.standard_normal((*shape[1:], 3 * shape[0])).astype(dtype)  # batch innermost
    sources = {
        "canonical": np.moveaxis(np.ascontiguousarray(whole[..., :shape[0]]), -1, 0),
        "chunk view": np.moveaxis(whole[..., shape[0]:2 * shape[0]], -1, 0),
        "flipped": np.moveaxis(whole[..., ::-1][..., :shape[0]], -1, 0),
    }
    for name, src in sources.items():
        pad = np.zeros((shape[0], *(n + 2 for n in shape[1:-1]), shape[-1] + 3), dtype)
        dst = pad[(slice(None),) + (slice(1, -1),) * (ndim - 2) + (slice(0, shape[-1]),)]
        used.clear()
        rt.copy_blocked(dst, src, block=16)
        np.testing.assert_array_equal(dst, src, err_msg=name)
        assert used == ([True] if numba_on() else []), name
        assert not pad[(slice(None),) * (ndim - 1) + (slice(shape[-1], None),)].any()
    cl = np.ascontiguousarray(sources["canonical"])  # channels innermost: NumPy's copy
    out = np.empty_like(cl)
    used.clear()
    rt.copy_blocked(out.transpose(*range(ndim)), cl[:, ::-1][:, ::-1], block=16)
    np.testing.assert_array_equal(out, cl)
    assert used in ([], [False])
    few = sources["chunk view"][:_copy.MIN_BATCH - 1]  # too few samples: NumPy's copy
    out = np.empty(few.shape, dtype)
    used.clear()
    rt.copy_blocked(out, few, block=16)
    np.testing.assert_array_equal(out, few)
    assert not any(used) and bool(used) == numba_on()  # asked (per block), declined
    monkeypatch.setenv("FMTARRAY_NUMBA", "0")
    used.clear()
    rt.copy_blocked(dst, sources["chunk view"], block=16)
    np.testing.assert_array_equal(dst, sources["chunk view"])
    assert used == []



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposing_copy_swaps_any_two_innermost_dims(monkeypatch, dtype):
    """``SCBT`` data copied channels-last (``(B, S, T, C)``, time innermost in the source,
    channels in the destination), and the way back: the compiled copy takes it (the
    source's innermost dim has at least ``MIN_BATCH`` values), with NumPy's values."""
    from fmtarray._kernels.conv._numba import _copy
    from fmtarray._kernels.conv._numpy import _copies as rt

    used = []
    real = _copy.copy
    monkeypatch.setattr(_copy, "copy", lambda d, s: used.append(real(d, s)) or used[-1])
    rng = np.random.default_rng(7)
    S, C, B, T = 9, 19, 3, 21
    scbt = rng.standard_normal((S, C, B, T)).astype(dtype)  # canonical SCBT memory
    src = scbt.transpose(2, 0, 3, 1)  # (B, S, T, C) view: T innermost
    dst = np.empty((B, S, T, C), dtype)
    rt.copy_blocked(dst, src, block=16)
    np.testing.assert_array_equal(dst, src)
    back = np.empty_like(scbt).transpose(2, 0, 3, 1)  # canonical memory, channels-last view
    rt.copy_blocked(back, dst, block=16)
    np.testing.assert_array_equal(back, dst)
    assert used[:1] == ([True] if numba_on() else [])
    assert (True in used[1:]) == numba_on()

def numba_on():
    return os.environ.get("FMTARRAY_NUMBA") != "0" and _numba.unavailable() is None


@needs_numba
@pytest.mark.parametrize("case", ["3-D", "grouped, strided 2-D", "channel-wise"])
def test_border_groups_gather_and_add_their_weight_rows_as_one_op_per_group(case):
    """The groups of a border plan take their rows of the weights by one gather and
    add their weight-gradient sums into the gradient by one compiled loop: the same
    values (and bits) as one ``wt[:, rows]`` and one ``acc[:, rows] += part`` per group;
    a group that reads every row gets the weights themselves."""
    from fmtarray._kernels.conv._numba import direct, plans

    rng = np.random.default_rng(3)
    if case == "3-D":
        spec = spec_of(cnp, np.zeros((2, 5, 6, 7, 4)), np.zeros((3, 3, 3, 4, 5, 1)),
                       pad_before=1, pad_after=1)
    elif case == "grouped, strided 2-D":
        spec = spec_of(cnp, np.zeros((2, 9, 8, 6)), np.zeros((3, 2, 3, 5, 2)), stride=2,
                       pad_before=(1, 0), pad_after=(2, 1))
    else:
        spec = spec_of(cnp, np.zeros((2, 7, 7, 16)), np.zeros((3, 3, 1, 1, 16)),
                       pad_before=1, pad_after=1)
    axis = 0 if case == "channel-wise" else 1
    channels = spec.C if axis == 0 else None
    groups, _ = plans.border_plan(spec, channels)
    rows = plans.border_rows(spec, channels)
    assert plans.border_rows(spec, channels) is rows  # kept with the plans
    assert len(groups) >= 3
    total = spec.K if axis == 0 else spec.K * spec.Cg
    shape = (total, 16) if axis == 0 else (spec.G, total, spec.Fg)
    wt = rng.standard_normal(shape).astype(np.float32)
    got = direct.group_weights(wt, rows, axis)
    for g, w in zip(groups, got):
        r = np.asarray(g[4])
        np.testing.assert_array_equal(w, np.take(wt, r, axis=axis))
        if len(r) == total and (r == np.arange(total)).all():
            assert w is wt
    assert any(w is wt for w in got) and not all(w is wt for w in got)
    parts = [rng.standard_normal(np.take(wt, np.asarray(g[4]), axis=axis).shape)
             .astype(np.float32) for g in groups]
    want = np.zeros_like(wt)
    for g, p in zip(groups, parts):
        idx = (slice(None),) * axis + (np.asarray(g[4]),)
        want[idx] += p
    cat = [np.concatenate(parts, axis=0)] if axis == 0 else parts
    got = direct.summed_rows(cat, rows, total, axis)
    assert got.shape == want.shape and got.tobytes() == want.tobytes()


@needs_numba
@pytest.mark.parametrize("groups, cg, fg", [(1, 16, 24), (2, 11, 13), (3, 5, 3), (1, 1, 9)])
def test_input_grad_weights_transposed_by_the_compiled_copy(groups, cg, fg):
    """The input gradient's weights ``(G, T·Fg, Cg)`` (the taps in the given order),
    written by the 8×8-blocked compiled copy and its remainders, from weights in any
    memory order: NumPy's transposing copy gives the same array."""
    from fmtarray._kernels.conv._numba import direct
    from fmtarray._kernels.conv._numpy._runtime import kernel_call

    rng = np.random.default_rng(4)
    k = (3, 2)
    w = rng.standard_normal((groups, fg, cg, *k)).astype(np.float32).transpose(3, 4, 2, 1, 0)
    assert not w.flags.c_contiguous  # MATLAB's (*k, Cg, Fg, G) as a strided view
    spec = spec_of(cnp, np.zeros((1, 4, 4, groups * cg)), w)
    taps = np.array([[2, 1], [0, 0], [1, 1], [0, 1]])
    with kernel_call(spec):  # (its taps split over the workers)
        got = direct._transposed(w, taps, spec)
    want = np.ascontiguousarray(w[taps[:, 0], taps[:, 1]].transpose(3, 0, 2, 1))
    assert got.shape == (groups, len(taps) * fg, cg)
    np.testing.assert_array_equal(got, want.reshape(groups, -1, cg))


@needs_numba
@pytest.mark.parametrize("entry,kernel,groups,in_place", [
    ("numba.direct", "forward_positions", 1, False),
    ("numba.direct", "forward_positions", 1, True),
    ("numba.depthwise", "channelwise_positions", 16, True),
    ("numba.direct", "_wgrad_pieces.weight_grad", 1, False),
    ("numba.direct", "_wgrad_pieces.weight_grad", 1, True),
    ("numba.depthwise", "channelwise_weight_grad_positions", 16, False),
    ("numba.depthwise", "channelwise_weight_grad_positions", 16, True),
])
@pytest.mark.usefixtures("python_pool")
def test_item_of_a_stuck_pool_thread_is_redone(monkeypatch, entry, kernel, groups, in_place):
    """A pool thread stopped in the middle of a forward or weight-gradient item (another
    thread holding its CPU) does not hold up the call: the caller redoes the item into a
    copy of the output (of the partial sums) and returns; the stale item, when it ends,
    writes only the old one."""
    import threading

    from conv_reference import ref_conv
    from fmtarray._kernels.conv import tuning
    from fmtarray._kernels.conv._numba import _simd, _wgrad_pieces
    from fmtarray._kernels.conv._numpy import _runtime as rt
    from kernel_calls import conv_backward, conv_forward
    from test_numpy_algos import ref_conv_vjp

    if rt.workers()[1] < 2:
        pytest.skip("needs more than one worker")
    module = _wgrad_pieces if kernel.startswith("_wgrad_pieces.") else _simd
    kernel = kernel.rpartition(".")[2]
    real = getattr(module, kernel)
    main = threading.get_ident()
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    stuck = []

    def held(*a):
        if threading.get_ident() != main and not stuck:
            stuck.append(True)
            started.set()
            release.wait(30)
            real(*a)
            finished.set()
            return
        started.wait(5)
        real(*a)

    monkeypatch.setattr(module, kernel, held)
    rng = np.random.default_rng(3)
    c = 16
    x = rng.standard_normal((4, 11, 9, c)).astype(np.float32)
    w = rng.standard_normal((3, 3, c // groups, 1 if groups > 1 else 24, groups)
                            ).astype(np.float32)
    b = rng.standard_normal(w.shape[3] * groups).astype(np.float32)
    kw = dict(stride=(1, 1), dilation=(1, 1), pad_before=(1, 1), pad_after=(1, 1),
              pad_value=0.0)
    args = ((1, 1), (1, 1), (1, 1), (1, 1), 0.0)
    wgrad = kernel.endswith(("weight_grad_positions", "weight_grad"))
    gy = rng.standard_normal((4, 11, 9, w.shape[3] * groups)).astype(np.float32)
    t0 = time.perf_counter()
    try:
        with tuning(serial_macs=0, direct_in_place_ratio=0 if in_place else 1 << 40):
            if wgrad:
                y = conv_backward(cnp, gy, x, w, needs=(False, True, False), force=entry,
                                  **kw)[1]
            else:
                y = conv_forward(cnp, x, w, b, force=entry, **kw)
        took = time.perf_counter() - t0
        kept = np.array(y, copy=True)
    finally:
        release.set()
    assert stuck and took < 10
    ref = ref_conv_vjp(x, w, gy, *args)[1] if wgrad else ref_conv(x, w, b, *args)
    np.testing.assert_allclose(kept, ref, rtol=1e-4, atol=1e-3)
    assert finished.wait(30)
    np.testing.assert_array_equal(y, kept)


def test_group_items_cover_each_position_once_small_groups_bundled():
    """A phase's items over a plan's groups: every position of every group once per
    filter block, about ``nb`` blocks of equal size, the groups smaller than a block
    bundled (not one item each), the biggest items first; the list is kept for the same
    groups list (a cached plan's) and rebuilt for a fresh single group."""
    from fmtarray._kernels.conv._numba import plans

    sizes = [1000, 90, 90, 90, 7, 7, 3, 3, 0, 250]
    groups = [(np.zeros(m, np.int64),) for m in sizes]
    vblocks = ((0, 4), (4, 6))
    items = plans.group_items(groups, 8, vblocks)
    assert plans.group_items(groups, 8, vblocks) is items
    assert plans.group_items(list(groups), 8, vblocks) is not items  # another list
    for vb in vblocks:
        seen = {i: np.zeros(m, int) for i, m in enumerate(sizes)}
        for item in items:
            for i, q0, q1, va, vbb in item:
                if (va, vbb) == vb:
                    seen[i][q0:q1] += 1
        assert all((s == 1).all() for s in seen.values())
    size = -(-sum(sizes) // 8)
    per = [sum(q1 - q0 for _, q0, q1, _, _ in it) for it in items[::len(vblocks)]]
    assert per == sorted(per, reverse=True)
    assert len(per) <= 8 + 2 and max(per) <= 2 * size
    bundles = [it for it in items if len(it) > 1]
    assert bundles and all(sum(q1 - q0 for _, q0, q1, _, _ in it) <= 2 * size for it in bundles)
    one = [(np.zeros(100, np.int64),)]
    got = plans.group_items(one, 4)
    assert [(it[0][1], it[0][2]) for it in got] == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert plans.group_items([(np.zeros(100, np.int64),)], 4) is not got


@needs_numba
def test_bundled_border_weight_grad_has_the_same_bits_for_any_workers():
    """The weight gradient read in place (border groups, the small ones bundled into
    items by the number of workers): the direct-loop reference's values, and the same
    bits with 1, 2 or 3 workers."""
    from fmtarray._kernels.conv import tuning
    from fmtarray._kernels.conv._numpy import _runtime as rt
    from kernel_calls import conv_backward
    from test_numpy_algos import ref_conv_vjp

    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 7, 6, 5, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4, 5, 1)).astype(np.float32)
    gy = rng.standard_normal((3, 7, 6, 5, 5)).astype(np.float32)
    kw = dict(stride=(1, 1, 1), dilation=(1, 1, 1), pad_before=(1, 1, 1),
              pad_after=(1, 1, 1), pad_value=0.0)
    ref = ref_conv_vjp(x, w, gy, (1, 1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1), 0.0)[1]
    bits = set()
    old = rt.n_workers
    try:
        for workers in (1, 2, 3):
            rt.n_workers = lambda workers=workers: workers
            with tuning(serial_macs=0, direct_in_place_ratio=0):
                gw = conv_backward(cnp, gy, x, w, needs=(False, True, False),
                                   force="numba.direct", **kw)[1]
            np.testing.assert_allclose(gw, ref, rtol=1e-4, atol=1e-4)
            bits.add(gw.tobytes())
    finally:
        rt.n_workers = old
    assert len(bits) == 1


@needs_numba
@pytest.mark.parametrize("in_place", [False, True])
def test_grouped_forward_over_chunks_of_positions(in_place):
    """A grouped forward and input gradient whose items hold more positions than
    ``GROUP_CHUNK`` (on the calling thread: one item) sum every group over each chunk in
    turn: the direct-loop reference's values, and the same bits as on the pool (items of
    fewer positions than a chunk)."""
    from conv_reference import ref_conv
    from fmtarray._kernels.conv import tuning
    from fmtarray._kernels.conv._numba._simd import GROUP_CHUNK
    from kernel_calls import conv_backward, conv_forward
    from test_numpy_algos import ref_conv_vjp

    rng = np.random.default_rng(12)
    G, cg, fg = 3, 5, 6
    x = rng.standard_normal((3, 17, 15, G * cg)).astype(np.float32)
    w = rng.standard_normal((3, 2, cg, fg, G)).astype(np.float32)
    b = rng.standard_normal(G * fg).astype(np.float32)
    kw = dict(stride=(1, 1), dilation=(1, 1), pad_before=(1, 0), pad_after=(1, 1),
              pad_value=0.0)
    args = ((1, 1), (1, 1), (1, 0), (1, 1), 0.0)
    assert 3 * 17 * 15 > 2 * GROUP_CHUNK
    gy = rng.standard_normal((3, 17, 15, G * fg)).astype(np.float32)
    force = {"forward": "numba.direct", "input_grad": "numba.direct_input_grad"}
    ratio = 0 if in_place else 1 << 40
    got = []
    for serial in (1 << 60, 0):
        with tuning(serial_macs=serial, direct_in_place_ratio=ratio,
                    direct_input_grad_in_place_ratio=ratio):
            y = conv_forward(cnp, x, w, b, force="numba.direct", **kw)
            gx = conv_backward(cnp, gy, x, w, needs=(True, False, False), force=force,
                               **kw)[0]
        got.append((np.array(y), np.array(gx)))
    np.testing.assert_allclose(got[0][0], ref_conv(x, w, b, *args), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[0][1], ref_conv_vjp(x, w, gy, *args)[0], rtol=1e-4,
                               atol=1e-4)
    assert got[0][0].tobytes() == got[1][0].tobytes()
    assert got[0][1].tobytes() == got[1][1].tobytes()


@needs_numba
def test_depthwise_gradients_in_one_pass_have_the_same_bits_for_any_workers():
    """Both channel-wise gradients in one pass over the cotangent (blocks of the interior
    group, the border groups bundled, every block's weight-gradient part added in block
    order): the direct-loop reference's values, the input gradient with the bits of the
    input gradient alone, and the same bits with 1, 2 or 3 workers."""
    from fmtarray._kernels.conv import tuning
    from fmtarray._kernels.conv._numba import depthwise as dw
    from fmtarray._kernels.conv._numpy import _runtime as rt
    from kernel_calls import conv_backward
    from test_numpy_algos import ref_conv_vjp

    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 23, 19, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 1, 1, 32)).astype(np.float32)
    gy = rng.standard_normal((3, 23, 19, 32)).astype(np.float32)
    kw = dict(stride=(1, 1), dilation=(1, 1), pad_before=(1, 1), pad_after=(1, 1),
              pad_value=0.0)
    rx, rw = ref_conv_vjp(x, w, gy, (1, 1), (1, 1), (1, 1), (1, 1), 0.0)[:2]
    used, bits = [], set()
    orig, old = dw._simd_gradients, rt.n_workers
    dw._simd_gradients = lambda *a: (lambda r: used.append(r is not None) or r)(orig(*a))
    try:
        for workers in (1, 2, 3):
            rt.n_workers = lambda workers=workers: workers
            with tuning(serial_macs=0):
                gx, gw = conv_backward(cnp, gy, x, w, needs=(True, True, False),
                                       force="numba.depthwise", **kw)[:2]
                gx1 = conv_backward(cnp, gy, x, w, needs=(True, False, False),
                                    force="numba.depthwise", **kw)[0]
            np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(gw, rw, rtol=1e-4, atol=1e-4)
            assert gx.tobytes() == gx1.tobytes()
            bits.add(gx.tobytes() + gw.tobytes())
    finally:
        rt.n_workers, dw._simd_gradients = old, orig
    assert used == [True] * 3 and len(bits) == 1
