"""Layers that combine several inputs (MATLAB ``additionLayer``, ``multiplicationLayer``,
``concatenationLayer``, ``depthConcatenationLayer``): the joins of a layer graph.

Each has ``num_inputs`` input ports named ``in1``, ``in2``, … (MATLAB's ``InputNames``)
and one output ``out``; ``predict(*xs)`` takes the inputs in port order. The inputs must
have the same format; addition and multiplication need the same sizes, concatenation
the same sizes except along the concatenated dim. Errors say which inputs differ. No
learnables; the arithmetic is the ``fmtarray`` ops, so gradients flow on every library.
"""

from __future__ import annotations

import numbers

from ..ops.elementwise import add, multiply
from ..ops.shape import concat, dim_axis
from .base import Layer, check_name

__all__ = [
    "AdditionLayer", "MultiplicationLayer", "ConcatenationLayer", "DepthConcatenationLayer",
    "addition_layer", "multiplication_layer", "concatenation_layer",
    "depth_concatenation_layer",
]


def _num_inputs(value, low=2):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(
            f"num_inputs must be an integer >= {low} (the number of layer inputs), got "
            f"{value!r}"
        )
    return int(value)


def _shown(fmt) -> str:
    return repr(fmt) if fmt else "'' (unformatted)"


class _MultiInputLayer(Layer):
    """Shared port bookkeeping, input checks and display of the combination layers."""

    _title = ""  # the class name shown by repr
    _min_inputs = 2

    def __init__(self, num_inputs, *, name=""):
        self.name = check_name(name)
        self.num_inputs = num_inputs

    @property
    def num_inputs(self) -> int:
        """Number of inputs (``in1``, ``in2``, …)."""
        return self._num_inputs

    @num_inputs.setter
    def num_inputs(self, value):
        object.__setattr__(self, "_num_inputs", _num_inputs(value, self._min_inputs))

    @property
    def input_names(self) -> tuple[str, ...]:
        """``("in1", "in2", …)`` (read-only; set :attr:`num_inputs`)."""
        return tuple(f"in{i + 1}" for i in range(self._num_inputs))

    num_outputs = property(lambda self: 1, doc="Number of outputs: 1 (read-only).")
    output_names = property(lambda self: ("out",), doc="Output names: ('out',) (read-only).")

    def _inputs(self, xs):
        if len(xs) != self._num_inputs:
            raise TypeError(
                f"{self._who()} takes {self._num_inputs} inputs ({', '.join(self.input_names)}), "
                f"got {len(xs)}"
            )
        f0 = getattr(xs[0], "format", "")
        for i, x in enumerate(xs[1:], 2):
            f = getattr(x, "format", "")
            if f != f0:
                raise ValueError(
                    f"{self._who()}: inputs must have the same format; input 'in1' has format "
                    f"{_shown(f0)} (shape {tuple(xs[0].shape)}) and input 'in{i}' has format "
                    f"{_shown(f)} (shape {tuple(x.shape)})"
                )
        return f0

    def _same_sizes(self, xs, skip=None):
        s0 = tuple(xs[0].shape)
        for i, x in enumerate(xs[1:], 2):
            s = tuple(x.shape)
            if any(a != b for k, (a, b) in enumerate(zip(s0, s)) if k != skip):
                but = "" if skip is None else f" except along dim {skip + 1}"
                raise ValueError(
                    f"{self._who()}: inputs must have the same sizes{but}; input 'in1' has "
                    f"shape {s0} and input 'in{i}' has shape {s} (format "
                    f"{_shown(getattr(x, 'format', ''))})"
                )

    def _rows(self):
        return [("NumInputs", str(self._num_inputs)),
                ("InputNames", "{" + ", ".join(repr(n) for n in self.input_names) + "}")]

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        names = ("name", *self._extra_props(), "num_inputs", "input_names", "num_outputs",
                 "output_names")
        return {n: getattr(self, n) for n in names}

    def _extra_props(self):
        return ()

    def __repr__(self) -> str:
        rows = [("Name", repr(self.name)), *self._rows()]
        lines = [f"{self._title} with properties:", ""]
        lines += [f"{k:>18}: {v}" for k, v in rows]
        return "\n".join(lines)

    __str__ = __repr__


class _ElementwiseLayer(_MultiInputLayer):
    """``num_inputs`` inputs of one format and size combined elementwise by ``_op``."""

    _op = None  # a binary fmtarray op, as staticmethod
    _type = ""  # type_name()
    _verb = ""  # in the description

    def predict(self, *xs):
        self._inputs(xs)
        self._same_sizes(xs)
        y = xs[0]
        for x in xs[1:]:
            y = self._op(y, x)
        return y

    def type_name(self) -> str:
        return self._type

    def description(self) -> str:
        return f"Element-wise {self._verb} of {self._num_inputs} inputs"


