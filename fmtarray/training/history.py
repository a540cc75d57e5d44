"""``TrainingHistory`` (MATLAB's training ``info``) and its training-progress plot."""

from __future__ import annotations

import dataclasses
import math

import numpy as _np

__all__ = ["TrainingHistory", "plot_training"]


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

    ``stop_reason`` is ``"max-epochs"``, ``"validation-patience"``, ``"output-fcn"``,
    or, when a non-finite value stopped training, ``"nan-loss"`` (the loss is NaN or
    infinite), ``"non-finite-gradient"`` or ``"non-finite-update"`` (the solver step
    overflowed). Then the last row of the per-iteration lists is the iteration that
    stopped training (its loss as computed), the network keeps the values from before
    it and ``output_network_iteration`` is the iteration before.
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
