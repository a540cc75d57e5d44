"""``Network``: a layer graph, MATLAB ``dlnetwork`` style.

Built from a list, a network is a chain of layers applied in order; ``add_layers``,
``connect_layers`` & co. (:mod:`fmtarray._layer_graph`) make any acyclic graph, with
several inputs and outputs, evaluated in a topological order. Any object with
``predict(x)`` (``predict(*xs)`` for several inputs) is a layer; the rest of the protocol (:mod:`fmtarray.layers.base`) is optional:
``learnable_names``, ``initialize(x, seed=...)``, ``forward(x) -> (y, state)``,
``update_state``, ``using``, factors, ``type_name()``/``description()``.

Learnables are addressed by layer name and parameter name::

    {"conv": {"weights": FormattedArray, "bias": FormattedArray}, "fc": {...}}

``forward``/``predict`` accept such a tree (e.g. the traced arguments of
:func:`fmtarray.value_and_grad`) and evaluate each layer with those values (on a
shallow copy of the layer: nothing shared is changed, so threads may evaluate
one network with different learnables at once), so gradients flow through each
layer's plain ``predict`` with no backward code.

A floating input of another float dtype than the network's learnables is cast
to the network's dtype on entry (SPEC §4): a float32 network computes in
float32 whatever float data it is given.
"""

from __future__ import annotations

from ._layer_graph import LayerGraph
from ._layer_graph import in_ports as _in_ports
from ._layer_graph import out_ports as _out_ports
from .array import FormattedArray
from .layers._protocol import as_fa as _as_fa
from .layers._protocol import bound as _bound
from .layers._protocol import cast_input as _cast_input
from .layers._protocol import detach as _detach
from .layers._protocol import factor as _factor
from .layers._protocol import fmt_of as _fmt_of
from .layers._protocol import layer_seed as _layer_seed
from .layers._protocol import learnable_names as _learnable_names
from .layers._protocol import network_dtype as _network_dtype
from .layers._protocol import set_values as _set_values
from .layers._protocol import state_names as _state_names
from .layers._protocol import takes_seed as _takes_seed
from .layers._protocol import type_name as _type_name
from .layers.base import Layer as _Layer
from .layers._tables import LearnableRow, LearnablesTable, ParameterTable
from .layers.base import own_value as _own_value

__all__ = ["Network", "LearnablesTable", "LearnableRow", "ParameterTable"]


# the network ------------------------------------------------------------------------------


