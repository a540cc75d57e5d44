"""Property normalisers and display helpers of the convolution layers
(:class:`~fmtarray.layers.convolution.ConvolutionLayerBase` and its subclasses).

MATLAB-flavoured: numbers arrive as scalars, lists or the 1×n arrays that
``scipy.io.loadmat`` gives; every error names the property, the value and the legal
values.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend, _format, _validate
from ..array import FormattedArray

#: legal string values of ``padding_value``
PADDING_VALUE_MODES = ("symmetric-include-edge", "symmetric-exclude-edge", "replicate")
#: legal values of ``padding_mode``
PADDING_MODES = ("manual", "same")

_X = "\u00d7"  # ×


# validation helpers: thin wrappers over the shared normalisers (fmtarray._validate) ---


def _flat_numbers(value, prop, legal):
    """``value`` (a number, a list/tuple, or a 1-D-like array) as a flat list of numbers."""
    return _validate.numbers_list(prop, value, legal)


def _ints(value, prop, *, lengths, low, legal):
    """A scalar or vector of integers ``>= low`` as a tuple whose length is in ``lengths``
    (a scalar expands to ``lengths[0]`` values when 1 is not legal)."""
    return _validate.int_list(prop, value, lengths, low, legal)


def _pos_int(value, prop):
    return _ints(value, prop, lengths=(1,), low=1, legal="a positive integer")[0]


def _factor(value, prop):
    legal = "a nonnegative finite number"
    vals = _flat_numbers(value, prop, legal)
    if len(vals) != 1 or isinstance(vals[0], bool) or not isinstance(vals[0], numbers.Real):
        raise TypeError(f"{prop} must be {legal}, got {value!r}")
    v = vals[0]
    if not math.isfinite(float(v)) or v < 0:
        raise ValueError(f"{prop} must be {legal}, got {value!r}")
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def _padding(value, prop="padding", strings=("same", "valid")):
    """``(mode, (t, b, l, r))`` from any ``padding`` form (SPEC §3.3): ``p``, ``(a, b)``
    (top/bottom, left/right), ``(t, b, l, r)``, a ``2×2`` matrix ``[[t, l], [b, r]]``,
    or one of ``strings`` (any case; ``"valid"`` is zero padding), as
    :func:`fmtarray.conv` takes them. The transposed layer's cropping takes ``"same"``
    only."""
    p = _validate.padding(value, 2, "(height, width)", strings=strings, name=prop)
    if p == "same":
        return "same", (0, 0, 0, 0)
    (t, left), (b, r) = p
    return "manual", (t, b, left, r)


def _padding_value(value):
    return _validate.padding_value(value)


def _is_traced(v) -> bool:
    return isinstance(v, FormattedArray) and v._node is not None


def _check_param(value, prop):
    """Common checks for ``weights``/``bias``: an unformatted real floating array."""
    if isinstance(value, FormattedArray):
        if value.format:
            raise ValueError(
                f"{prop} must be unformatted (MATLAB layout), got a FormattedArray of format "
                f"{value.format!r}; use stripdims({prop}, <format in MATLAB order>)"
            )
        xp = value.xp
    elif _backend.is_array(value):
        xp = _backend.namespace(value)
    else:
        raise TypeError(
            f"{prop} must be an array of an array-API library (or None), got "
            f"{type(value).__module__}.{type(value).__name__}; wrap lists with numpy.asarray"
        )
    if not xp.isdtype(value.dtype, "real floating"):
        raise TypeError(
            f"{prop} must have a real floating dtype (float32 or float64), got {value.dtype}; "
            "convert it with astype first"
        )
    return xp


def _reshape_param(value, xp, shape, prop):
    if tuple(value.shape) == shape:
        return value
    if _is_traced(value):
        raise ValueError(f"{prop} must have shape {shape}, got {tuple(value.shape)}")
    data = value.data if isinstance(value, FormattedArray) else value
    return xp.reshape(data, shape)


def _shape_str(shape) -> str:
    return _X.join(str(n) for n in shape)


def _dtype_str(dt) -> str:
    s = str(dt)
    for pre in ("torch.", "dtype('", "array_api_strict."):
        s = s.replace(pre, "")
    return s.rstrip("')")


def _vec(v) -> str:
    return "[" + " ".join(str(a) for a in v) + "]"


def _layout(x):
    """``(format, shape, xp, dtype, device)`` of an example input.

    ``x`` is a FormattedArray, an object with ``.format`` and ``.shape`` (a data
    layout), or a pair ``(shape, format)`` / ``(format, shape)``.
    """
    if isinstance(x, FormattedArray):
        return x.format, x.shape, x.xp, x.dtype, x.device
    if isinstance(x, tuple) and len(x) == 2:
        a, b = x
        fmt, shape = (a, b) if isinstance(a, str) else (b, a)
        if isinstance(fmt, str) and isinstance(shape, (tuple, list)):
            return fmt, _layout_shape(shape), None, None, None
    fmt = getattr(x, "format", None)
    shape = getattr(x, "shape", None)
    if isinstance(fmt, str) and shape is not None:
        return fmt, _layout_shape(shape), None, None, None
    if _backend.is_array(x):
        _format.conv2d_layer_dims("")  # raises: unformatted input, lists the accepted formats
    raise TypeError(
        "initialize needs an example input: a FormattedArray, a layout with .format and "
        f".shape, or a pair (shape, format); got {type(x).__name__}"
    )


def _layout_shape(shape):
    """The sizes of a layout, as ints (2.7 channels is an error, not 2)."""
    shape = tuple(shape)
    return _validate.int_list("shape", shape, (len(shape),), 0,
                              "non-negative integer sizes, one per label of the format")


# shared by the convolution layers ------------------------------------------------

#: the keyword properties every convolution layer constructor takes
COMMON_PROPERTIES = (
    "stride", "dilation_factor", "padding", "padding_value", "weights_initializer",
    "bias_initializer", "weights", "bias", "weight_learn_rate_factor", "bias_learn_rate_factor",
    "weight_l2_factor", "bias_l2_factor", "name",
)


def _sizes_legal(nd, names):
    if nd == 1:
        return "a positive integer"
    return f"a positive integer or a {'pair' if nd == 2 else 'triple'} {names} of positive integers"


def check_properties(func, properties, legal):
    """``TypeError`` listing ``legal`` when ``properties`` has an unknown key."""
    for k in properties:
        if k not in legal:
            raise TypeError(
                f"{func} got an unknown property {k!r}; the properties are " + ", ".join(legal)
            )


def factor_property(prop):
    """A property that stores a learn-rate or L2 factor (a nonnegative number)."""
    attr = "_" + prop

    def get(self):
        return getattr(self, attr)

    def set_(self, value):
        setattr(self, attr, _factor(value, prop))

    return property(get, set_, doc=f"{prop}: nonnegative number")


def sizes_property(prop, names, doc):
    """A property of positive integers, one per convolved dim (a scalar sets every dim;
    a 1-D layer shows an int); ``names`` is the class attribute naming them in errors."""
    attr = "_" + prop

    def set_(self, value):
        setattr(self, attr, _ints(value, prop, lengths=(self._nd,), low=1,
                                  legal=_sizes_legal(self._nd, getattr(self, names))))

    return property(lambda self: self._pub(getattr(self, attr)), set_, doc=doc)


def _pad_matrix_str(p) -> str:
    """``[a b …]``, or ``[t l f; b r k]`` for a 2×d matrix (3-D ``PaddingSize``)."""
    if p and isinstance(p[0], tuple):
        return "[" + "; ".join(" ".join(str(v) for v in row) for row in p) + "]"
    return _vec(p)


def matlab_number(v) -> str:
    """A real number as MATLAB's ``format short`` shows it: ``0``, ``3``, ``0.5000``."""
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:.4f}"


