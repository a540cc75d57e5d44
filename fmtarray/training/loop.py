"""The training loop: :func:`train`."""

from __future__ import annotations

import math
import time
import warnings

import numpy as _np

from .. import _backend
from ..array import FormattedArray, finddim
from ..autodiff import _flatten, _unflatten, value_and_grad
from ..layers._protocol import cast_input, float_dtype
from .data import Batches, _as_inputs, _as_targets, _correct, _detach, permutation
from .history import TrainingHistory, plot_training
from .options import TrainingOptions, learn_rate_at
from .progress import _HEADER, _make_bar, _row
from .solvers import factor_table

__all__ = ["train"]


def _loss_fn(loss):
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss.lower() in ("crossentropy", "cross-entropy", "cross_entropy"):
        from ..ops.nn import cross_entropy

        return cross_entropy
    raise ValueError(f"train: invalid loss={loss!r}; legal values: 'crossentropy' or a callable "
                     "loss(y, targets) -> scalar FormattedArray (mean over the mini-batch)")


def _layers_of(net):
    return list(getattr(net, "layers", ()))


def _evaluate(net, x, t, loss_fn, batch_size):
    """(mean loss, accuracy %) of ``net.predict`` over ``x`` in mini-batches (``x``, ``t``:
    :class:`~.data.Batches`)."""
    n = x.a.size("B")
    tot_loss, hits, count = 0.0, 0.0, 0
    acc_ok = True
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        xb, tb = x.get(None, s, e), t.get(None, s, e)
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

    # an initialised network keeps its dtype: float inputs of another dtype are cast to it
    # before anything (the input layer's statistics included) is computed from them
    if _is_initialized(net):
        x = cast_input(x, _net_dtype(net))

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
    xs = Batches(x)
    if first is not None and getattr(first, "statistics_computed", False):
        # statistics of Dask-backed inputs: computed once, kept where the network lives
        _compute_lazy_values(first, _mover(net) if xs.streamed else None)
    if not _is_initialized(net):
        net.initialize(xs.get(None, 0, 1), seed=0 if options.seed is None else options.seed)

    mover = _mover(net) if xs.streamed else None
    xs.to = mover
    _check_same_library(net, xs.get(None, 0, 1) if xs.streamed else x)
    net_dtype = _net_dtype(net)
    x = cast_input(x, net_dtype)
    xs = Batches(x)
    xs.to = mover

    def source(a):
        b = Batches(a)
        b.to = mover
        return b

    k_cache = []

    def num_classes():
        if not k_cache:
            y = net.predict(xs.get(None, 0, 1))
            if not finddim(y, "C"):
                raise ValueError(f"integer class labels need a network output with a 'C' dim, the "
                                 f"output has format {y.format!r}")
            k_cache.append(y.size("C"))
        return k_cache[0]

    like = xs.get(None, 0, 1) if xs.streamed else x
    t = source(cast_input(_as_targets(targets, n, like, num_classes, "targets"), net_dtype))
    val = None
    if options.validation_data is not None:
        vx = cast_input(_as_inputs(options.validation_data[0], input_format,
                                   "validation inputs"), net_dtype)
        vxs = source(vx)
        vlike = vxs.get(None, 0, 1) if vxs.streamed else vx
        vt = cast_input(_as_targets(options.validation_data[1], vx.size("B"), vlike, num_classes,
                                    "validation targets"), net_dtype)
        val = (vxs, source(vt))

    solver = options.make_solver()
    bs = min(options.mini_batch_size, n)
    per_epoch = n // bs
    total = per_epoch * options.max_epochs
    rng = _np.random.default_rng(options.seed)
    order = permutation(rng, xs.chunks()) if options.shuffle == "once" else None

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
    lrf = factor_table(net.learn_rate_factors(), params, "learn-rate factor")
    l2f = factor_table(net.l2_factors(), params, "L2 factor")
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
                order = permutation(rng, xs.chunks())
            e_loss = e_hits = e_count = 0.0
            e_acc_ok = True
            lr = learn_rate_at(options, epoch, it + 1)
            for b in range(per_epoch):
                it += 1
                if callable(options.learn_rate_schedule):
                    lr = learn_rate_at(options, epoch, it)
                xb = xs.get(order, b * bs, (b + 1) * bs)
                tb = t.get(order, b * bs, (b + 1) * bs)
                (lval, (y, state)), grads = vg(params, xb, tb)
                lv = float(lval.data)
                reason, why, new_params = _step(solver, params, grads, lrf, l2f, lr, lv)
                if reason is not None:
                    stop = reason
                    # the history shows the iteration that stopped training
                    acc = math.nan
                    if math.isfinite(lv):
                        c = _correct(_detach(y), tb)
                        acc = math.nan if c is None else 100.0 * c[0] / c[1]
                    _record(hist, it, epoch, lv, acc, math.nan, math.nan, lr)
                    warnings.warn(f"training stopped: {why} at iteration {it} (epoch {epoch}); "
                                  "the network keeps its last finite values. Check the data "
                                  "for NaN and lower initial_learn_rate or set "
                                  "gradient_threshold", RuntimeWarning, stacklevel=2)
                    raise _Stop
                params = new_params
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
                _record(hist, it, epoch, lv, acc, vl, va, lr)
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

    hist.output_network_iteration = it - 1 if stop in _NONFINITE else it
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
               "nan-loss": "Training stopped: Training loss is not finite.",
               "non-finite-gradient": "Training stopped: A gradient is not finite.",
               "non-finite-update": "Training stopped: A solver step made a learnable "
                                    "non-finite.",
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


