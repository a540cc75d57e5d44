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

The package: ``solvers`` (SGDM, Adam, RMSProp), ``options``
(``TrainingOptions``, the learn-rate schedule), ``history`` (``TrainingHistory``,
the plot), ``data`` (mini-batches, targets, accuracy), ``progress`` (the verbose
table and progress bar) and ``loop`` (``train``). ``fmtarray.train`` is the
function; this package is ``fmtarray.training``.
"""

from .history import TrainingHistory, plot_training
from .loop import train
from .options import (
    LEARN_RATE_SCHEDULES, OUTPUT_NETWORKS, SHUFFLE_MODES, TrainingOptions, learn_rate_at,
    make_solver,
)
from .solvers import (
    GRADIENT_THRESHOLD_METHODS, SGDM, SOLVERS, Adam, RMSProp, Solver, adam, rmsprop, sgdm,
)

__all__ = [
    "Solver", "SGDM", "Adam", "RMSProp", "sgdm", "adam", "rmsprop", "make_solver",
    "TrainingOptions", "TrainingHistory", "train", "plot_training", "learn_rate_at",
    "SOLVERS", "GRADIENT_THRESHOLD_METHODS", "LEARN_RATE_SCHEDULES", "SHUFFLE_MODES",
    "OUTPUT_NETWORKS",
]
