"""Dask's convolution: block by block, the chunk library's kernels inside each block.

The kernel arrays (``layout.dims`` order, e.g. ``"01CN"``) keep their chunks:

* ``N`` (every batch-like dim merged) is split as the input is (uneven chunks too);
* a **chunked convolved dim keeps its chunking**: :mod:`._dask_halo` plans, per output
  block, the input window it reads (its own chunk plus halos of about
  ``(k - 1) · dilation`` from its neighbours, split per the padding; strides honoured
  across chunk boundaries) and the output has as many chunks as the input along that
  dim (SPEC §6). Mirror/replicate padding of a chunked dim is applied lazily to the
  Dask array first; constant padding is added by each block's kernel. A convolved dim
  with input dilation (``lhs_dilation > 1``) is rechunked to one block;
* a chunked ``C`` is **rechunked to one block** (every filter needs every channel of
  its group);
* the weights and the bias are rechunked to one block each and handed to every block;
* each block runs the **chunk library's own registry** (:func:`.registry.forward` /
  :func:`.registry.backward` with the chunk's namespace, found from the Dask array's
  ``_meta``; NumPy chunks get the NumPy kernels) on the same :class:`~.spec.ConvSpec`
  with ``N``, the window sizes and the block's own padding, and a :class:`~.spec.Layout`
  of the block. A dim in one chunk is read whole with the op's padding, so an input
  chunked along ``N`` only runs exactly the kernel calls of the unchunked op per batch
  block;
* **forward**: one task per output block;
* **backward** (fused): one task per output block computes the gradient with respect
  to its window and its partial weight gradient in one kernel call; the input gradient
  of each input chunk adds the window gradients overlapping it (one task per chunk;
  where halos overlap, the sum is in block order, so it may differ from the unchunked
  kernel's in the last bits); the partial weight gradients are added by a tree of
  tasks, each adding up to :data:`SPLIT_EVERY` of them (a partial is freed once added).
  The bias gradient is the front door's ``xp.sum``.

Everything stays lazy: nothing is computed until the caller computes, and the graph has
a bounded number of tasks per input chunk: one kernel task per block, one more per
input chunk for the input gradient, about one in ``SPLIT_EVERY - 1`` for the sums, plus
the rechunks of the inputs. The tuning settings in force when the graph is built
(:func:`.tuning.current`) are the ones the blocks run with, whichever thread of the
scheduler runs them.

Threads. Dask's threaded scheduler runs one task per core at once, and the NumPy
kernels spread one call over every core too (their own worker pool, BLAS held at one
thread meanwhile), so the two must not both be the parallelism. When the chunks are
NumPy arrays and there are enough batch blocks to keep every core busy (at least one
per kernel worker, and the last round of blocks at least :data:`MIN_LAST_ROUND` full),
each block runs on its scheduler thread alone (``_numpy._runtime.on_calling_thread``:
no pool, BLAS at one thread) and Dask's threads are the parallelism: the way Dask
recommends running BLAS-backed tasks. Otherwise (few blocks, or another chunk library
with threads of its own) the blocks' kernel calls take turns (:data:`_POOL_TURN`, one
process-wide lock), each spread over every core by its own library. The choice is made
when the graph is built, so a graph computes the same values (bit for bit) each time.
Measured in ``benchmarks/dask_conv.py``. Dask's synchronous scheduler or one worker
thread, asked for explicitly, run the blocks on that one thread.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading

from ... import _backend
from . import registry
from ._dask_halo import Grads
from .registry import Algo, register
from .spec import Layout, effective_size
from .thresholds import current, tuning

__all__ = ["SPLIT_EVERY", "forward", "backward"]

#: partial weight gradients added per task of the tree reduction
SPLIT_EVERY = 8

#: the blocks' kernel calls run one at a time when they use every core each (see the
#: module docstring)
_POOL_TURN = threading.Lock()

#: blocks run one per core only if the last round of blocks keeps at least this share of
#: the cores busy (4 blocks on 2 cores: 1.0; 3 blocks: 0.5, so they take turns instead)
MIN_LAST_ROUND = 0.75


def _new_lock_in_child():  # a fork while another thread held the lock leaves it held
    global _POOL_TURN
    _POOL_TURN = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def _da():
    import dask.array as da

    return da


def _chunk_namespace(a):
    """Array-API namespace of the chunks of the Dask array ``a`` (from its ``_meta``)."""
    meta = getattr(a, "_meta", None)
    if meta is None or not _backend.is_array(meta):
        import numpy as np

        meta = np.empty((0,))
    return _backend.namespace(meta)


def _one_block(a):
    """A Dask array in one chunk (a non-Dask array made into one)."""
    da = _da()
    if not isinstance(a, da.Array):
        return da.from_array(a, chunks=tuple(a.shape) or ())
    return a if a.npartitions == 1 else a.rechunk(-1)


def _block_key(a):
    """The key of a one-chunk Dask array's only block."""
    return (a.name,) + (0,) * a.ndim


