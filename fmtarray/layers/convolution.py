"""``Convolution2DLayer``: MATLAB's ``convolution2dLayer`` (SPEC §3.2–§3.5).

The layer holds hyperparameters and learnables and dispatches by the input's
format; the arithmetic is :func:`fmtarray.conv` (MATLAB ``dlconv``):

* ``SSCB``, ``SSC``, ``SSCBT``, ``SSCT``, ``SSB``, ``SS``, ``SSBT``: filter height over
  the first ``S``, width over the second (``T`` is batch-like);
* ``SCBT``, ``SCT``, ``SBT``, ``ST``: height over ``S``, width over ``T``
  (weights format ``"STCU"``);
* a missing ``C`` is a singleton channel and the output gets a ``C`` dim;
* anything else is a ``ValueError`` that lists the accepted formats.

See ``docs/layers.md`` for every property.
"""

from __future__ import annotations


from .. import _backend, _format
from ..array import FormattedArray
from ..ops.convolution import conv, resolve_padding
from ._conv_props import (
    _X, PADDING_MODES, PADDING_VALUE_MODES, _check_param, _dtype_str, _factor, _ints,
    _is_traced, _layout, _padding, _padding_value, _pos_int, _reshape_param, _shape_str, _vec,
)
from .base import Layer
from .initializers import (
    BIAS_INITIALIZERS,
    WEIGHTS_INITIALIZERS,
    check_initializer,
    initialize_array,
    sub_seed,
)

__all__ = ["Convolution2DLayer", "convolution2d_layer", "PADDING_VALUE_MODES"]


# the layer ---------------------------------------------------------------------------


