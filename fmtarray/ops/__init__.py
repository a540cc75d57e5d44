"""Format-aware functions."""

from .elementwise import (  # noqa: F401
    abs, add, astype, clip, cos, divide, equal, exp, greater, greater_equal, less,
    less_equal, log, maximum, minimum, multiply, negative, not_equal, pow, relu, sigmoid,
    sin, sqrt, square, subtract, tanh, to_device, where,
)
from .reductions import max, mean, min, std, sum, var  # noqa: F401
from .nn import batch_norm, cross_entropy, fully_connect, one_hot, softmax  # noqa: F401
from .pool import avg_pool, max_pool  # noqa: F401
from .convolution import conv, conv_plan  # noqa: F401
from .shape import concat, flatten  # noqa: F401
from .elementwise import leaky_relu  # noqa: F401