def _input_chunks(x, spec, dims):
    """``x`` with ``C`` in one chunk, and a convolved dim with input dilation (whose
    windows this module does not plan) in one chunk; other dims keep their chunks."""
    target = {dims.index("C"): -1}
    for i, s in enumerate(spec.lhs_dilation):
        if s > 1:
            target[dims.index(str(i))] = -1
    if all(len(x.chunks[ax]) == 1 for ax in target):
        return x
    return x.rechunk(target)


def _windows(spec, dims, x):
    from ._dask_halo import Windows

    axes = [dims.index(str(i)) for i in range(spec.d)]
    eff = [effective_size(k, dl) for k, dl in zip(spec.k, spec.dilation)]
    return Windows(x, axes, eff, spec.stride, spec.pb, spec.pa, spec.out, spec.value)


def _one_per_core(cxp, n_blocks):
    """Whether each of ``n_blocks`` blocks of chunk namespace ``cxp`` runs on its
    scheduler thread alone (see the module docstring)."""
    if registry.library_of(cxp) != "numpy":
        return False
    from ._numpy._runtime import n_workers

    cores = n_workers()
    last = n_blocks % cores or cores
    return cores > 1 and n_blocks >= cores and last >= MIN_LAST_ROUND * cores


def _threads(one_per_core):
    if not one_per_core:
        return _POOL_TURN
    from ._numpy._runtime import on_calling_thread

    return on_calling_thread()


def _block_spec(spec, dims, x, lb, la):
    """``spec`` for a block: its ``N``, its window sizes and the padding it adds."""
    n = x.shape[dims.index("N")]
    sp = tuple(x.shape[dims.index(str(i))] for i in range(spec.d))
    if (n, sp, lb, la) == (spec.N, spec.sp, spec.pb, spec.pa):
        return spec
    return spec.replace(N=n, sp=sp, pb=lb, pa=la)


def _forward_block(x, lb, la, w, b, *, spec, dims, settings, one_per_core):
    cxp = _backend.namespace(x)
    bspec = _block_spec(spec, dims, x, lb, la)
    with tuning(**settings), _threads(one_per_core):
        return registry.forward(cxp, bspec, Layout.of(dims, x), x, w, b)


def _backward_block(x, lb, la, gy, w, *, spec, dims, settings, one_per_core, needs):
    cxp = _backend.namespace(x)
    bspec = _block_spec(spec, dims, x, lb, la)
    with tuning(**settings), _threads(one_per_core):
        gx, gw, _ = registry.backward(cxp, bspec, Layout.of(dims, x, gy), gy, x, w,
                                      (needs[0], needs[1], False))
    return Grads(gx, gw)


def _sum_gw(*parts):
    """The sum of blocks' (or partial sums') weight gradients, in their order."""
    acc = None
    for p in parts:
        g = p.gw if isinstance(p, Grads) else p
        acc = g if acc is None else acc + g
    return acc


