"""2-D pooling layers: MATLAB's ``maxPooling2dLayer``, ``averagePooling2dLayer`` and
``globalAveragePooling2dLayer``.

They pool over the same dims a 2-D convolution layer convolves (SPEC §3.2):
``SSCB``, ``SSC``, ``SSCBT``, ``SSCT``, ``SSB``, ``SS``, ``SSBT`` pool over the two
``S`` dims; ``SCBT``, ``SCT``, ``SBT``, ``ST`` over ``S`` (height) and ``T``
(width). The output has the input's format. The arithmetic is
:func:`fmtarray.ops.pool.max_pool` / :func:`~fmtarray.ops.pool.avg_pool`.
"""

from __future__ import annotations

from ..ops.pool import _count_pad, avg_pool, max_pool
from ..ops.reductions import mean
from ._conv_props import _ints, _padding, display
from .base import Layer, check_name

__all__ = [
    "MaxPooling2DLayer", "AveragePooling2DLayer", "max_pooling2d_layer",
    "average_pooling2d_layer", "GlobalAveragePooling2DLayer", "global_average_pooling2d_layer",
]

_X = "\u00d7"
# the formats a 2-D convolution layer takes (SPEC §3.2), by the dims they pool over
_SS = ("SSCB", "SSC", "SSCBT", "SSCT", "SSB", "SS", "SSBT")
_ST = ("SCBT", "SCT", "SBT", "ST")


def _vec(v) -> str:
    return "[" + " ".join(str(a) for a in v) + "]"


def _pooled_dims(x, kind: str, name: str) -> str:
    """The dims a 2-D pooling layer pools over for ``x``'s format (``"S"`` or ``"ST"``);
    otherwise a ValueError naming the layer as ``a {kind} layer {name!r}``."""
    fmt = getattr(x, "format", "")
    if fmt in _SS:
        return "S"
    if fmt in _ST:
        return "ST"
    who = f"{kind} layer {name!r}" if name else f"{kind} layer"
    shown = fmt if fmt else "'' (unformatted)"
    raise ValueError(
        f"a {who} cannot take input of format {shown!r}; accepted formats are "
        + ", ".join(_SS + _ST)
    )


class _Pooling2DLayer(Layer):
    _kind = ""  # "max" / "average"

    def __init__(self, pool_size, *, stride=1, padding=0, name=""):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
        self.name = name
        self.pool_size = _ints(pool_size, "pool_size", lengths=(2,), low=1,
                               legal="a positive integer or a pair (h, w) of positive integers")
        self.stride = _ints(stride, "stride", lengths=(2,), low=1,
                            legal="a positive integer or a pair (a, b) of positive integers")
        self.padding = padding

    @property
    def padding(self):
        """``"same"`` or :attr:`padding_size`; setting it accepts every padding form."""
        return "same" if self.padding_mode == "same" else self.padding_size

    @padding.setter
    def padding(self, value):
        mode, p = _padding(value)
        if mode == "manual":
            h, w = self.pool_size
            t, b, l, r = p
            if max(t, b) >= h or max(l, r) >= w:
                raise ValueError(
                    f"padding {p} (t, b, l, r) must be smaller than pool_size {self.pool_size} "
                    "(top/bottom < height, left/right < width)"
                )
        self.padding_mode, self.padding_size = mode, p

    def _pooled(self, x):
        return _pooled_dims(x, self.type_name(), self.name)

    def _pads(self):
        if self.padding_mode == "manual":
            t, b, l, r = self.padding_size
            return (t, l), (b, r)
        return "same"

    def initialize(self, x, *, seed=None):
        self._pooled(x)  # format check
        return self

    def _call(self, x):
        dims = self._pooled(x)
        kw = dict(stride=self.stride, padding=self._pads(), dims=dims)
        if self._kind == "max":
            return max_pool(x, self.pool_size, **kw)
        return avg_pool(x, self.pool_size, padding_value=self.padding_value, **kw)

    def predict(self, x):
        return self._call(x)

    def description(self) -> str:
        h, w = self.pool_size
        pad = "'same'" if self.padding_mode == "same" else _vec(self.padding_size)
        return f"{h}{_X}{w} {self._kind} pooling with stride {_vec(self.stride)} and padding {pad}"

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, {self.description()})"


