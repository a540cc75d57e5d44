"""Activation layers: ``ReLULayer`` (MATLAB ``reluLayer``) and ``SoftmaxLayer``
(MATLAB ``softmaxLayer``). No learnables; any format (softmax needs ``C``)."""

from __future__ import annotations

from ..ops.elementwise import relu
from ..ops.nn import softmax
from .base import Layer, check_name

__all__ = ["ReLULayer", "SoftmaxLayer", "relu_layer", "softmax_layer"]


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
