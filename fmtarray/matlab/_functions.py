"""MATLAB names for custom training loops: ``dlfeval``/``dlgradient``, ``predict``/
``forward`` and the solver updates (``sgdmupdate``, ``adamupdate``, ``rmspropupdate``).
The data and loss functions of such loops (``onehotencode``, ``crossentropy``,
``mean``…) are in :mod:`fmtarray.matlab._dataops`.

A MATLAB custom training loop ports line by line (``examples/custom_loop.py``)::

    def modelLoss(net, X, T):
        Y, state = forward(net, X)
        loss = crossentropy(Y, T)
        gradients = dlgradient(loss, net.Learnables)
        return loss, gradients, state

    loss, gradients, state = dlfeval(modelLoss, net, X, T)
    net.State = state
    net, velocity = sgdmupdate(net, gradients, velocity, learnRate, momentum)

``net.Learnables`` is a :class:`fmtarray.network.ParameterTable` (the learnables tree
with MATLAB's Layer/Parameter/Value table view); ``dlgradient`` returns the gradients
of one as the same kind of table, and ``sgdmupdate(net, ...)`` the velocity.
Differences from MATLAB are in each docstring and in ``docs/matlab.md``.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import threading

from .. import _backend, _tape
from .._kernels import blocked_binary as _blocked
from ..array import FormattedArray
from ..autodiff import _flatten, _unflatten
from ..network import Network
from ..training.solvers import SGDM, Adam, RMSProp
from ._common import _options

__all__ = [
    "dlfeval", "dlgradient", "predict", "forward",
    "sgdmupdate", "adamupdate", "rmspropupdate",
]

# dlfeval / dlgradient ----------------------------------------------------------------------

_LOCAL = threading.local()  # .depth: how many dlfeval calls this thread is inside


def _depth() -> int:
    return getattr(_LOCAL, "depth", 0)


def _trace(x: FormattedArray, path: str) -> FormattedArray:
    if x._node is not None:  # already traced (a nested dlfeval, or inside fmtarray.grad)
        return x
    xp = _backend.namespace(x._data)
    if not xp.isdtype(x.dtype, "real floating"):
        return x  # integer labels, masks...: constants, as in MATLAB
    t = FormattedArray._wrap(x._data, x._fmt)
    t._node = _tape.leaf(x.shape, x.dtype, path)
    return t


class _TracedNetwork(Network):
    """A network inside ``dlfeval``: the layers of the given network, evaluated with traced
    learnables, which ``learnables()`` / ``Learnables`` return (so ``dlgradient`` finds them)."""

    def _uses_given(self, xs, learnables):
        return learnables is not None or (
            len(xs) == len(self.input_names) + 1 and (xs[-1] is None or isinstance(xs[-1], dict)))

    def learnables(self):
        return {k: dict(v) for k, v in self._dlfeval_learnables.items()}

    def forward(self, *xs, learnables=None):
        if not self._uses_given(xs, learnables):
            learnables = self._dlfeval_learnables
        return Network.forward(self, *xs, learnables=learnables)

    def predict(self, *xs, learnables=None):
        if not self._uses_given(xs, learnables):
            learnables = self._dlfeval_learnables
        return Network.predict(self, *xs, learnables=learnables)

    __call__ = predict


@functools.lru_cache(maxsize=None)
def _traced_class(cls):
    if cls is Network:
        return _TracedNetwork
    return type(f"_Traced{cls.__name__}", (_TracedNetwork, cls), {})


def _trace_tree(obj, path):
    if isinstance(obj, FormattedArray):
        return _trace(obj, path)
    if isinstance(obj, _TracedNetwork):
        return obj
    if isinstance(obj, Network):
        traced = _trace_tree(obj.learnables(), f"{path}.Learnables")
        new = object.__new__(_traced_class(type(obj)))
        new.__dict__.update(obj.__dict__)
        new._dlfeval_learnables = traced
        new._dlfeval_source = obj
        return new
    if isinstance(obj, dict):
        return type(obj)((k, _trace_tree(v, f"{path}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, tuple):
        vals = [_trace_tree(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return type(obj)(*vals) if hasattr(obj, "_fields") else tuple(vals)
    if isinstance(obj, list):
        return [_trace_tree(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


def _untrace(obj):
    if isinstance(obj, FormattedArray):
        return FormattedArray._wrap(obj._data, obj._fmt) if obj._node is not None else obj
    if isinstance(obj, _TracedNetwork):
        return obj._dlfeval_source
    if isinstance(obj, dict):
        return type(obj)((k, _untrace(v)) for k, v in obj.items())
    if isinstance(obj, tuple):
        vals = [_untrace(v) for v in obj]
        return type(obj)(*vals) if hasattr(obj, "_fields") else tuple(vals)
    if isinstance(obj, list):
        return [_untrace(v) for v in obj]
    return obj


def dlfeval(fun, *args, **kwargs):
    """MATLAB ``[y1,...,yk] = dlfeval(fun, x1,...,xn)``: evaluate ``fun`` with tracing on.

    Every floating FormattedArray among the arguments (also inside dicts, lists and
    tuples) is traced, and a :class:`fmtarray.Network` argument is passed as a network
    whose learnables are traced (``net.Learnables`` inside ``fun`` returns them), so
    :func:`dlgradient` inside ``fun`` can differentiate with respect to them. Integer
    arrays and raw (unwrapped) arrays are constants. ``fun``'s return value comes back as
    it is (a tuple for several outputs), with tracing removed from every FormattedArray in
    it (MATLAB: "dlfeval returns untraced values"); the given arguments are not changed.

    Built on the same tape as :func:`fmtarray.value_and_grad`; prefer that in new code.
    """
    if not callable(fun):
        raise TypeError(f"dlfeval: fun must be a function, got {type(fun).__name__} {fun!r}")
    targs = [_trace_tree(a, f"argument {i + 1}") for i, a in enumerate(args)]
    tkw = {k: _trace_tree(v, f"argument {k}") for k, v in kwargs.items()}
    _LOCAL.depth = _depth() + 1
    try:
        out = fun(*targs, **tkw)
    finally:
        _LOCAL.depth -= 1
    return _untrace(out)


_DLGRADIENT_OPTIONS = {"RetainData": "retain_data", "EnableHigherDerivatives": "higher"}


def _split_options(xs, names):
    """``(values, Name, Value pairs)``: the trailing pairs whose names are option names."""
    lower = {n.lower() for n in names}
    k = len(xs)
    while k >= 2 and isinstance(xs[k - 2], str) and xs[k - 2].lower() in lower:
        k -= 2
    return xs[:k], xs[k:]


def dlgradient(y, *xs, **options):
    """MATLAB ``[dydx1,...,dydxk] = dlgradient(y, x1,...,xk)``: gradients inside ``dlfeval``.

    ``y`` must be a traced real scalar (one element) computed inside a function
    evaluated by :func:`dlfeval`; each ``x`` a traced FormattedArray (an argument of
    ``dlfeval``, or any value computed from one) or a dict/list/tuple tree of them (e.g.
    ``net.Learnables``). Returns one gradient per ``x`` (a tuple when there are several),
    each with the structure, formats, dtype and device of its ``x``; zeros where ``y``
    does not depend on it. Calling it outside ``dlfeval`` is a ``RuntimeError``; an
    untraced ``y`` or ``x``, or a non-scalar ``y``, a ``ValueError``.

    Options: ``RetainData`` (accepted; data are always kept) and
    ``EnableHigherDerivatives`` (only ``False``: the gradients are not traced).
    """
    fn = "dlgradient"
    xs, pairs = _split_options(xs, _DLGRADIENT_OPTIONS)
    opts = _options(fn, pairs, options, _DLGRADIENT_OPTIONS)
    if opts.get("higher"):
        raise ValueError(f"{fn}: EnableHigherDerivatives=True is not supported (fmtarray's "
                         "gradients are not traced); the legal value is False")
    if _depth() == 0:
        raise RuntimeError(
            f"{fn} can only be called inside a function evaluated by dlfeval, e.g. "
            "loss, grads = dlfeval(modelLoss, net, X, T) where modelLoss calls "
            "dlgradient(loss, net.Learnables); outside it use fmtarray.value_and_grad"
        )
    if not isinstance(y, FormattedArray):
        raise TypeError(f"{fn}: y must be a scalar FormattedArray (dlarray), got "
                        f"{type(y).__module__}.{type(y).__name__}")
    if math.prod(y.shape) != 1:
        raise ValueError(f"{fn}: y must be a scalar (one element), got shape {y.shape} "
                         f"(format {y.format!r}); reduce it first, e.g. mean(y, 'all')")
    if y._node is None:
        raise ValueError(
            f"{fn}: y is not traced: it does not depend on any argument of dlfeval. Compute "
            "it from the dlarrays (or the network) passed to dlfeval"
        )
    if not xs:
        raise TypeError(f"{fn}: give at least one value to differentiate with respect to, "
                        "e.g. dlgradient(loss, net.Learnables)")
    flats = []
    for k, x in enumerate(xs):
        flat = _flatten(x, f"x{k + 1}")
        for p, v in flat:
            if not isinstance(v, FormattedArray):
                raise TypeError(f"{fn}: {p} is a {type(v).__name__}, not a FormattedArray "
                                "(dlarray) or a dict/list/tuple of them")
            if v._node is None:
                raise ValueError(
                    f"{fn}: {p} is not traced; differentiate with respect to arguments of "
                    "dlfeval (or values computed from them), e.g. net.Learnables of the "
                    "network passed to dlfeval"
                )
        flats.append(flat)
    xp = _backend.namespace(y._data)
    g0 = xp.ones(y.shape, dtype=y.dtype, device=y.device)
    nodes = [v._node for flat in flats for _, v in flat]
    gs = iter(_tape.backward(y._node, g0, nodes, _blocked.add))
    outs = []
    for x, flat in zip(xs, flats):
        leaves = []
        for _, v in flat:
            g = next(gs)
            if g is None:
                vxp = _backend.namespace(v._data)
                g = vxp.zeros(v.shape, dtype=v.dtype, device=v.device)
            leaves.append(FormattedArray._wrap(g, v._fmt))
        outs.append(_unflatten(x, leaves))
    return outs[0] if len(outs) == 1 else tuple(outs)


# predict / forward -------------------------------------------------------------------------

_EVAL_OPTIONS = {"Acceleration": "acceleration"}


def _eval_args(fn, net, xs, kwargs):
    if not isinstance(net, Network):
        raise TypeError(f"{fn}: net must be a dlnetwork (fmtarray.Network), got "
                        f"{type(net).__name__}")
    xs, pairs = _split_options(xs, _EVAL_OPTIONS)
    _options(fn, pairs, kwargs, _EVAL_OPTIONS)  # Acceleration: accepted, nothing to choose
    return xs


def predict(net, *X, **options):
    """MATLAB ``Y = predict(net, X1,...,XM)``: inference-time outputs
    (:meth:`fmtarray.Network.predict`; a tuple for several outputs)."""
    xs = _eval_args("predict", net, X, options)
    return net.predict(*xs)


def forward(net, *X, **options):
    """MATLAB ``[Y1,...,YN, state] = forward(net, X1,...,XM)``: training-time outputs and
    the updated state (:meth:`fmtarray.Network.forward`).

    Always returns ``(Y, state)`` (``(Y1, ..., YN, state)`` for several outputs): Python
    has no ``nargout``. Apply the state with ``net.update_state(state)`` (MATLAB
    ``net.State = state``).
    """
    xs = _eval_args("forward", net, X, options)
    y, state = net.forward(*xs)
    return (*y, state) if isinstance(y, tuple) else (y, state)


# solver updates ----------------------------------------------------------------------------


def _copy_network(net):
    """A new network with the same graph and copies of the layer objects (the arrays they
    hold are shared until replaced: fmtarray never writes a layer's array in place)."""
    new = copy.copy(net)
    new.__dict__.update({k: (list(v) if isinstance(v, list) else v) for k, v in vars(net).items()})
    new._layers = [copy.copy(layer) for layer in net._layers]
    return new


def _update(fn, solver, net_or_params, grad, states, t):
    """Apply ``solver``'s step to every leaf; ``states`` is ``{name: tree or None}``.

    Returns the updated parameters (a new network for a network) and the new state trees.
    """
    is_net = isinstance(net_or_params, Network)
    if isinstance(net_or_params, _TracedNetwork):
        raise TypeError(f"{fn}: call it on the network outside dlfeval (with the gradients "
                        "dlfeval returned), not on the traced network inside it")
    params = net_or_params.Learnables if is_net else net_or_params  # a table: vel is one too
    lrf = net_or_params.learn_rate_factors() if is_net else None
    p_flat = _flatten(params, "arg")
    g_flat = _flatten(grad, "arg")
    paths = [p for p, _ in p_flat]
    show = [p[3:] or "params" for p in paths]
    if [p for p, _ in g_flat] != paths:
        got = [p[3:] or "grad" for p, _ in g_flat]
        raise ValueError(f"{fn}: grad does not have the structure of the parameters: "
                         f"{got[:4]} vs {show[:4]}; use the gradients dlgradient returned "
                         "for net.Learnables")
    s_flat = {}
    for name, tree in states.items():
        if tree is None or (isinstance(tree, (list, tuple)) and len(tree) == 0):  # MATLAB []
            s_flat[name] = [None] * len(paths)
            continue
        f = _flatten(tree, "arg")
        if [p for p, _ in f] != paths:
            raise ValueError(f"{fn}: {name} does not have the structure of the parameters; "
                             f"start from {name}=None and pass back what {fn} returned")
        s_flat[name] = [v for _, v in f]
    lrs = [1.0] * len(paths) if lrf is None else [v for _, v in _flatten(lrf, "arg")]
    new_p, new_s = [], {name: [] for name in states}
    for i, ((_, w), (_, g)) in enumerate(zip(p_flat, g_flat)):
        wd = w._data if isinstance(w, FormattedArray) else w
        gd = g._data if isinstance(g, FormattedArray) else g
        if not _backend.is_array(wd) or not _backend.is_array(gd):
            raise TypeError(f"{fn}: {show[i]}: parameters and gradients must be arrays or "
                            f"FormattedArrays, got {type(w).__name__} and {type(g).__name__}")
        if tuple(wd.shape) != tuple(gd.shape):
            raise ValueError(f"{fn}: the gradient of {show[i]} has shape {tuple(gd.shape)}, "
                             f"the parameter {tuple(wd.shape)}")
        xp = _backend.namespace(wd)
        st = {}
        for name, key in solver.state_keys.items():
            v = s_flat[name][i]
            v = v._data if isinstance(v, FormattedArray) else v
            st[key] = v if v is not None or solver.init_none else xp.zeros_like(wd)
        if lrs[i] != 0.0:  # frozen parameters (learn-rate factor 0) stay as they are
            wd = solver._step(xp, wd, gd, solver.learn_rate * lrs[i], st, t)
        fmt = w._fmt if isinstance(w, FormattedArray) else None
        new_p.append(FormattedArray._wrap(wd, fmt) if fmt is not None else wd)
        for name, key in solver.state_keys.items():
            v = st[key] if st[key] is not None else xp.zeros_like(gd)
            new_s[name].append(FormattedArray._wrap(v, fmt) if fmt is not None else v)
    params_out = _unflatten(params, new_p)
    states_out = [_unflatten(params, new_s[name]) for name in states]
    if is_net:
        net = _copy_network(net_or_params)
        net.set_learnables(params_out)
        params_out = net
    return (params_out, *states_out)


def _solver(fn, cls, table, values, state_keys, init_none=False):
    try:
        s = cls(**{py: v for py, v in zip(table.values(), values)}, l2_regularization=0.0)
    except (TypeError, ValueError) as e:  # "SGDM: invalid momentum=2; ..." in MATLAB's words
        msg = str(e).split(": ", 1)[-1]
        for ml, py in table.items():
            msg = msg.replace(f"invalid {py}=", f"invalid {ml}=")
        raise type(e)(f"{fn}: {msg}") from e
    s.state_keys, s.init_none = state_keys, init_none
    return s


def _iteration(fn, t):
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not float(t).is_integer() \
            or t < 1:
        raise ValueError(f"{fn}: iteration must be a positive integer (1 on the first call), "
                         f"got {t!r}")
    return int(t)


def sgdmupdate(net, grad, vel, learnRate=0.01, momentum=0.9):  # noqa: N803
    """MATLAB ``[net, vel] = sgdmupdate(net, grad, vel, learnRate, momentum)``.

    ``vel = momentum·vel − learnRate·grad;  params = params + vel`` (the arithmetic of
    :class:`fmtarray.training.solvers.SGDM`). ``net`` is a :class:`fmtarray.Network`
    (each parameter's learn rate is ``learnRate`` × its layer's learn-rate factor; a
    factor 0 leaves it unchanged) or a dict/list/tuple tree of parameters (FormattedArrays
    or raw arrays) or one array. ``grad`` has the structure of the parameters (what
    :func:`dlgradient` returns for ``net.Learnables``); ``vel`` is ``None`` (MATLAB ``[]``)
    on the first call, then what the previous call returned. No L2 regularisation is added
    (add it to ``grad`` yourself, as in MATLAB).

    Value semantics, as in MATLAB: nothing given is modified. For a network the result is
    a new network (the same graph, its own layer objects with the new learnables; the
    state arrays are shared until replaced) and the given ``net`` keeps its values.
    """
    fn = "sgdmupdate"
    s = _solver(fn, SGDM, {"learnRate": "learn_rate", "momentum": "momentum"},
                (learnRate, momentum), {"vel": "velocity"}, init_none=True)
    return _update(fn, s, net, grad, {"vel": vel}, 1)


def adamupdate(net, grad, averageGrad, averageSqGrad, iteration, learnRate=0.001,  # noqa: N803
               gradDecay=0.9, sqGradDecay=0.999, epsilon=1e-8):
    """MATLAB ``[net, averageGrad, averageSqGrad] = adamupdate(net, grad, averageGrad,
    averageSqGrad, iteration, learnRate, gradDecay, sqGradDecay, epsilon)``.

    ``m = gradDecay·m + (1−gradDecay)·g;  v = sqGradDecay·v + (1−sqGradDecay)·g²;
    params −= learnRate·sqrt(1−sqGradDecay^t)/(1−gradDecay^t) · m/(sqrt(v) + epsilon)``
    with ``t = iteration`` (1 on the first call): the arithmetic of
    :class:`fmtarray.training.solvers.Adam` and of MATLAB's Adam solver. ``averageGrad``
    and ``averageSqGrad`` are ``None`` (MATLAB ``[]``) on the first call. Networks, trees,
    learn-rate factors and value semantics as in :func:`sgdmupdate`.
    """
    fn = "adamupdate"
    t = _iteration(fn, iteration)
    s = _solver(fn, Adam, {"learnRate": "learn_rate", "gradDecay": "gradient_decay_factor",
                           "sqGradDecay": "squared_gradient_decay_factor", "epsilon": "epsilon"},
                (learnRate, gradDecay, sqGradDecay, epsilon),
                {"averageGrad": "m", "averageSqGrad": "v"})
    return _update(fn, s, net, grad, {"averageGrad": averageGrad, "averageSqGrad": averageSqGrad},
                   t)


def rmspropupdate(net, grad, averageSqGrad, learnRate=0.001, sqGradDecay=0.9,  # noqa: N803
                  epsilon=1e-8):
    """MATLAB ``[net, averageSqGrad] = rmspropupdate(net, grad, averageSqGrad, learnRate,
    sqGradDecay, epsilon)``.

    ``v = sqGradDecay·v + (1−sqGradDecay)·g²;  params −= learnRate·g/(sqrt(v) + epsilon)``
    (the arithmetic of :class:`fmtarray.training.solvers.RMSProp`); ``averageSqGrad`` is
    ``None`` on the first call. Networks, trees, factors and value semantics as in
    :func:`sgdmupdate`.
    """
    fn = "rmspropupdate"
    s = _solver(fn, RMSProp, {"learnRate": "learn_rate",
                              "sqGradDecay": "squared_gradient_decay_factor", "epsilon": "epsilon"},
                (learnRate, sqGradDecay, epsilon), {"averageSqGrad": "v"})
    return _update(fn, s, net, grad, {"averageSqGrad": averageSqGrad}, 1)