class MaxPooling2DLayer(_Pooling2DLayer):
    """2-D max pooling (MATLAB ``maxPooling2dLayer``).

    Parameters
    ----------
    pool_size
        ``h`` or ``(h, w)``.
    stride
        ``s`` or ``(a, b)``; default 1, as in MATLAB.
    padding
        ``p``, ``(a, b)`` (top/bottom, left/right), ``(t, b, l, r)`` or ``"same"``
        (output ``ceil(n / stride)``, the odd pixel bottom/right); stored as
        :attr:`padding_size` ``(t, b, l, r)`` and :attr:`padding_mode`. Padding
        never wins a max and must be smaller than the pool size.
    name
        Layer name.
    """

    _kind = "max"
    default_name = "maxpool"

    def type_name(self) -> str:
        return "2-D Max Pooling"


class AveragePooling2DLayer(_Pooling2DLayer):
    """2-D average pooling (MATLAB ``averagePooling2dLayer``); arguments as
    :class:`MaxPooling2DLayer`, plus ``padding_value``: ``0`` (default, padding
    averages as zeros) or ``"mean"`` (padding is left out of each average)."""

    _kind = "average"
    default_name = "avgpool"

    def __init__(self, pool_size, *, stride=1, padding=0, padding_value=0, name=""):
        super().__init__(pool_size, stride=stride, padding=padding, name=name)
        try:
            self.padding_value = 0 if _count_pad(padding_value, "") else "mean"
        except ValueError:
            raise ValueError(f"padding_value must be 0 or 'mean', got {padding_value!r}") from None

    def type_name(self) -> str:
        return "2-D Average Pooling"


def max_pooling2d_layer(pool_size, *, stride=1, padding=0, name="") -> MaxPooling2DLayer:
    """Create a :class:`MaxPooling2DLayer` (MATLAB ``maxPooling2dLayer``)."""
    return MaxPooling2DLayer(pool_size, stride=stride, padding=padding, name=name)


def average_pooling2d_layer(pool_size, *, stride=1, padding=0, padding_value=0,
                            name="") -> AveragePooling2DLayer:
    """Create an :class:`AveragePooling2DLayer` (MATLAB ``averagePooling2dLayer``)."""
    return AveragePooling2DLayer(pool_size, stride=stride, padding=padding,
                                 padding_value=padding_value, name=name)


class GlobalAveragePooling2DLayer(Layer):
    """2-D global average pooling (MATLAB ``globalAveragePooling2dLayer``): the mean over
    the dims a 2-D convolution layer convolves (both ``S`` of ``SSCB``, ``SSCBT``, …;
    ``S`` and ``T`` of ``SCBT``, …), which stay in the output with size 1 (``SSCB``
    ``h×w×C×N`` gives ``1×1×C×N``). No learnables; ``name`` only."""

    default_name = "gapool"

    def __init__(self, *, name=""):
        self.name = check_name(name)

    def _pooled(self, x):
        return _pooled_dims(x, self.type_name().lower(), self.name)

    def initialize(self, x, *, seed=None):
        self._pooled(x)  # format check
        return self

    def predict(self, x):
        return mean(x, self._pooled(x), keepdims=True)

    def type_name(self) -> str:
        return "2-D Global Average Pooling"

    def description(self) -> str:
        return "2-D global average pooling"

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        return {"name": self.name, "num_inputs": 1, "input_names": ("in",), "num_outputs": 1,
                "output_names": ("out",)}

    def __repr__(self):
        return display("GlobalAveragePooling2DLayer", [("Name", repr(self.name))])


def global_average_pooling2d_layer(*, name="") -> GlobalAveragePooling2DLayer:
    """Create a :class:`GlobalAveragePooling2DLayer` (MATLAB ``globalAveragePooling2dLayer``)."""
    return GlobalAveragePooling2DLayer(name=name)
