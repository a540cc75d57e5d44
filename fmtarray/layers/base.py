"""The layer protocol shared by every layer (built-in or user-defined).

A layer is any object with ``predict(x)`` on FormattedArrays.  Subclassing
:class:`Layer` adds the rest of the protocol used by :class:`fmtarray.Network`
and the solvers:

* ``learnable_names``: attribute names of the learnable parameters (raw arrays
  or FormattedArrays, ``None`` until initialised);
* ``learn_rate_factor(name)`` / ``l2_factor(name)``: per-parameter factors,
  read from attributes ``<stem>_learn_rate_factor`` / ``<stem>_l2_factor``
  where ``<stem>`` is the parameter name without a trailing ``s``
  (``weights`` → ``weight_learn_rate_factor``), 1.0 when absent;
* ``initialize(x, seed=None)``: fill empty learnables from an example input;
* ``forward(x)``: training behaviour, returns ``(y, state)`` where ``state``
  is a dict of updated non-learnable state (batch-norm statistics), applied by
  the network with ``update_state``;
* ``using(params)``: a context manager that temporarily replaces the
  learnables with (traced) values, so that gradients flow through a plain
  ``predict`` with no backward code. It changes the layer for the duration of
  the block; :class:`fmtarray.Network` never calls it on a shared layer but on a
  shallow copy, so evaluation with explicit learnables mutates nothing shared.

Layers own their values (MATLAB's value semantics): assigning a learnable or a
state attribute (``layer.weights = w``, the constructor, ``set_learnables``,
``update_state``) stores a copy, so later in-place edits of the caller's array
do not reach the layer.  Traced values (inside :func:`fmtarray.grad`) are kept as
they are, so that gradients flow.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np

from .. import _backend
from ..array import FormattedArray


def _copy_data(a):
    if type(a) is np.ndarray:
        return a.copy(order="K")  # what asarray(copy=True) below gives, sooner
    lib = _backend.library_name(a)
    if lib in ("jax", "dask"):
        return a  # immutable arrays (a Dask graph is never written in place)
    if lib == "torch":
        return a.detach().clone() if not a.requires_grad else a.clone()
    xp = _backend.namespace(a)
    try:
        return xp.asarray(a, copy=True)
    except (TypeError, ValueError, NotImplementedError):
        return a.copy()


def own_value(v):
    """A copy of the array value ``v`` that later edits of ``v`` cannot reach.

    FormattedArrays keep their format; traced FormattedArrays (being
    differentiated) and non-arrays are returned as they are.
    """
    if isinstance(v, FormattedArray):
        if v._node is not None:
            return v
        return FormattedArray._wrap(_copy_data(v._data), v._fmt)
    if _backend.is_array(v):
        return _copy_data(v)
    return v


# MATLAB property names ---------------------------------------------------------------------

# MATLAB names that are not the CamelCase of an attribute: read-only, answered by a method
# of the layer protocol (MATLAB's Description and Type show in layer-array displays). A
# layer class may map more names to attributes in a ``matlab_names`` dict.
MATLAB_IRREGULAR_NAMES = {"Description": "description", "Type": "type_name"}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake_case(name: str) -> str:
    """``"WeightL2Factor"`` -> ``"weight_l2_factor"`` (a digit stays with its letters)."""
    return _CAMEL.sub("_", name).lower()


def camel_case(name: str) -> str:
    """``"weight_l2_factor"`` -> ``"WeightL2Factor"``."""
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _public_names(layer) -> list[str]:
    """The layer's public data attributes and properties (snake_case)."""
    names = [k for k in vars(layer) if not k.startswith("_")]
    for cls in type(layer).__mro__:
        for k, v in vars(cls).items():
            if k.startswith("_") or k in names:
                continue
            if isinstance(v, property) or (not callable(v) and not isinstance(v, (classmethod,
                                                                                  staticmethod))):
                names.append(k)
    for k in vars(layer):  # private storage behind properties: _weights -> weights
        if k.startswith("_") and not k.startswith("__") and k[1:] not in names \
                and isinstance(getattr(type(layer), k[1:], None), property):
            names.append(k[1:])
    return names


def matlab_names(layer) -> list[str]:
    """MATLAB (CamelCase) names of the layer's properties, in a stable order."""
    out = [camel_case(n) for n in _public_names(layer) if not n.endswith("_names")
           or n in ("input_names", "output_names")]
    return sorted(set(out))


