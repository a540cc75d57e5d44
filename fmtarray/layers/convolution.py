"""Convolution layers: the shared base (:class:`ConvolutionLayerBase`) and
``Convolution2DLayer``, MATLAB's ``convolution2dLayer`` (SPEC §3.2–§3.5).

The base holds what every MATLAB convolution layer has (filter size, stride, dilation,
padding and its value, initialisers, learn-rate and L2 factors, ``weights``/``bias`` in
MATLAB's layout, the display) for ``_nd`` convolved dims; a subclass says which formats
it takes and which dims they convolve (:meth:`ConvolutionLayerBase._dispatch`), and the
grouped layer its own weights layout. The arithmetic is :func:`fmtarray.conv`
(MATLAB ``dlconv``). ``Convolution2DLayer`` dispatches so:

* ``SSCB``, ``SSC``, ``SSCBT``, ``SSCT``, ``SSB``, ``SS``, ``SSBT``: filter height over
  the first ``S``, width over the second (``T`` is batch-like);
* ``SCBT``, ``SCT``, ``SBT``, ``ST``: height over ``S``, width over ``T``
  (weights format ``"STCU"``);
* a missing ``C`` is a singleton channel and the output gets a ``C`` dim;
* anything else is a ``ValueError`` that lists the accepted formats.

The 1-D and 3-D layers are in :mod:`.convolution_nd`, the grouped one in
:mod:`.grouped_convolution`. See ``docs/layers.md`` and ``docs/reference/cnn_layers.md``.
"""

from __future__ import annotations

import math

from .. import _backend, _format, _validate
from ..array import FormattedArray
from ..ops.convolution import conv, resolve_padding
from ._conv_props import (
    _X, PADDING_VALUE_MODES, _check_param, _ints, _is_traced, _layout,
    _padding, _padding_value, _pos_int, _reshape_param, _shape_str, _sizes_legal,
    _vec,
    COMMON_PROPERTIES, ConvDisplay, check_properties, factor_property,
)
from .base import Layer
from .initializers import (
    BIAS_INITIALIZERS,
    WEIGHTS_INITIALIZERS,
    check_initializer,
    initialize_array,
    sub_seed,
)

__all__ = ["ConvolutionLayerBase", "Convolution2DLayer", "convolution2d_layer",
           "PADDING_VALUE_MODES"]