class Convolution2DLayer(Layer):
    """2-D convolutional layer (MATLAB ``convolution2dLayer``).

    Parameters
    ----------
    filter_size
        ``h`` (square) or ``(h, w)``: positive integers.
    num_filters
        Positive integer: the number of output channels.
    stride
        ``s`` or ``(sh, sw)``, default ``(1, 1)``.
    dilation_factor
        ``d`` or ``(dh, dw)``, default ``(1, 1)``; effective filter size is
        ``(filter_size - 1) * dilation_factor + 1``.
    padding
        ``p`` (every edge), ``(a, b)`` (top/bottom ``a``, left/right ``b``),
        ``(t, b, l, r)``, or ``"same"``; sets :attr:`padding_size` and
        :attr:`padding_mode`.  Default ``0``.
    padding_value
        A number (default ``0``), ``"symmetric-include-edge"``,
        ``"symmetric-exclude-edge"`` or ``"replicate"``.
    num_channels
        ``"auto"`` (default; resolved by :meth:`initialize`) or a positive integer
        that the input's channel count must match.
    weights_initializer
        ``"glorot"`` (default), ``"he"``, ``"narrownormal"``, ``"zeros"``, ``"ones"`` or
        a callable ``f(shape) -> array``.
    bias_initializer
        ``"zeros"`` (default), ``"ones"``, ``"narrownormal"`` or a callable.
    weights
        ``h × w × C × F`` array (MATLAB layout), or ``None`` (default) to initialise.
        Given weights fix :attr:`num_channels`.  MATLAB drops trailing singleton
        dims (a ``5×5×3×1`` array is saved as ``5×5×3``); such arrays are accepted
        and reshaped.
    bias
        ``1 × 1 × F`` or ``F`` array, or ``None`` (default).  Stored as ``1 × 1 × F``.
    weight_learn_rate_factor, bias_learn_rate_factor
        Nonnegative, default 1.
    weight_l2_factor, bias_l2_factor
        Nonnegative, defaults 1 and 0.
    name
        Layer name, default ``""``.

    Examples
    --------
    >>> import fmtarray as fa
    >>> layer = fa.layers.convolution2d_layer(11, 96, stride=4)
    >>> layer.filter_size, layer.stride, layer.padding_size
    ((11, 11), (4, 4), (0, 0, 0, 0))
    """

    learnable_names = ("weights", "bias")

    def __init__(
        self,
        filter_size,
        num_filters,
        *,
        stride=1,
        dilation_factor=1,
        padding=0,
        padding_value=0,
        num_channels="auto",
        weights_initializer="glorot",
        bias_initializer="zeros",
        weights=None,
        bias=None,
        weight_learn_rate_factor=1,
        bias_learn_rate_factor=1,
        weight_l2_factor=1,
        bias_l2_factor=0,
        name="",
    ):
        self._weights = None
        self._bias = None
        self.name = name
        self._num_filters = _pos_int(num_filters, "num_filters")
        self.filter_size = filter_size
        self.stride = stride
        self.dilation_factor = dilation_factor
        self.padding = padding
        self.padding_value = padding_value
        if isinstance(num_channels, str):
            if num_channels.lower() != "auto":
                raise ValueError(
                    f"num_channels must be 'auto' or a positive integer, got {num_channels!r}"
                )
            self._num_channels = "auto"
        else:
            self._num_channels = _ints(
                num_channels, "num_channels", lengths=(1,), low=1,
                legal="'auto' or a positive integer",
            )[0]
        self.weights_initializer = weights_initializer
        self.bias_initializer = bias_initializer
        self.weight_learn_rate_factor = weight_learn_rate_factor
        self.bias_learn_rate_factor = bias_learn_rate_factor
        self.weight_l2_factor = weight_l2_factor
        self.bias_l2_factor = bias_l2_factor
        self.weights = weights
        self.bias = bias

    # hyperparameters ----------------------------------------------------------------
    @property
    def name(self) -> str:
        """Layer name (default ``""``)."""
        return self._name

    @name.setter
    def name(self, value):
        if not isinstance(value, str):
            raise TypeError(f"name must be a str, got {type(value).__name__} {value!r}")
        self._name = value

    @property
    def filter_size(self) -> tuple[int, int]:
        """``(h, w)``; a scalar sets both."""
        return self._filter_size

    @filter_size.setter
    def filter_size(self, value):
        fs = _ints(value, "filter_size", lengths=(2,), low=1,
                   legal="a positive integer or a pair (h, w) of positive integers")
        w = getattr(self, "_weights", None)
        if w is not None and tuple(w.shape[:2]) != fs:
            raise ValueError(
                f"filter_size {fs} does not match the weights of shape {tuple(w.shape)}; "
                "set weights=None first to change the filter size"
            )
        self._filter_size = fs

    @property
    def num_filters(self) -> int:
        """Number of filters (output channels); read-only."""
        return self._num_filters

    @property
    def num_channels(self):
        """``"auto"`` until resolved, else the number of input channels; read-only."""
        return self._num_channels

    @property
    def stride(self) -> tuple[int, int]:
        """``(vertical, horizontal)`` step; a scalar sets both."""
        return self._stride

    @stride.setter
    def stride(self, value):
        self._stride = _ints(value, "stride", lengths=(2,), low=1,
                             legal="a positive integer or a pair (a, b) of positive integers")

    @property
    def dilation_factor(self) -> tuple[int, int]:
        """``(h, w)`` dilation; a scalar sets both."""
        return self._dilation_factor

    @dilation_factor.setter
    def dilation_factor(self, value):
        self._dilation_factor = _ints(
            value, "dilation_factor", lengths=(2,), low=1,
            legal="a positive integer or a pair (h, w) of positive integers",
        )

    @property
    def padding_size(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)``.

        In ``"same"`` mode this is ``(0, 0, 0, 0)`` until :meth:`initialize`, which
        stores the padding computed for its example input; every call recomputes the
        padding from the actual input size.  Setting it sets ``padding_mode = "manual"``.
        """
        return self._padding_size

    @padding_size.setter
    def padding_size(self, value):
        mode, p = _padding(value, "padding_size")
        if mode == "same":
            raise ValueError("padding_size must be numbers (t, b, l, r); use padding='same'")
        self._padding_mode, self._padding_size = mode, p

    @property
    def padding_mode(self) -> str:
        """``"manual"`` or ``"same"``; set through :attr:`padding`."""
        return self._padding_mode

    @padding_mode.setter
    def padding_mode(self, value):
        if not isinstance(value, str) or value.lower() not in PADDING_MODES:
            raise ValueError(f"padding_mode must be 'manual' or 'same', got {value!r}")
        self._padding_mode = value.lower()

    @property
    def padding(self):
        """``"same"`` in same mode, else :attr:`padding_size`.  Setting it accepts every
        form of the constructor's ``padding`` and sets ``padding_size``/``padding_mode``."""
        return "same" if self._padding_mode == "same" else self._padding_size

    @padding.setter
    def padding(self, value):
        self._padding_mode, self._padding_size = _padding(value)

    @property
    def padding_value(self):
        """A number, ``"symmetric-include-edge"``, ``"symmetric-exclude-edge"`` or
        ``"replicate"``."""
        return self._padding_value

    @padding_value.setter
    def padding_value(self, value):
        self._padding_value = _padding_value(value)

    @property
    def weights_initializer(self):
        return self._weights_initializer

    @weights_initializer.setter
    def weights_initializer(self, value):
        self._weights_initializer = check_initializer(
            value, "weights_initializer", WEIGHTS_INITIALIZERS
        )

    @property
    def bias_initializer(self):
        return self._bias_initializer

    @bias_initializer.setter
    def bias_initializer(self, value):
        self._bias_initializer = check_initializer(value, "bias_initializer", BIAS_INITIALIZERS)

    def _factor_prop(prop):  # noqa: N805  (property factory used in the class body)
        attr = "_" + prop

        def get(self):
            return getattr(self, attr)

        def set_(self, value):
            setattr(self, attr, _factor(value, prop))

        return property(get, set_, doc=f"{prop}: nonnegative number")

    weight_learn_rate_factor = _factor_prop("weight_learn_rate_factor")
    bias_learn_rate_factor = _factor_prop("bias_learn_rate_factor")
    weight_l2_factor = _factor_prop("weight_l2_factor")
    bias_l2_factor = _factor_prop("bias_l2_factor")
    del _factor_prop

    # read-only layer properties
    num_inputs = property(lambda self: 1, doc="Number of inputs: 1 (read-only).")
    input_names = property(lambda self: ("in",), doc="Input names: ('in',) (read-only).")
    num_outputs = property(lambda self: 1, doc="Number of outputs: 1 (read-only).")
    output_names = property(lambda self: ("out",), doc="Output names: ('out',) (read-only).")

    # learnables ----------------------------------------------------------------------
    @property
    def weights(self):
        """``h × w × C × F`` array (MATLAB layout) or ``None`` until initialised."""
        return self._weights

    @weights.setter
    def weights(self, value):
        if value is None:
            self._weights = None
            return
        xp = _check_param(value, "weights")
        shape = tuple(value.shape)
        if not 2 <= len(shape) <= 4:
            raise ValueError(
                f"weights must be an h{_X}w{_X}C{_X}F array (4 dims; MATLAB may drop trailing "
                f"singletons), got shape {shape}"
            )
        shape4 = shape + (1,) * (4 - len(shape))
        h, w, c, f = shape4
        fs = self._filter_size
        if (h, w) != fs or f != self._num_filters:
            raise ValueError(
                f"weights must have shape {fs[0]}{_X}{fs[1]}{_X}C{_X}{self._num_filters} "
                f"(filter_size {fs}, num_filters {self._num_filters}), got shape {shape}"
            )
        if self._num_channels != "auto" and c != self._num_channels:
            raise ValueError(
                f"num_channels is {self._num_channels} but the weights of shape {shape} have "
                f"{c} channels (dim 3); make them agree"
            )
        self._weights = _reshape_param(value, xp, shape4, "weights")
        self._num_channels = c

    @property
    def bias(self):
        """``1 × 1 × F`` array or ``None`` until initialised."""
        return self._bias

    @bias.setter
    def bias(self, value):
        if value is None:
            self._bias = None
            return
        xp = _check_param(value, "bias")
        shape = tuple(value.shape)
        f = self._num_filters
        ok = shape in ((f,), (1, 1, f)) or (f == 1 and shape in ((), (1,), (1, 1)))
        if not ok:
            raise ValueError(
                f"bias must have shape 1{_X}1{_X}{f} or ({f},) (num_filters {f}), got shape {shape}"
            )
        if _is_traced(value) and shape in ((f,), (1, 1, f)):
            self._bias = value  # a traced stand-in during training: keep it as it is
            return
        self._bias = _reshape_param(value, xp, (1, 1, f), "bias")

    @property
    def num_parameters(self):
        """``(h·w·C + 1)·F`` once ``num_channels`` is known, else ``None``."""
        if self._num_channels == "auto":
            return None
        h, w = self._filter_size
        return (h * w * self._num_channels + 1) * self._num_filters

    # geometry -----------------------------------------------------------------------
    def _padding_arg(self):
        if self._padding_mode == "same":
            return "same"
        t, b, l, r = self._padding_size
        return (t, l), (b, r)

    def _pads(self, sizes):
        """``(t, b, l, r)`` for convolved input sizes ``(H, W)``."""
        _, before, after = resolve_padding(sizes, self._filter_size, self._stride,
                                           self._dilation_factor, self._padding_arg())
        return before[0], after[0], before[1], after[1]

    def output_size(self, input_size):
        """Output ``(H', W')`` for convolved input sizes ``(H, W)`` (may be < 1)."""
        sizes = _ints(input_size, "input_size", lengths=(2,), low=0,
                      legal="the sizes (H, W) of the convolved dims, non-negative integers")
        return resolve_padding(sizes, self._filter_size, self._stride, self._dilation_factor,
                               self._padding_arg())[0]

    @staticmethod
    def _conv_sizes(fmt, shape):
        """The sizes of the convolved dims (height, width) of an input."""
        if _format.conv2d_layer_dims(fmt) == "SS":
            return shape[0], shape[1]
        return shape[0], shape[fmt.index("T")]

    # protocol -------------------------------------------------------------------------
    def initialize(self, x, *, seed=None, xp=None, dtype=None, device=None):
        """Resolve ``num_channels`` and fill empty ``weights``/``bias`` from an example input.

        Parameters
        ----------
        x
            A FormattedArray, or a layout: an object with ``.format`` and ``.shape``,
            or a pair ``(shape, format)``.
        seed
            int, ``numpy.random.Generator`` or ``None``: the random draws.  Weights
            use ``seed`` itself, the bias an independent stream derived from it.
        xp, dtype, device
            Where to create the parameters when ``x`` is a layout (defaults: NumPy,
            float32); with an array, its namespace, dtype and device.
        """
        fmt, shape, xxp, xdt, xdev = _layout(x)
        _format.conv2d_layer_dims(fmt)  # ValueError naming the format and the accepted ones
        c = shape[fmt.index("C")] if "C" in fmt else 1
        if self._num_channels != "auto" and c != self._num_channels:
            raise ValueError(
                f"num_channels is {self._num_channels} but the input (format {fmt!r}, shape "
                f"{tuple(shape)}) has {c} channels"
                + (" (the weights fix num_channels)" if self._weights is not None else "")
            )
        xp = xxp if xxp is not None else (xp if xp is not None else _backend.namespace())
        if dtype is None:
            dtype = xdt if (xdt is not None and xp.isdtype(xdt, "real floating")) else xp.float32
        device = xdev if xdev is not None else device
        h, w = self._filter_size
        f = self._num_filters
        if self._weights is None:
            self._num_channels = c
            self.weights = initialize_array(
                self._weights_initializer, (h, w, c, f), fan_in=h * w * c, fan_out=h * w * f,
                seed=seed, xp=xp, dtype=dtype, device=device, prop="weights_initializer",
            )
        if self._bias is None:
            self.bias = initialize_array(
                self._bias_initializer, (1, 1, f), fan_in=h * w * c, fan_out=h * w * f,
                seed=sub_seed(seed, 1), xp=xp, dtype=dtype, device=device,
                prop="bias_initializer",
            )
        self._num_channels = c
        if self._padding_mode == "same":
            self._padding_size = self._pads(self._conv_sizes(fmt, shape))
        return self

    def predict(self, x):
        """Convolve ``x`` (dispatching on its format, SPEC §3.2); initialises an empty layer."""
        if not isinstance(x, FormattedArray):
            _format.conv2d_layer_dims("")  # ValueError listing the accepted formats
        fmt = x.format
        which = _format.conv2d_layer_dims(fmt)
        if self._weights is None or self._bias is None:
            self.initialize(x)
        W = self._weights
        shape = x.shape
        c = shape[fmt.index("C")] if "C" in fmt else 1
        if W.shape[2] != c:
            raise ValueError(
                f"layer {self._name!r}: num_channels is {W.shape[2]} (weights of shape "
                f"{tuple(W.shape)}) but the input (format {fmt!r}, shape {shape}) has {c} channels"
            )
        sizes = self._conv_sizes(fmt, shape)
        pads = self._pads(sizes)
        out = self.output_size(sizes)
        if min(out) < 1:
            raise ValueError(
                f"layer {self._name!r}: input of size {sizes} (format {fmt!r}) is too small: "
                f"filter_size {self._filter_size} with dilation_factor {self._dilation_factor}, "
                f"stride {self._stride} and padding_size {pads} give output size {out}; "
                "output sizes must be >= 1"
            )
        return conv(
            x, W, self._bias,
            stride=self._stride,
            dilation_factor=self._dilation_factor,
            padding=pads,
            padding_value=self._padding_value,
            weights_format=None if which == "SS" else "STCU",
        )

    # display ---------------------------------------------------------------------------
    def type_name(self) -> str:
        return "2-D Convolution"

    def description(self) -> str:
        h, w = self._filter_size
        pad = "'same'" if self._padding_mode == "same" else _vec(self._padding_size)
        dil = "" if self._dilation_factor == (1, 1) else f", dilation factor {_vec(self._dilation_factor)}"
        return (
            f"{self._num_filters} {h}{_X}{w} convolutions with stride {_vec(self._stride)}"
            f"{dil} and padding {pad}"
        )

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        names = (
            "name", "filter_size", "num_channels", "num_filters", "stride", "dilation_factor",
            "padding_mode", "padding_size", "padding_value", "weights_initializer",
            "bias_initializer", "weights", "bias", "weight_learn_rate_factor",
            "bias_learn_rate_factor", "weight_l2_factor", "bias_l2_factor", "num_inputs",
            "input_names", "num_outputs", "output_names",
        )
        return {n: getattr(self, n) for n in names}

    @staticmethod
    def _param_str(v) -> str:
        if v is None:
            return "[]"
        return f"[{_shape_str(v.shape)} {_dtype_str(v.dtype)}]"

    def __repr__(self) -> str:
        nc = "'auto'" if self._num_channels == "auto" else str(self._num_channels)
        pv = self._padding_value
        if isinstance(pv, str):
            pv = repr(pv)
        else:  # MATLAB shows 0, not 0.0
            pv = str(int(pv)) if float(pv).is_integer() else repr(pv)
        rows = [
            ("Name", repr(self._name)),
            None,
            "Hyperparameters",
            ("FilterSize", _vec(self._filter_size)),
            ("NumChannels", nc),
            ("NumFilters", str(self._num_filters)),
            ("Stride", _vec(self._stride)),
            ("DilationFactor", _vec(self._dilation_factor)),
            ("PaddingMode", repr(self._padding_mode)),
            ("PaddingSize", _vec(self._padding_size)),
            ("PaddingValue", pv),
            None,
            "Learnable Parameters",
            ("Weights", self._param_str(self._weights)),
            ("Bias", self._param_str(self._bias)),
        ]
        lines = ["Convolution2DLayer with properties:", ""]
        for r in rows:
            if r is None:
                lines.append("")
            elif isinstance(r, str):
                lines.append(f"   {r}")
            else:
                lines.append(f"{r[0]:>18}: {r[1]}")
        lines += ["", "  Use layer.properties() to see all properties."]
        return "\n".join(lines)

    __str__ = __repr__


def convolution2d_layer(filter_size, num_filters, **properties) -> Convolution2DLayer:
    """Create a :class:`Convolution2DLayer` (MATLAB ``convolution2dLayer``).

    ``convolution2d_layer(3, 16, padding="same")`` creates 16 filters of size 3×3
    with ``"same"`` padding.  ``properties`` are the keyword arguments of
    :class:`Convolution2DLayer`; an unknown one is a ``TypeError`` listing them.
    """
    legal = (
        "stride", "dilation_factor", "padding", "padding_value", "num_channels",
        "weights_initializer", "bias_initializer", "weights", "bias",
        "weight_learn_rate_factor", "bias_learn_rate_factor", "weight_l2_factor",
        "bias_l2_factor", "name",
    )
    for k in properties:
        if k not in legal:
            raise TypeError(
                f"convolution2d_layer got an unknown property {k!r}; the properties are "
                + ", ".join(legal)
            )
    return Convolution2DLayer(filter_size, num_filters, **properties)