class AdditionLayer(_ElementwiseLayer):
    """Elementwise sum of ``num_inputs`` inputs of one format and size (MATLAB
    ``additionLayer``); the join of a residual connection."""

    default_name = "addition"
    _title = "AdditionLayer"
    _op = staticmethod(add)
    _type, _verb = "Addition", "addition"


class MultiplicationLayer(_ElementwiseLayer):
    """Elementwise product of ``num_inputs`` inputs of one format and size (MATLAB
    ``multiplicationLayer``)."""

    default_name = "multiplication"
    _title = "MultiplicationLayer"
    _op = staticmethod(multiply)
    _type, _verb = "Multiplication", "multiplication"


def _check_dim(dim):
    if isinstance(dim, str):
        if len(dim) != 1 or dim not in "SCBTU":
            raise ValueError(
                f"dim must be one label of 'S', 'C', 'B', 'T', 'U' or a positive integer "
                f"(MATLAB's dim number), got {dim!r}"
            )
        return dim
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(
            f"dim must be one label of 'S', 'C', 'B', 'T', 'U' or a positive integer (MATLAB's "
            f"dim number, e.g. 3 for 'C' of 'SSCB'), got {dim!r}"
        )
    return int(dim)


class ConcatenationLayer(_MultiInputLayer):
    """Concatenates ``num_inputs`` inputs of one format along ``dim`` (MATLAB
    ``concatenationLayer(dim, numInputs)``).

    ``dim`` is a label (``"C"``, ``"B"``, ``"T"``, or ``"S"``/``"U"`` when the input has
    one such dim) or MATLAB's dim number, counted in the canonical order ``S…S C B T U…U``
    (``concatenation_layer(3, 2)`` joins two ``SSCB`` inputs along ``C``).
    """

    default_name = "concat"
    _title = "ConcatenationLayer"

    def __init__(self, dim, num_inputs=2, *, name=""):
        self.dim = dim
        super().__init__(num_inputs, name=name)

    @property
    def dim(self):
        """The concatenation dim: a label or MATLAB's 1-based dim number."""
        return self._dim

    @dim.setter
    def dim(self, value):
        object.__setattr__(self, "_dim", _check_dim(value))

    def predict(self, *xs):
        fmt = self._inputs(xs)
        try:
            ax = dim_axis(fmt, len(xs[0].shape), self._dim)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self._who()}: {e}") from e
        self._same_sizes(xs, skip=ax)
        return concat(list(xs), self._dim)

    def _extra_props(self):
        return ("dim",)

    def _rows(self):
        return [("Dim", repr(self._dim) if isinstance(self._dim, str) else str(self._dim)),
                *super()._rows()]

    def type_name(self) -> str:
        return "Concatenation"

    def description(self) -> str:
        d = f"dimension {self._dim}" if isinstance(self._dim, int) else f"the {self._dim!r} dim"
        return f"Concatenation of {self._num_inputs} inputs along {d}"


class DepthConcatenationLayer(_MultiInputLayer):
    """Concatenates ``num_inputs`` inputs along the channel dim ``C`` (MATLAB
    ``depthConcatenationLayer``); the other sizes must agree."""

    default_name = "depthcat"
    _title = "DepthConcatenationLayer"

    def predict(self, *xs):
        fmt = self._inputs(xs)
        if "C" not in fmt:
            raise ValueError(
                f"{self._who()} concatenates along 'C', but its inputs have format "
                f"{_shown(fmt)}; they need a 'C' dim (e.g. 'SSCB', 'CB')"
            )
        ax = fmt.index("C")
        self._same_sizes(xs, skip=ax)
        return concat(list(xs), "C")

    def type_name(self) -> str:
        return "Depth concatenation"

    def description(self) -> str:
        return f"Depth concatenation of {self._num_inputs} inputs"


def addition_layer(num_inputs, *, name="") -> AdditionLayer:
    """Create an :class:`AdditionLayer` (MATLAB ``additionLayer(numInputs)``)."""
    return AdditionLayer(num_inputs, name=name)


def multiplication_layer(num_inputs, *, name="") -> MultiplicationLayer:
    """Create a :class:`MultiplicationLayer` (MATLAB ``multiplicationLayer(numInputs)``)."""
    return MultiplicationLayer(num_inputs, name=name)


def concatenation_layer(dim, num_inputs, *, name="") -> ConcatenationLayer:
    """Create a :class:`ConcatenationLayer` (MATLAB ``concatenationLayer(dim, numInputs)``)."""
    return ConcatenationLayer(dim, num_inputs, name=name)


def depth_concatenation_layer(num_inputs, *, name="") -> DepthConcatenationLayer:
    """Create a :class:`DepthConcatenationLayer` (MATLAB ``depthConcatenationLayer``)."""
    return DepthConcatenationLayer(num_inputs, name=name)