def _python_name(layer, name: str, setting: bool = False) -> str:
    """The attribute behind MATLAB property ``name``; ``AttributeError`` naming the legal
    names when there is none."""
    extra = getattr(type(layer), "matlab_names", None) or {}
    if name in extra:
        return extra[name]
    snake = snake_case(name)
    if snake in _public_names(layer):
        return snake
    if name in MATLAB_IRREGULAR_NAMES and not setting:
        return MATLAB_IRREGULAR_NAMES[name]
    legal = matlab_names(layer) + ([] if setting else sorted(MATLAB_IRREGULAR_NAMES))
    what = "settable property" if name in MATLAB_IRREGULAR_NAMES else "property"
    raise AttributeError(
        f"{type(layer).__name__} has no {what} {name!r} (MATLAB name); its properties are "
        + ", ".join(legal)
        + (". To store an attribute of your own, use a lowercase name" if setting else "")
    )


def check_name(name):
    """Validate a layer's ``name`` property (a str, ``""`` for unnamed)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    return name


class Layer:
    """Base class for layers; see the module docstring for the protocol."""

    learnable_names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ()
    name: str = ""
    num_inputs = 1
    input_names = ("in",)
    num_outputs = 1
    output_names = ("out",)

    def __setattr__(self, name, value):
        if name[:1].isupper():  # MATLAB's property names: layer.Weights = W
            name = _python_name(self, name, setting=True)
        # layers own their values: learnables and state are stored as copies
        if value is not None and (name in self.learnable_names or name in self.state_names):
            value = own_value(value)
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only reached when normal lookup fails: ordinary attributes pay nothing
        if name[:1].isupper():
            attr = getattr(self, _python_name(self, name))
            return attr() if name in MATLAB_IRREGULAR_NAMES and callable(attr) else attr
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # protocol ---------------------------------------------------------------
    def initialize(self, x, *, seed=None):  # noqa: B027  (optional hook)
        """Initialise empty learnables from the example input ``x``."""

    def predict(self, x):
        raise TypeError(f"{type(self).__name__} must define predict(x)")

    def forward(self, x):
        """Training-time behaviour: ``(y, state_updates)``."""
        return self.predict(x), {}

    def update_state(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    # learnables ---------------------------------------------------------------
    def learnables(self) -> dict:
        """``{name: FormattedArray}`` of the initialised learnable parameters."""
        out = {}
        for n in self.learnable_names:
            v = getattr(self, n, None)
            if v is None:
                continue
            out[n] = v if isinstance(v, FormattedArray) else FormattedArray(v)
        return out

    def set_learnables(self, values: dict) -> None:
        """Store new values (FormattedArrays or raw arrays) for the learnables."""
        for n, v in values.items():
            if n not in self.learnable_names:
                raise ValueError(
                    f"layer {self.name!r} has no learnable {n!r}; it has {self.learnable_names}"
                )
            setattr(self, n, v.data if isinstance(v, FormattedArray) and not v.format else v)

    @staticmethod
    def _stem(pname: str) -> str:
        return pname[:-1] if pname.endswith("s") else pname

    def _factor(self, pname: str, kind: str) -> float:
        # exact name first ("bias" -> bias_l2_factor), then the singular ("weights" -> weight_...)
        for stem in (pname, self._stem(pname)):
            v = getattr(self, f"{stem}_{kind}", None)
            if v is not None:
                return float(v)
        return 1.0

    def learn_rate_factor(self, pname: str) -> float:
        return self._factor(pname, "learn_rate_factor")

    def l2_factor(self, pname: str) -> float:
        return self._factor(pname, "l2_factor")

    @contextlib.contextmanager
    def using(self, params: dict):
        """Temporarily replace learnables by ``params`` (e.g. traced arrays)."""
        saved = {n: getattr(self, n, None) for n in params}
        try:
            for n, v in params.items():
                object.__setattr__(self, n, v)
            yield self
        finally:
            for n, v in saved.items():
                object.__setattr__(self, n, v)

    def _who(self) -> str:
        """``"<kind> layer 'name'"`` for error messages (``kind`` from ``type_name()``)."""
        kind = self.type_name().lower() + " layer"
        return f"{kind} {self.name!r}" if self.name else kind

    def _require_label(self, x, label: str, why: str) -> str:
        """Return the format of ``x``; raise a ``ValueError`` naming this layer when it
        has no ``label`` dim (``why`` says what the layer needs it for)."""
        fmt = getattr(x, "format", "")
        if label not in fmt:
            shown = fmt if fmt else "'' (unformatted)"
            raise ValueError(
                f"{self._who()} cannot take input of format {shown!r}: {why}, so it needs a "
                f"{label!r} dim (e.g. 'SSCB', 'CB', 'CBT')"
            )
        return fmt

    def description(self) -> str:
        """One-line description used by layer-array displays."""
        return type(self).__name__

    def type_name(self) -> str:
        """Short type name for layer-array displays (MATLAB's first column)."""
        return type(self).__name__

    def __call__(self, x):
        return self.predict(x)
