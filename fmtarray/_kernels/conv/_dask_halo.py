"""Windows over chunked Dask dims: the halo exchange of convolution and pooling.

A windowed op (a convolution, a pooling) reads, for output ``j`` along a windowed dim,
the padded input ``[j·stride, j·stride + effective)``. When that dim of a Dask array
is chunked, each output block is computed from its own input chunk plus halos taken
from its neighbours, in one task; this module plans the windows and builds the graph.

**Which outputs a block computes.** Along each windowed dim, output ``j`` belongs to
input chunk ``i`` when input position ``j·stride`` lies in chunk ``i`` (outputs past the
data, possible with large padding after it, belong to the last chunk). So the output
has exactly as many chunks as the input along that dim, no output is computed twice
and none is lost, whatever the chunk offsets and the stride (chunk offsets need not be
multiples of the stride: each block's first window starts where its first output's
window starts), and at stride 1 with ``"same"`` or ``"causal"`` padding the output
chunks *are* the input chunks (output ``j`` is centred, or ends, on input ``j``).
A chunk holding no multiple of the stride (a stride larger than the chunk) gets an
empty output chunk; Dask carries zero-length chunks.

**What a block reads.** Its outputs ``[j0, j1)`` read input ``[j0·s - before,
(j1-1)·s - before + effective)``; the part inside the data is gathered from every chunk
it overlaps (a halo may span several neighbours when chunks are smaller than the filter:
a block depends on ``ceil(effective / smallest chunk) + 1`` chunks at most per dim, never
on the number of chunks), the rest is padding the block's kernel adds itself (constant
padding, ``-inf`` for max pooling). Mirror and replicate padding of a chunked dim is
applied to the Dask array first (:func:`fmtarray._kernels.pad.pad`, lazily), so that
every block reads real elements. A dim held in one chunk is read whole, with the op's
own padding: the kernel call is exactly the unchunked one.

**Gradients.** One task per output block computes the gradient with respect to its
window (and any per-block partial such as a weight gradient) in one kernel call; the
gradient of each input chunk is then the sum of the window gradients overlapping it,
added in block order (one task per input chunk). Mirror padding applied to the Dask
array has its adjoint (:func:`~fmtarray._kernels.pad.pad_vjp`) applied lazily after.

Tasks: one per output block, one per input chunk for an input gradient, plus the
caller's; the count grows linearly with the number of chunks.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from dataclasses import dataclass

__all__ = ["Block", "DimPlan", "plan_dim", "Windows"]


def _offsets(chunks):
    offs = [0]
    for c in chunks:
        offs.append(offs[-1] + int(c))
    return tuple(offs)


@dataclass(frozen=True)
class Block:
    """One output block along one windowed dim.

    Outputs ``[j0, j1)``; reads source ``[a, b)`` (``a >= b``: the window is padding
    only) from source chunks ``[c0, c1)``; the kernel pads ``lb`` before and ``la``
    after; ``width`` is the padded window's length."""

    j0: int
    j1: int
    a: int
    b: int
    lb: int
    la: int
    c0: int
    c1: int

    @property
    def n_out(self) -> int:
        return self.j1 - self.j0

    @property
    def reads(self) -> bool:
        return self.n_out > 0 and self.b > self.a

    @property
    def width(self) -> int:
        return max(self.b - self.a, 0) + self.lb + self.la


@dataclass(frozen=True)
class DimPlan:
    """The output blocks of one windowed dim over the source chunks ``offs``."""

    offs: tuple
    blocks: tuple

    @property
    def out_chunks(self) -> tuple:
        return tuple(b.n_out for b in self.blocks)

    def readers(self, c):
        """``(block, lo, hi)``: the blocks reading source chunk ``c``, and the overlap
        ``[lo, hi)`` in source coordinates."""
        s0, s1 = self.offs[c], self.offs[c + 1]
        out = []
        for i, blk in enumerate(self.blocks):
            if blk.reads and blk.a < s1 and blk.b > s0:
                out.append((i, max(blk.a, s0), min(blk.b, s1)))
        return out