def _tree_sum(blocks, keys, name, shape, meta):
    """The weight gradient: the blocks' partials added by a tree of tasks, each adding
    up to :data:`SPLIT_EVERY` of them (partials are freed as soon as they are added)."""
    from dask.highlevelgraph import HighLevelGraph

    da = _da()
    dsk = {}
    level = list(keys)
    depth = 0
    while depth == 0 or len(level) > 1:
        nxt = []
        for j, i in enumerate(range(0, len(level), SPLIT_EVERY)):
            key = (name + "-%d" % depth, j) if len(level) > SPLIT_EVERY else None
            key = key or (name,) + (0,) * len(shape)
            dsk[key] = (_sum_gw, *level[i:i + SPLIT_EVERY])
            nxt.append(key)
        level = nxt
        depth += 1
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[blocks])
    return da.Array(graph, name, tuple((n,) for n in shape), meta=meta)


def _settings():
    t = current()
    return {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}


def _out_dtype(spec, x):
    cxp = _chunk_namespace(x)
    return cxp, getattr(cxp, spec.dtype)


def forward(xp, spec, layout, x, w, b):
    """``y`` (a lazy Dask array, ``layout.dims`` order; the input's chunks along ``N``
    and, planned by :mod:`._dask_halo`, as many along each convolved dim)."""
    dims = layout.dims
    x = _input_chunks(x, spec, dims)
    win = _windows(spec, dims, x)
    w = _one_block(w)
    b = None if b is None else _one_block(b)
    cxp, dt = _out_dtype(spec, x)
    settings = _settings()
    one = _one_per_core(cxp, win.n_blocks())
    fn = functools.partial(_forward_block, spec=spec, dims=dims, settings=settings,
                           one_per_core=one)
    keys = (_block_key(w), None if b is None else _block_key(b))
    return win.forward(fn, "conv-forward-" + _token(x, w, b, spec, dims, settings, one),
                       cxp.empty((0,) * len(dims), dtype=dt),
                       other_chunks={dims.index("C"): (spec.F,)}, extra=lambda idx: keys,
                       deps=[w] if b is None else [w, b])


def backward(xp, spec, layout, gy, x, w, needs):
    """``(gx, gw)`` as lazy Dask arrays (``None`` where not needed); ``gx`` has the
    input's chunks (``C`` in one)."""
    dims = layout.dims
    x = _input_chunks(x, spec, dims)
    win = _windows(spec, dims, x)
    out_chunks = win.out_chunks({dims.index("C"): (spec.F,)})
    gy = gy if gy.chunks == out_chunks else gy.rechunk(out_chunks)
    w = _one_block(w)
    cxp, dt = _out_dtype(spec, x)
    needs = tuple(bool(v) for v in needs[:2])
    settings = _settings()
    one = _one_per_core(cxp, win.n_blocks())
    name = _token(gy, x, w, spec, dims, needs, settings, one)
    meta = cxp.empty((0,) * len(dims), dtype=dt)
    fn = functools.partial(_backward_block, spec=spec, dims=dims, settings=settings,
                           one_per_core=one, needs=needs)
    wkey = _block_key(w)
    blocks, keys, gx = win.backward(fn, "conv-grads-" + name, meta,
                                    lambda idx: ((gy.name, *idx), wkey), deps=[gy, w],
                                    gx_meta=meta if needs[0] else None,
                                    other_chunks={dims.index("C"): (spec.F,)})
    gw = None
    if needs[1]:
        gw = _tree_sum(blocks, keys, "conv-weight-grad-" + name, tuple(w.shape),
                       cxp.empty((0,) * w.ndim, dtype=dt))
    return gx, gw


def _token(*args):
    from dask.base import tokenize

    return tokenize(*args)


def _fwd(xp, spec, layout, x, w, b):
    return forward(xp, spec, layout, x, w, b)


def _bwd(xp, spec, layout, gy, x, w, needs):
    return backward(xp, spec, layout, gy, x, w, needs)


def _applies(spec, layout):
    if "N" not in layout.dims:  # pragma: no cover - the op always inserts N
        return "the kernel arrays have no N dim to split along"
    return None


register(Algo(
    "dask.blockwise", "dask", ("forward", "input_grad", "weight_grad"), _applies,
    forward=_fwd, backward=_bwd,
    domain="every Dask convolution: block by block over the N (batch-like) chunks and the "
           "chunks of convolved dims (halo exchange), the chunk library's registry in each "
           "block; a chunked C rechunked to one block; weight gradient a tree sum of "
           "per-block partials"))
