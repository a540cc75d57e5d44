"""``Network.predict`` on Dask-backed inputs: blockwise over the batch-like chunks.

A network whose learnables live in NumPy (or torch …) cannot mix them with Dask data
in one op, and should not: the data may not fit in memory. Instead the network runs
once per block of the input, on that block's own arrays, and the results form a lazy
Dask array again:

* ``B`` is batch-like: observations never mix (MATLAB's model; batch normalisation
  uses its stored statistics in ``predict``). The input keeps its ``B`` chunks.
* ``T`` is batch-like when the network treats the frames independently (a 2-D
  convolution over ``SSCBT`` data does; a 1-D convolution over ``CBT`` or a 2-D one
  over ``SCBT`` does not). This is checked, not assumed: the network runs on two
  random frames and on each frame alone; when the results agree (to 1e-4 relative)
  and the output keeps ``T``, the input keeps its ``T`` chunks too. Otherwise ``T`` is
  made one chunk per block (a convolution over a chunked ``T`` with halos is
  :func:`fmtarray.conv`'s job, on Dask learnables or the op itself).
* every other dim (``S``, ``C``, ``U``) is made one chunk.

The graph holds a copy of the network taken when it is built, so later training does
not change a lazy result; it has one task per block. The blocks' network calls take
turns, each spread over every core by the kernels' own threads, while Dask's other
threads read and write neighbouring blocks. Only single-output networks; several
inputs are aligned on the first input's ``B`` chunks.
"""

from __future__ import annotations

import copy
import itertools

from . import _backend
from .array import FormattedArray

__all__ = ["applies", "predict"]

_COUNTER = itertools.count()


def _is_dask(v) -> bool:
    return isinstance(v, FormattedArray) and _backend.library_name(v.data) == "dask"


def applies(net, xs, learnables) -> bool:
    """True when some input is Dask-backed and no learnable is (the network lives
    elsewhere, so it must run per block)."""
    if not any(_is_dask(x) for x in xs):
        return False
    tree = learnables if learnables is not None else net.learnables()
    for params in tree.values():
        for v in params.values():
            d = v.data if isinstance(v, FormattedArray) else v
            if _backend.is_array(d) and _backend.library_name(d) == "dask":
                return False
    return True


def _probe(x, b, t):
    """A small host array like the Dask input ``x`` with ``b`` observations and ``t``
    frames (random normal values, the input's dtype)."""
    import numpy as np

    shape = list(x.shape)
    fmt = x.format
    shape[fmt.index("B")] = b
    if t is not None:
        shape[fmt.index("T")] = t
    rng = np.random.default_rng(12345)
    return FormattedArray._wrap(rng.standard_normal(shape).astype(np.dtype(x.dtype)), fmt)


def _t_batch_like(net, x, learnables) -> bool:
    import numpy as np

    if "T" not in x.format or "B" not in x.format or x.shape[x.format.index("T")] < 2:
        return False
    p = _probe(x, 1, 2)
    both = net.predict(p, learnables=learnables)
    if not isinstance(both, FormattedArray) or "T" not in both.format \
            or both.shape[both.format.index("T")] != 2:
        return False
    tx, ty = x.format.index("T"), both.format.index("T")
    ref = np.asarray(_backend.to_numpy(both.data))
    for i in range(2):
        one = net.predict(FormattedArray._wrap(np.take(p.data, [i], axis=tx), p.format),
                          learnables=learnables)
        got = np.asarray(_backend.to_numpy(one.data))
        want = np.take(ref, [i], axis=ty)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return False
    return True


def _check_library(net, xs, learnables):
    """The chunks must be arrays of the network's library (nothing moved silently)."""
    tree = learnables if learnables is not None else net.learnables()
    for params in tree.values():
        for v in params.values():
            d = v.data if isinstance(v, FormattedArray) else v
            if not _backend.is_array(d):
                continue
            want = _backend.library_name(d)
            for i, x in enumerate(xs):
                got = _backend.library_name(x.data._meta)
                if got != want:
                    raise TypeError(
                        f"predict on Dask data runs the network on each block, but input "
                        f"{i + 1}'s chunks are {got} arrays and the network's learnables are "
                        f"{want} arrays; move the network (net.to({got!r})) or the chunks "
                        "(x.data.map_blocks(...)) first"
                    )
            return