class Network(LayerGraph):
    """A layer graph (MATLAB ``dlnetwork``); built from a list of layers it is a chain.

    Parameters
    ----------
    layers
        Layers in order (built-in layers or any object with ``predict(x)``), connected in
        sequence: each layer's (first) output to the next layer's (first) input. ``None``
        or ``[]`` makes an empty network to build with :meth:`add_layers` and
        :meth:`connect_layers`. Unnamed layers are named as MATLAB does: the layer's base
        name (``imageinput``, ``conv``, ``relu``, ``addition``…) when only one unnamed
        layer has it, else ``conv_1``, ``conv_2``…; names must be unique. The layers' own
        ``name`` attributes are left as they are; the resolved names are
        :attr:`layer_names`.

    A network input is an unconnected layer input, a network output an unconnected layer
    output (:attr:`input_names`, :attr:`output_names`); :meth:`predict` and
    :meth:`forward` take one value per input and return one per output (a tuple when
    there are several). See ``docs/graphs.md``.

    Examples
    --------
    >>> import fmtarray as fa
    >>> from fmtarray.layers import (image_input_layer, convolution2d_layer, relu_layer,
    ...     max_pooling2d_layer, fully_connected_layer, softmax_layer)
    >>> net = fa.Network([image_input_layer((28, 28, 1)), convolution2d_layer(5, 20),
    ...     relu_layer(), max_pooling2d_layer(2, stride=2), fully_connected_layer(10),
    ...     softmax_layer()]).initialize()
    >>> net.layer_names
    ('imageinput', 'conv', 'relu', 'maxpool', 'fc', 'softmax')
    """

    def __init__(self, layers=None):
        if isinstance(layers, Network):
            layers = layers.layers
        self._graph_init(layers)

    # access ---------------------------------------------------------------------------
    @property
    def layers(self) -> tuple:
        """The layers, in the order they were added."""
        return tuple(self._layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The layers' names (given, or assigned as MATLAB does)."""
        return self._names

    @property
    def initialized(self) -> bool:
        """True once :meth:`initialize` has run (an edit of the graph resets it)."""
        return self._initialized

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def __getitem__(self, key):
        """A layer by position or by name."""
        if isinstance(key, str):
            try:
                return self._layers[self._names.index(key)]
            except ValueError:
                raise KeyError(f"no layer named {key!r}; the layers are {self._names}") from None
        return self._layers[key]

    def _label(self, i) -> str:
        return f"layer {i + 1} {self._names[i]!r} ({_type_name(self._layers[i])})"

    def _source(self, src, multi_in) -> str:
        if src[0] == "net":
            name = self.input_names[src[1]]
            return "the network input" if not multi_in else f"the network input {name!r}"
        j, q = src[1], src[2]
        ports = _out_ports(self._layers[j])
        port = "" if len(ports) == 1 else f" {ports[q]!r}"
        return f"the output{port} of {self._label(j)}"

    def _context(self, i, xs, err):
        """Re-raise ``err`` (from layer ``i`` on inputs ``xs``) naming the layers and formats."""
        if type(err) not in (ValueError, TypeError):
            raise err
        _, sources, _ = self._plan()
        multi_in = len(self.input_names) > 1
        verb = "cannot take" if isinstance(err, ValueError) else "failed on"
        srcs = sources[i]
        if len(srcs) == 1:
            what = f"{self._source(srcs[0], multi_in)} ({_fmt_of(xs[0])})"
        else:
            ports = _in_ports(self._layers[i])
            what = "its inputs: " + "; ".join(
                f"{p!r} = {self._source(s, multi_in)} ({_fmt_of(x)})"
                for p, s, x in zip(ports, srcs, xs))
        raise type(err)(f"{self._label(i)} {verb} {what}: {err}") from err

    # initialisation -----------------------------------------------------------------------
    def _unconnected(self, ports):
        lines = [
            f"  Layer {self._names[k]!r}: Unconnected input. Each layer input must be connected "
            f"to the output of another layer. (input {shown!r})"
            for k, _, shown in ports
        ]
        return "\n".join(lines)

    def _examples(self, x, xp, dtype, device):
        free = self._free_ports("in")
        n = len(free)
        given = x if isinstance(x, tuple) else (None,) * n if x is None else (x,)
        if len(given) != n:
            need = [f for f in free if not callable(getattr(self._layers[f[0]], "example_input", None))]
            raise ValueError(
                f"initialize() got {len(given)} example input(s) but the network has {n} inputs "
                f"{self.input_names}; give a tuple with one example per input, in input_names "
                "order (None for an input layer that knows its size)"
                + ("; the layer inputs that are not input layers:\n" + self._unconnected(need)
                   if need else "")
            )
        out, missing = [], []
        for (k, _, shown), v in zip(free, given):
            if v is None:
                make = getattr(self._layers[k], "example_input", None)
                if not callable(make):
                    missing.append((k, _, shown))
                    continue
                v = make(xp=xp, dtype=dtype, device=device)
            out.append(v)
        if missing:
            if n == 1:
                raise ValueError(
                    f"initialize() needs an example input x: the first layer, "
                    f"{self._label(missing[0][0])}, is not an input layer that knows the input "
                    "size (e.g. image_input_layer)"
                )
            raise ValueError(
                "initialize() needs an example input for every network input that is not an input "
                "layer (a tuple in input_names order, None where an input layer knows its size), "
                "or connect these inputs:\n" + self._unconnected(missing)
            )
        return out

    def initialize(self, x=None, seed=0, *, xp=None, dtype=None, device=None):
        """Initialise every layer from example inputs and check that the formats connect.

        Parameters
        ----------
        x
            An example input (a mini-batch; only its first observation goes past the
            first layer), or a tuple with one per network input in :attr:`input_names`
            order (``None`` entries for input layers that know their size). Optional when
            every network input is an input layer that knows its size
            (:class:`~fmtarray.layers.ImageInputLayer`).
        seed
            int (default 0), ``numpy.random.Generator`` or None: each layer draws its
            initial values from its own stream derived from it and its position.
        xp, dtype, device
            Where to create the examples an input layer makes (default NumPy, float32).

        Returns ``self``. A layer that cannot take its inputs (a convolution after a fully
        connected layer, whose output is ``CB``; an addition of ``SSCB`` and ``CB``) is a
        ``ValueError`` naming the layers and the formats; a network input that is not an
        input layer and has no example is reported as MATLAB reports unconnected inputs.
        """
        from .layers.initializers import check_seed

        check_seed(seed, "Network.initialize")
        if not self._layers:
            raise ValueError(
                "cannot initialize an empty network: it has no layers; add them with "
                "net.add_layers(layers) (and connect them with net.connect_layers)"
            )
        order, sources, _ = self._plan()
        examples = self._examples(x, xp, dtype, device)
        vals = {}
        for i in order:
            layer = self._layers[i]
            xs = [examples[s[1]] if s[0] == "net" else vals[(s[1], s[2])] for s in sources[i]]
            try:
                init = getattr(layer, "initialize", None)
                if callable(init) and getattr(type(layer), "initialize", None) is not _Layer.initialize:
                    if _takes_seed(init):
                        init(*xs, seed=_layer_seed(seed, i))
                    else:
                        init(*xs)  # a user layer whose initialize takes no seed
                ys = self._outputs(i, layer.predict(*xs))
            except (ValueError, TypeError) as e:
                self._context(i, xs, e)
            for q, y in enumerate(ys):
                if isinstance(y, FormattedArray) and y.format and "B" in y.format:
                    b = y.format.index("B")
                    if y.shape[b] > 1:
                        y = y[(slice(None),) * b + (slice(0, 1),)]
                vals[(i, q)] = _detach(y)
        self._initialized = True
        return self

    # evaluation ---------------------------------------------------------------------------
    def _outputs(self, i, y):
        n = len(_out_ports(self._layers[i]))
        if n == 1:
            return (y,)
        if not isinstance(y, tuple) or len(y) != n:
            raise TypeError(
                f"{self._label(i)} has {n} outputs {_out_ports(self._layers[i])} and must return a "
                f"tuple of {n} values, got {type(y).__name__}"
            )
        return y

    def _params(self, i, learnables):
        if not learnables:
            return None
        p = learnables.get(self._names[i])
        if not p:
            return None
        names = _learnable_names(self._layers[i])
        for k in p:
            if k not in names:
                raise ValueError(
                    f"{self._label(i)} has no learnable {k!r}; its learnables are {names}"
                )
        return p

    def _check_tree(self, learnables):
        if learnables is None:
            return
        if not isinstance(learnables, dict):
            raise TypeError(
                "learnables must be a dict {layer_name: {parameter: value}} (as returned by "
                f"Network.learnables()), got {type(learnables).__name__}"
            )
        for k in learnables:
            if k not in self._names:
                raise ValueError(f"learnables has an unknown layer {k!r}; the layers are {self._names}")

    def _args(self, xs, learnables, who):
        """The inputs and the learnables of a ``predict``/``forward`` call; the learnables
        may follow the inputs positionally (the chain's ``forward(x, learnables)``)."""
        n = len(self.input_names)
        if len(xs) == n + 1 and learnables is None and (xs[-1] is None or isinstance(xs[-1], dict)):
            xs, learnables = xs[:-1], xs[-1]
        if not self._layers:
            raise ValueError(f"{who}: the network has no layers")
        if len(xs) != n:
            raise TypeError(
                f"{who} takes {n} input(s), one per network input {self.input_names}, got {len(xs)}"
            )
        self._check_tree(learnables)
        ld = _network_dtype(self._layers, self._names, learnables)
        return [_cast_input(x, ld) for x in xs], learnables

    def _run(self, xs, learnables, training):
        order, sources, outputs = self._plan()
        uses = {}
        for srcs in sources:
            for s in srcs:
                if s[0] == "layer":
                    uses[(s[1], s[2])] = uses.get((s[1], s[2]), 0) + 1
        for o in outputs:
            uses[o] = uses.get(o, 0) + 1
        vals, state = {}, {}
        for i in order:
            layer = self._layers[i]
            ins = []
            for s in sources[i]:
                if s[0] == "net":
                    ins.append(xs[s[1]])
                    continue
                key = (s[1], s[2])
                ins.append(vals[key])
                uses[key] -= 1
                if not uses[key]:
                    del vals[key]  # free intermediate values as soon as they are used
            st = {}
            try:
                with _bound(layer, self._params(i, learnables)) as lay:
                    fwd = getattr(lay, "forward", None) if training else None
                    if getattr(type(lay), "forward", None) is _Layer.forward:
                        fwd = None  # the base class's forward is predict (for any number of inputs)
                    if callable(fwd):
                        out = fwd(*ins)
                        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
                            y, st = out
                        else:
                            y = out
                    else:
                        y = lay.predict(*ins)
                    ys = self._outputs(i, y)
            except (ValueError, TypeError) as e:
                self._context(i, ins, e)
            if st:
                state[self._names[i]] = dict(st)
            for q, y in enumerate(ys):
                if uses.get((i, q)):
                    vals[(i, q)] = y
        res = tuple(vals[o] for o in outputs)
        return (res[0] if len(res) == 1 else res), state

    def forward(self, *xs, learnables=None):
        """Training-time evaluation (MATLAB ``forward``): returns ``(y, state)``.

        ``xs``: one value per network input (:attr:`input_names` order); ``y`` is the
        output, or a tuple of outputs (:attr:`output_names` order). ``state`` is
        ``{layer_name: {state_name: value}}`` with the updated non-learnable state
        (batch-norm running statistics); apply it with :meth:`update_state`.
        ``learnables`` (optional, a tree like :meth:`learnables`; it may also follow the
        inputs positionally) replaces the layers' values for this call without changing
        the layers (safe from several threads at once). A floating input of another float
        dtype is cast to the network's dtype first.
        """
        xs, learnables = self._args(xs, learnables, "forward")
        return self._run(xs, learnables, True)

    def predict(self, *xs, learnables=None):
        """Inference-time evaluation (MATLAB ``predict``); arguments as in :meth:`forward`,
        returns the output (a tuple for several outputs).

        On Dask-backed inputs (and learnables that are not) it stays lazy and runs the
        network once per block of batch-like chunks (``B``; ``T`` when the network treats
        frames independently): see ``docs/scaling.md``."""
        xs, learnables = self._args(xs, learnables, "predict")
        from . import _blockwise

        if _blockwise.applies(self, xs, learnables):
            return _blockwise.predict(self, xs, learnables)
        return self._run(xs, learnables, False)[0]

    __call__ = predict

    def to(self, library, device=None):
        """This network with its learnables, state and input statistics moved to ``library``
        (``"numpy"``, ``"torch"``, a module…) and ``device``; see ``docs/devices.md``."""
        from ._move import to_library

        return to_library(self, library, device)


    # learnables ---------------------------------------------------------------------------
    def _layer_learnables(self, layer):
        f = getattr(layer, "learnables", None)
        if callable(f):
            return dict(f())
        out = {}
        for n in _learnable_names(layer):
            v = getattr(layer, n, None)
            if v is not None:
                out[n] = _as_fa(v)
        return out

    def learnables(self) -> dict:
        """``{layer_name: {parameter: FormattedArray}}`` of the initialised learnables."""
        out = {}
        for name, layer in zip(self._names, self._layers):
            p = self._layer_learnables(layer)
            if p:
                out[name] = p
        return out

    def set_learnables(self, tree) -> None:
        """Store new values (a tree like :meth:`learnables`; a subset is fine).

        Each value must have the shape of the value it replaces. The layers store
        copies: later edits of the given arrays do not change the network.
        """
        self._check_tree(tree)
        for i, (name, layer) in enumerate(zip(self._names, self._layers)):
            vals = tree.get(name)
            if not vals:
                continue
            self._params(i, tree)
            vals = {k: _detach(v) for k, v in vals.items()}
            for k, v in vals.items():
                old = getattr(layer, k, None)
                if old is not None and tuple(old.shape) != tuple(v.shape):
                    raise ValueError(
                        f"{self._label(i)}: new {k} has shape {tuple(v.shape)}, the current one "
                        f"{tuple(old.shape)}"
                    )
            _set_values(layer, vals)

    def learn_rate_factors(self) -> dict:
        """``{layer_name: {parameter: float}}``, the same structure as :meth:`learnables`."""
        return {
            name: {p: _factor(self[name], p, "learn_rate_factor") for p in params}
            for name, params in self.learnables().items()
        }

    def l2_factors(self) -> dict:
        """``{layer_name: {parameter: float}}``, the same structure as :meth:`learnables`."""
        return {
            name: {p: _factor(self[name], p, "l2_factor") for p in params}
            for name, params in self.learnables().items()
        }

    def learnables_table(self) -> LearnablesTable:
        """Every learnable: layer, parameter, shape, learn-rate factor, L2 factor (printable)."""
        rows = []
        for name, params in self.learnables().items():
            layer = self[name]
            for p, v in params.items():
                rows.append(LearnableRow(name, p, tuple(v.shape),
                                         _factor(layer, p, "learn_rate_factor"),
                                         _factor(layer, p, "l2_factor")))
        return LearnablesTable(rows)

    @property
    def num_learnables(self) -> int:
        """Total number of learnable values."""
        return self.learnables_table().num_values

    # state ------------------------------------------------------------------------------
    def state(self) -> dict:
        """``{layer_name: {state_name: value}}`` of the layers' non-learnable state."""
        out = {}
        for name, layer in zip(self._names, self._layers):
            st = {k: getattr(layer, k, None) for k in _state_names(layer)}
            st = {k: v for k, v in st.items() if v is not None}
            if st:
                out[name] = st
        return out

    def update_state(self, state) -> None:
        """Apply state returned by :meth:`forward` (or :meth:`state`)."""
        if not state:
            return
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict {{layer_name: {{name: value}}}}, got {type(state).__name__}")
        for name, st in state.items():
            if name not in self._names:
                raise ValueError(f"state has an unknown layer {name!r}; the layers are {self._names}")
            layer = self[name]
            st = {k: _detach(v) for k, v in st.items()}
            f = getattr(layer, "update_state", None)
            if callable(f):
                f(st)
            else:
                for k, v in st.items():
                    setattr(layer, k, _own_value(v))

    set_state = update_state

    # display ----------------------------------------------------------------------------
    def __repr__(self):
        return self._display()

    __str__ = __repr__

    # MATLAB property names -----------------------------------------------------------------
    Layers = property(lambda self: self.layers, doc="MATLAB ``net.Layers``: :attr:`layers`.")
    Connections = property(lambda self: self.connections,
                           doc="MATLAB ``net.Connections``: :attr:`connections`.")
    Learnables = property(
        lambda self: ParameterTable(self.learnables()),
        lambda self, tree: self.set_learnables(tree),
        doc="MATLAB ``net.Learnables``: a :class:`~fmtarray.network.ParameterTable` (the "
            "tree of :meth:`learnables` with the table view Layer, Parameter, Value); "
            "``net.Learnables = tree`` is :meth:`set_learnables`.")
    State = property(
        lambda self: ParameterTable(self.state()),
        lambda self, state: self.update_state(state),
        doc="MATLAB ``net.State``: a :class:`~fmtarray.network.ParameterTable` of "
            ":meth:`state`; ``net.State = state`` (what :meth:`forward` returned) is "
            ":meth:`update_state`.")
    InputNames = property(lambda self: self.input_names,
                          doc="MATLAB ``net.InputNames``: :attr:`input_names`.")
    OutputNames = property(lambda self: self.output_names,
                           doc="MATLAB ``net.OutputNames``: :attr:`output_names`.")
    Initialized = property(lambda self: self._initialized,
                           doc="MATLAB ``net.Initialized``: :attr:`initialized`.")
