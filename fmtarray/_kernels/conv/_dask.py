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

Threads. The blocks' kernel calls take turns (:data:`_POOL_TURN`, one process-wide
lock). The NumPy kernels already spread one call over every core (their own worker
pool, BLAS held at one thread meanwhile), so several blocks at once on Dask's threaded
scheduler only compete for the same cores: taking turns was as fast or faster in
``benchmarks/dask_conv.py``. It is needed for the process state too: the NumPy kernels
hold BLAS at one thread with ``threadpoolctl``'s limit, a process-wide setting saved
and restored per call, and concurrent calls leave BLAS at one thread for good
(measured: 2 → 1 after a few unsynchronised computes). The price is that small blocks
(run serially inside the kernel) do not overlap either. Dask's synchronous scheduler
or one worker thread give about the same times.
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

#: the blocks' kernel calls run one at a time (see the module docstring)
_POOL_TURN = threading.Lock()


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


def _run(spec, dims, settings, kernel, *arrays):
    """Run ``kernel`` on a block's arrays with the block's spec, settings and turn."""
    n = arrays[0].shape[dims.index("N")]
    bspec = spec if n == spec.N else spec.replace(N=n)
    with tuning(**settings), _POOL_TURN:
        return kernel(bspec, *arrays)


def _forward_block(x, w, b, *, spec, dims, settings):
    x, w, b = _unwrap(x), _unwrap(w), _unwrap(b)
    cxp = _backend.namespace(x)

    def kernel(bspec, x):
        return registry.forward(cxp, bspec, Layout.of(dims, x), x, w, b)

    return _run(spec, dims, settings, kernel, x)


def _backward_block(gy, x, w, *, spec, dims, settings, needs):
    gy, x, w = _unwrap(gy), _unwrap(x), _unwrap(w)
    cxp = _backend.namespace(x)

    def kernel(bspec, gy, x):
        gx, gw, _ = registry.backward(cxp, bspec, Layout.of(dims, x, gy), gy, x, w,
                                      (needs[0], needs[1], False))
        return gx, gw

    gx, gw = _run(spec, dims, settings, kernel, gy, x)
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
    return da.blockwise(
        _forward_block, x_ind, *args, adjust_chunks=adjust, dtype=dt,
        meta=cxp.empty((0,) * len(dims), dtype=dt), concatenate=False,
        name="conv-forward-" + _token(x, w, b, spec, dims, settings),
        spec=spec, dims=dims, settings=settings)


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
    kw = dict(spec=spec, dims=dims, settings=_settings(), needs=tuple(bool(v) for v in needs))
    name = _token(gy, x, w, spec, dims, kw["needs"], kw["settings"])
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