# stop reasons of a non-finite loss, gradient or solver step (SPEC §4)
_NONFINITE = ("nan-loss", "non-finite-gradient", "non-finite-update")


def _record(hist, it, epoch, loss, acc, vl, va, lr):
    hist.iteration.append(it)
    hist.epoch.append(epoch)
    hist.training_loss.append(loss)
    hist.training_accuracy.append(acc)
    hist.validation_loss.append(vl)
    hist.validation_accuracy.append(va)
    hist.base_learn_rate.append(lr)


def _nonfinite(v):
    """'NaN', 'inf' or '' for a raw array or FormattedArray."""
    d = v.data if isinstance(v, FormattedArray) else v
    if isinstance(d, _np.ndarray) and d.size:
        # finite extremes: no inf, and no NaN (both reductions propagate it); no mask,
        # no overflow, no warning
        if math.isfinite(_np.maximum.reduce(d, axis=None)) and math.isfinite(
                _np.minimum.reduce(d, axis=None)):
            return ""
    xp = _backend.namespace(d)
    if bool(xp.all(xp.isfinite(d))):
        return ""
    return "NaN" if bool(xp.any(xp.isnan(d))) else "inf"


#: the root of the learnables' paths in this module's messages ("learnables['fc'][...]")
_ROOT = "learnables"


def _step(solver, params, grads, lrf, l2f, lr, loss):
    """One checked solver step: ``(stop reason, why, new params)``; the reason is
    ``"nan-loss"`` (a NaN or infinite loss), ``"non-finite-gradient"`` or
    ``"non-finite-update"`` (the step itself overflowed), else ``None``."""
    if not math.isfinite(loss):
        return "nan-loss", f"the training loss is {'NaN' if math.isnan(loss) else loss}", None
    p_flat = _flatten(params, _ROOT)
    g_flat = _flatten(grads, _ROOT)
    paths = ["arg" + path[len(_ROOT):] for path, _ in p_flat]  # the solver's: "arg[...]"
    cast = []
    for (path, w), (_, g), key in zip(p_flat, g_flat, paths):
        if lrf.get(key, 1.0) != 0.0:  # frozen parameters do not learn from it
            bad = _nonfinite(g)
            if bad:
                return ("non-finite-gradient",
                        f"the gradient of {path} is non-finite ({bad})", None)
        # learnables keep their dtype: a gradient promoted by the loss is cast back
        if isinstance(w, FormattedArray) and isinstance(g, FormattedArray) \
                and g.dtype != w.dtype and float_dtype(w) is not None:
            g = FormattedArray._wrap(w.xp.astype(g.data, w.dtype), g.format)
        cast.append(g)
    new = solver._update_leaves(paths, [w for _, w in p_flat], cast, lrf, l2f, lr)
    for (path, w), v in zip(p_flat, new):
        if v is not w:
            bad = _nonfinite(v)
            if bad:
                return ("non-finite-update",
                        f"the solver step made {path} non-finite ({bad})", None)
    return None, "", _unflatten(params, new)


def _net_dtype(net):
    """``(library, dtype)`` of the network's first floating learnable, or None."""
    for _, w in _flatten(net.learnables(), "learnables"):
        ld = float_dtype(w)
        if ld is not None:
            return ld
    return None


def _is_initialized(net) -> bool:
    flag = getattr(net, "initialized", None)
    if flag is None:
        flag = getattr(net, "is_initialized", None)
    if callable(flag):
        flag = flag()
    if flag is not None:
        return bool(flag)
    return bool(_flatten(net.learnables()))


def _compute_lazy_values(layer, mover):
    """Compute the Dask-valued attributes of ``layer`` (input statistics taken from
    Dask-backed training data) in one pass, so the layer holds plain arrays (moved by
    ``mover`` to the network's library, when it is not NumPy)."""
    lazy = {k: v for k, v in vars(layer).items() if _backend.is_array(v)
            and _backend.library_name(v) == "dask"}
    if lazy:
        import dask

        for k, v in zip(lazy, dask.compute(*lazy.values())):
            v = _np.asarray(v)
            setattr(layer, k, v if mover is None else mover(v))


def _mover(net):
    """Host arrays → the network's library and device (None when that is NumPy): what
    Dask-backed training data is converted to, one mini-batch at a time."""
    for _, w in _flatten(net.learnables(), "learnables"):
        if isinstance(w, FormattedArray):
            if _backend.library_name(w.data) == "numpy":
                return None
            xp, dev = w.xp, w.device
            return lambda h: _backend._from_host(h, xp, None, dev)
    return None


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
