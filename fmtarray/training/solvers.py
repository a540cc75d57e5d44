"""Solvers (SPEC §4): SGDM, Adam and RMSProp with learn-rate and L2 factors.

A solver updates a tree of learnables (``{layer: {param: FormattedArray}}`` or any
dict/list/tuple tree) from a gradient tree of the same structure, per parameter:

1. frozen parameters (learn-rate factor 0) are left exactly as they are: no L2,
   no momentum, no solver state;
2. ``g = g + l2 · W`` with ``l2 = l2_regularization × l2 factor``;
3. gradient clipping (``gradient_threshold`` with ``"l2norm"``,
   ``"global-l2norm"`` or ``"absolute-value"``) on that regularised gradient;
4. the solver step with ``lr = learn_rate × learn-rate factor``.

Solvers work on the raw backend arrays with the array-API namespace of each
parameter, so they run unchanged on every library, and nothing is recorded for
autodiff.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend
from ..array import FormattedArray
from ..autodiff import _flatten, _unflatten
from ._checks import _check_choice, _check_real

__all__ = ["Solver", "SGDM", "Adam", "RMSProp", "sgdm", "adam", "rmsprop",
           "SOLVERS", "GRADIENT_THRESHOLD_METHODS"]

SOLVERS = ("sgdm", "adam", "rmsprop")
GRADIENT_THRESHOLD_METHODS = ("l2norm", "global-l2norm", "absolute-value")


class FactorTable(dict):
    """``{path: float}`` of a factor tree, checked once against the learnables' paths
    (:func:`factor_table`): what :func:`fmtarray.train` hands the solver at every step,
    so that the tree is not walked and checked again each iteration."""


def factor_table(tree, params, what):
    """The :class:`FactorTable` of ``tree`` (a factor tree, a number or ``None``) for the
    learnables ``params``; a ``ValueError`` as :meth:`Solver.update` gives for a bad one."""
    return FactorTable(_factor_table(tree, [p for p, _ in _flatten(params, "arg")], what))


def _factor_table(tree, paths, what, default=1.0):
    """``{path: float}`` for the leaves of a factor tree shaped like the learnables."""
    if isinstance(tree, FactorTable) and len(tree) == len(paths) and all(
            p in tree for p in paths):
        return tree
    if tree is None:
        return {p: default for p in paths}
    if isinstance(tree, numbers.Real) and not isinstance(tree, bool):
        return {p: float(tree) for p in paths}
    table = {}
    for p, v in _flatten(tree, "arg"):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(float(v)) \
                or float(v) < 0:
            raise ValueError(f"{what} for {p[3:] or 'the parameter'} must be a real number >= 0, "
                             f"got {v!r}")
        table[p] = float(v)
    missing = [p for p in paths if p not in table]
    if missing:
        raise ValueError(
            f"{what} tree does not match the learnables: no factor for {missing[0][3:]}; give a "
            "tree with the same structure (e.g. net.learn_rate_factors()) or None for all 1"
        )
    return table


class Solver:
    """Base class: per-parameter state, L2, clipping and learn-rate factors.

    Subclasses implement ``_init(xp, w) -> dict`` (the per-parameter state) and
    ``_step(xp, w, g, lr, state, t) -> new_w`` on raw backend arrays.  ``g`` is
    the regularised, clipped gradient; ``lr`` the effective learn rate; ``t`` the
    1-based iteration number.

    Parameters
    ----------
    learn_rate
        Global (base) learn rate; ``update(..., learn_rate=...)`` overrides it for
        one step (learn-rate schedules do that).
    l2_regularization
        Global L2 factor (MATLAB ``L2Regularization``, default ``1e-4``).
    gradient_threshold
        Clip gradients above this value (MATLAB ``GradientThreshold``; ``inf``:
        no clipping).
    gradient_threshold_method
        ``"l2norm"`` (each parameter's gradient scaled to norm ≤ threshold),
        ``"global-l2norm"`` (all gradients scaled by one factor so that their
        joint norm ≤ threshold; frozen parameters do not count) or
        ``"absolute-value"`` (each element clipped to ``[-threshold, threshold]``).
    """

    name = "solver"

    def __init__(self, learn_rate=0.01, *, l2_regularization=1e-4, gradient_threshold=math.inf,
                 gradient_threshold_method="l2norm"):
        o = type(self).__name__
        self.learn_rate = _check_real(o, "learn_rate", learn_rate, lo=0)
        self.l2_regularization = _check_real(o, "l2_regularization", l2_regularization, lo=0)
        self.gradient_threshold = _check_real(o, "gradient_threshold", gradient_threshold, lo=0,
                                              lo_open=True, allow_inf=True)
        self.gradient_threshold_method = _check_choice(
            o, "gradient_threshold_method", gradient_threshold_method, GRADIENT_THRESHOLD_METHODS)
        self.iteration = 0
        self.state: dict[str, dict] = {}

    def reset(self) -> None:
        """Forget the per-parameter state and the iteration count."""
        self.iteration = 0
        self.state = {}

    # subclass hooks ---------------------------------------------------------
    def _init(self, xp, w) -> dict:
        return {}

    def _step(self, xp, w, g, lr, st, t):  # pragma: no cover - abstract
        raise TypeError(f"solver {type(self).__name__} must define _step(xp, w, g, lr, state, t)")

    # the update ---------------------------------------------------------------
    def update(self, params, grads, learn_rate_factors=None, l2_factors=None, *, learn_rate=None):
        """One solver step: return the updated ``params`` tree.

        ``params`` and ``grads`` are trees (dict/list/tuple) of FormattedArrays
        with the same structure; ``learn_rate_factors`` / ``l2_factors`` are
        trees of the same structure holding floats (e.g.
        ``net.learn_rate_factors()``), a single float for every parameter, or
        ``None`` for 1.  The inputs are not modified; frozen parameters (factor
        0) come back as the very same objects.
        """
        p_flat = _flatten(params, "arg")
        g_flat = _flatten(grads, "arg")
        paths = [p for p, _ in p_flat]
        if [p for p, _ in g_flat] != paths:
            raise ValueError(
                "the gradient tree does not match the learnables tree: "
                f"{[p[3:] for p, _ in g_flat][:4]} vs {[p[3:] for p in paths][:4]}"
            )
        new_leaves = self._update_leaves(paths, [w for _, w in p_flat], [g for _, g in g_flat],
                                         learn_rate_factors, l2_factors, learn_rate)
        return _unflatten(params, new_leaves)

    def _update_leaves(self, paths, ws, gs, learn_rate_factors, l2_factors, learn_rate):
        """:meth:`update` on the flattened trees: ``paths`` (``"arg[...]"``, the keys of
        the solver's state), the parameters ``ws`` and gradients ``gs``; returns the new
        parameters, a list (what :func:`fmtarray.train` calls, its trees flattened once)."""
        lr_glob = self.learn_rate if learn_rate is None else _check_real(
            type(self).__name__, "learn_rate", learn_rate, lo=0)
        lrf = _factor_table(learn_rate_factors, paths, "learn-rate factor")
        l2f = _factor_table(l2_factors, paths, "L2 factor")
        self.iteration += 1
        t = self.iteration

        # 1-2. regularised gradients of the parameters that learn
        live = []  # (index, xp, w, g)
        for i, (path, w, g) in enumerate(zip(paths, ws, gs)):
            if not isinstance(w, FormattedArray):
                raise TypeError(f"learnable {path[3:]} is a {type(w).__name__}, not a FormattedArray")
            if lrf[path] == 0.0:
                continue
            gd = g.data if isinstance(g, FormattedArray) else g
            wd = w.data
            if tuple(gd.shape) != tuple(wd.shape):
                raise ValueError(f"gradient of {path[3:]} has shape {tuple(gd.shape)}, the parameter "
                                 f"{tuple(wd.shape)}")
            xp = _backend.namespace(wd)
            l2 = self.l2_regularization * l2f[path]
            if l2 != 0.0:
                gd = gd + l2 * wd
            live.append((i, xp, wd, gd))

        # 3. clipping
        live = self._clip(live)

        # 4. solver step
        new_leaves = list(ws)
        for i, xp, wd, gd in live:
            path = paths[i]
            st = self.state.get(path)
            if st is None:
                st = self.state[path] = self._init(xp, wd)
            lr = lr_glob * lrf[path]
            new_leaves[i] = FormattedArray._wrap(self._step(xp, wd, gd, lr, st, t), ws[i].format)
        return new_leaves

    def _clip(self, live):
        thr = self.gradient_threshold
        if math.isinf(thr) or not live:
            return live
        method = self.gradient_threshold_method
        if method == "absolute-value":
            return [(i, xp, w, xp.clip(g, -thr, thr)) for i, xp, w, g in live]
        if method == "l2norm":
            out = []
            for i, xp, w, g in live:
                norm = float(xp.sqrt(xp.sum(g * g)))
                if norm > thr:
                    g = g * (thr / norm)
                out.append((i, xp, w, g))
            return out
        # global-l2norm
        total = sum(float(xp.sum(g * g)) for _, xp, _, g in live)
        norm = math.sqrt(total)
        if norm <= thr:
            return live
        s = thr / norm
        return [(i, xp, w, g * s) for i, xp, w, g in live]

    def __repr__(self):
        extra = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return (f"{type(self).__name__}(learn_rate={self.learn_rate!r}, {extra}, "
                f"l2_regularization={self.l2_regularization!r}, gradient_threshold="
                f"{self.gradient_threshold!r}, gradient_threshold_method="
                f"{self.gradient_threshold_method!r})")

    _hyper: tuple[str, ...] = ()


class SGDM(Solver):
    """Stochastic gradient descent with momentum: ``v = momentum·v − lr·g; W += v``."""

    name = "sgdm"
    _hyper = ("momentum",)

    def __init__(self, learn_rate=0.01, momentum=0.9, **kw):
        super().__init__(learn_rate, **kw)
        self.momentum = _check_real("SGDM", "momentum", momentum, lo=0, hi=1)

    def _init(self, xp, w):
        return {"velocity": None}

    def _step(self, xp, w, g, lr, st, t):
        v = st["velocity"]
        v = -lr * g if v is None else self.momentum * v - lr * g
        st["velocity"] = v
        return w + v


class Adam(Solver):
    """Adam with bias-corrected moments (SPEC §4)::

        m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
        W -= lr · sqrt(1−β2^t)/(1−β1^t) · m / (sqrt(v) + ε)

    ``β1`` is MATLAB's ``GradientDecayFactor``, ``β2`` ``SquaredGradientDecayFactor``.
    """

    name = "adam"
    _hyper = ("gradient_decay_factor", "squared_gradient_decay_factor", "epsilon")

    def __init__(self, learn_rate=0.001, gradient_decay_factor=0.9,
                 squared_gradient_decay_factor=0.999, epsilon=1e-8, **kw):
        super().__init__(learn_rate, **kw)
        self.gradient_decay_factor = _check_real("Adam", "gradient_decay_factor",
                                                 gradient_decay_factor, lo=0, hi=1, hi_open=True)
        self.squared_gradient_decay_factor = _check_real(
            "Adam", "squared_gradient_decay_factor", squared_gradient_decay_factor, lo=0, hi=1,
            hi_open=True)
        self.epsilon = _check_real("Adam", "epsilon", epsilon, lo=0, lo_open=True)

    def _init(self, xp, w):
        z = xp.zeros(tuple(w.shape), dtype=w.dtype, device=_backend.device(w))
        return {"m": z, "v": z}

    def _step(self, xp, w, g, lr, st, t):
        b1, b2 = self.gradient_decay_factor, self.squared_gradient_decay_factor
        m = b1 * st["m"] + (1.0 - b1) * g
        v = b2 * st["v"] + (1.0 - b2) * (g * g)
        st["m"], st["v"] = m, v
        step = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        return w - step * (m / (xp.sqrt(v) + self.epsilon))


class RMSProp(Solver):
    """RMSProp: ``v = β2·v + (1−β2)·g²;  W -= lr · g / (sqrt(v) + ε)``."""

    name = "rmsprop"
    _hyper = ("squared_gradient_decay_factor", "epsilon")

    def __init__(self, learn_rate=0.001, squared_gradient_decay_factor=0.9, epsilon=1e-8, **kw):
        super().__init__(learn_rate, **kw)
        self.squared_gradient_decay_factor = _check_real(
            "RMSProp", "squared_gradient_decay_factor", squared_gradient_decay_factor, lo=0, hi=1,
            hi_open=True)
        self.epsilon = _check_real("RMSProp", "epsilon", epsilon, lo=0, lo_open=True)

    def _init(self, xp, w):
        return {"v": xp.zeros(tuple(w.shape), dtype=w.dtype, device=_backend.device(w))}

    def _step(self, xp, w, g, lr, st, t):
        b2 = self.squared_gradient_decay_factor
        v = b2 * st["v"] + (1.0 - b2) * (g * g)
        st["v"] = v
        return w - lr * (g / (xp.sqrt(v) + self.epsilon))


def sgdm(learn_rate=0.01, momentum=0.9, **kw) -> SGDM:
    """An :class:`SGDM` solver (MATLAB ``"sgdm"``; keywords as in :class:`Solver`)."""
    return SGDM(learn_rate, momentum, **kw)


def adam(learn_rate=0.001, gradient_decay_factor=0.9, squared_gradient_decay_factor=0.999,
         epsilon=1e-8, **kw) -> Adam:
    """An :class:`Adam` solver (MATLAB ``"adam"``; keywords as in :class:`Solver`)."""
    return Adam(learn_rate, gradient_decay_factor, squared_gradient_decay_factor, epsilon, **kw)


def rmsprop(learn_rate=0.001, squared_gradient_decay_factor=0.9, epsilon=1e-8, **kw) -> RMSProp:
    """An :class:`RMSProp` solver (MATLAB ``"rmsprop"``; keywords as in :class:`Solver`)."""
    return RMSProp(learn_rate, squared_gradient_decay_factor, epsilon, **kw)
