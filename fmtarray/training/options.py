"""``TrainingOptions`` (MATLAB ``trainingOptions`` in snake_case) and the learn-rate schedule."""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Callable
from typing import Any

from ._checks import _bad, _check_choice, _check_int, _check_real
from .solvers import GRADIENT_THRESHOLD_METHODS, SOLVERS, SGDM, Adam, RMSProp, Solver

__all__ = ["TrainingOptions", "make_solver", "learn_rate_at",
           "LEARN_RATE_SCHEDULES", "SHUFFLE_MODES", "OUTPUT_NETWORKS"]

LEARN_RATE_SCHEDULES = ("none", "piecewise")
SHUFFLE_MODES = ("once", "every-epoch", "never")
OUTPUT_NETWORKS = ("last-iteration", "best-validation-loss")

_DEFAULT_LR = {"sgdm": 0.01, "adam": 0.001, "rmsprop": 0.001}
_DEFAULT_SQ = {"adam": 0.999, "rmsprop": 0.9}


_O = "TrainingOptions"


def _schedule(sch):
    if callable(sch):
        return sch
    if not isinstance(sch, str) or sch.lower() not in LEARN_RATE_SCHEDULES:
        raise _bad(_O, "learn_rate_schedule", sch, "legal values: 'none', 'piecewise' or a "
                   "callable f(initial_learn_rate, iteration, epoch) -> learn rate")
    return sch.lower()


def _validation_data(vd):
    if vd is not None and not (isinstance(vd, (tuple, list)) and len(vd) == 2):
        raise _bad(_O, "validation_data", type(vd).__name__,
                   "give a tuple (inputs, targets) like the training data, or None")
    return vd


def _flag(name):
    def check(v):
        if not isinstance(v, bool):
            raise _bad(_O, name, v, "it must be True or False")
        return v
    return check


def _seed(v):
    if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0):
        raise _bad(_O, "seed", v, "it must be a non-negative integer or None")
    return v


def _progress(v):
    if not (isinstance(v, bool) or v == "auto"):
        raise _bad(_O, "progress", v, "legal values: 'auto', True, False")
    return v


def _plots(v):
    if v is None:
        return "none"
    if not isinstance(v, str) or not (v.lower() in ("none", "training-progress")
                                      or v.lower().endswith(".png")):
        raise _bad(_O, "plots", v, "legal values: 'none', 'training-progress' (saves "
                   "training-progress.png) or a path ending in .png")
    return v


def _output_fcn(v):
    if v is not None and not callable(v):
        raise _bad(_O, "output_fcn", v, "it must be a callable or None")
    return v


def _real(name, **kw):
    return lambda v: _check_real(_O, name, v, **kw)


def _int(name, **kw):
    return lambda v: _check_int(_O, name, v, **kw)


def _choice(name, choices):
    return lambda v: _check_choice(_O, name, v, choices)


# one validator per option, applied at construction and at every assignment
_CHECKS = {
    "solver": _choice("solver", SOLVERS),
    "initial_learn_rate": _real("initial_learn_rate", lo=0, lo_open=True),
    "learn_rate_schedule": _schedule,
    "learn_rate_drop_period": _int("learn_rate_drop_period"),
    "learn_rate_drop_factor": _real("learn_rate_drop_factor", lo=0, hi=1),
    "mini_batch_size": _int("mini_batch_size"),
    "max_epochs": _int("max_epochs"),
    "shuffle": _choice("shuffle", SHUFFLE_MODES),
    "l2_regularization": _real("l2_regularization", lo=0),
    "momentum": _real("momentum", lo=0, hi=1),
    "gradient_decay_factor": _real("gradient_decay_factor", lo=0, hi=1, hi_open=True),
    "squared_gradient_decay_factor": _real("squared_gradient_decay_factor", lo=0, hi=1,
                                           hi_open=True),
    "epsilon": _real("epsilon", lo=0, lo_open=True),
    "gradient_threshold": _real("gradient_threshold", lo=0, lo_open=True, allow_inf=True),
    "gradient_threshold_method": _choice("gradient_threshold_method",
                                         GRADIENT_THRESHOLD_METHODS),
    "validation_data": _validation_data,
    "validation_frequency": _int("validation_frequency"),
    "validation_patience": _int("validation_patience", allow_inf=True),
    "output_network": _choice("output_network", OUTPUT_NETWORKS),
    "reset_input_normalization": _flag("reset_input_normalization"),
    "seed": _seed,
    "verbose": _flag("verbose"),
    "verbose_frequency": _int("verbose_frequency"),
    "progress": _progress,
    "plots": _plots,
    "output_fcn": _output_fcn,
}

# options whose None means "the solver's default"
_SOLVER_DEFAULTS = {
    "initial_learn_rate": lambda solver: _DEFAULT_LR[solver],
    "squared_gradient_decay_factor": lambda solver: _DEFAULT_SQ.get(solver, 0.999),
}


@dataclasses.dataclass
class TrainingOptions:
    """Options for :func:`train`, MATLAB's ``trainingOptions`` in snake_case.

    Every field is validated at construction, by :meth:`replace` and at every
    assignment (``options.mini_batch_size = 0`` raises the constructor's error and
    leaves the options unchanged); an invalid value raises ``ValueError`` naming the
    option, the value and the legal values, and an unknown option name (a typo) is an
    ``AttributeError``.
    ``None`` for ``initial_learn_rate`` / ``squared_gradient_decay_factor`` means
    MATLAB's solver-dependent default (0.01 for sgdm, 0.001 otherwise; 0.999 for
    adam, 0.9 for rmsprop), and such a default follows later changes of ``solver``.  See ``docs/training.md`` for the MATLAB name of each.
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

    def __setattr__(self, name, value):
        check = _CHECKS.get(name)
        if check is None:
            if name.startswith("_"):
                object.__setattr__(self, name, value)
                return
            close = difflib.get_close_matches(name, _CHECKS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AttributeError(f"TrainingOptions has no option {name!r}{hint} (the options "
                                 f"are {', '.join(_CHECKS)})")
        if name in _SOLVER_DEFAULTS:
            # a frozenset, replaced (never changed in place): copies do not share it
            defaulted = self.__dict__.get("_defaulted", frozenset())
            if value is None:
                value = _SOLVER_DEFAULTS[name](self.__dict__.get("solver", "sgdm"))
                defaulted = defaulted | {name}
            else:
                value = check(value)
                defaulted = defaulted - {name}
            object.__setattr__(self, name, value)
            object.__setattr__(self, "_defaulted", defaulted)
            return
        value = check(value)
        object.__setattr__(self, name, value)
        if name == "solver":  # solver-dependent defaults follow the solver
            for dep in self.__dict__.get("_defaulted", ()):
                if dep in self.__dict__:
                    object.__setattr__(self, dep, _SOLVER_DEFAULTS[dep](value))

    def replace(self, **changes) -> TrainingOptions:
        """A copy with some fields changed (validated again); options that hold the
        solver's default keep following the solver."""
        for name in self.__dict__.get("_defaulted", ()):
            changes.setdefault(name, None)
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