def predict(net, xs, learnables):
    """The lazy output of ``net.predict(*xs)`` for Dask-backed ``xs`` (see the module
    docstring)."""
    import dask.array as da
    import numpy as np

    xs = list(xs)
    for i, x in enumerate(xs):
        if not _is_dask(x):
            raise TypeError(
                f"predict on Dask data: input {i + 1} is a "
                f"{_backend.library_name(getattr(x, 'data', x))} array; give every input as a "
                "Dask-backed FormattedArray"
            )
        if "B" not in x.format:
            raise ValueError(
                f"predict on Dask data runs blockwise over the batch dim 'B'; input {i + 1} has "
                f"format {x.format!r}. Give the data a 'B' dim, or compute it first"
            )
    _check_library(net, xs, learnables)
    first = xs[0]
    b_chunks = first.data.chunks[first.format.index("B")]
    t_free = len(xs) == 1 and _t_batch_like(net, first, learnables)

    # the output's format and per-block shape, from one observation (and one frame)
    probe = net.predict(*[_probe(x, 1, 1 if t_free else None) for x in xs], learnables=learnables)
    if isinstance(probe, tuple) or not isinstance(probe, FormattedArray):
        raise ValueError("predict on Dask data supports networks with one output; compute the "
                         "inputs first for a network with several")
    ofmt = probe.format
    if "B" not in ofmt or probe.shape[ofmt.index("B")] != 1:
        raise ValueError(f"predict on Dask data needs an output with the batch dim 'B' (one "
                         f"value per observation); the output has format {ofmt!r}")
    if t_free and ("T" not in ofmt or probe.shape[ofmt.index("T")] != 1):
        t_free = False

    letters = iter("abcdefghijklmnopqrstuvwxyz")
    b_idx, t_idx = next(letters), next(letters)
    args = []
    for x in xs:
        idx = []
        rech = {}
        for d, lab in enumerate(x.format):
            if lab == "B":
                idx.append(b_idx)
                rech[d] = b_chunks
            elif lab == "T" and t_free:
                idx.append(t_idx)
            else:
                idx.append(next(letters))
                rech[d] = -1
        args += [x.data.rechunk(rech), "".join(idx)]
    out_idx, new_axes = [], {}
    for d, lab in enumerate(ofmt):
        if lab == "B":
            out_idx.append(b_idx)
        elif lab == "T" and t_free:
            out_idx.append(t_idx)
        else:
            k = next(letters)
            out_idx.append(k)
            new_axes[k] = probe.shape[d]
    fmts = [x.format for x in xs]
    frozen = copy.deepcopy(net)
    params = copy.deepcopy(learnables) if learnables is not None else None
    # the blocks take turns, each using every core through the NumPy kernels' own pool
    # (running them side by side on the scheduler's threads measured 5-12x slower for
    # the frame-wise conv stack of examples/video_pipeline.py); reading and writing the
    # neighbouring blocks still overlap with the turn
    from ._kernels.conv._dask import _threads

    def run(*blocks):
        ins = [FormattedArray._wrap(blk, f) for blk, f in zip(blocks, fmts)]
        with _threads(False):
            y = frozen.predict(*ins, learnables=params)
        return y.data

    meta = np.empty((0,) * len(ofmt), dtype=np.dtype(probe.dtype))
    out = da.blockwise(run, "".join(out_idx), *args, new_axes=new_axes, concatenate=True,
                       dtype=meta.dtype, meta=meta,
                       name=f"fmtarray-predict-{next(_COUNTER)}-{id(frozen):x}")
    return FormattedArray._wrap(out, ofmt)
