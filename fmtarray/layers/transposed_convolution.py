"""``TransposedConvolution2DLayer``: MATLAB's ``transposedConv2dLayer``.

The layer upsamples 2-D feature maps with :func:`fmtarray.transposed_conv` (MATLAB
``dltranspconv``). It dispatches by the input's format like
:class:`~fmtarray.layers.Convolution2DLayer` (SPEC §3.2): ``SSCB``, ``SSC``, ``SSCBT``,
``SSCT``, ``SSB``, ``SS``, ``SSBT`` over the two ``S`` dims; ``SCBT``, ``SCT``, ``SBT``,
``ST`` over ``S`` and ``T``. Weights are ``h × w × F × C`` (MATLAB's layout for
transposed convolution: filters before channels), the bias ``1 × 1 × F``.
Output size per convolved dim: ``stride·(in - 1) + filter - cropBefore - cropAfter``;
``cropping="same"`` gives ``in·stride``. Like MATLAB's layer it has no
``DilationFactor`` and no ``NumGroups`` (:func:`fmtarray.transposed_conv` has both).
See ``docs/reference/transposed.md``.
"""

from __future__ import annotations

from .. import _backend, _format, _validate
from ..array import FormattedArray
from ..ops.transposed_conv import transposed_conv, transposed_output_size
from ._conv_props import (
    _X, _check_param, _dtype_str, _factor, _ints, _is_traced, _layout, _pos_int, _reshape_param,
    _shape_str, _vec,
)
from .base import Layer
from .initializers import (
    BIAS_INITIALIZERS, WEIGHTS_INITIALIZERS, check_initializer, initialize_array, sub_seed,
)

__all__ = ["TransposedConvolution2DLayer", "transposed_conv2d_layer"]

CROPPING_MODES = ("manual", "same")


def _cropping(value, prop="cropping"):
    """``(mode, (t, b, l, r))`` from ``c``, ``(a, b)``, ``(t, b, l, r)``, a ``2×2``
    ``[[t, l], [b, r]]`` matrix or ``"same"``."""
    p = _validate.padding(value, 2, "(height, width)", strings=("same",), name=prop)
    if p == "same":
        return "same", (0, 0, 0, 0)
    (t, left), (b, r) = p
    return "manual", (t, b, left, r)


