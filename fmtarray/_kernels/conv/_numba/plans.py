"""Index plans of the compiled direct kernels: where each position's window starts in
the source, where it writes, and the offsets of its runs (see :mod:`._simd`).

* :func:`forward_plan` and :func:`input_grad_plans` read a padded copy of the source;
  :func:`span_plan` splits the forward's positions by the runs and offsets of their
  window that read inside the source, all of them sharing the weights;
* :func:`border_plan` and :func:`input_grad_border_plan` read the source where it lies,
  its zero padding never materialised: along each convolved dim the positions fall in
  classes by which taps of their window read inside the source, and each product of
  classes is a *group* with only those taps (and its rows of the weights).

Plans depend on the :class:`~..spec.ConvSpec` alone and are cached (least recently used
first out past :data:`PLAN_CACHE_BYTES`): a training loop calls the same convolutions.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import threading

import numpy as np

__all__ = ["PLAN_CACHE_BYTES", "forward_plan", "span_plan", "input_grad_plans", "border_plan",
           "input_grad_border_plan", "gpos", "border_gpos", "border_rows", "input_grad_border_rows",
           "bundles", "group_items"]


def _strides(shape):
    st = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        st[i] = st[i + 1] * shape[i + 1]
    return st


def _plan(dims, src_shape, tgt_shape, G, cin, merge):
    """``(pos, ypos, offs, R, taps)`` of one pass (see :mod:`._simd`).

    ``dims``: per convolved dim ``(src, tgt, off, ids)``: the source index of each
    position's window reference and the target index of the position, and, ascending,
    the source-index offsets of the taps and their kernel indices. ``cin``: source
    channels per group. ``merge``: the last dim's taps are adjacent in the source (one
    run per window row). ``taps``: the kernel multi-indices in run order."""
    ss, ts = _strides(src_shape), _strides(tgt_shape)
    pos = np.arange(src_shape[0], dtype=np.int64) * ss[0]
    ypos = np.arange(tgt_shape[0], dtype=np.int64) * ts[0]
    off = np.zeros(1, dtype=np.int64)
    taps = np.zeros((1, 0), dtype=np.int64)
    for i, (src, tgt, o, ids) in enumerate(dims):
        pos = (pos[:, None] + np.asarray(src, np.int64)[None, :] * ss[i + 1]).ravel()
        ypos = (ypos[:, None] + np.asarray(tgt, np.int64)[None, :] * ts[i + 1]).ravel()
        off = (off[:, None] + np.asarray(o, np.int64)[None, :] * ss[i + 1]).ravel()
        taps = np.concatenate([np.repeat(taps, len(ids), 0),
                               np.tile(np.asarray(ids, np.int64), len(taps))[:, None]], 1)
    m = len(dims[-1][2]) if merge else 1
    offs = off[::m][None, :] + np.arange(G, dtype=np.int64)[:, None] * cin
    return pos, ypos, np.ascontiguousarray(offs), m * cin, taps


#: the plans' index arrays kept for the next calls, at most this many bytes in all
PLAN_CACHE_BYTES = 64 * 2**20


def _cached(build):
    """``build(spec, channels)`` remembered for the next calls with the same arguments
    (a training loop calls the same convolutions), least recently used first out once
    the cache's index arrays pass ``PLAN_CACHE_BYTES`` (a plan holds 16 bytes per output
    position: large batches of large images make big plans).

    Threads (Dask's scheduler runs blocks in several) change the cache only while they
    hold its lock: even a lookup runs Python code (the spec's hash), so another thread
    may move or drop entries meanwhile, and an ``OrderedDict`` iterated then raises. The
    lock is only ever tried, never waited for: a signal handler that convolves may
    interrupt its holder and come back in here, and waiting would deadlock the thread on
    itself. A caller that finds it held returns its plan without recording it (a hit
    stays where it is in the order; a new plan is built again next time)."""
    cache = collections.OrderedDict()
    lock = threading.Lock()
    state = {"bytes": 0}

    @functools.wraps(build)
    def get(spec, channels=None):
        key = (spec, channels)
        hit = cache.get(key)
        if hit is not None:
            if lock.acquire(blocking=False):
                try:
                    if key in cache:
                        cache.move_to_end(key)
                finally:
                    lock.release()
            return hit[0]
        value = build(spec, channels)
        size = sum(a.nbytes for a in _arrays(value))
        if not lock.acquire(blocking=False):
            return value
        try:
            old = cache.pop(key, None)  # built meanwhile by another thread
            state["bytes"] += size - (old[1] if old is not None else 0)
            cache[key] = (value, size)
            while len(cache) > 1 and state["bytes"] > PLAN_CACHE_BYTES:
                _, (_, nbytes) = cache.popitem(last=False)
                state["bytes"] -= nbytes
        finally:
            lock.release()
        return value

    def cache_clear():
        with lock:
            cache.clear()
            state["bytes"] = 0

    get.cache = cache  # for inspection: ``{(spec, channels): (plan, bytes)}``
    get.cache_bytes = lambda: state["bytes"]
    get.cache_clear = cache_clear
    return get


def _arrays(v):
    if isinstance(v, np.ndarray):
        yield v
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from _arrays(x)


def _forward_dims(spec):
    """Per convolved dim of the forward over a padded copy: ``(src, tgt, off, ids)`` (see
    :func:`_plan`)."""
    return [(np.arange(o) * s, np.arange(o), np.arange(k) * dl, np.arange(k))
            for o, s, k, dl in zip(spec.out, spec.stride, spec.k, spec.dilation)]


@_cached
def forward_plan(spec, channels=None):
    """``(pos, ypos, offs, R)`` of the forward; ``channels``: the channel-wise form, the
    padded input holding that many channels (one group, one-value runs)."""
    dims = _forward_dims(spec)
    if channels is not None:
        return _plan(dims, (spec.N, *spec.padded, channels), (spec.N, *spec.out, spec.F), 1,
                     1, False)[:4]
    return _plan(dims, (spec.N, *spec.padded, spec.C), (spec.N, *spec.out, spec.F), spec.G,
                 spec.Cg, spec.G == 1 and spec.dilation[-1] == 1)[:4]


def _spanned(plan, dims, inside, cin):
    """``(groups, spans, empty)`` of one 2-d pass ``plan`` (:func:`_plan`'s, window rows
    as runs) over a zero-padded source: its positions split by the runs ``[t0, t1)`` of
    their window and the offsets ``[k0, k1)`` of each run that read inside the source
    (``inside``: per dim the ``[lo, hi)`` of the source proper), all on the pass's
    weights; ``empty``: the ``ypos`` of windows that read only padding."""
    pos, ypos, offs, R = plan[:4]
    per = []
    for (src, _, off, _), (lo, hi) in zip(dims, inside):
        at = np.asarray(src, np.int64)[:, None] + np.asarray(off, np.int64)[None, :]
        ok = (at >= lo) & (at < hi)  # the taps' offsets ascend: each row's are a range
        first = np.where(ok.any(1), ok.argmax(1), 0)
        per.append(list(zip(first.tolist(), (first + ok.sum(1)).tolist())))
    rows, cols = per
    n1 = len(cols)
    classes: dict = {}
    for i, (a, b) in enumerate(rows):
        for j, (c, e) in enumerate(cols):
            classes.setdefault((a, b, c * cin, e * cin), []).append(i * n1 + j)
    n = len(pos) // (len(rows) * n1)
    per_sample = np.arange(n, dtype=np.int64)[:, None] * (len(rows) * n1)
    groups, spans, empty = [], [], []
    for span, at in classes.items():
        p = (per_sample + np.asarray(at, np.int64)[None, :]).ravel()
        if span[0] == span[1] or span[2] == span[3]:
            empty.append(ypos[p])
            continue
        groups.append((pos[p], ypos[p], offs, R, None))
        spans.append(span)
    order = sorted(range(len(groups)), key=lambda i: -len(groups[i][0]))
    return ([groups[i] for i in order], [spans[i] for i in order],
            np.concatenate(empty) if empty else np.zeros(0, np.int64))


@_cached
def span_plan(spec, channels=None):
    """:func:`_spanned` of the 2-d forward over a padded copy (one group, window rows as
    runs: :func:`forward_plan`'s merged form): a zero-padded border skips the products
    with its zeros, on the same weights."""
    inside = [(b, b + n) for b, n in zip(spec.pb, spec.sp)]
    return _spanned(forward_plan(spec), _forward_dims(spec), inside, spec.C)


def _classes(src, tgt, off, ids, n):
    """One dim's positions split by which of their taps read inside ``[0, n)`` of the
    unpadded source: ``[(src, tgt, off, ids), ...]`` per class (``off``/``ids`` the
    class's taps, empty for positions that read only padding)."""
    classes = {}
    for i, s0 in enumerate(np.asarray(src).tolist()):
        valid = tuple(t for t, o in enumerate(off) if 0 <= s0 + o < n)
        classes.setdefault(valid, []).append(i)
    off, ids = np.asarray(off, np.int64), np.asarray(ids, np.int64)
    return [(np.asarray(src)[ii], np.asarray(tgt)[ii], off[list(v)], ids[list(v)])
            for v, ii in classes.items()]


def _groups(per_dim, src, tgt, G, cin, merge, spec):
    """The products of the dims' classes as groups ``(pos, ypos, offs, R, rows)`` with
    ``rows`` the group's rows of weights laid out ``(G, K·cin, ·)`` in run order; and the
    ``ypos`` of the positions that read only padding."""
    groups, empty = [], []
    for dims in itertools.product(*per_dim):
        if any(len(d[0]) == 0 for d in dims):
            continue
        if any(len(d[3]) == 0 for d in dims):
            empty.append(_plan(dims, src, tgt, 1, 1, False)[1])
            continue
        pos, ypos, offs, R, taps = _plan(dims, src, tgt, G, cin, merge)
        flat = np.ravel_multi_index(tuple(taps.T), spec.k)
        groups.append((pos, ypos, offs, R, (flat[:, None] * cin + np.arange(cin)).ravel()))
    groups.sort(key=lambda g: -len(g[0]))
    return groups, np.concatenate(empty) if empty else np.zeros(0, np.int64)


@_cached
def border_plan(spec, channels=None):
    """``(groups, empty)``: the forward read from the *unpadded* input (zero padding
    never materialised). Along each convolved dim the output indices fall in classes by
    which taps of their window lie inside the input; each product of classes is a group
    ``(pos, ypos, offs, R, rows)`` with only those taps (``pos`` may point before the
    input: ``pos + offs`` never does) and ``rows``, the group's rows of the weights
    ``(G, K·Cg, Fg)`` in run order (the channel-wise form, ``channels`` given: the input
    ``(N, *sp, channels)``, one-value runs, ``offs`` one row, ``rows`` the taps).
    ``empty``: ``ypos`` of the outputs whose window lies wholly in the padding."""
    per_dim = [_classes(np.arange(o) * s - b, np.arange(o), np.arange(k) * dl, np.arange(k), n)
               for n, o, s, k, dl, b in zip(spec.sp, spec.out, spec.stride, spec.k,
                                            spec.dilation, spec.pb)]
    tgt = (spec.N, *spec.out, spec.F)
    if channels is None:
        return _groups(per_dim, (spec.N, *spec.sp, spec.C), tgt, spec.G, spec.Cg,
                       spec.G == 1 and spec.dilation[-1] == 1, spec)
    groups, empty = _groups(per_dim, (spec.N, *spec.sp, channels), tgt, 1, 1, False, spec)
    return [(p, y, o[0], r, rows) for p, y, o, r, rows in groups], empty


def _phases(spec):
    """``(ranges, lo, hi, per_dim)`` of the input gradient by phase: the target's range
    per dim (the input, or for non-constant padding the padded input), the cotangent's
    zero padding ``lo``/``hi`` that the phases read, and per dim per phase ``(src, tgt,
    off, ids)`` with ``src`` in the padded cotangent."""
    if spec.constant_padding:
        ranges = [(b, b + n) for b, n in zip(spec.pb, spec.sp)]
    else:
        ranges = [(0, n) for n in spec.padded]
    lo = [max(0, -((u0 - (k - 1) * dl) // s)) for (u0, _), k, dl, s in
          zip(ranges, spec.k, spec.dilation, spec.stride)]
    hi = [max(0, (u1 - 1) // s - (o - 1)) for (_, u1), s, o in
          zip(ranges, spec.stride, spec.out)]
    per_dim = []
    for (u0, u1), k, dl, s, low in zip(ranges, spec.k, spec.dilation, spec.stride, lo):
        phases = []
        for ph in range(s):
            u = np.arange(u0 + (ph - u0) % s, u1, s)
            kk = np.array([t for t in range(k - 1, -1, -1) if (ph - t * dl) % s == 0],
                          dtype=np.int64)
            phases.append(((u - ph) // s + low, u - u0, (ph - kk * dl) // s, kk))
        per_dim.append(phases)
    return ranges, lo, hi, per_dim


def _ig_merge(spec):
    return spec.G == 1 and spec.stride[-1] % spec.dilation[-1] == 0


@_cached
def input_grad_plans(spec, channels=None):
    """``(target, cotangent pads, passes, any_empty)``: the input gradient's target (the
    input, or for non-constant padding the padded input) and, per phase, the plan;
    ``channels``: the channel-wise form, the padded cotangent holding that many."""
    ranges, lo, hi, per_dim = _phases(spec)
    gshape = (spec.N, *(o + a + b for o, a, b in zip(spec.out, lo, hi)),
              spec.F if channels is None else channels)
    tshape = (spec.N, *(u1 - u0 for u0, u1 in ranges), spec.C)
    merge = _ig_merge(spec) and channels is None
    groups, cin = (spec.G, spec.Fg) if channels is None else (1, 1)
    passes, empty = [], False
    for dims in itertools.product(*per_dim):
        if any(len(d[0]) == 0 for d in dims):
            continue
        if any(len(d[3]) == 0 for d in dims):
            empty = True
            continue
        passes.append(_plan(dims, gshape, tshape, groups, cin, merge))
    return tshape, list(zip(lo, hi)), passes, empty


@_cached
def input_grad_border_plan(spec, channels=None):
    """``(target, groups, zero)``: the input gradient reading the *unpadded* cotangent
    ``(N, *out, F)`` (channel-wise: ``channels``, as :func:`border_plan`): each phase's targets split, as :func:`border_plan` splits the
    forward's outputs, by which of their taps read inside the cotangent; ``zero``: the
    ``ypos`` of targets that no tap reaches."""
    ranges, lo, _, per_dim = _phases(spec)
    tshape = (spec.N, *(u1 - u0 for u0, u1 in ranges), spec.C)
    per_dim = [[c for src, tgt, off, ids in phases
                for c in _classes(src - low, tgt, off, ids, o)]
               for phases, low, o in zip(per_dim, lo, spec.out)]
    if channels is None:
        groups, zero = _groups(per_dim, (spec.N, *spec.out, spec.F), tshape, spec.G, spec.Fg,
                               _ig_merge(spec), spec)
        return tshape, groups, zero
    groups, zero = _groups(per_dim, (spec.N, *spec.out, channels), tshape, 1, 1, False, spec)
    return tshape, [(p, y, o[0], r, rows) for p, y, o, r, rows in groups], zero


@_cached
def gpos(spec, fp):
    """Where each forward position's cotangent starts in the packed ``(P, G, fp)``."""
    return np.arange(spec.N * math.prod(spec.out), dtype=np.int64) * (spec.G * fp)


@_cached
def border_gpos(spec, fp):
    return [ypos // spec.F * (spec.G * fp) for _, ypos, *_ in border_plan(spec)[0]]


# ---- the weight rows of a border plan's groups, worked out once per plan


def _rows_of(groups, total):
    """``(idx, spans, cat)`` of the groups ``(pos, ypos, offs, R, rows)`` of a border plan
    over weights with ``total`` rows: ``idx`` the rows of every group that does not read
    them all, concatenated (one gather per call instead of one per group: a 3-D plan has
    27 groups), per group its ``(start, stop)`` in ``idx`` or ``None`` where it reads
    every row in order (the weights as they are); ``cat`` every group's rows in group
    order (where their weight-gradient sums go back)."""
    rows = [np.asarray(g[4], dtype=np.int64) for g in groups]
    idx, spans, at = [], [], 0
    for r in rows:
        if len(r) == total and (r == np.arange(total)).all():
            spans.append(None)
        else:
            idx.append(r)
            spans.append((at, at + len(r)))
            at += len(r)
    empty = np.zeros(0, np.int64)
    return (np.concatenate(idx) if idx else empty, spans,
            np.concatenate(rows) if rows else empty)


@_cached
def border_rows(spec, channels=None):
    """:func:`_rows_of` for :func:`border_plan` (weights ``(G, K·Cg, Fg)``; channel-wise,
    ``channels`` given: ``(K, channels)``)."""
    return _rows_of(border_plan(spec, channels)[0],
                    spec.K if channels is not None else spec.K * spec.Cg)


@_cached
def input_grad_border_rows(spec, channels=None):
    """:func:`_rows_of` for :func:`input_grad_border_plan` (weights ``(G, K·Fg, Cg)``;
    channel-wise: ``(K, channels)``)."""
    return _rows_of(input_grad_border_plan(spec, channels)[1],
                    spec.K if channels is not None else spec.K * spec.Fg)


#: the item lists of :func:`group_items` kept per groups list (a cached plan hands out
#: the same list on every call), for at most this many lists
ITEMS_KEPT = 32
_items_kept: dict = {}


def bundles(groups, which, size):
    """The groups ``which`` (indices into ``groups``, each ``(pos, ...)``), whole, in
    order, as bundles of sub-items ``(group, 0, positions)`` closed once they hold
    ``size`` positions (the last may hold fewer)."""
    out, bundle, held = [], [], 0
    for i in which:
        m = len(groups[i][0])
        bundle.append((i, 0, m))
        held += m
        if held >= size:
            out.append(bundle)
            bundle, held = [], 0
    if bundle:
        out.append(bundle)
    return out


def group_items(groups, nb, vblocks=((0, 0),)):
    """The items of one dynamic parallel phase over ``groups`` (each ``(pos, ...)``: a
    plan's positions, or its border groups'), each a tuple of sub-items ``(group, q0,
    q1, va, vb)`` — positions ``q0 .. q1-1`` of that group, for one filter block ``(va,
    vb)`` of ``vblocks``: about ``nb`` position blocks of equal size in all (times the
    filter blocks), the groups too small for a block of their own bundled in order into
    blocks of about that size (a border group of a few positions costs a sub-item, not an
    item's hand-out between the threads), the biggest first. Remembered per ``groups``
    list while that stays alive in the cache (a training loop runs the same plans every
    step); a single group is not remembered (its list may be made for the call)."""
    key = (id(groups), nb, tuple(vblocks))
    hit = _items_kept.get(key) if len(groups) > 1 else None
    if hit is not None and hit[0] is groups:
        return hit[1]
    total = sum(len(g[0]) for g in groups)
    size = max(1, -(-total // nb))  # positions per item
    blocks = []
    for i, g in enumerate(groups):
        m = len(g[0])
        if m >= size:
            step = -(-m // round(m / size))
            blocks += [[(i, q, min(q + step, m))] for q in range(0, m, step)]
    blocks += bundles(groups, [i for i, g in enumerate(groups) if 0 < len(g[0]) < size],
                      size)
    blocks.sort(key=lambda b: -sum(q1 - q0 for _, q0, q1 in b))
    items = [tuple((i, q0, q1, va, vb) for i, q0, q1 in b) for b in blocks
             for va, vb in vblocks]
    if len(groups) > 1:
        if len(_items_kept) >= ITEMS_KEPT:
            _items_kept.clear()  # (one step: a thread holding a list it got keeps it)
        _items_kept[key] = (groups, items)
    return items
