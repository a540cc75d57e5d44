"""``Network``: a layer array, MATLAB ``dlnetwork`` style.

A network is a list of layers applied in order. Any object with ``predict(x)``
is a layer; the rest of the protocol (:mod:`fmtarray.layers.base`) is optional:
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

from typing import NamedTuple

from .array import FormattedArray
from .layers._protocol import as_fa as _as_fa
from .layers._protocol import bound as _bound
from .layers._protocol import cast_input as _cast_input
from .layers._protocol import default_name as _default_name
from .layers._protocol import description as _description
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
from .layers.base import own_value as _own_value

__all__ = ["Network", "LearnablesTable", "LearnableRow"]

_X = "\u00d7"


# the learnables table ----------------------------------------------------------------------


class LearnableRow(NamedTuple):
    layer: str
    parameter: str
    shape: tuple
    learn_rate_factor: float
    l2_factor: float


class LearnablesTable:
    """The learnable parameters of a network: one :class:`LearnableRow` per parameter.

    Iterate over it, index it, or print it.
    """

    def __init__(self, rows):
        self.rows = list(rows)

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    @property
    def num_values(self) -> int:
        """Total number of learnable values."""
        total = 0
        for r in self.rows:
            n = 1
            for s in r.shape:
                n *= s
            total += n
        return total

    def __str__(self):
        head = ("Layer", "Parameter", "Shape", "LearnRateFactor", "L2Factor")
        body = [
            (r.layer, r.parameter, _X.join(map(str, r.shape)) or "scalar",
             f"{r.learn_rate_factor:g}", f"{r.l2_factor:g}")
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        layers = len({r.layer for r in self.rows})
        lines = [
            f"{len(self.rows)} learnable parameters in {layers} layers ({self.num_values} values):",
            "",
        ]
        for row in [head] + body:
            lines.append("   " + "   ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(lines)

    __repr__ = __str__


# the network ------------------------------------------------------------------------------


class Network:
    """A layer array (MATLAB ``dlnetwork`` built from a ``Layer`` array).

    Parameters
    ----------
    layers
        Layers in order: built-in layers or any object with ``predict(x)``.
        Unnamed layers are named as MATLAB does: the layer's base name
        (``imageinput``, ``conv``, ``relu``, ``maxpool``, ``fc``, ``softmax``…) when
        only one unnamed layer has it, else ``conv_1``, ``conv_2``…; names must be
        unique. The layers' own ``name`` attributes are left as they are; the
        resolved names are :attr:`layer_names`.

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

    def __init__(self, layers):
        if isinstance(layers, Network):
            layers = layers.layers
        try:
            layers = list(layers)
        except TypeError:
            raise TypeError(f"Network needs a list of layers, got {type(layers).__name__}") from None
        if not layers:
            raise ValueError("Network needs at least one layer")
        seen = {}
        for i, layer in enumerate(layers):
            if isinstance(layer, Network):
                raise TypeError(
                    f"layer {i + 1} is a Network: a Network cannot be nested as a layer of "
                    "another Network; put its layers in instead, e.g. "
                    "Network([..., *inner.layers, ...])"
                )
            if not callable(getattr(layer, "predict", None)):
                raise TypeError(
                    f"layer {i + 1} ({type(layer).__name__}) is not a layer: a layer is an object "
                    "with a predict(x) method (see fmtarray.layers.Layer)"
                )
            if id(layer) in seen:
                raise ValueError(
                    f"layers {seen[id(layer)] + 1} and {i + 1} are the same {type(layer).__name__} "
                    "object; create a separate layer for each position"
                )
            seen[id(layer)] = i
        self._layers = layers
        self._names = self._resolve_names(layers)
        self._initialized = False

    @staticmethod
    def _resolve_names(layers):
        given = []
        for i, layer in enumerate(layers):
            n = getattr(layer, "name", "") or ""
            if not isinstance(n, str):
                raise TypeError(f"layer {i + 1} has a name that is not a str: {n!r}")
            given.append(n)
        where = {}
        for i, n in enumerate(given):
            if n:
                if n in where:
                    raise ValueError(
                        f"layer names must be unique: {n!r} is the name of layers {where[n] + 1} "
                        f"and {i + 1}"
                    )
                where[n] = i
        taken = set(where)
        counts = {}
        for i, n in enumerate(given):
            if not n:
                b = _default_name(layers[i])
                counts[b] = counts.get(b, 0) + 1
        names = list(given)
        next_k = {}
        for i, n in enumerate(given):
            if n:
                continue
            b = _default_name(layers[i])
            if counts[b] == 1 and b not in taken:
                cand = b
            else:
                k = next_k.get(b, 1)
                while f"{b}_{k}" in taken:
                    k += 1
                cand = f"{b}_{k}"
                next_k[b] = k + 1
            taken.add(cand)
            names[i] = cand
        return tuple(names)

    # access ---------------------------------------------------------------------------
    @property
    def layers(self) -> tuple:
        """The layers, in order."""
        return tuple(self._layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The layers' names (given, or assigned as MATLAB does)."""
        return self._names

    @property
    def initialized(self) -> bool:
        """True once :meth:`initialize` has run."""
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

    def _context(self, i, x, err):
        """Re-raise ``err`` (from layer ``i`` on input ``x``) naming the layers and formats."""
        if type(err) not in (ValueError, TypeError):
            raise err
        src = "the network input" if i == 0 else f"the output of {self._label(i - 1)}"
        verb = "cannot take" if isinstance(err, ValueError) else "failed on"
        msg = f"{self._label(i)} {verb} {src} ({_fmt_of(x)}): {err}"
        raise type(err)(msg) from err

    # initialisation -----------------------------------------------------------------------
    def initialize(self, x=None, seed=0, *, xp=None, dtype=None, device=None):
        """Initialise every layer from an example input and check that formats connect.

        Parameters
        ----------
        x
            An example input (a mini-batch; only its first observation goes past
            the first layer). Optional when the first layer is an input layer
            that knows its size (:class:`~fmtarray.layers.ImageInputLayer`).
        seed
            int (default 0), ``numpy.random.Generator`` or None: each layer draws
            its initial values from its own stream derived from it.
        xp, dtype, device
            Where to create the example when ``x`` is None (default NumPy,
            float32).

        Returns ``self``. A layer that cannot take its predecessor's output
        (e.g. a convolution after a fully connected layer, whose output is
        ``CB``) is a ``ValueError`` naming both layers and the format.
        """
        from .layers.initializers import check_seed

        check_seed(seed, "Network.initialize")
        if x is None:
            first = self._layers[0]
            make = getattr(first, "example_input", None)
            if not callable(make):
                raise ValueError(
                    f"initialize() needs an example input x: the first layer, {self._label(0)}, "
                    "is not an input layer that knows the input size (e.g. image_input_layer)"
                )
            x = make(xp=xp, dtype=dtype, device=device)
        for i, layer in enumerate(self._layers):
            try:
                init = getattr(layer, "initialize", None)
                if callable(init):
                    if _takes_seed(init):
                        init(x, seed=_layer_seed(seed, i))
                    else:
                        init(x)  # a user layer whose initialize takes no seed
                y = layer.predict(x)
            except (ValueError, TypeError) as e:
                self._context(i, x, e)
            if isinstance(y, FormattedArray) and y.format and "B" in y.format:
                b = y.format.index("B")
                if y.shape[b] > 1:
                    y = y[(slice(None),) * b + (slice(0, 1),)]
            x = _detach(y)
        self._initialized = True
        return self

    # evaluation ---------------------------------------------------------------------------
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

    def _entry(self, x, learnables):
        """The network input cast to the network's float dtype (the input rule)."""
        return _cast_input(x, _network_dtype(self._layers, self._names, learnables))

    def forward(self, x, learnables=None):
        """Training-time evaluation (MATLAB ``forward``): returns ``(y, state)``.

        ``state`` is ``{layer_name: {state_name: value}}`` with the updated
        non-learnable state (batch-norm running statistics); apply it with
        :meth:`update_state`. ``learnables`` (optional, a tree like
        :meth:`learnables`) replaces the layers' values for this call, without
        changing the layers (safe from several threads at once). A floating ``x`` of
        another float dtype is cast to the network's dtype first.
        """
        self._check_tree(learnables)
        x = self._entry(x, learnables)
        state = {}
        for i, layer in enumerate(self._layers):
            params = self._params(i, learnables)
            try:
                with _bound(layer, params) as layer:
                    fwd = getattr(layer, "forward", None)
                    if callable(fwd):
                        out = fwd(x)
                        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
                            y, st = out
                        else:
                            y, st = out, {}
                    else:
                        y, st = layer.predict(x), {}
            except (ValueError, TypeError) as e:
                self._context(i, x, e)
            if st:
                state[self._names[i]] = dict(st)
            x = y
        return x, state

    def predict(self, x, learnables=None):
        """Inference-time evaluation (MATLAB ``predict``); ``learnables`` as in :meth:`forward`."""
        self._check_tree(learnables)
        x = self._entry(x, learnables)
        for i, layer in enumerate(self._layers):
            params = self._params(i, learnables)
            try:
                with _bound(layer, params) as layer:
                    x_next = layer.predict(x)
            except (ValueError, TypeError) as e:
                self._context(i, x, e)
            x = x_next
        return x

    __call__ = predict

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
        rows = [
            (str(i + 1), repr(getattr(layer, "name", "") or ""), _type_name(layer),
             _description(layer))
            for i, layer in enumerate(self._layers)
        ]
        w = [max(len(r[k]) for r in rows) for k in range(3)]
        lines = [f"{len(rows)}x1 Layer array with layers:", ""]
        for r in rows:
            lines.append(
                f"  {r[0].rjust(w[0] + 2)}   {r[1].ljust(w[1])}   {r[2].ljust(w[2])}   {r[3]}".rstrip()
            )
        return "\n".join(lines)

    __str__ = __repr__
