"""``TrainingOptions`` (MATLAB ``trainingOptions`` in snake_case) and the learn-rate schedule."""

from __future__ import annotations

import dataclasses
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
