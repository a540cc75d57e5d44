"""``FullyConnectedLayer``: MATLAB's ``fullyConnectedLayer``.

Every observation's ``S`` and ``C`` values are flattened (MATLAB's column-major
order: first ``S`` fastest, ``C`` slowest) and multiplied by ``weights``
(``output_size × input_size``); ``bias`` (``output_size × 1``) is added. ``B`` and
``T`` are kept: ``SSCB`` → ``CB``, ``CBT`` → ``CBT``. The arithmetic is
:func:`fmtarray.ops.nn.fully_connect`.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend
from ..array import FormattedArray
from ..ops.nn import fully_connect
from .base import Layer
from .initializers import (
    BIAS_INITIALIZERS,
    WEIGHTS_INITIALIZERS,
    check_initializer,
    initialize_array,
    sub_seed,
)

__all__ = ["FullyConnectedLayer", "fully_connected_layer"]

_X = "\u00d7"


def _pos_int(v, prop):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{prop} must be a positive integer, got {v!r}")
    return int(v)


def _factor(v, prop):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{prop} must be a nonnegative finite number, got {v!r}")
    return v


def _raw(v, prop):
    if v is None:
        return None
    if isinstance(v, FormattedArray):
        if v.format:
            raise ValueError(f"{prop} must be unformatted (MATLAB layout), got format {v.format!r}")
        return v
    if not _backend.is_array(v):
        raise TypeError(
            f"{prop} must be an array of an array-API library (or None), got "
            f"{type(v).__module__}.{type(v).__name__}"
        )
    return v


def _features(x):
    """Number of values per observation (the product of the S, C and U sizes)."""
    return math.prod(n for ch, n in zip(x.format, x.shape) if ch in "SCU")


class FullyConnectedLayer(Layer):
    """Fully connected layer (MATLAB ``fullyConnectedLayer``).

    Parameters
    ----------
    output_size
        Positive integer: the size of the output's ``C`` dim.
    input_size
        ``"auto"`` (default; set by :meth:`initialize`) or the number of input
        features (the product of the input's ``S`` and ``C`` sizes).
    weights_initializer
        ``"glorot"`` (default; ``numIn = input_size``, ``numOut = output_size``),
        ``"he"``, ``"narrownormal"``, ``"zeros"``, ``"ones"`` or a callable ``f(shape)``.
    bias_initializer
        ``"zeros"`` (default), ``"ones"``, ``"narrownormal"`` or a callable.
    weights, bias
        ``output_size × input_size`` and ``output_size × 1`` arrays, or None to
        initialise. Initialisers run only for empty parameters.
    weight_learn_rate_factor, bias_learn_rate_factor
        Default 1.
    weight_l2_factor, bias_l2_factor
        Defaults 1 and 0.
    name
        Layer name.
    """

    learnable_names = ("weights", "bias")
    default_name = "fc"

    def __init__(self, output_size, *, input_size="auto", weights_initializer="glorot",
                 bias_initializer="zeros", weights=None, bias=None, weight_learn_rate_factor=1,
                 bias_learn_rate_factor=1, weight_l2_factor=1, bias_l2_factor=0, name=""):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
        self.name = name
        self.output_size = _pos_int(output_size, "output_size")
        if isinstance(input_size, str):
            if input_size != "auto":
                raise ValueError(f"input_size must be 'auto' or a positive integer, got {input_size!r}")
            self.input_size = "auto"
        else:
            self.input_size = _pos_int(input_size, "input_size")
        self.weights_initializer = check_initializer(
            weights_initializer, "weights_initializer", WEIGHTS_INITIALIZERS
        )
        self.bias_initializer = check_initializer(bias_initializer, "bias_initializer",
                                                  BIAS_INITIALIZERS)
        self.weight_learn_rate_factor = _factor(weight_learn_rate_factor, "weight_learn_rate_factor")
        self.bias_learn_rate_factor = _factor(bias_learn_rate_factor, "bias_learn_rate_factor")
        self.weight_l2_factor = _factor(weight_l2_factor, "weight_l2_factor")
        self.bias_l2_factor = _factor(bias_l2_factor, "bias_l2_factor")
        self.weights = _raw(weights, "weights")
        self.bias = _raw(bias, "bias")
        if self.weights is not None:
            shape = tuple(self.weights.shape)
            if len(shape) != 2 or shape[0] != self.output_size:
                raise ValueError(
                    f"weights must be an output_size{_X}input_size matrix ({self.output_size}{_X}N), "
                    f"got shape {shape}"
                )
            if self.input_size not in ("auto", shape[1]):
                raise ValueError(
                    f"weights of shape {shape} do not match input_size {self.input_size}"
                )
            self.input_size = shape[1]
        if self.bias is not None:
            n = math.prod(tuple(self.bias.shape))
            if n != self.output_size:
                raise ValueError(
                    f"bias must have output_size = {self.output_size} values "
                    f"({self.output_size}{_X}1), got shape {tuple(self.bias.shape)}"
                )
            if tuple(self.bias.shape) != (self.output_size, 1):
                b = self.bias.data if isinstance(self.bias, FormattedArray) else self.bias
                self.bias = _backend.namespace(b).reshape(b, (self.output_size, 1))

    def _check(self, x):
        fmt = self._require_label(x, "C", "it flattens the 'S' and 'C' dims of each observation")
        n_in = _features(x)
        if self.input_size != "auto" and self.input_size != n_in:
            raise ValueError(
                f"{self._who()} has input_size {self.input_size} but the input (format {fmt!r}, "
                f"shape {x.shape}) has {n_in} features per observation"
            )
        return n_in

    def initialize(self, x, *, seed=None):
        """Set ``input_size`` from the example input ``x`` and fill empty parameters."""
        n_in = self._check(x)
        xp = x.xp
        dtype = x.dtype if xp.isdtype(x.dtype, "real floating") else xp.float32
        kw = dict(fan_in=n_in, fan_out=self.output_size, xp=xp, dtype=dtype, device=x.device)
        if self.weights is None:
            self.weights = initialize_array(self.weights_initializer, (self.output_size, n_in),
                                            seed=seed, prop="weights_initializer", **kw)
        if self.bias is None:
            self.bias = initialize_array(self.bias_initializer, (self.output_size, 1),
                                         seed=sub_seed(seed, 1), prop="bias_initializer", **kw)
        self.input_size = n_in
        return self

    def predict(self, x):
        n_in = self._check(x)
        if self.weights is None or self.bias is None:
            self.initialize(x)
        if tuple(self.weights.shape) != (self.output_size, n_in):
            raise ValueError(
                f"{self._who()}: weights of shape {tuple(self.weights.shape)} do not fit input of "
                f"format {x.format!r} and shape {x.shape} ({self.output_size}{_X}{n_in} expected)"
            )
        return fully_connect(x, self.weights, self.bias)

    @property
    def num_parameters(self):
        """``(input_size + 1) · output_size`` once ``input_size`` is known, else None."""
        if self.input_size == "auto":
            return None
        return (self.input_size + 1) * self.output_size

    def type_name(self) -> str:
        return "Fully Connected"

    def description(self) -> str:
        return f"{self.output_size} fully connected layer"

    def __repr__(self):
        w = "[]" if self.weights is None else _X.join(map(str, self.weights.shape))
        return (f"FullyConnectedLayer(name={self.name!r}, output_size={self.output_size}, "
                f"input_size={self.input_size!r}, weights={w})")


def fully_connected_layer(output_size, **properties) -> FullyConnectedLayer:
    """Create a :class:`FullyConnectedLayer` (MATLAB ``fullyConnectedLayer``)."""
    return FullyConnectedLayer(output_size, **properties)