def plan_dim(src_chunks, bounds, n_out, stride, eff, before, after) -> DimPlan:
    """Plan one windowed dim.

    ``src_chunks``: the chunks of the array the blocks read (length ``L``); ``bounds``:
    the interior chunk boundaries of the input (one block more than boundaries; output
    ``j`` goes to the block whose chunk holds ``j·stride``); ``n_out`` outputs of
    windows of extent ``eff`` every ``stride``, the source padded by
    ``before``/``after`` (output ``j`` reads source ``[j·stride - before, ... + eff)``)."""
    offs = _offsets(src_chunks)
    L = offs[-1]
    if not bounds and len(src_chunks) == 1:  # one chunk, one block: the unchunked call
        return DimPlan(offs, (Block(0, n_out, 0, L, before, after, 0, 1),))

    def below(B):  # outputs j with j·stride < B
        return min(max(-(-B // stride), 0), n_out)

    cuts = [0] + [below(B) for B in bounds] + [n_out]
    blocks = []
    for j0, j1 in zip(cuts, cuts[1:]):
        j1 = max(j1, j0)
        if j1 == j0:
            blocks.append(Block(j0, j0, 0, 0, 0, 0, 0, 0))
            continue
        lo = j0 * stride - before
        hi = (j1 - 1) * stride - before + eff
        a, b = max(lo, 0), min(hi, L)
        if a >= b:  # padding only
            blocks.append(Block(j0, j1, 0, 0, hi - lo, 0, 0, 0))
            continue
        c0 = bisect.bisect_right(offs, a) - 1
        c1 = bisect.bisect_left(offs, b)
        blocks.append(Block(j0, j1, a, b, a - lo, hi - b, c0, c1))
    return DimPlan(offs, tuple(blocks))


# ---------------------------------------------------------------------------------------
# tasks


def _namespace(a):
    from ... import _backend

    return _backend.namespace(a)


def _unnest(nested, axes):
    """Concatenate a nested list of blocks (one nesting level per axis of ``axes``)."""
    if len(axes) == 0 or not isinstance(nested, list):
        return nested
    parts = [_unnest(p, axes[1:]) for p in nested]
    if len(parts) == 1:
        return parts[0]
    return _namespace(parts[0]).concat(parts, axis=axes[0])


def _window_task(fn, sl, pads, const, *args):
    """Build a block's window from its source blocks (``args[0]``, nested) and run
    ``fn(window, lb, la, *rest)``; ``const = (shape, value, meta)`` when the window is
    padding only (then ``args[0]`` is unused)."""
    src, rest = args[0], args[1:]
    if const is not None:
        shape, value, meta = const
        xp = _namespace(meta)
        window = xp.full(shape, value, dtype=meta.dtype)
    else:
        axes = tuple(ax for ax, _ in sl)
        window = _unnest(src, axes)
        idx = [slice(None)] * window.ndim
        for ax, (lo, hi) in sl:
            if (lo, hi) != (0, window.shape[ax]):
                idx[ax] = slice(lo, hi)
        window = window[tuple(idx)]
    lb = tuple(p[0] for p in pads)
    la = tuple(p[1] for p in pads)
    return fn(window, lb, la, *rest)


def _empty_task(shape, meta):
    return _namespace(meta).empty(shape, dtype=meta.dtype)


def _gx_task(shape, meta, places, *parts):
    """An input chunk's gradient: the window gradients ``parts`` (``.gx``), each cut by
    ``places[i] = (source slices, chunk slices)``, added in block order."""
    xp = _namespace(meta)
    acc = None
    full = None
    for (src, dst), p in zip(places, parts):
        piece = p.gx[src]
        if tuple(piece.shape) == tuple(shape):
            acc = piece if acc is None else acc + piece
            continue
        if full is None:
            import numpy as np

            if isinstance(meta, np.ndarray):  # NumPy: add in place into one buffer
                full = np.zeros(shape, dtype=meta.dtype)
                if acc is not None:
                    full += acc
                acc = full
            else:
                full = False
        if full is not False:
            acc[dst] += piece
            continue
        from ..pad import pad

        before = tuple(s.start for s in dst)
        after = tuple(n - s.stop for n, s in zip(shape, dst))
        piece = pad(xp, piece, before, after, tuple(range(len(shape))), 0.0)
        acc = piece if acc is None else acc + piece
    if acc is None:
        acc = xp.zeros(shape, dtype=meta.dtype)
    return acc


class Grads:
    """A block's gradients (not a tuple: Dask would take a tuple apart): ``gx`` with
    respect to the window's source part (``None`` for a padding-only window) and an
    optional per-block partial ``gw``."""

    __slots__ = ("gx", "gw")

    def __init__(self, gx, gw=None):
        self.gx, self.gw = gx, gw


# ---------------------------------------------------------------------------------------
# the graph


class Windows:
    """The windows of one op over the Dask array ``x``.

    ``axes``: the windowed axes (in the op's filter order); per windowed dim ``eff``
    (window extent), ``stride``, ``before``/``after`` padding, ``n_out`` outputs;
    ``value``: the padding (a number, or a mode of :data:`~fmtarray._kernels.pad.PAD_MODES`).
    Every other axis of ``x`` passes through block by block. Mirror/replicate padding
    of a chunked windowed dim is applied to ``x`` first (``self.src``)."""

    def __init__(self, x, axes, eff, stride, before, after, n_out, value):
        from ... import _backend
        from ..pad import pad

        self.x = x
        self.axes = tuple(axes)
        self.value = value
        mirror = isinstance(value, str)
        pre_b = [0] * len(axes)
        pre_a = [0] * len(axes)
        for i, ax in enumerate(axes):
            if mirror and len(x.chunks[ax]) > 1 and (before[i] or after[i]):
                pre_b[i], pre_a[i] = before[i], after[i]
        self.pre = (tuple(pre_b), tuple(pre_a))
        src = x
        if any(pre_b) or any(pre_a):
            src = pad(_backend.namespace(x), x, pre_b, pre_a, self.axes, value)
        self.src = src
        plans = []
        for i, ax in enumerate(axes):
            bounds = list(_offsets(x.chunks[ax])[1:-1])
            qb, qa = before[i] - pre_b[i], after[i] - pre_a[i]
            plans.append(plan_dim(src.chunks[ax], bounds, n_out[i], stride[i], eff[i], qb, qa))
        self.plans = tuple(plans)

    # ---- geometry
    def out_chunks(self, other=None):
        """Output chunks: windowed axes from the plans, ``other`` ({axis: chunks})
        overrides the pass-through axes."""
        chunks = list(self.x.chunks)
        for ax, plan in zip(self.axes, self.plans):
            chunks[ax] = plan.out_chunks
        for ax, c in (other or {}).items():
            chunks[ax] = tuple(c)
        return tuple(chunks)

    def n_blocks(self):
        n = 1
        for ax in range(self.x.ndim):
            n *= len(self.x.chunks[ax])
        return n

    def _blocks_of(self, idx):
        return [self.plans[i].blocks[idx[ax]] for i, ax in enumerate(self.axes)]

    def _window(self, idx):
        """``(source keys (nested), slices, pads, const shape or None)`` of block ``idx``."""
        blks = self._blocks_of(idx)
        src = self.src
        if not all(b.reads for b in blks):  # padding only: a constant window, no pads
            shape = [src.chunks[ax][idx[ax]] for ax in range(src.ndim)]
            for ax, b in zip(self.axes, blks):
                shape[ax] = b.width
            return None, None, ((0, 0),) * len(blks), tuple(shape)
        pads = tuple((b.lb, b.la) for b in blks)
        order = sorted(range(len(self.axes)), key=lambda i: self.axes[i])
        ranges = {self.axes[i]: range(blks[i].c0, blks[i].c1) for i in order}

        def nest(level, prefix):
            if level == len(order):
                key = list(idx)
                for ax, c in prefix:
                    key[ax] = c
                return (src.name, *key)
            ax = self.axes[order[level]]
            return [nest(level + 1, prefix + ((ax, c),)) for c in ranges[ax]]

        keys = nest(0, ())
        plan_of = dict(zip(self.axes, zip(self.plans, blks)))
        sl = tuple((ax, (plan_of[ax][1].a - plan_of[ax][0].offs[plan_of[ax][1].c0],
                         plan_of[ax][1].b - plan_of[ax][0].offs[plan_of[ax][1].c0]))
                   for ax in sorted(self.axes))
        return keys, sl, pads, None

    def _tasks(self, fn, name, extra, meta, other_chunks):
        """``{(name, *idx): task}`` running ``fn(window, lb, la, *extra(idx))`` per
        output block; empty output blocks give empty arrays."""
        dsk = {}
        out_chunks = self.out_chunks(other_chunks)
        for idx in itertools.product(*(range(len(c)) for c in out_chunks)):
            blks = self._blocks_of(idx)
            if any(b.n_out == 0 for b in blks):
                shape = tuple(c[i] for c, i in zip(out_chunks, idx))
                dsk[(name, *idx)] = (functools.partial(_empty_task, shape, meta),)
                continue
            keys, sl, pads, cshape = self._window(idx)
            const = None if cshape is None else (cshape, self._const_value(), meta)
            task = functools.partial(_window_task, fn, sl, pads, const)
            dsk[(name, *idx)] = (task, keys, *extra(idx))
        return dsk

    def _const_value(self):
        return 0.0 if isinstance(self.value, str) else self.value

    def forward(self, fn, name, meta, other_chunks=None, extra=lambda idx: (), deps=()):
        """The lazy output: ``fn(window, lb, la, *extra(idx))`` per output block."""
        import dask.array as da
        from dask.highlevelgraph import HighLevelGraph

        dsk = self._tasks(fn, name, extra, meta, other_chunks)
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[self.src, *deps])
        return da.Array(graph, name, self.out_chunks(other_chunks), meta=meta)

    def backward(self, fn, name, meta, extra, deps, gx_meta=None, other_chunks=None):
        """One fused task per output block (``fn(window, lb, la, *extra(idx))`` returns
        a :class:`Grads`), and the input gradient assembled per input chunk.

        Returns ``(blocks, block keys, gx or None)``: the blocks (a Dask collection of
        :class:`Grads`, never computed itself), the keys of those that computed
        something (for a partial-sum tree of ``.gw``) and the lazy input gradient (``x``'s chunks, or
        ``None`` when ``gx_meta`` is ``None``)."""
        import dask.array as da
        from dask.highlevelgraph import HighLevelGraph

        from ... import _backend
        from ..pad import pad_vjp

        bname = "blocks-" + name
        dsk = self._tasks(fn, bname, extra, meta, other_chunks)
        keys = [k for k, t in dsk.items() if t[0].func is not _empty_task]
        graph = HighLevelGraph.from_collections(bname, dsk, dependencies=[self.src, *deps])
        blocks = da.Array(graph, bname, self.out_chunks(other_chunks), meta=meta)  # Grads
        if gx_meta is None:
            return blocks, keys, None
        src = self.src
        gname = "gx-" + name
        gdsk = {}
        for idx in itertools.product(*(range(len(c)) for c in src.chunks)):
            shape = tuple(c[i] for c, i in zip(src.chunks, idx))
            per_dim = []
            for plan, ax in zip(self.plans, self.axes):
                per_dim.append([(i, lo, hi, ax) for i, lo, hi in plan.readers(idx[ax])])
            places, parts = [], []
            for combo in itertools.product(*per_dim):
                bidx = list(idx)
                s_src = [slice(None)] * len(shape)
                s_dst = [slice(None)] * len(shape)
                for (i, lo, hi, ax), plan in zip(combo, self.plans):
                    bidx[ax] = i
                    blk = plan.blocks[i]
                    s_src[ax] = slice(lo - blk.a, hi - blk.a)
                    c0 = plan.offs[idx[ax]]
                    s_dst[ax] = slice(lo - c0, hi - c0)
                places.append((tuple(s_src), tuple(s_dst)))
                parts.append((bname, *bidx))
            gdsk[(gname, *idx)] = (functools.partial(_gx_task, shape, gx_meta, tuple(places)),
                                   *parts)
        graph = HighLevelGraph.from_collections(gname, gdsk, dependencies=[blocks])
        gx = da.Array(graph, gname, src.chunks, meta=gx_meta)
        if any(self.pre[0]) or any(self.pre[1]):
            gx = pad_vjp(_backend.namespace(gx), gx, self.pre[0], self.pre[1], self.axes,
                         self.value)
            if gx.chunks != self.x.chunks:
                gx = gx.rechunk(self.x.chunks)
        return blocks, keys, gx
