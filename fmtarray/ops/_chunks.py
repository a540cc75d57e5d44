"""Chunk bookkeeping for Dask-backed data in the ops that merge batch-like dims.

Convolution and pooling hand the kernels one batch dim ``N``: the batch-like dims of
the data (``B``; ``T`` when it is not convolved or pooled; ``U``) are merged by a
reshape and split again after. On a Dask array that reshape cannot keep two chunked
dims' chunks (a block of ``B`` × ``T`` is not contiguous along ``N``), so Dask rechunks
them; SPEC §6 wants the output (and the input gradient) to keep the input's chunks along
batch-like dims, so they are put back here (a bounded number of tasks per chunk)."""

from __future__ import annotations

from .. import _backend

__all__ = ["match_chunks"]


def match_chunks(xp, a, like, axes):
    """``a`` with the chunks of ``like`` along ``axes``: axis numbers, or ``(axis of a,
    axis of like)`` pairs (Dask arrays; any other library's array is returned as it
    is)."""
    if not _backend.is_dask(xp):
        return a
    want = {}
    for ax in axes:
        i, j = ax if isinstance(ax, tuple) else (ax, ax)
        if a.chunks[i] != like.chunks[j]:
            want[i] = like.chunks[j]
    return a.rechunk(want) if want else a
