"""The convolution registry: algorithms as entries, selection, and its explanation.

An :class:`Algo` names one way to compute one or more of the three ops
(``"forward"``, ``"input_grad"``, ``"weight_grad"``) for one array library. Its
``applies(spec, layout)`` returns ``None`` when it can run the call described by a
:class:`~.spec.ConvSpec` and a :class:`~.spec.Layout`, else the reason it cannot;
``accepts(spec, layout, *arrays)`` (optional) adds checks on the values themselves
(e.g. Winograd's transforms need finite inputs). Selection takes, per op, the first
registered entry of the data's library that applies, then the portable entries;
``force=`` picks one by name (a ``ValueError`` with the reason when it does not apply).

Libraries register their entries from their own adapter module, imported only when
an array of that library is first convolved (:data:`ADAPTERS`), so none of torch,
JAX, CuPy or Dask is ever imported by fmtarray on its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ... import _backend
from .thresholds import current

__all__ = ["OPS", "Algo", "register", "algorithms", "select", "explain", "forward",
           "backward", "library_of", "Choice", "load_all", "markdown_table"]

OPS = ("forward", "input_grad", "weight_grad")

#: library key -> module(s) registering its entries (relative to this package)
ADAPTERS = {
    "numpy": ("._numpy", "._numba"),
    "torch": "._torch",
    "jax": "._jax",
    "cupy": "._cupy",
    "dask": "._dask",
    "portable": ".portable",
}


@dataclass(frozen=True, eq=False)
class Algo:
    """One registered algorithm.

    ``forward(xp, spec, layout, x, w, b) -> y`` and
    ``backward(xp, spec, layout, gy, x, w, needs) -> (gx, gw)`` (``needs`` =
    ``(input_grad, weight_grad)``; an entry serving both gradient ops computes both in
    one call when both are wanted). Arrays are in ``layout.dims`` order; weights in
    MATLAB's layout ``(*k, C/G, F/G, G)``; ``y``/``gy`` hold ``F`` in the ``C`` slot.
    """

    name: str
    library: str
    ops: tuple
    applies: Callable
    forward: Callable | None = None
    backward: Callable | None = None
    accepts: Callable | None = None
    domain: str = ""
    #: ``cotangent(spec, layout, gy, x, w) -> (gy, layout)``: the cotangent in the memory
    #: order the entry reads; when the two gradients' entries name the same function,
    #: :func:`backward` calls it once and hands its result to both (one copy, not two)
    cotangent: Callable | None = None
    #: ``op_applies(op, spec, layout) -> None or why not``: a further condition on some
    #: of the ops (an entry whose forward and weight gradient part at different sizes)
    op_applies: Callable | None = None

    def __repr__(self):
        return f"Algo({self.name!r}, {'/'.join(self.ops)})"


_lock = threading.Lock()
_entries: dict[str, list[Algo]] = {}
#: zero-argument functions whose values the entries' ``applies`` read besides the spec,
#: the layout and the tuning in force (an adapter's on/off switch): part of the key
#: under which :func:`select` remembers which entries apply
STATE: list = []
_applicable: dict = {}  # (op, library, spec, layout, *STATE values) -> (tuning, entries)
_front: dict[str, int] = {}  # entries registered with front=True, per library
_loaded: set[str] = set()


def register(algo: Algo, *, front: bool = False) -> Algo:
    """Add ``algo`` after its library's existing entries (earlier entries win), or with
    ``front=True`` after the entries registered with ``front`` so far and before the
    others (compiled kernels ahead of the NumPy ones they beat)."""
    bad = [op for op in algo.ops if op not in OPS]
    if bad or not algo.ops:
        raise ValueError(f"register: {algo.name!r} has ops {algo.ops}; legal ops are {OPS}")
    if "forward" in algo.ops and algo.forward is None:
        raise ValueError(f"register: {algo.name!r} serves 'forward' but has no forward()")
    if {"input_grad", "weight_grad"} & set(algo.ops) and algo.backward is None:
        raise ValueError(f"register: {algo.name!r} serves a gradient but has no backward()")
    with _lock:
        lst = _entries.setdefault(algo.library, [])
        if any(a.name == algo.name for a in lst):
            raise ValueError(f"register: an algorithm named {algo.name!r} is registered already")
        _applicable.clear()
        if front:
            lst.insert(_front.get(algo.library, 0), algo)
            _front[algo.library] = _front.get(algo.library, 0) + 1
        else:
            lst.append(algo)
    return algo


def _load(library: str) -> None:
    if library in _loaded:
        return
    mods = ADAPTERS.get(library, ())
    for mod in (mods,) if isinstance(mods, str) else mods:
        if importlib.util.find_spec(__package__ + mod) is not None:
            importlib.import_module(mod, __package__)
    _loaded.add(library)


def load_all() -> None:
    """Import every adapter module. Adapters import their library only when they run,
    so this works whatever is installed (the docs table lists every entry)."""
    for lib in ADAPTERS:
        _load(lib)


def library_of(xp) -> str:
    """Registry key of an array-API namespace: its adapter, or ``"portable"``."""
    return _backend.library_key(xp)


def algorithms(library: str | None = None) -> list[Algo]:
    """Registered entries, in selection order: ``library``'s own, then the portable ones
    (every library's when ``library`` is ``None``)."""
    if library is None:
        load_all()
        return [a for lib in ADAPTERS for a in _entries.get(lib, [])]
    _load(library)
    _load("portable")
    own = _entries.get(library, []) if library != "portable" else []
    return list(own) + list(_entries.get("portable", []))


def _by_name(name: str) -> Algo:
    for lib in list(ADAPTERS):
        for a in _entries.get(lib, []):
            if a.name == name:
                return a
    load_all()
    for a in algorithms():
        if a.name == name:
            return a
    known = ", ".join(a.name for a in algorithms())
    raise ValueError(f"algorithm={name!r} is not a registered convolution algorithm; "
                     f"registered: {known}")


def _forced(force, op):
    if force is None:
        return None
    if isinstance(force, str):
        return force
    if isinstance(force, dict):
        bad = sorted(set(force) - set(OPS))
        if bad:
            raise ValueError(f"algorithm={force!r}: unknown op(s) {bad}; use keys from {OPS}")
        return force.get(op)
    raise TypeError(f"algorithm={force!r}: expected None, an algorithm name, or a dict "
                    f"{{op: name}} with ops from {OPS}")


def _why_not(a: Algo, op, spec, layout, library, arrays):
    if op not in a.ops:
        return f"does not compute the {op}"
    if a.library not in (library, "portable"):
        return f"runs on {a.library} arrays, these are {library}"
    reason = a.applies(spec, layout)
    if reason is None and a.op_applies is not None:
        reason = a.op_applies(op, spec, layout)
    if reason is None and a.accepts is not None and arrays is not None:
        reason = a.accepts(spec, layout, *arrays)
    return reason


def select(op, spec, layout, library, force=None, arrays=None) -> Algo:
    """The entry that runs ``op`` (see the module docstring)."""
    name = _forced(force, op)
    if name is not None:
        a = _by_name(name)
        _load(library)
        reason = _why_not(a, op, spec, layout, library, arrays)
        if reason is not None:
            raise ValueError(f"algorithm={name!r} cannot run this {op} ({spec.describe()}, "
                             f"layout {layout.dims}): {reason}")
        return a
    for a in _applying(op, spec, layout, library):
        if a.accepts is None or arrays is None or a.accepts(spec, layout, *arrays) is None:
            return a
    raise RuntimeError(f"no convolution algorithm applies to this {op} ({spec.describe()}); "
                       "the portable entries should always apply")  # pragma: no cover


def _applying(op, spec, layout, library):
    """The entries, in selection order, that serve ``op`` on ``library`` and whose
    ``applies`` says yes (their ``accepts`` not asked): remembered per op, library, spec,
    layout, tuning in force and :data:`STATE` (a training loop selects for the same
    convolutions at every step; ``applies`` reads nothing else). A new registration
    forgets them all."""
    t = current()
    key = (op, library, spec, layout, *[h() for h in STATE])
    hit = _applicable.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    found = tuple(a for a in algorithms(library)
                  if _why_not(a, op, spec, layout, library, None) is None)
    if len(_applicable) >= 4096:
        _applicable.clear()
    _applicable[key] = (t, found)
    return found


@dataclass(frozen=True)
class Choice:
    """The chosen entry for one op, and why each earlier or other entry was not chosen."""

    op: str
    chosen: str
    rejected: tuple  # ((name, reason), ...)

    def __str__(self):
        lines = [f"{self.op}: {self.chosen}"]
        lines += [f"    not {n}: {r}" for n, r in self.rejected]
        return "\n".join(lines)


def explain(op, spec, layout, library, force=None, arrays=None) -> Choice:
    chosen = select(op, spec, layout, library, force, arrays)
    rejected = []
    for a in algorithms(library):
        if a is chosen:
            continue
        r = _why_not(a, op, spec, layout, library, arrays)
        rejected.append((a.name, r if r is not None else f"{chosen.name} comes first"))
    return Choice(op, chosen.name, tuple(rejected))


# ---------------------------------------------------------------------------------------
# the front door


def forward(xp, spec, layout, x, w, b, force=None):
    """``y`` in ``layout.dims`` order."""
    a = select("forward", spec, layout, library_of(xp), force, (x, w))
    return a.forward(xp, spec, layout, x, w, b)


def backward(xp, spec, layout, gy, x, w, needs, force=None):
    """``(gx, gw, gb)``, ``None`` where ``needs`` is false; ``layout`` carries ``gy``'s
    memory order too (:meth:`~.spec.Layout.of` with ``gy``)."""
    lib = library_of(xp)
    gb = None
    if needs[2]:
        gb = _bias_grad(xp, gy, layout)
    ai = select("input_grad", spec, layout, lib, force, (gy, w)) if needs[0] else None
    aw = select("weight_grad", spec, layout, lib, force, (gy, x)) if needs[1] else None
    if (ai is not None and aw is not None and ai is not aw and ai.cotangent is not None
            and ai.cotangent is aw.cotangent):
        gy, layout = ai.cotangent(spec, layout, gy, x, w)
    gx = gw = None
    if ai is not None and ai is aw:
        gx, gw = ai.backward(xp, spec, layout, gy, x, w, (True, True))
    else:
        if ai is not None:
            gx = ai.backward(xp, spec, layout, gy, x, w, (True, False))[0]
        if aw is not None:
            gw = aw.backward(xp, spec, layout, gy, x, w, (False, True))[1]
    return gx, gw, gb


def _bias_grad(xp, gy, layout):
    """``Σ gy`` over every dim but ``C``. A NumPy cotangent is summed in its memory
    order: the dims stored outside ``C`` first, as one reduction over rows, then those
    inside it (a canonical 32×32×96×16 ``SSCB`` cotangent: 1.9 → 0.12 ms)."""
    axes = tuple(i for i, c in enumerate(layout.dims) if c != "C")
    if type(gy) is not np.ndarray or gy.size == 0:
        return xp.sum(gy, axis=axes)
    c = layout.dims.index("C")
    order = sorted(range(gy.ndim), key=lambda i: -abs(gy.strides[i]))  # outermost first
    m = gy.transpose(order)
    if not m.flags.c_contiguous:
        return xp.sum(gy, axis=axes)
    k = order.index(c)
    m = m.reshape(math.prod(m.shape[:k]), gy.shape[c], math.prod(m.shape[k + 1:]))
    return np.add.reduce(m, axis=0).sum(axis=-1)


def markdown_table() -> str:
    """The registered entries as a Markdown table, in selection order per library
    (``docs/architecture.md`` carries it; a test keeps the two equal)."""
    load_all()
    rows = ["| order | algorithm | library | ops | domain |", "| ---: | --- | --- | --- | --- |"]
    for lib in ADAPTERS:
        for i, a in enumerate(_entries.get(lib, []) if lib in _loaded else [], 1):
            ops = ", ".join(o.replace("_", " ") for o in a.ops)
            rows.append(f"| {i} | `{a.name}` | {a.library} | {ops} | {a.domain} |")
    return "\n".join(rows)
