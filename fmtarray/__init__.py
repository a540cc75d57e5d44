"""fmtarray: MATLAB-style formatted arrays (``dlarray``) and format-dispatched
convolution on any array-API library."""

from .array import FormattedArray, dims, extractdata, finddim, stripdims
from .array import to_numpy
from .autodiff import grad, value_and_grad
from ._jax_pytree import register_jax  # FormattedArray is a JAX pytree once JAX is imported
from .ops import (
    abs, add, astype, clip, cos, divide, equal, exp, greater, greater_equal, less,
    less_equal, log, max, maximum, mean, min, minimum, multiply, negative, not_equal,
    pow, relu, sigmoid, sin, sqrt, square, std, subtract, sum, tanh, to_device, var,
    where,
)
from .ops import avg_pool, batch_norm, cross_entropy, fully_connect, max_pool, one_hot, softmax
from .ops import conv, conv_plan
from .ops.transposed_conv import transposed_conv
from .ops import concat, flatten
from .ops import leaky_relu
from ._kernels.conv.thresholds import tuning
from .network import Network
from .persistence import load, save
from .io import from_xarray, from_zarr, to_xarray, to_zarr
from . import layers
from . import matlab  # MATLAB-named constructors and aliases
from .training import (  # the package is fmtarray.training; fmtarray.train is the function
    TrainingHistory, TrainingOptions, adam, plot_training, rmsprop, sgdm, train,
)

__version__ = "0.1.0"

__all__ = [
    "FormattedArray", "dims", "extractdata", "finddim", "stripdims",
    "grad", "value_and_grad", "register_jax",
    "abs", "add", "astype", "clip", "cos", "divide", "equal", "exp", "greater",
    "greater_equal", "less", "less_equal", "log", "max", "maximum", "mean", "min",
    "minimum", "multiply", "negative", "not_equal", "pow", "relu", "sigmoid", "sin",
    "sqrt", "square", "std", "subtract", "sum", "tanh", "to_device", "var", "where",
    "conv", "conv_plan", "tuning",
    "avg_pool", "batch_norm", "cross_entropy", "fully_connect", "max_pool", "one_hot", "softmax",
    "Network", "layers", "matlab",
    "to_zarr", "from_zarr", "to_xarray", "from_xarray",
    "train", "TrainingOptions", "TrainingHistory", "sgdm", "adam", "rmsprop", "plot_training",
]
__all__ += ["concat", "flatten"]
__all__ += ["transposed_conv"]
__all__ += ["save", "load"]
__all__ += ["leaky_relu"]
__all__ += ["to_numpy"]
