"""Dask's convolution: blockwise over the batch chunks, the chunk library's kernels inside.

One entry, ``dask.blockwise``, serves the forward and both gradients. The kernel
arrays (``layout.dims`` order, e.g. ``"01CN"``) are split along their ``N`` dim only:

* the input keeps its ``N`` chunking (uneven chunks included); a chunked convolved
  dim or a chunked ``C`` is **rechunked to one block** first. Exchanging halos of
  ``(k - 1) · dilation`` between chunks of a convolved dim (SPEC §6) is a separate
  capability, not implemented here: a convolved dim is whole within every block;
* the weights and the bias are rechunked to one block each and handed to every block;
* each block runs the **chunk library's own registry** (:func:`.registry.forward` /
  :func:`.registry.backward` with the chunk's namespace, found from the Dask array's
  ``_meta``; NumPy chunks get the NumPy kernels) on the same :class:`~.spec.ConvSpec`
  with ``N`` replaced by the block's ``N`` and a :class:`~.spec.Layout` of the block;
* **forward**: one task per block, the output keeps the input's ``N`` chunks;
* **backward** (fused): one task per block computes the block's input gradient and its
  partial weight gradient in one kernel call; the input gradient is taken out per block
  (it keeps the ``N`` chunks), the partial weight gradients are added by a tree of
  tasks, each adding up to :data:`SPLIT_EVERY` of them (a partial is freed once added).
  The bias gradient is the front door's ``xp.sum``.

Everything stays lazy: nothing is computed until the caller computes, and the graph has
a bounded number of tasks per input chunk: one kernel task per block, one more per
block to take out the input gradient when both gradients are wanted, about one in
``SPLIT_EVERY - 1`` for the sums, plus the rechunks of the inputs. The tuning settings
in force when the graph is built (:func:`.tuning.current`) are the ones the blocks run
with, whichever thread of the scheduler runs them.

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
import os
import string
import threading

from ... import _backend
from . import registry
from .registry import Algo, register
from .spec import Layout
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


def _letters(dims):
    """Blockwise indices of the input's dims, of the output's (or cotangent's: only ``N``
    is shared with the input) and of the weights' ``d + 3`` dims."""
    x_ind = "".join("n" if r == "N" else "c" if r == "C" else "abde"[int(r)] for r in dims)
    y_ind = "".join("n" if r == "N" else "f" if r == "C" else "pqrs"[int(r)] for r in dims)
    w_ind = string.ascii_uppercase[:len(dims) + 1]
    return x_ind, y_ind, w_ind


def _one_block(a):
    """A Dask array in one chunk (a non-Dask array made into one)."""
    da = _da()
    if not isinstance(a, da.Array):
        return da.from_array(a, chunks=tuple(a.shape) or ())
    return a if a.npartitions == 1 else a.rechunk(-1)


def _batch_blocks(a, n_axis, n_chunks=None):
    """``a`` chunked along ``n_axis`` only (``n_chunks`` there, or its own chunks)."""
    target = {ax: -1 for ax in range(a.ndim) if ax != n_axis}
    if n_chunks is not None:
        target[n_axis] = n_chunks
    if all(len(a.chunks[ax]) == 1 for ax in target if ax != n_axis) and (
            n_chunks is None or a.chunks[n_axis] == tuple(n_chunks)):
        return a
    return a.rechunk(target)


def _unwrap(a):
    """A block passed with ``concatenate=False``: nested one-element lists around it."""
    while isinstance(a, list):
        (a,) = a
    return a


class _Grads:
    """A block's ``(gx, gw)`` (not a tuple: Dask would take a tuple apart)."""

    __slots__ = ("gx", "gw")

    def __init__(self, gx, gw):
        self.gx, self.gw = gx, gw


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


def _run(spec, dims, settings, one_per_core, kernel, *arrays):
    """Run ``kernel`` on a block's arrays with the block's spec, settings and threads."""
    n = arrays[0].shape[dims.index("N")]
    bspec = spec if n == spec.N else spec.replace(N=n)
    with tuning(**settings), _threads(one_per_core):
        return kernel(bspec, *arrays)


def _forward_block(x, w, b, *, spec, dims, settings, one_per_core):
    x, w, b = _unwrap(x), _unwrap(w), _unwrap(b)
    cxp = _backend.namespace(x)

    def kernel(bspec, x):
        return registry.forward(cxp, bspec, Layout.of(dims, x), x, w, b)

    return _run(spec, dims, settings, one_per_core, kernel, x)


