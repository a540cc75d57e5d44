"""Sums over items split over the convolution pool's workers, reproducibly: the same bits
whatever the number of threads and the timing."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..thresholds import current
from ._runtime import n_workers, parallel, parallel_into

__all__ = ["parallel_sum", "parallel_parts", "in_order"]


def parallel_sum(fn, items, shape, dtype, redo=False):
    """``Σ`` over ``items`` of what ``fn(worker, item, acc)`` accumulates into ``acc``
    (zeros of ``shape``), reproducibly whatever the timing: with per-item partials
    (within ``Tuning.ordered_sum_bytes``) the items are handed out dynamically and the
    partials added in item order; else each worker sums its fixed share of the items
    and the workers' sums are added in worker order. ``redo=True``: the per-item partials
    by :func:`parallel_parts` (``fn`` must write nothing but ``acc``)."""
    items = list(items)
    if not items:
        return np.zeros(shape, dtype=dtype)
    if len(items) == 1:  # one sum, on the calling thread (as parallel() runs one item)
        acc = np.zeros(shape, dtype=dtype)
        fn(0, items[0], acc)
        return acc
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if len(items) > 1 and len(items) * size <= current().ordered_sum_bytes:
        if redo:
            parts = parallel_parts(lambda w, it, a: fn(w, it, a.reshape(shape)), items,
                                   [math.prod(shape)] * len(items), dtype)
            return in_order(parts).reshape(shape)
        parts = np.zeros((len(items), *shape), dtype=dtype)
        parallel(lambda w, iv: fn(w, iv[1], parts[iv[0]]), list(enumerate(items)),
                 dynamic=True)
        return parts.sum(axis=0)
    accs = [None] * n_workers()

    def run(w, it):
        if accs[w] is None:
            accs[w] = np.zeros(shape, dtype=dtype)
        fn(w, it, accs[w])

    parallel(run, items)
    total = None
    for a in accs:
        if a is not None:
            total = a if total is None else total + a
    return total


def parallel_parts(fn, items, sizes, dtype):
    """One zeroed 1-D part per item, of ``sizes[i]`` values, filled by ``fn(worker, item,
    part)`` in a dynamic phase; returns the parts (views of one array). ``fn`` must write
    nothing but its part (no scratch buffers: a pool thread stuck in an item finishes it
    after the call into a part that :func:`.._runtime.parallel_into` replaced, the item
    redone on the caller; each item zeroes its part first, so the redone one starts
    afresh)."""
    items = list(items)
    at = list(itertools.accumulate(sizes, initial=0))

    def one(w, j, flat):
        part = flat[at[j]:at[j + 1]]
        part[...] = 0
        fn(w, items[j], part)

    flat = parallel_into(one, range(len(items)), np.empty(at[-1], dtype=dtype))
    return [flat[at[j]:at[j + 1]] for j in range(len(items))]


def in_order(parts):
    """``parts[0] + parts[1] + …`` added in order, into a new array (partial sums holding
    ±inf may add to NaN, the definition's value: no warning for it)."""
    total = np.array(parts[0])
    with np.errstate(invalid="ignore", over="ignore"):
        for p in parts[1:]:
            total += p
    return total