class ConvolutionLayerBase(ConvDisplay, Layer):
    """What MATLAB's convolution layers share, for ``_nd`` convolved dims.

    Subclasses set the class attributes below and implement :meth:`_dispatch`
    (format -> weights format, or a ``ValueError``). The constructor is the plain
    layers' (``filter_size, num_filters``, ``num_channels``; see
    :class:`Convolution2DLayer`); the grouped layer has its own and overrides the
    weights/bias layout hooks. Not a layer by itself.
    """

    learnable_names = ("weights", "bias")
    _nd = 2
    _fs_names = "(h, w)"  # the filter_size / dilation_factor components, for messages
    _stride_names = "(a, b)"
    _weights_layout = f"h{_X}w{_X}C{_X}F"
    _pad_strings = ("same", "valid")
    _type_name = ""

    def __init__(self, filter_size, num_filters, *, stride=1, dilation_factor=1, padding=0,
                 padding_value=0, num_channels="auto", weights_initializer="glorot",
                 bias_initializer="zeros", weights=None, bias=None, weight_learn_rate_factor=1,
                 bias_learn_rate_factor=1, weight_l2_factor=1, bias_l2_factor=0, name=""):
        self._num_filters = _pos_int(num_filters, "num_filters")
        self._init_common(
            filter_size, stride=stride, dilation_factor=dilation_factor, padding=padding,
            padding_value=padding_value, weights_initializer=weights_initializer,
            bias_initializer=bias_initializer, weight_learn_rate_factor=weight_learn_rate_factor,
            bias_learn_rate_factor=bias_learn_rate_factor, weight_l2_factor=weight_l2_factor,
            bias_l2_factor=bias_l2_factor, name=name)
        self._num_channels = self._num_channels_arg(num_channels)
        self.weights = weights
        self.bias = bias

    @property
    def num_filters(self) -> int:
        """Number of filters (output channels); read-only."""
        return self._num_filters

    @property
    def num_channels(self):
        """``"auto"`` until resolved, else the number of input channels; read-only."""
        return self._num_channels

    def _init_common(self, filter_size, *, stride, dilation_factor, padding, padding_value,
                     weights_initializer, bias_initializer, weight_learn_rate_factor,
                     bias_learn_rate_factor, weight_l2_factor, bias_l2_factor, name):
        self._weights = None
        self._bias = None
        self.name = name
        self.filter_size = filter_size
        self.stride = stride
        self.dilation_factor = dilation_factor
        self.padding = padding
        self.padding_value = padding_value
        self.weights_initializer = weights_initializer
        self.bias_initializer = bias_initializer
        self.weight_learn_rate_factor = weight_learn_rate_factor
        self.bias_learn_rate_factor = bias_learn_rate_factor
        self.weight_l2_factor = weight_l2_factor
        self.bias_l2_factor = bias_l2_factor

    @staticmethod
    def _num_channels_arg(num_channels):
        if isinstance(num_channels, str):
            if num_channels.lower() != "auto":
                raise ValueError(
                    f"num_channels must be 'auto' or a positive integer, got {num_channels!r}"
                )
            return "auto"
        return _ints(num_channels, "num_channels", lengths=(1,), low=1,
                     legal="'auto' or a positive integer")[0]

    def _pub(self, t):
        """A per-dim tuple as the property shows it (an int for 1-D layers, as MATLAB)."""
        return t[0] if self._nd == 1 else t

    def _vec_str(self, t) -> str:
        return str(t[0]) if self._nd == 1 else _vec(t)

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
    def filter_size(self):
        """The filter size per convolved dim; a scalar sets every dim."""
        return self._pub(self._filter_size)

    @filter_size.setter
    def filter_size(self, value):
        nd = self._nd
        fs = _ints(value, "filter_size", lengths=(nd,), low=1,
                   legal=_sizes_legal(nd, self._fs_names))
        w = getattr(self, "_weights", None)
        if w is not None and tuple(w.shape[:nd]) != fs:
            raise ValueError(
                f"filter_size {self._pub(fs)} does not match the weights of shape "
                f"{tuple(w.shape)}; set weights=None first to change the filter size"
            )
        self._filter_size = fs

    @property
    def stride(self):
        """The step per convolved dim; a scalar sets every dim."""
        return self._pub(self._stride)

    @stride.setter
    def stride(self, value):
        self._stride = _ints(value, "stride", lengths=(self._nd,), low=1,
                             legal=_sizes_legal(self._nd, self._stride_names))

    @property
    def dilation_factor(self):
        """The dilation per convolved dim; a scalar sets every dim."""
        return self._pub(self._dilation_factor)

    @dilation_factor.setter
    def dilation_factor(self, value):
        self._dilation_factor = _ints(value, "dilation_factor", lengths=(self._nd,), low=1,
                                      legal=_sizes_legal(self._nd, self._fs_names))

    # padding: stored as (before, after) tuples, shown in MATLAB's form ----------------
    def _parse_padding(self, value, prop):
        """``(mode, before, after)`` from any padding form of this layer."""
        labels = "".join("HWD"[:self._nd]) if self._nd > 1 else "(the convolved dim)"
        p = _validate.padding(value, self._nd, labels, strings=self._pad_strings, name=prop)
        if isinstance(p, str):
            return p, (0,) * self._nd, (0,) * self._nd
        return "manual", p[0], p[1]

    def _pad_public(self, before, after):
        """MATLAB's ``PaddingSize`` from before/after tuples (1-D ``[l r]``)."""
        return (before[0], after[0])

    @property
    def padding_size(self):
        """MATLAB's ``PaddingSize``. In ``"same"`` (or ``"causal"``) mode this is zeros
        until :meth:`initialize`, which stores the padding computed for its example
        input; every call recomputes it from the actual input size. Setting it sets
        ``padding_mode = "manual"``."""
        return self._pad_public(self._before, self._after)

    @padding_size.setter
    def padding_size(self, value):
        mode, b, a = self._parse_padding(value, "padding_size")
        if mode != "manual":
            raise ValueError(f"padding_size must be numbers {self._pad_form}; use padding={mode!r}")
        self._padding_mode, self._before, self._after = mode, b, a

    _pad_form = "(left, right)"

    @property
    def padding_mode(self) -> str:
        """``"manual"``, ``"same"`` (or ``"causal"`` for 1-D); set through :attr:`padding`."""
        return self._padding_mode

    @padding_mode.setter
    def padding_mode(self, value):
        legal = ("manual",) + tuple(s for s in self._pad_strings if s != "valid")
        if not isinstance(value, str) or value.lower() not in legal:
            raise ValueError(
                f"padding_mode must be {' or '.join(repr(s) for s in legal)}, got {value!r}"
            )
        self._padding_mode = value.lower()

    @property
    def padding(self):
        """The mode's name in ``"same"``/``"causal"`` mode, else :attr:`padding_size`.
        Setting it accepts every form of the constructor's ``padding``."""
        return self._padding_mode if self._padding_mode != "manual" else self.padding_size

    @padding.setter
    def padding(self, value):
        self._padding_mode, self._before, self._after = self._parse_padding(value, "padding")

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

    weight_learn_rate_factor = factor_property("weight_learn_rate_factor")
    bias_learn_rate_factor = factor_property("bias_learn_rate_factor")
    weight_l2_factor = factor_property("weight_l2_factor")
    bias_l2_factor = factor_property("bias_l2_factor")

    # read-only layer properties
    num_inputs = property(lambda self: 1, doc="Number of inputs: 1 (read-only).")
    input_names = property(lambda self: ("in",), doc="Input names: ('in',) (read-only).")
    num_outputs = property(lambda self: 1, doc="Number of outputs: 1 (read-only).")
    output_names = property(lambda self: ("out",), doc="Output names: ('out',) (read-only).")

    # learnables (plain layout: k1 … kd × C × F; the grouped layer overrides) ------------
    @property
    def weights(self):
        """MATLAB-layout weights, or ``None`` until initialised."""
        return self._weights

    @weights.setter
    def weights(self, value):
        if value is None:
            self._weights = None
            return
        xp = _check_param(value, "weights")
        shape = tuple(value.shape)
        nd = self._nd
        if not nd <= len(shape) <= nd + 2:
            raise ValueError(
                f"weights must be an {self._weights_layout} array ({nd + 2} dims; MATLAB may "
                f"drop trailing singletons), got shape {shape}"
            )
        full = shape + (1,) * (nd + 2 - len(shape))
        c, f = full[nd], full[nd + 1]
        fs = self._filter_size
        if full[:nd] != fs or f != self._num_filters:
            want = _X.join(str(k) for k in fs)
            raise ValueError(
                f"weights must have shape {want}{_X}C{_X}{self._num_filters} "
                f"(filter_size {self._pub(fs)}, num_filters {self._num_filters}), got shape "
                f"{shape}"
            )
        if self._num_channels != "auto" and c != self._num_channels:
            raise ValueError(
                f"num_channels is {self._num_channels} but the weights of shape {shape} have "
                f"{c} channels (dim {nd + 1}); make them agree"
            )
        self._weights = _reshape_param(value, xp, full, "weights")
        self._num_channels = c

    def _bias_shape(self):
        return (1,) * self._nd + (self._num_filters,)

    @property
    def bias(self):
        """MATLAB-layout bias (``1 × … × 1 × F``), or ``None`` until initialised."""
        return self._bias

    @bias.setter
    def bias(self, value):
        if value is None:
            self._bias = None
            return
        xp = _check_param(value, "bias")
        shape = tuple(value.shape)
        full = self._bias_shape()
        f = math.prod(full)
        ok = shape in ((f,), full) or (f == 1 and math.prod(shape) == 1 and len(shape) <= len(full))
        if not ok:
            raise ValueError(
                f"bias must have shape {_shape_str(full)} or ({f},) "
                f"({self._bias_what()}), got shape {shape}"
            )
        if _is_traced(value) and shape in ((f,), full):
            self._bias = value  # a traced stand-in during training: keep it as it is
            return
        self._bias = _reshape_param(value, xp, full, "bias")

    def _bias_what(self):
        return f"num_filters {self._num_filters}"

    @property
    def num_parameters(self):
        """Weights plus bias values once the channels are known, else ``None``."""
        if self._num_channels == "auto":
            return None
        return (math.prod(self._filter_size) * self._num_channels + 1) * self._num_filters

    # hooks of the plain layout -------------------------------------------------------
    def _check_channels(self, c, fmt, shape):
        """Raise when an input with ``c`` channels cannot go through the layer."""
        if self._num_channels != "auto" and c != self._num_channels:
            raise ValueError(
                f"num_channels is {self._num_channels} but the input (format {fmt!r}, shape "
                f"{tuple(shape)}) has {c} channels"
                + (" (the weights fix num_channels)" if self._weights is not None else "")
            )

    def _resolve_channels(self, c):
        self._num_channels = c

    def _weights_shape(self, c):
        return self._filter_size + (c, self._num_filters)

    def _fans(self, c):
        k = math.prod(self._filter_size)
        return k * c, k * self._num_filters

    def _weights_channels(self):
        """Input channels the current weights take."""
        return self._weights.shape[self._nd]

    def _conv_weights(self):
        return self._weights

    def _conv_bias(self):
        return self._bias

    def _dispatch(self, fmt):
        """``weights_format`` for :func:`fmtarray.conv` (None: its default) for input
        format ``fmt``; a ``ValueError`` listing the accepted formats otherwise."""
        raise NotImplementedError

    def _conv_sizes(self, fmt, shape):
        """Sizes of the convolved dims of an input: the ``S`` dims, then ``T`` when the
        weights format convolves it."""
        wfmt = self._dispatch(fmt)
        sizes = [shape[i] for i, ch in enumerate(fmt) if ch == "S"]
        if wfmt is not None and "T" in wfmt:
            sizes.append(shape[fmt.index("T")])
        return tuple(sizes)

    # geometry -----------------------------------------------------------------------
    def _padding_arg(self):
        if self._padding_mode != "manual":
            return self._padding_mode
        return self._before, self._after

    def _pads(self, sizes):
        """MATLAB's ``PaddingSize`` for convolved input sizes ``sizes``."""
        _, before, after = resolve_padding(sizes, self._filter_size, self._stride,
                                           self._dilation_factor, self._padding_arg())
        return self._pad_public(before, after)

    def output_size(self, input_size):
        """Output sizes of the convolved dims for their input sizes (may be < 1)."""
        nd = self._nd
        names = "(H, W)" if nd == 2 else ("(H, W, D)" if nd == 3 else "(N,)")
        sizes = _ints(input_size, "input_size", lengths=(nd,), low=0,
                      legal=f"the sizes {names} of the convolved dims, non-negative integers")
        return resolve_padding(sizes, self._filter_size, self._stride, self._dilation_factor,
                               self._padding_arg())[0]

    # protocol -------------------------------------------------------------------------
    def initialize(self, x, *, seed=None, xp=None, dtype=None, device=None):
        """Resolve the channels and fill empty ``weights``/``bias`` from an example input.

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
        self._dispatch(fmt)  # ValueError naming the format and the accepted ones
        c = shape[fmt.index("C")] if "C" in fmt else 1
        self._check_channels(c, fmt, shape)
        xp = xxp if xxp is not None else (xp if xp is not None else _backend.namespace())
        if dtype is None:
            dtype = xdt if (xdt is not None and xp.isdtype(xdt, "real floating")) else xp.float32
        device = xdev if xdev is not None else device
        fan_in, fan_out = self._fans(c)
        if self._weights is None:
            self._resolve_channels(c)
            self.weights = initialize_array(
                self._weights_initializer, self._weights_shape(c), fan_in=fan_in,
                fan_out=fan_out, seed=seed, xp=xp, dtype=dtype, device=device,
                prop="weights_initializer",
            )
        if self._bias is None:
            self.bias = initialize_array(
                self._bias_initializer, self._bias_shape(), fan_in=fan_in, fan_out=fan_out,
                seed=sub_seed(seed, 1), xp=xp, dtype=dtype, device=device,
                prop="bias_initializer",
            )
        self._resolve_channels(c)
        if self._padding_mode != "manual":
            _, self._before, self._after = resolve_padding(
                self._conv_sizes(fmt, shape), self._filter_size, self._stride,
                self._dilation_factor, self._padding_arg())
        return self

    def predict(self, x):
        """Convolve ``x`` (dispatching on its format); initialises an empty layer."""
        if not isinstance(x, FormattedArray):
            self._dispatch("")  # ValueError listing the accepted formats
        fmt = x.format
        wfmt = self._dispatch(fmt)
        if self._weights is None or self._bias is None:
            self.initialize(x)
        shape = x.shape
        c = shape[fmt.index("C")] if "C" in fmt else 1
        self._check_input(c, fmt, shape)
        sizes = self._conv_sizes(fmt, shape)
        out, before, after = resolve_padding(sizes, self._filter_size, self._stride,
                                             self._dilation_factor, self._padding_arg())
        if min(out) < 1:
            raise ValueError(
                f"layer {self._name!r}: input of size {sizes} (format {fmt!r}) is too small: "
                f"filter_size {self._pub(self._filter_size)} with dilation_factor "
                f"{self._pub(self._dilation_factor)}, stride {self._pub(self._stride)} and "
                f"padding_size {self._pad_public(before, after)} give output size {out}; "
                "output sizes must be >= 1"
            )
        return conv(
            x, self._conv_weights(), self._conv_bias(),
            stride=self._stride,
            dilation_factor=self._dilation_factor,
            padding=(before, after),
            padding_value=self._padding_value,
            weights_format=wfmt,
        )

    def _check_input(self, c, fmt, shape):
        W = self._weights
        if self._weights_channels() != c:
            raise ValueError(
                f"layer {self._name!r}: num_channels is {self._weights_channels()} (weights of "
                f"shape {tuple(W.shape)}) but the input (format {fmt!r}, shape {shape}) has {c} "
                "channels"
            )

    # display: ConvDisplay (MATLAB's property display, description, properties())

    def type_name(self) -> str:
        return self._type_name


# the 2-D layer -----------------------------------------------------------------------


class Convolution2DLayer(ConvolutionLayerBase):
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

    _nd = 2
    _type_name = "2-D Convolution"
    _pad_form = "(t, b, l, r)"

    def _parse_padding(self, value, prop):
        mode, p = _padding(value, prop)  # SPEC §3.3's forms, incl. a 2×2 matrix
        t, b, left, r = p
        return mode, (t, left), (b, r)

    def _pad_public(self, before, after):
        return before[0], after[0], before[1], after[1]

    def _dispatch(self, fmt):
        return None if _format.conv2d_layer_dims(fmt) == "SS" else "STCU"


def convolution2d_layer(filter_size, num_filters, **properties) -> Convolution2DLayer:
    """Create a :class:`Convolution2DLayer` (MATLAB ``convolution2dLayer``).

    ``convolution2d_layer(3, 16, padding="same")`` creates 16 filters of size 3×3
    with ``"same"`` padding.  ``properties`` are the keyword arguments of
    :class:`Convolution2DLayer`; an unknown one is a ``TypeError`` listing them.
    """
    legal = COMMON_PROPERTIES[:4] + ("num_channels",) + COMMON_PROPERTIES[4:]
    check_properties("convolution2d_layer", properties, legal)
    return Convolution2DLayer(filter_size, num_filters, **properties)
