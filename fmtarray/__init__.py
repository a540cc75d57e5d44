"""fmtarray: MATLAB-style formatted arrays (``dlarray``) and format-dispatched
convolution on any array-API library."""

from .array import FormattedArray, dims, extractdata, finddim, stripdims
from .autodiff import grad, value_and_grad
from .ops import (
    abs, add, astype, clip, cos, divide, equal, exp, greater, greater_equal, less,
    less_equal, log, max, maximum, mean, min, minimum, multiply, negative, not_equal,
    pow, relu, sigmoid, sin, sqrt, square, std, subtract, sum, tanh, to_device, var,
    where,
)

__version__ = "0.1.0"

__all__ = [
    "FormattedArray", "dims", "extractdata", "finddim", "stripdims",
    "grad", "value_and_grad",
    "abs", "add", "astype", "clip", "cos", "divide", "equal", "exp", "greater",
    "greater_equal", "less", "less_equal", "log", "max", "maximum", "mean", "min",
    "minimum", "multiply", "negative", "not_equal", "pow", "relu", "sigmoid", "sin",
    "sqrt", "square", "std", "subtract", "sum", "tanh", "to_device", "var", "where",
]
