"""Activation layers: ``ReLULayer`` (MATLAB ``reluLayer``), ``LeakyReLULayer``
(MATLAB ``leakyReluLayer``) and ``SoftmaxLayer`` (MATLAB ``softmaxLayer``). No
learnables; any format (softmax needs ``C``)."""

from __future__ import annotations

import math
import numbers

from ..ops.elementwise import leaky_relu, relu
from ..ops.nn import softmax
from ._conv_props import display, matlab_number
from .base import Layer, check_name

__all__ = ["ReLULayer", "SoftmaxLayer", "relu_layer", "softmax_layer", "LeakyReLULayer",
           "leaky_relu_layer"]


class ReLULayer(Layer):
    """Rectified linear unit: ``max(x, 0)`` elementwise; keeps the format."""

    default_name = "relu"

    def __init__(self, *, name=""):
        self.name = check_name(name)

    def predict(self, x):
        return relu(x)

    def type_name(self) -> str:
        return "ReLU"

    def description(self) -> str:
        return "ReLU"

    def __repr__(self):
        return f"ReLULayer(name={self.name!r})"


class SoftmaxLayer(Layer):
    """Softmax over the ``C`` dim; keeps the format (``CB`` → ``CB``)."""

    default_name = "softmax"

    def __init__(self, *, name=""):
        self.name = check_name(name)

    def predict(self, x):
        fmt = getattr(x, "format", "")
        if "C" not in fmt:
            who = f"softmax layer {self.name!r}" if self.name else "softmax layer"
            raise ValueError(
                f"{who} needs input with a 'C' (channel) dim, got format {fmt!r}; put it after a "
                "layer that outputs channels, e.g. a fully connected layer ('CB')"
            )
        return softmax(x)

    def type_name(self) -> str:
        return "Softmax"

    def description(self) -> str:
        return "softmax"

    def __repr__(self):
        return f"SoftmaxLayer(name={self.name!r})"


def relu_layer(*, name="") -> ReLULayer:
    """Create a :class:`ReLULayer` (MATLAB ``reluLayer``)."""
    return ReLULayer(name=name)


def softmax_layer(*, name="") -> SoftmaxLayer:
    """Create a :class:`SoftmaxLayer` (MATLAB ``softmaxLayer``)."""
    return SoftmaxLayer(name=name)


def _scale(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"scale must be a finite real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"scale must be a finite real number, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


class LeakyReLULayer(Layer):
    """Leaky rectified linear unit (MATLAB ``leakyReluLayer``): ``x`` where ``x > 0``,
    else ``scale · x``, elementwise (:func:`fmtarray.leaky_relu`); keeps the format.

    Parameters
    ----------
    scale
        The slope for negative inputs, a finite real number; default 0.01.
    name
        Layer name, default ``""``.
    """

    default_name = "leakyrelu"

    def __init__(self, scale=0.01, *, name=""):
        self.name = check_name(name)
        self.scale = scale

    @property
    def scale(self):
        """The slope for negative inputs (MATLAB ``Scale``)."""
        return self._scale

    @scale.setter
    def scale(self, value):
        self._scale = _scale(value)

    def predict(self, x):
        return leaky_relu(x, self._scale)

    def type_name(self) -> str:
        return "Leaky ReLU"

    def description(self) -> str:
        return f"Leaky ReLU with scale {self._scale:g}"

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        return {"name": self.name, "scale": self._scale, "num_inputs": 1, "input_names": ("in",),
                "num_outputs": 1, "output_names": ("out",)}

    def __repr__(self):
        return display("LeakyReLULayer", [("Name", repr(self.name)), None, "Hyperparameters",
                                          ("Scale", matlab_number(self._scale))])


def leaky_relu_layer(scale=0.01, *, name="") -> LeakyReLULayer:
    """Create a :class:`LeakyReLULayer` (MATLAB ``leakyReluLayer``)."""
    return LeakyReLULayer(scale, name=name)
