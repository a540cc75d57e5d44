"""Training data: inputs and targets as FormattedArrays, mini-batches, accuracy."""

from __future__ import annotations

import numpy as _np

from .. import _backend
from ..array import FormattedArray, finddim

_RAW_FORMATS = {2: "CB", 3: "SCB", 4: "SSCB", 5: "SSSCB"}


def _as_inputs(x, input_format, what):
    if isinstance(x, FormattedArray):
        if input_format is not None:
            x = FormattedArray(x, input_format)
    else:
        if not _backend.is_array(x):
            raise TypeError(f"{what} must be a FormattedArray or an array of an array-API library, "
                            f"got {type(x).__module__}.{type(x).__name__}")
        fmt = input_format if input_format is not None else _RAW_FORMATS.get(x.ndim)
        if fmt is None:
            raise ValueError(
                f"{what}: a raw {x.ndim}-d array needs input_format= (the default formats are "
                f"{_RAW_FORMATS}, MATLAB's layouts), or pass a FormattedArray"
            )
        x = FormattedArray(x, fmt)
    if not finddim(x, "B"):
        raise ValueError(f"{what} must have a batch dim 'B' to slice mini-batches from, got "
                         f"format {x.format!r} with shape {x.shape}")
    if not _backend.isdtype(x.xp, x.dtype, "real floating"):
        raise TypeError(f"{what} must be floating point (float32 or float64), got {x.dtype}; "
                        "convert first, e.g. fmtarray.astype(x, float32)")
    return x


def _as_targets(t, n, like, num_classes, what):
    """One-hot targets with a 'B' dim of size ``n``; integer labels become ``CB`` one-hot."""
    if isinstance(t, FormattedArray) and t.format and "C" in t.format:
        if t.size("B") != n:
            raise ValueError(f"{what} have {t.size('B')} observations along 'B' (format "
                             f"{t.format!r}, shape {t.shape}) but the inputs have {n}")
        if not _backend.isdtype(t.xp, t.dtype, "real floating"):
            raise TypeError(f"{what}: one-hot targets must be floating point, got {t.dtype}")
        return t
    raw = t.data if isinstance(t, FormattedArray) else t
    lab = _np.asarray(_backend.to_numpy(raw) if _backend.is_array(raw) else raw)
    if lab.ndim != 1 or not (_np.issubdtype(lab.dtype, _np.integer)):
        raise ValueError(
            f"{what} must be one-hot targets as a FormattedArray with 'C' and 'B' dims (e.g. "
            f"format 'CB'), or a 1-d array of integer class labels 0..K-1; got "
            f"{type(t).__name__} with shape {tuple(lab.shape)} and dtype {lab.dtype}"
        )
    if lab.shape[0] != n:
        raise ValueError(f"{what} have {lab.shape[0]} labels but the inputs have {n} observations")
    k = num_classes()
    if lab.size and (lab.min() < 0 or lab.max() >= k):
        raise ValueError(f"{what}: class labels must be in 0..{k - 1} (the network outputs {k} "
                         f"classes), got values in {int(lab.min())}..{int(lab.max())}")
    onehot = _np.zeros((k, n))
    onehot[lab, _np.arange(n)] = 1.0
    xp = like.xp
    return FormattedArray(_backend._from_host(onehot, xp, like.dtype, like.device), "CB")


def _batch(a: FormattedArray, order, start, stop):
    ax = finddim(a, "B")[0]
    if order is None:
        key = (slice(None),) * ax + (slice(start, stop),)
        data = a.data[key]
    else:
        xp = a.xp
        idx = order[start:stop]
        if not isinstance(a.data, _np.ndarray):  # the indices where the data lives
            idx = _backend._from_host(idx, xp, None, a.device)
        data = _take(xp, a.data, idx, ax)
    return FormattedArray._wrap(data, a.format)


def _take(xp, data, idx, ax):
    """``take(data, idx, axis=ax)``; a NumPy array stored in another order than its dims'
    (data formatted from ``"BSSC"`` memory, say) is gathered in its memory order and
    keeps it: NumPy's ``take`` would copy the whole array into dim order first (55 µs
    against 4 µs for a mini-batch of 32 digits)."""
    if not _backend.is_numpy(xp) or data.ndim < 2 or data.flags.c_contiguous:
        return xp.take(data, idx, axis=ax)
    st = data.strides
    order = sorted(range(data.ndim), key=lambda i: -abs(st[i]))  # stable: ties keep order
    mem = data.transpose(order)
    if not mem.flags.c_contiguous:
        return xp.take(data, idx, axis=ax)
    inverse = [0] * data.ndim
    for i, o in enumerate(order):
        inverse[o] = i
    return mem.take(idx, axis=inverse[ax]).transpose(inverse)


