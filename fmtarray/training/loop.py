"""Training: solvers with learn-rate and L2 factors, options, and the training loop.

The pieces, from the bottom up:

* **Solvers** (:func:`sgdm`, :func:`adam`, :func:`rmsprop`) update a tree of
  learnables (``{layer: {param: FormattedArray}}`` or any dict/list/tuple tree)
  from a gradient tree of the same structure, following SPEC §4 exactly, per
  parameter:

  1. frozen parameters (learn-rate factor 0) are left exactly as they are: no L2,
     no momentum, no solver state;
  2. ``g = g + l2 · W`` with ``l2 = l2_regularization × l2 factor``;
  3. gradient clipping (``gradient_threshold`` with ``"l2norm"``,
     ``"global-l2norm"`` or ``"absolute-value"``) on that regularised gradient;
  4. the solver step with ``lr = learn_rate × learn-rate factor``.

* :class:`TrainingOptions` mirrors MATLAB's ``trainingOptions`` (snake_case
  names, the same defaults) and validates every value.

* :func:`train` runs mini-batch training of a :class:`fmtarray.Network` and
  returns ``(net, history)``.

Solvers work on the raw backend arrays with the array-API namespace of each
parameter, so they run unchanged on NumPy, torch, CuPy, Dask or
``array_api_strict``, and nothing is recorded for autodiff.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as _np

from . import _backend
from .array import FormattedArray, finddim
from .autodiff import _flatten, _unflatten, value_and_grad

__all__ = [
    "Solver", "SGDM", "Adam", "RMSProp", "sgdm", "adam", "rmsprop", "make_solver",
    "TrainingOptions", "TrainingHistory", "train", "plot_training", "learn_rate_at",
    "SOLVERS", "GRADIENT_THRESHOLD_METHODS", "LEARN_RATE_SCHEDULES", "SHUFFLE_MODES",
]

SOLVERS = ("sgdm", "adam", "rmsprop")
GRADIENT_THRESHOLD_METHODS = ("l2norm", "global-l2norm", "absolute-value")
LEARN_RATE_SCHEDULES = ("none", "piecewise")
SHUFFLE_MODES = ("once", "every-epoch", "never")
OUTPUT_NETWORKS = ("last-iteration", "best-validation-loss")


# ----------------------------------------------------------------------------
# validation helpers (shared by solvers and TrainingOptions)
# ----------------------------------------------------------------------------

def _bad(owner, name, value, legal):
    return ValueError(f"{owner}: invalid {name}={value!r}; {legal}")


def _check_real(owner, name, value, *, lo=None, hi=None, lo_open=False, hi_open=False,
                allow_inf=False):
    legal = "it must be a real number"
    if lo is not None or hi is not None:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        legal += f" in {left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    if allow_inf:
        legal += " (inf allowed)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(owner, name, value, legal)
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise _bad(owner, name, value, legal)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise _bad(owner, name, value, legal)
    if hi is not None and not math.isinf(v) and (v > hi or (hi_open and v == hi)):
        raise _bad(owner, name, value, legal)
    return v


def _check_int(owner, name, value, *, lo=1, allow_inf=False):
    legal = f"it must be an integer >= {lo}" + (" or inf" if allow_inf else "")
    if allow_inf and isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and math.isinf(value) and value > 0:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        if isinstance(value, float) and value.is_integer() and value >= lo:
            return int(value)
        raise _bad(owner, name, value, legal)
    return int(value)


def _check_choice(owner, name, value, choices):
    legal = "legal values: " + ", ".join(repr(c) for c in choices)
    if not isinstance(value, str) or value.lower() not in choices:
        raise _bad(owner, name, value, legal)
    return value.lower()


# ----------------------------------------------------------------------------
# solvers
# ----------------------------------------------------------------------------

def _factor_table(tree, paths, what, default=1.0):
    """``{path: float}`` for the leaves of a factor tree shaped like the learnables."""
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
        lr_glob = self.learn_rate if learn_rate is None else _check_real(
            type(self).__name__, "learn_rate", learn_rate, lo=0)
        p_flat = _flatten(params, "arg")
        g_flat = _flatten(grads, "arg")
        paths = [p for p, _ in p_flat]
        if [p for p, _ in g_flat] != paths:
            raise ValueError(
                "the gradient tree does not match the learnables tree: "
                f"{[p[3:] for p, _ in g_flat][:4]} vs {[p[3:] for p in paths][:4]}"
            )
        lrf = _factor_table(learn_rate_factors, paths, "learn-rate factor")
        l2f = _factor_table(l2_factors, paths, "L2 factor")
        self.iteration += 1
        t = self.iteration

        # 1-2. regularised gradients of the parameters that learn
        live = []  # (index, xp, w, g)
        for i, ((path, w), (_, g)) in enumerate(zip(p_flat, g_flat)):
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
        new_leaves = [w for _, w in p_flat]
        for i, xp, wd, gd in live:
            path = paths[i]
            st = self.state.get(path)
            if st is None:
                st = self.state[path] = self._init(xp, wd)
            lr = lr_glob * lrf[path]
            new_leaves[i] = FormattedArray._wrap(self._step(xp, wd, gd, lr, st, t),
                                                 p_flat[i][1].format)
        return _unflatten(params, new_leaves)

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


# ----------------------------------------------------------------------------
# options
# ----------------------------------------------------------------------------

_DEFAULT_LR = {"sgdm": 0.01, "adam": 0.001, "rmsprop": 0.001}
_DEFAULT_SQ = {"adam": 0.999, "rmsprop": 0.9}


@dataclasses.dataclass
class TrainingOptions:
    """Options for :func:`train`, MATLAB's ``trainingOptions`` in snake_case.

    Every field is validated at construction (and by :meth:`replace`); an invalid
    value raises ``ValueError`` naming the option, the value and the legal values.
    ``None`` for ``initial_learn_rate`` / ``squared_gradient_decay_factor`` means
    MATLAB's solver-dependent default (0.01 for sgdm, 0.001 otherwise; 0.999 for
    adam, 0.9 for rmsprop).  See ``docs/training.md`` for the MATLAB name of each.
    """

    solver: str = "sgdm"
    initial_learn_rate: float | None = None
    learn_rate_schedule: str | Callable = "none"
    learn_rate_drop_period: int = 10
    learn_rate_drop_factor: float = 0.1
    mini_batch_size: int = 128
    max_epochs: int = 30
    shuffle: str = "once"
    l2_regularization: float = 1e-4
    momentum: float = 0.9
    gradient_decay_factor: float = 0.9
    squared_gradient_decay_factor: float | None = None
    epsilon: float = 1e-8
    gradient_threshold: float = math.inf
    gradient_threshold_method: str = "l2norm"
    validation_data: Any = dataclasses.field(default=None, repr=False)
    validation_frequency: int = 50
    validation_patience: float = math.inf
    output_network: str = "last-iteration"
    reset_input_normalization: bool = True
    seed: int | None = 0
    verbose: bool = True
    verbose_frequency: int = 50
    progress: bool | str = "auto"
    plots: str | None = "none"
    output_fcn: Callable | None = None

    def __post_init__(self):
        o = "TrainingOptions"
        self.solver = _check_choice(o, "solver", self.solver, SOLVERS)
        if self.initial_learn_rate is None:
            self.initial_learn_rate = _DEFAULT_LR[self.solver]
        self.initial_learn_rate = _check_real(o, "initial_learn_rate", self.initial_learn_rate,
                                              lo=0, lo_open=True)
        if not callable(self.learn_rate_schedule):
            sch = self.learn_rate_schedule
            if not isinstance(sch, str) or sch.lower() not in LEARN_RATE_SCHEDULES:
                raise _bad(o, "learn_rate_schedule", sch, "legal values: 'none', 'piecewise' or "
                           "a callable f(initial_learn_rate, iteration, epoch) -> learn rate")
            self.learn_rate_schedule = sch.lower()
        self.learn_rate_drop_period = _check_int(o, "learn_rate_drop_period",
                                                 self.learn_rate_drop_period)
        self.learn_rate_drop_factor = _check_real(o, "learn_rate_drop_factor",
                                                  self.learn_rate_drop_factor, lo=0, hi=1)
        self.mini_batch_size = _check_int(o, "mini_batch_size", self.mini_batch_size)
        self.max_epochs = _check_int(o, "max_epochs", self.max_epochs)
        self.shuffle = _check_choice(o, "shuffle", self.shuffle, SHUFFLE_MODES)
        self.l2_regularization = _check_real(o, "l2_regularization", self.l2_regularization, lo=0)
        self.momentum = _check_real(o, "momentum", self.momentum, lo=0, hi=1)
        self.gradient_decay_factor = _check_real(o, "gradient_decay_factor",
                                                 self.gradient_decay_factor, lo=0, hi=1,
                                                 hi_open=True)
        if self.squared_gradient_decay_factor is None:
            self.squared_gradient_decay_factor = _DEFAULT_SQ.get(self.solver, 0.999)
        self.squared_gradient_decay_factor = _check_real(
            o, "squared_gradient_decay_factor", self.squared_gradient_decay_factor, lo=0, hi=1,
            hi_open=True)
        self.epsilon = _check_real(o, "epsilon", self.epsilon, lo=0, lo_open=True)
        self.gradient_threshold = _check_real(o, "gradient_threshold", self.gradient_threshold,
                                              lo=0, lo_open=True, allow_inf=True)
        self.gradient_threshold_method = _check_choice(
            o, "gradient_threshold_method", self.gradient_threshold_method,
            GRADIENT_THRESHOLD_METHODS)
        if self.validation_data is not None:
            vd = self.validation_data
            if not (isinstance(vd, (tuple, list)) and len(vd) == 2):
                raise _bad(o, "validation_data", type(vd).__name__,
                           "give a tuple (inputs, targets) like the training data, or None")
        self.validation_frequency = _check_int(o, "validation_frequency", self.validation_frequency)
        self.validation_patience = _check_int(o, "validation_patience", self.validation_patience,
                                              allow_inf=True)
        self.output_network = _check_choice(o, "output_network", self.output_network,
                                            OUTPUT_NETWORKS)
        if not isinstance(self.reset_input_normalization, bool):
            raise _bad(o, "reset_input_normalization", self.reset_input_normalization,
                       "it must be True or False")
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, numbers.Integral)
                                      or self.seed < 0):
            raise _bad(o, "seed", self.seed, "it must be a non-negative integer or None")
        if not isinstance(self.verbose, bool):
            raise _bad(o, "verbose", self.verbose, "it must be True or False")
        self.verbose_frequency = _check_int(o, "verbose_frequency", self.verbose_frequency)
        if not (isinstance(self.progress, bool) or self.progress == "auto"):
            raise _bad(o, "progress", self.progress, "legal values: 'auto', True, False")
        if self.plots is None:
            self.plots = "none"
        if not isinstance(self.plots, str) or not (
                self.plots.lower() in ("none", "training-progress")
                or self.plots.lower().endswith(".png")):
            raise _bad(o, "plots", self.plots,
                       "legal values: 'none', 'training-progress' (saves training-progress.png) "
                       "or a path ending in .png")
        if self.output_fcn is not None and not callable(self.output_fcn):
            raise _bad(o, "output_fcn", self.output_fcn, "it must be a callable or None")

    def replace(self, **changes) -> TrainingOptions:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def make_solver(self) -> Solver:
        """The solver these options describe."""
        common = dict(l2_regularization=self.l2_regularization,
                      gradient_threshold=self.gradient_threshold,
                      gradient_threshold_method=self.gradient_threshold_method)
        if self.solver == "sgdm":
            return SGDM(self.initial_learn_rate, self.momentum, **common)
        if self.solver == "adam":
            return Adam(self.initial_learn_rate, self.gradient_decay_factor,
                        self.squared_gradient_decay_factor, self.epsilon, **common)
        return RMSProp(self.initial_learn_rate, self.squared_gradient_decay_factor, self.epsilon,
                       **common)


def make_solver(options: TrainingOptions) -> Solver:
    """The solver described by ``options``."""
    return options.make_solver()


def learn_rate_at(options: TrainingOptions, epoch: int, iteration: int) -> float:
    """The base learn rate at ``epoch`` (1-based) and ``iteration`` (1-based).

    ``"piecewise"``: ``initial · drop_factor ** ((epoch − 1) // drop_period)``, so
    with period 10 epochs 1–10 use the initial rate and 11–20 the dropped one.
    A callable schedule is called as ``f(initial_learn_rate, iteration, epoch)``.
    """
    lr0 = options.initial_learn_rate
    sch = options.learn_rate_schedule
    if callable(sch):
        lr = sch(lr0, iteration, epoch)
        return _check_real("learn_rate_schedule", "returned learn rate", lr, lo=0)
    if sch == "piecewise":
        return lr0 * options.learn_rate_drop_factor ** ((epoch - 1) // options.learn_rate_drop_period)
    return lr0


# ----------------------------------------------------------------------------
# history
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class TrainingHistory:
    """What :func:`train` returns next to the network (MATLAB's training ``info``).

    Per iteration (all the same length): ``iteration``, ``epoch``,
    ``training_loss``, ``training_accuracy`` (mini-batch, percent; NaN when the
    loss is not a classification loss), ``validation_loss`` /
    ``validation_accuracy`` (NaN where no validation ran), ``base_learn_rate``.
    Per epoch: ``epoch_training_loss`` / ``epoch_training_accuracy`` (means over
    the epoch's mini-batches) and ``epoch_validation_loss`` /
    ``epoch_validation_accuracy`` (on the whole validation set at the end of the
    epoch; NaN without validation data).
    """

    iteration: list = dataclasses.field(default_factory=list)
    epoch: list = dataclasses.field(default_factory=list)
    training_loss: list = dataclasses.field(default_factory=list)
    training_accuracy: list = dataclasses.field(default_factory=list)
    validation_loss: list = dataclasses.field(default_factory=list)
    validation_accuracy: list = dataclasses.field(default_factory=list)
    base_learn_rate: list = dataclasses.field(default_factory=list)
    epoch_training_loss: list = dataclasses.field(default_factory=list)
    epoch_training_accuracy: list = dataclasses.field(default_factory=list)
    epoch_validation_loss: list = dataclasses.field(default_factory=list)
    epoch_validation_accuracy: list = dataclasses.field(default_factory=list)
    final_validation_loss: float = math.nan
    final_validation_accuracy: float = math.nan
    output_network_iteration: int = 0
    stop_reason: str = ""
    elapsed_s: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def plot(self, path="training-progress.png"):
        """Save the loss/accuracy plot to ``path`` (PNG); see :func:`plot_training`."""
        return plot_training(self, path)


# ----------------------------------------------------------------------------
# data handling
# ----------------------------------------------------------------------------

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
    if not x.xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{what} must be floating point (float32 or float64), got {x.dtype}; "
                        "convert first, e.g. fmtarray.astype(x, float32)")
    return x


def _as_targets(t, n, like, num_classes, what):
    """One-hot targets with a 'B' dim of size ``n``; integer labels become ``CB`` one-hot."""
    if isinstance(t, FormattedArray) and t.format and "C" in t.format:
        if t.size("B") != n:
            raise ValueError(f"{what} have {t.size('B')} observations along 'B' (format "
                             f"{t.format!r}, shape {t.shape}) but the inputs have {n}")
        if not t.xp.isdtype(t.dtype, "real floating"):
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
        idx = _backend._from_host(order[start:stop], xp, None, a.device)
        data = xp.take(a.data, idx, axis=ax)
    return FormattedArray._wrap(data, a.format)


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
    hits = float(xp.sum(xp.astype(py == pt, xp.float32)))
    total = 1
    for s in py.shape:
        total *= int(s)
    return hits, total


def _loss_fn(loss):
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss.lower() in ("crossentropy", "cross-entropy", "cross_entropy"):
        from .ops.nn import cross_entropy

        return cross_entropy
    raise ValueError(f"train: invalid loss={loss!r}; legal values: 'crossentropy' or a callable "
                     "loss(y, targets) -> scalar FormattedArray (mean over the mini-batch)")


# ----------------------------------------------------------------------------
# progress display
# ----------------------------------------------------------------------------

class _TextBar:
    def __init__(self, total, stream):
        self.total, self.n, self.stream, self.post = total, 0, stream, ""
        self.t0 = time.perf_counter()

    def update(self, k=1):
        self.n += k
        self._draw()

    def set_postfix_str(self, s):
        self.post = s

    def _draw(self):
        w = 30
        frac = self.n / self.total if self.total else 1.0
        done = int(w * frac)
        el = time.perf_counter() - self.t0
        self.stream.write(f"\r[{'#' * done}{'.' * (w - done)}] {self.n}/{self.total} "
                          f"{el:6.1f}s {self.post}")
        self.stream.flush()

    def write(self, s):
        self.stream.write("\r" + s + "\n")
        self._draw()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


def _make_bar(options, total):
    on = options.progress
    if on == "auto":
        on = bool(options.verbose) and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if not on:
        return None
    if importlib.util.find_spec("tqdm") is not None:
        from tqdm.auto import tqdm

        return tqdm(total=total, file=sys.stderr, unit="it", leave=True, dynamic_ncols=True)
    return _TextBar(total, sys.stderr)


_HEADER = ("|  Epoch  |  Iteration  |  Time Elapsed  |  Mini-batch  |  Mini-batch  |  Validation  |"
           "  Validation  |  Base Learn  |\n|         |             |   (hh:mm:ss)   |     Loss     |"
           "   Accuracy   |     Loss     |   Accuracy   |     Rate     |")


def _fmt_num(v, pct=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return " " * 12
    return f"{v:11.2f}%" if pct else f"{v:12.4f}"


def _row(epoch, it, el, loss, acc, vloss, vacc, lr):
    h, rem = divmod(int(el), 3600)
    m, s = divmod(rem, 60)
    return (f"| {epoch:7d} | {it:11d} | {h:02d}:{m:02d}:{s:02d}       | {_fmt_num(loss)} | "
            f"{_fmt_num(acc, True)} | {_fmt_num(vloss)} | {_fmt_num(vacc, True)} | {lr:12.4g} |")


# ----------------------------------------------------------------------------
# the training loop
# ----------------------------------------------------------------------------

def _layers_of(net):
    return list(getattr(net, "layers", ()))


def _evaluate(net, x, t, loss_fn, batch_size):
    """(mean loss, accuracy %) of ``net.predict`` over ``x`` in mini-batches."""
    n = x.size("B")
    tot_loss, hits, count = 0.0, 0.0, 0
    acc_ok = True
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        xb, tb = _batch(x, None, s, e), _batch(t, None, s, e)
        y = net.predict(xb)
        tot_loss += float(loss_fn(y, tb).data) * (e - s)
        c = _correct(y, tb)
        if c is None:
            acc_ok = False
        else:
            hits += c[0]
            count += c[1]
    acc = 100.0 * hits / count if acc_ok and count else math.nan
    return tot_loss / max(n, 1), acc


def train(net, inputs, targets, options: TrainingOptions | None = None, *, loss="crossentropy",
          input_format: str | None = None):
    """Train ``net`` (a :class:`fmtarray.Network`) by mini-batch gradient descent.

    Parameters
    ----------
    net
        The network; trained in place and returned.  It is initialised first
        (with ``options.seed``) when it is not yet.
    inputs
        A FormattedArray with a ``B`` dim (e.g. ``SSCB`` images), or a raw array in
        MATLAB's layout (``h×w×c×N`` is read as ``SSCB``; ``input_format=`` to say
        otherwise).  Mini-batches are sliced along ``B``.
    targets
        One-hot targets as a FormattedArray in the network output's format (``CB``
        for a classifier), or a 1-d array of integer class labels ``0..K-1``
        (converted to ``CB`` one-hot with ``K`` = the network's output channels).
    options
        :class:`TrainingOptions` (default: MATLAB's defaults, ``"sgdm"``).
    loss
        ``"crossentropy"`` (:func:`fmtarray.cross_entropy`) or a callable
        ``loss(y, targets) -> scalar FormattedArray``, a mean over the mini-batch.

    Returns
    -------
    (net, history)
        ``history`` is a :class:`TrainingHistory`.

    Notes
    -----
    As in MATLAB: the first layer's normalisation statistics (``image_input_layer``)
    are computed from the whole training set before training
    (``reset_input_normalization``); every epoch uses ``N // mini_batch_size``
    full mini-batches (the remainder is discarded; a mini-batch size above ``N``
    uses all ``N``); shuffling, the solver's factors and L2 follow
    :class:`TrainingOptions` and SPEC §4.
    """
    if options is None:
        options = TrainingOptions()
    if not isinstance(options, TrainingOptions):
        raise TypeError(f"options must be a TrainingOptions (fmtarray.TrainingOptions(...) or "
                        f"fmtarray.matlab.trainingOptions(...)), got {type(options).__name__}")
    loss_fn = _loss_fn(loss)
    x = _as_inputs(inputs, input_format, "inputs")
    n = x.size("B")
    if n == 0:
        raise ValueError("inputs have no observations (size 0 along 'B')")

    # input-layer statistics from the whole training set, then initialisation
    layers = _layers_of(net)
    first = layers[0] if layers else None
    if first is not None and callable(getattr(first, "compute_statistics", None)):
        if options.reset_input_normalization:
            first.compute_statistics(x)
        elif not getattr(first, "statistics_computed", False) and not _is_initialized(net):
            # MATLAB: with ResetInputNormalization false, compute only statistics that are empty
            needed = getattr(first, "_needed", lambda: ())()
            if any(getattr(first, p, None) is None for p in needed):
                first.compute_statistics(x)
    if not _is_initialized(net):
        net.initialize(_batch(x, None, 0, 1), seed=0 if options.seed is None else options.seed)

    _check_same_library(net, x)

    k_cache = []

    def num_classes():
        if not k_cache:
            y = net.predict(_batch(x, None, 0, 1))
            if not finddim(y, "C"):
                raise ValueError(f"integer class labels need a network output with a 'C' dim, the "
                                 f"output has format {y.format!r}")
            k_cache.append(y.size("C"))
        return k_cache[0]

    t = _as_targets(targets, n, x, num_classes, "targets")
    val = None
    if options.validation_data is not None:
        vx = _as_inputs(options.validation_data[0], input_format, "validation inputs")
        vt = _as_targets(options.validation_data[1], vx.size("B"), vx, num_classes,
                         "validation targets")
        val = (vx, vt)

    solver = options.make_solver()
    bs = min(options.mini_batch_size, n)
    per_epoch = n // bs
    total = per_epoch * options.max_epochs
    rng = _np.random.default_rng(options.seed)
    order = rng.permutation(n) if options.shuffle == "once" else None

    def loss_and_state(params, xb, tb):
        y, state = net.forward(xb, learnables=params)
        return loss_fn(y, tb), (y, state)

    vg = value_and_grad(loss_and_state, argnums=0, has_aux=True)
    hist = TrainingHistory()
    bar = _make_bar(options, total)
    out = bar.write if bar is not None else print
    if options.verbose:
        out(_HEADER)
    params = net.learnables()
    lrf, l2f = net.learn_rate_factors(), net.l2_factors()
    best = (math.inf, None, 0)
    since_best = 0
    t0 = time.perf_counter()
    it = 0
    stop = "max-epochs"
    last_val = (math.nan, math.nan, -1)

    def validate(at_iteration):
        nonlocal last_val
        if last_val[2] != at_iteration:
            vl, va = _evaluate(net, val[0], val[1], loss_fn, options.mini_batch_size)
            last_val = (vl, va, at_iteration)
        return last_val[0], last_val[1]

    try:
        for epoch in range(1, options.max_epochs + 1):
            if options.shuffle == "every-epoch":
                order = rng.permutation(n)
            e_loss = e_hits = e_count = 0.0
            e_acc_ok = True
            lr = learn_rate_at(options, epoch, it + 1)
            for b in range(per_epoch):
                it += 1
                if callable(options.learn_rate_schedule):
                    lr = learn_rate_at(options, epoch, it)
                xb = _batch(x, order, b * bs, (b + 1) * bs)
                tb = _batch(t, order, b * bs, (b + 1) * bs)
                (lval, (y, state)), grads = vg(params, xb, tb)
                lv = float(lval.data)
                if math.isnan(lv):
                    stop = "nan-loss"
                    warnings.warn(f"training stopped: the training loss is NaN at iteration {it} "
                                  f"(epoch {epoch}); the network keeps its last finite values. "
                                  "Check the data for NaN and lower initial_learn_rate or set "
                                  "gradient_threshold", RuntimeWarning, stacklevel=2)
                    raise _Stop
                params = solver.update(params, grads, lrf, l2f, learn_rate=lr)
                net.set_learnables(params)
                if state:
                    net.update_state(_detach(state))
                c = _correct(_detach(y), tb)
                acc = math.nan
                if c is None:
                    e_acc_ok = False
                else:
                    acc = 100.0 * c[0] / c[1]
                    e_hits += c[0]
                    e_count += c[1]
                e_loss += lv
                vl = va = math.nan
                if val is not None and (it % options.validation_frequency == 0 or it == 1
                                        or it == total):
                    vl, va = validate(it)
                hist.iteration.append(it)
                hist.epoch.append(epoch)
                hist.training_loss.append(lv)
                hist.training_accuracy.append(acc)
                hist.validation_loss.append(vl)
                hist.validation_accuracy.append(va)
                hist.base_learn_rate.append(lr)
                if bar is not None:
                    bar.update(1)
                    post = f"epoch {epoch}/{options.max_epochs} loss {lv:.4f}"
                    if not math.isnan(acc):
                        post += f" acc {acc:.1f}%"
                    bar.set_postfix_str(post)
                if options.verbose and (it == 1 or it % options.verbose_frequency == 0
                                        or it == total):
                    out(_row(epoch, it, time.perf_counter() - t0, lv, acc, vl, va, lr))
                if not math.isnan(vl):
                    if vl < best[0]:
                        best = (vl, (params, _state_snapshot(net)), it)
                        since_best = 0
                    else:
                        since_best += 1
                        if since_best >= options.validation_patience:
                            stop = "validation-patience"
                            raise _Stop
                if options.output_fcn is not None:
                    info = {"epoch": epoch, "iteration": it, "training_loss": lv,
                            "training_accuracy": acc, "validation_loss": vl,
                            "validation_accuracy": va, "base_learn_rate": lr,
                            "time_elapsed": time.perf_counter() - t0, "state": "iteration"}
                    if options.output_fcn(info):
                        stop = "output-fcn"
                        raise _Stop
            hist.epoch_training_loss.append(e_loss / max(per_epoch, 1))
            hist.epoch_training_accuracy.append(100.0 * e_hits / e_count
                                                if e_acc_ok and e_count else math.nan)
            if val is not None:
                vl, va = validate(it)
                hist.epoch_validation_loss.append(vl)
                hist.epoch_validation_accuracy.append(va)
            else:
                hist.epoch_validation_loss.append(math.nan)
                hist.epoch_validation_accuracy.append(math.nan)
    except _Stop:
        pass
    finally:
        if bar is not None:
            bar.close()

    hist.output_network_iteration = it
    if options.output_network == "best-validation-loss" and best[1] is not None:
        net.set_learnables(best[1][0])
        _restore_state(net, best[1][1])
        hist.output_network_iteration = best[2]
    if val is not None:
        vl, va = _evaluate(net, val[0], val[1], loss_fn, options.mini_batch_size)
        hist.final_validation_loss, hist.final_validation_accuracy = vl, va
    hist.stop_reason = stop
    hist.elapsed_s = time.perf_counter() - t0
    if options.verbose:
        msg = {"max-epochs": "Training finished: Max epochs completed.",
               "nan-loss": "Training stopped: Training loss is NaN.",
               "validation-patience": "Training stopped: Met validation criterion.",
               "output-fcn": "Training stopped: Stopped by OutputFcn."}[stop]
        print(msg + f" ({it} iterations, {hist.elapsed_s:.1f} s)")
    plots = options.plots.lower()
    if plots != "none":
        plot_training(hist, "training-progress.png" if plots == "training-progress"
                      else options.plots)
    return net, hist


class _Stop(Exception):
    pass


def _is_initialized(net) -> bool:
    flag = getattr(net, "initialized", None)
    if flag is None:
        flag = getattr(net, "is_initialized", None)
    if callable(flag):
        flag = flag()
    if flag is not None:
        return bool(flag)
    return bool(_flatten(net.learnables()))


def _check_same_library(net, x):
    """The learnables must live where the data lives (no silent conversion or transfer)."""
    xlib, xdev = _backend.library_name(x.data), x.device
    for path, w in _flatten(net.learnables(), "learnables"):
        if not isinstance(w, FormattedArray):
            continue
        wlib, wdev = _backend.library_name(w.data), w.device
        if wlib != xlib or str(wdev) != str(xdev):
            raise TypeError(
                f"the network's learnable {path[10:]} is a {wlib} array on device {wdev!s} but "
                f"the inputs are {xlib} arrays on device {xdev!s}; fmtarray does not move data "
                "silently: initialise the network from the training data (net.initialize(x), or "
                "let train() do it on an uninitialised network) or convert the inputs"
            )
        return


def _state_snapshot(net):
    snap = getattr(net, "state", None)
    if callable(snap):
        return snap()
    return None


def _restore_state(net, snap):
    if snap is not None and hasattr(net, "set_state"):
        net.set_state(snap)


# ----------------------------------------------------------------------------
# plotting
# ----------------------------------------------------------------------------

def plot_training(history: TrainingHistory, path="training-progress.png"):
    """Save a two-panel PNG (loss, accuracy) of ``history`` to ``path``; return ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global state).  The
    mini-batch curves are drawn thin, their per-epoch means and the validation
    points bold, like MATLAB's training-progress plot.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting the training progress needs matplotlib "
                          "(pip install matplotlib, or fmtarray[plot])") from e
    it = _np.asarray(history.iteration, dtype=float)
    fig = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(2, 1, sharex=True)
    per_epoch = {}
    for i, e in zip(history.iteration, history.epoch):
        per_epoch[e] = i
    ep_x = _np.asarray([per_epoch[e] for e in sorted(per_epoch)], dtype=float)
    for ax, key, ylabel in ((ax_acc, "accuracy", "Accuracy (%)"), (ax_loss, "loss", "Loss")):
        tr = _np.asarray(getattr(history, "training_" + key), dtype=float)
        va = _np.asarray(getattr(history, "validation_" + key), dtype=float)
        if tr.size:
            ax.plot(it, tr, color="#4c8bd6", lw=0.8, alpha=0.6, label="Training (mini-batch)")
        ep_tr = _np.asarray(getattr(history, "epoch_training_" + key), dtype=float)
        if ep_tr.size and ep_x.size and not _np.all(_np.isnan(ep_tr)):
            ax.plot(ep_x[:ep_tr.size], ep_tr, color="#1f4e99", lw=2, marker="o", ms=3,
                    label="Training (epoch mean)")
        m = ~_np.isnan(va)
        if m.any():
            ax.plot(it[m], va[m], color="k", lw=1.2, ls="--", marker="o", ms=3,
                    label="Validation")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    for xe in ep_x[:-1]:
        for ax in (ax_acc, ax_loss):
            ax.axvline(xe + 0.5, color="0.85", lw=0.6, zorder=0)
    ax_loss.set_xlabel("Iteration")
    title = "Training progress"
    if history.stop_reason:
        title += f" — {history.stop_reason}, {history.elapsed_s:.1f} s"
    ax_acc.set_title(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path