def _backward_block(gy, x, w, *, spec, dims, settings, one_per_core, needs):
    gy, x, w = _unwrap(gy), _unwrap(x), _unwrap(w)
    cxp = _backend.namespace(x)

    def kernel(bspec, gy, x):
        gx, gw, _ = registry.backward(cxp, bspec, Layout.of(dims, x, gy), gy, x, w,
                                      (needs[0], needs[1], False))
        return gx, gw

    gx, gw = _run(spec, dims, settings, one_per_core, kernel, gy, x)
    return gx if not needs[1] else _Grads(gx, gw)


def _take_gx(g):
    return g.gx


def _sum_gw(*parts):
    """The sum of blocks' (or partial sums') weight gradients, in their order."""
    acc = None
    for p in parts:
        g = p.gw if isinstance(p, _Grads) else p
        acc = g if acc is None else acc + g
    return acc


def _tree_sum(blocks, name, shape, dtype, meta):
    """The weight gradient: the blocks' partials added by a tree of tasks, each adding
    up to :data:`SPLIT_EVERY` of them (partials are freed as soon as they are added)."""
    from dask import delayed

    da = _da()
    level = list(blocks.to_delayed(optimize_graph=False).ravel())
    depth = 0
    while depth == 0 or len(level) > 1:
        level = [delayed(_sum_gw, pure=True)(*level[i:i + SPLIT_EVERY],
                                             dask_key_name=(name, depth, j))
                 for j, i in enumerate(range(0, len(level), SPLIT_EVERY))]
        depth += 1
    return da.from_delayed(level[0], shape, dtype=dtype, meta=meta, name=name)


def _settings():
    t = current()
    return {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}


def _out_dtype(spec, x):
    cxp = _chunk_namespace(x)
    return cxp, getattr(cxp, spec.dtype)


def forward(xp, spec, layout, x, w, b):
    """``y`` (a lazy Dask array, ``layout.dims`` order, the input's ``N`` chunks)."""
    da = _da()
    dims = layout.dims
    n_axis = dims.index("N")
    x_ind, y_ind, w_ind = _letters(dims)
    x = _batch_blocks(x, n_axis)
    w = _one_block(w)
    cxp, dt = _out_dtype(spec, x)
    args = [x, x_ind, w, w_ind]
    args += [None, None] if b is None else [_one_block(b), "Z"]
    adjust = {x_ind[dims.index(str(i))]: (o,) for i, o in enumerate(spec.out)}
    adjust["c"] = (spec.F,)
    settings = _settings()
    one = _one_per_core(cxp, x.numblocks[n_axis])
    return da.blockwise(
        _forward_block, x_ind, *args, adjust_chunks=adjust, dtype=dt,
        meta=cxp.empty((0,) * len(dims), dtype=dt), concatenate=False,
        name="conv-forward-" + _token(x, w, b, spec, dims, settings, one),
        spec=spec, dims=dims, settings=settings, one_per_core=one)


def backward(xp, spec, layout, gy, x, w, needs):
    """``(gx, gw)`` as lazy Dask arrays (``None`` where not needed)."""
    da = _da()
    dims = layout.dims
    n_axis = dims.index("N")
    x_ind, y_ind, w_ind = _letters(dims)
    x = _batch_blocks(x, n_axis)
    gy = _batch_blocks(gy, n_axis, x.chunks[n_axis])
    w = _one_block(w)
    cxp, dt = _out_dtype(spec, x)
    kw = dict(spec=spec, dims=dims, settings=_settings(), needs=tuple(bool(v) for v in needs),
              one_per_core=_one_per_core(cxp, x.numblocks[n_axis]))
    name = _token(gy, x, w, spec, dims, kw["needs"], kw["settings"], kw["one_per_core"])
    meta = cxp.empty((0,) * len(dims), dtype=dt)
    only_gx = not needs[1]
    # one kernel task per block: gx (only_gx), else a _Grads holding gx and/or gw
    blocks = da.blockwise(_backward_block, x_ind, gy, y_ind, x, x_ind, w, w_ind, dtype=dt,
                          meta=meta, concatenate=False,
                          name=("conv-input-grad-" if only_gx else "conv-grads-") + name, **kw)
    gx = gw = None
    if needs[0]:
        gx = blocks if only_gx else blocks.map_blocks(_take_gx, dtype=dt, meta=meta,
                                                      name="conv-input-grad-" + name)
    if needs[1]:
        gw = _tree_sum(blocks, "conv-weight-grad-" + name, tuple(w.shape), dt,
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
    domain="every Dask convolution: blockwise over the N (batch-like) chunks, the chunk "
           "library's registry in each block; chunked convolved dims and C rechunked to one "
           "block; weight gradient a tree sum of per-block partials"))