def display(cls_name, rows) -> str:
    """MATLAB's property display: ``rows`` of ``(name, shown value)``, section titles
    (str) and blank lines (None); names right-aligned, four spaces before the longest."""
    width = max(len(r[0]) + 4 for r in rows if isinstance(r, tuple))
    lines = [f"{cls_name} with properties:", ""]
    for r in rows:
        if r is None:
            lines.append("")
        elif isinstance(r, str):
            lines.append(f"   {r}")
        else:
            lines.append(f"{r[0]:>{width}}: {r[1]}")
    lines += ["", "  Use layer.properties() to see all properties."]
    return "\n".join(lines)


class ConvDisplay:
    """MATLAB's display of a convolution layer (``repr``), its one-line description and
    ``properties()``; mixed into the convolution layers' core
    (:mod:`fmtarray.layers.convolution`), whose attributes it reads. The transposed
    layer overrides :meth:`_geometry_rows`, :meth:`description` and ``_property_names``."""

    def _pad_str(self) -> str:
        if self._padding_mode != "manual":
            return repr(self._padding_mode)
        return _pad_matrix_str(self.padding_size)

    def description(self) -> str:
        fs = _X.join(str(k) for k in self._filter_size)
        dil = ("" if set(self._dilation_factor) == {1}
               else f", dilation factor {self._vec_str(self._dilation_factor)}")
        return (
            f"{self._num_filters} {fs} convolutions with stride {self._vec_str(self._stride)}"
            f"{dil} and padding {self._pad_str()}"
        )

    _property_names = (
        "name", "filter_size", "num_channels", "num_filters", "stride", "dilation_factor",
        "padding_mode", "padding_size", "padding_value", "weights_initializer",
        "bias_initializer", "weights", "bias", "weight_learn_rate_factor",
        "bias_learn_rate_factor", "weight_l2_factor", "bias_l2_factor", "num_inputs",
        "input_names", "num_outputs", "output_names",
    )

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        return {n: getattr(self, n) for n in self._property_names}

    @staticmethod
    def _param_str(v) -> str:
        if v is None:
            return "[]"
        return f"[{_shape_str(v.shape)} {_dtype_str(v.dtype)}]"

    def _padding_value_str(self) -> str:
        pv = self._padding_value
        if isinstance(pv, str):
            return repr(pv)
        return str(int(pv)) if float(pv).is_integer() else repr(pv)  # MATLAB shows 0

    def _channel_rows(self):
        nc = "'auto'" if self._num_channels == "auto" else str(self._num_channels)
        return [("NumChannels", nc), ("NumFilters", str(self._num_filters))]

    def _geometry_rows(self):
        return [("DilationFactor", self._vec_str(self._dilation_factor)),
                ("PaddingMode", repr(self._padding_mode)),
                ("PaddingSize", _pad_matrix_str(self.padding_size)),
                ("PaddingValue", self._padding_value_str())]

    def __repr__(self) -> str:
        rows = [
            ("Name", repr(self._name)),
            None,
            "Hyperparameters",
            ("FilterSize", self._vec_str(self._filter_size)),
            *self._channel_rows(),
            ("Stride", self._vec_str(self._stride)),
            *self._geometry_rows(),
            None,
            "Learnable Parameters",
            ("Weights", self._param_str(self._weights)),
            ("Bias", self._param_str(self._bias)),
        ]
        return display(type(self).__name__, rows)

    __str__ = __repr__