class TransposedConvolution2DLayer(Layer):
    """Transposed 2-D convolution layer (MATLAB ``transposedConv2dLayer``).

    Parameters
    ----------
    filter_size
        ``h`` (square) or ``(h, w)``: positive integers.
    num_filters
        Positive integer: the number of output channels.
    stride
        ``s`` or ``(sh, sw)``, default ``(1, 1)``: the upsampling factor.
    cropping
        ``c`` (every edge), ``(a, b)`` (top/bottom ``a``, left/right ``b``),
        ``(t, b, l, r)``, or ``"same"`` (output = input · stride); sets
        :attr:`cropping_size` and :attr:`cropping_mode`. Default ``0``.
    num_channels
        ``"auto"`` (default; resolved by :meth:`initialize`) or a positive integer.
    weights_initializer
        ``"glorot"`` (default), ``"he"``, ``"narrownormal"``, ``"zeros"``, ``"ones"`` or a
        callable ``f(shape)``. As MATLAB defines them for this layer, ``numIn = h·w·F``
        and ``numOut = h·w·C`` (the fans of the weights array ``h × w × F × C``).
    bias_initializer
        ``"zeros"`` (default), ``"ones"``, ``"narrownormal"`` or a callable.
    weights
        ``h × w × F × C`` array (MATLAB layout) or ``None`` (default).
    bias
        ``1 × 1 × F`` or ``F`` array, or ``None`` (default).
    weight_learn_rate_factor, bias_learn_rate_factor, weight_l2_factor, bias_l2_factor
        Nonnegative; defaults 1, 1, 1, 0.
    name
        Layer name, default ``""``.
    """

    learnable_names = ("weights", "bias")

    def __init__(self, filter_size, num_filters, *, stride=1, cropping=0, num_channels="auto",
                 weights_initializer="glorot", bias_initializer="zeros", weights=None,
                 bias=None, weight_learn_rate_factor=1, bias_learn_rate_factor=1,
                 weight_l2_factor=1, bias_l2_factor=0, name=""):
        self._weights = None
        self._bias = None
        self.name = name
        self._num_filters = _pos_int(num_filters, "num_filters")
        self.filter_size = filter_size
        self.stride = stride
        self.cropping = cropping
        if isinstance(num_channels, str):
            if num_channels.lower() != "auto":
                raise ValueError(
                    f"num_channels must be 'auto' or a positive integer, got {num_channels!r}")
            self._num_channels = "auto"
        else:
            self._num_channels = _ints(num_channels, "num_channels", lengths=(1,), low=1,
                                       legal="'auto' or a positive integer")[0]
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
            raise ValueError(f"filter_size {fs} does not match the weights of shape "
                             f"{tuple(w.shape)}; set weights=None first to change it")
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
        """``(vertical, horizontal)`` upsampling step; a scalar sets both."""
        return self._stride

    @stride.setter
    def stride(self, value):
        self._stride = _ints(value, "stride", lengths=(2,), low=1,
                             legal="a positive integer or a pair (a, b) of positive integers")

    @property
    def cropping_size(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)``; in ``"same"`` mode ``(0, 0, 0, 0)`` until
        :meth:`initialize` stores the cropping for its example input (every call
        recomputes it). Setting it sets ``cropping_mode = "manual"``."""
        return self._cropping_size

    @cropping_size.setter
    def cropping_size(self, value):
        mode, c = _cropping(value, "cropping_size")
        if mode == "same":
            raise ValueError("cropping_size must be numbers (t, b, l, r); use cropping='same'")
        self._cropping_mode, self._cropping_size = mode, c

    @property
    def cropping_mode(self) -> str:
        """``"manual"`` or ``"same"``; set through :attr:`cropping`."""
        return self._cropping_mode

    @property
    def cropping(self):
        """``"same"`` in same mode, else :attr:`cropping_size`; setting it accepts every
        form of the constructor's ``cropping``."""
        return "same" if self._cropping_mode == "same" else self._cropping_size

    @cropping.setter
    def cropping(self, value):
        self._cropping_mode, self._cropping_size = _cropping(value)

    @property
    def weights_initializer(self):
        return self._weights_initializer

    @weights_initializer.setter
    def weights_initializer(self, value):
        self._weights_initializer = check_initializer(value, "weights_initializer",
                                                      WEIGHTS_INITIALIZERS)

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

    num_inputs = property(lambda self: 1, doc="Number of inputs: 1 (read-only).")
    input_names = property(lambda self: ("in",), doc="Input names: ('in',) (read-only).")
    num_outputs = property(lambda self: 1, doc="Number of outputs: 1 (read-only).")
    output_names = property(lambda self: ("out",), doc="Output names: ('out',) (read-only).")

    # learnables ----------------------------------------------------------------------
    @property
    def weights(self):
        """``h × w × F × C`` array (MATLAB layout) or ``None`` until initialised."""
        return self._weights

    @weights.setter
    def weights(self, value):
        if value is None:
            self._weights = None
            return
        xp = _check_param(value, "weights")
        shape = tuple(value.shape)
        if not 2 <= len(shape) <= 4:
            raise ValueError(f"weights must be an h{_X}w{_X}F{_X}C array (4 dims; MATLAB may "
                             f"drop trailing singletons), got shape {shape}")
        shape4 = shape + (1,) * (4 - len(shape))
        h, w, f, c = shape4
        fs = self._filter_size
        if (h, w) != fs or f != self._num_filters:
            raise ValueError(
                f"weights must have shape {fs[0]}{_X}{fs[1]}{_X}{self._num_filters}{_X}C "
                f"(filter_size {fs}, num_filters {self._num_filters}; transposed weights put "
                f"the filters before the channels), got shape {shape}")
        if self._num_channels != "auto" and c != self._num_channels:
            raise ValueError(f"num_channels is {self._num_channels} but the weights of shape "
                             f"{shape} have {c} channels (dim 4); make them agree")
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
        if not (shape in ((f,), (1, 1, f)) or (f == 1 and shape in ((), (1,), (1, 1)))):
            raise ValueError(f"bias must have shape 1{_X}1{_X}{f} or ({f},) (num_filters {f}), "
                             f"got shape {shape}")
        if _is_traced(value) and shape in ((f,), (1, 1, f)):
            self._bias = value
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
    def _crop_arg(self):
        if self._cropping_mode == "same":
            return "same"
        t, b, left, r = self._cropping_size
        return (t, left), (b, r)

    def output_size(self, input_size):
        """Output ``(H', W')`` for input sizes ``(H, W)``: ``stride·(in - 1) + filter -
        cropping`` (``in·stride`` in ``"same"`` mode); may be < 1."""
        sizes = _ints(input_size, "input_size", lengths=(2,), low=1,
                      legal="the sizes (H, W) of the convolved dims, positive integers")
        return transposed_output_size(sizes, self._filter_size, self._stride, (1, 1),
                                      self._crop_arg())[0]

    @staticmethod
    def _sizes(fmt, shape):
        if _format.conv2d_layer_dims(fmt) == "SS":
            return shape[0], shape[1]
        return shape[0], shape[fmt.index("T")]

    # protocol -------------------------------------------------------------------------
    def initialize(self, x, *, seed=None, xp=None, dtype=None, device=None):
        """Resolve ``num_channels`` and fill empty ``weights``/``bias`` from an example input
        (a FormattedArray, a layout with ``.format``/``.shape``, or ``(shape, format)``);
        ``seed`` as for :class:`~fmtarray.layers.Convolution2DLayer`."""
        fmt, shape, xxp, xdt, xdev = _layout(x)
        _format.conv2d_layer_dims(fmt)
        c = shape[fmt.index("C")] if "C" in fmt else 1
        if self._num_channels != "auto" and c != self._num_channels:
            raise ValueError(
                f"num_channels is {self._num_channels} but the input (format {fmt!r}, shape "
                f"{tuple(shape)}) has {c} channels"
                + (" (the weights fix num_channels)" if self._weights is not None else ""))
        xp = xxp if xxp is not None else (xp if xp is not None else _backend.namespace())
        if dtype is None:
            dtype = xdt if (xdt is not None and xp.isdtype(xdt, "real floating")) else xp.float32
        device = xdev if xdev is not None else device
        h, w = self._filter_size
        f = self._num_filters
        fans = dict(fan_in=h * w * f, fan_out=h * w * c)
        if self._weights is None:
            self._num_channels = c
            self.weights = initialize_array(
                self._weights_initializer, (h, w, f, c), **fans, seed=seed, xp=xp, dtype=dtype,
                device=device, prop="weights_initializer")
        if self._bias is None:
            self.bias = initialize_array(
                self._bias_initializer, (1, 1, f), **fans, seed=sub_seed(seed, 1), xp=xp,
                dtype=dtype, device=device, prop="bias_initializer")
        self._num_channels = c
        if self._cropping_mode == "same":
            _, cb, ca = transposed_output_size(self._sizes(fmt, shape), self._filter_size,
                                               self._stride, (1, 1), "same")
            self._cropping_size = (cb[0], ca[0], cb[1], ca[1])
        return self

    def predict(self, x):
        """Upsample ``x`` (dispatching on its format); initialises an empty layer."""
        if not isinstance(x, FormattedArray):
            _format.conv2d_layer_dims("")  # ValueError listing the accepted formats
        fmt = x.format
        which = _format.conv2d_layer_dims(fmt)
        if self._weights is None or self._bias is None:
            self.initialize(x)
        W = self._weights
        shape = x.shape
        c = shape[fmt.index("C")] if "C" in fmt else 1
        if W.shape[3] != c:
            raise ValueError(
                f"layer {self._name!r}: num_channels is {W.shape[3]} (weights of shape "
                f"{tuple(W.shape)}) but the input (format {fmt!r}, shape {shape}) has {c} "
                "channels")
        out = self.output_size(self._sizes(fmt, shape))
        if min(out) < 1:
            raise ValueError(
                f"layer {self._name!r}: input of size {self._sizes(fmt, shape)} (format "
                f"{fmt!r}): filter_size {self._filter_size}, stride {self._stride} and "
                f"cropping_size {self._cropping_size} give output size {out}; output sizes "
                "must be >= 1")
        return transposed_conv(x, W, self._bias, stride=self._stride, cropping=self._crop_arg(),
                               weights_format=None if which == "SS" else "STUC")

    # display ---------------------------------------------------------------------------
    def type_name(self) -> str:
        return "2-D Transposed Convolution"

    def description(self) -> str:
        h, w = self._filter_size
        crop = "'same'" if self._cropping_mode == "same" else _vec(self._cropping_size)
        return (f"{self._num_filters} {h}{_X}{w} transposed convolutions with stride "
                f"{_vec(self._stride)} and cropping {crop}")

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        names = ("name", "filter_size", "num_channels", "num_filters", "stride", "cropping_mode",
                 "cropping_size", "weights_initializer", "bias_initializer", "weights", "bias",
                 "weight_learn_rate_factor", "bias_learn_rate_factor", "weight_l2_factor",
                 "bias_l2_factor", "num_inputs", "input_names", "num_outputs", "output_names")
        return {n: getattr(self, n) for n in names}

    @staticmethod
    def _param_str(v) -> str:
        return "[]" if v is None else f"[{_shape_str(v.shape)} {_dtype_str(v.dtype)}]"

    def __repr__(self) -> str:
        nc = "'auto'" if self._num_channels == "auto" else str(self._num_channels)
        rows = [
            ("Name", repr(self._name)), None, "Hyperparameters",
            ("FilterSize", _vec(self._filter_size)),
            ("NumChannels", nc),
            ("NumFilters", str(self._num_filters)),
            ("Stride", _vec(self._stride)),
            ("CroppingMode", repr(self._cropping_mode)),
            ("CroppingSize", _vec(self._cropping_size)),
            None, "Learnable Parameters",
            ("Weights", self._param_str(self._weights)),
            ("Bias", self._param_str(self._bias)),
        ]
        lines = ["TransposedConvolution2DLayer with properties:", ""]
        for r in rows:
            if r is None:
                lines.append("")
            elif isinstance(r, str):
                lines.append(f"   {r}")
            else:
                lines.append(f"{r[0]:>16}: {r[1]}")
        lines += ["", "  Use layer.properties() to see all properties."]
        return "\n".join(lines)

    __str__ = __repr__


_LEGAL = ("stride", "cropping", "num_channels", "weights_initializer", "bias_initializer",
          "weights", "bias", "weight_learn_rate_factor", "bias_learn_rate_factor",
          "weight_l2_factor", "bias_l2_factor", "name")


def transposed_conv2d_layer(filter_size, num_filters, **properties) -> TransposedConvolution2DLayer:
    """Create a :class:`TransposedConvolution2DLayer` (MATLAB ``transposedConv2dLayer``).

    ``transposed_conv2d_layer(4, 8, stride=2, cropping="same")`` doubles the height and
    width with 8 filters of 4×4. An unknown property is a ``TypeError`` listing them.
    """
    for k in properties:
        if k not in _LEGAL:
            raise TypeError(f"transposed_conv2d_layer got an unknown property {k!r}; the "
                            "properties are " + ", ".join(_LEGAL))
    return TransposedConvolution2DLayer(filter_size, num_filters, **properties)