#: chunk-aware shuffling mixes the observations of this many consecutive (shuffled)
#: chunks, so one mini-batch reads at most about this many chunks of a store
SHUFFLE_WINDOW_CHUNKS = 4


def is_streamed(a) -> bool:
    """True for Dask-backed data: it is read one mini-batch at a time."""
    return isinstance(a, FormattedArray) and _backend.library_name(a.data) == "dask"


class Batches:
    """Mini-batches of one FormattedArray along ``B``.

    In-memory data is sliced (or gathered with ``take``) in its own library. Dask-backed
    data (a Zarr store, a memory map, a lazy pipeline) is read one mini-batch at a time:
    the batch's observations are gathered in sorted order (so each chunk is read once),
    computed, put back in the requested order, and moved to the network's library and
    device by ``to`` (set once the network exists; identity before). No task graph
    outlives a batch, so every iteration costs the same.
    """

    def __init__(self, a: FormattedArray):
        self.a = a
        self.streamed = is_streamed(a)
        self.to = None

    def get(self, order, start, stop) -> FormattedArray:
        if not self.streamed:
            return _batch(self.a, order, start, stop)
        a = self.a
        ax = finddim(a, "B")[0]
        if order is None:
            host = a.data[(slice(None),) * ax + (slice(start, stop),)].compute()
        else:
            idx = _np.asarray(order[start:stop])
            perm = _np.argsort(idx, kind="stable")
            got = a.data[(slice(None),) * ax + (idx[perm],)].compute()
            host = _np.take(_np.asarray(got), _np.argsort(perm, kind="stable"), axis=ax)
        if self.to is not None:
            host = self.to(host)
        return FormattedArray._wrap(host, a.format)

    def chunks(self):
        """The sizes of the data's chunks along ``B`` (one chunk for in-memory data)."""
        ax = finddim(self.a, "B")[0]
        if self.streamed:
            return tuple(int(c) for c in self.a.data.chunks[ax])
        return (int(self.a.shape[ax]),)


def permutation(rng, chunks) -> _np.ndarray:
    """A random order of ``sum(chunks)`` observations that stays near the data's chunks.

    One chunk (in-memory data): ``rng.permutation(n)``. Several: the chunks are
    shuffled, then the observations of each window of :data:`SHUFFLE_WINDOW_CHUNKS`
    consecutive shuffled chunks are shuffled together; a mini-batch then reads a few
    chunks instead of one chunk per observation.
    """
    if len(chunks) <= 1:
        return rng.permutation(int(sum(chunks)))
    starts = _np.concatenate([[0], _np.cumsum(chunks)[:-1]]).astype(_np.int64)
    corder = rng.permutation(len(chunks))
    out = []
    for w in range(0, len(corder), SHUFFLE_WINDOW_CHUNKS):
        sel = corder[w:w + SHUFFLE_WINDOW_CHUNKS]
        idx = _np.concatenate([_np.arange(starts[c], starts[c] + chunks[c]) for c in sel])
        out.append(idx[rng.permutation(idx.size)])
    return _np.concatenate(out)


def _detach(tree):
    if isinstance(tree, FormattedArray):
        return FormattedArray._wrap(tree._data, tree._fmt) if tree._node is not None else tree
    if isinstance(tree, dict):
        return type(tree)((k, _detach(v)) for k, v in tree.items())
    if isinstance(tree, list):
        return [_detach(v) for v in tree]
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return tuple(_detach(v) for v in tree)
    return tree


def _correct(y: FormattedArray, t: FormattedArray):
    """(number correct, number of predictions) for class scores ``y`` vs one-hot ``t``."""
    cy, ct = finddim(y, "C"), finddim(t, "C")
    if not cy or not ct or y.format != t.format or y.shape != t.shape:
        return None
    xp = y.xp
    py = xp.argmax(y.data, axis=cy[0])
    pt = xp.argmax(t.data, axis=ct[0])
    if isinstance(py, _np.ndarray):
        hits = float(_np.count_nonzero(py == pt))
    else:
        hits = float(xp.sum(xp.astype(py == pt, xp.float32)))
    total = 1
    for s in py.shape:
        total *= int(s)
    return hits, total
