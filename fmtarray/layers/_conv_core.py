"""The core of MATLAB's convolution layers (:class:`_ConvolutionCore`): what the
forward layers (:class:`~fmtarray.layers.convolution.ConvolutionLayerBase` and its
subclasses) and the transposed layer
(:class:`~fmtarray.layers.TransposedConvolution2DLayer`) share: name, filter size,
stride, ``num_filters``/``num_channels``, initialisers, learn-rate and L2 factors,
``weights``/``bias`` in MATLAB's layout, ``initialize``/``predict`` and the display
(:class:`~fmtarray.layers._conv_props.ConvDisplay`). The edges (padding or cropping)
and the arithmetic are the subclasses' hooks.
"""

from __future__ import annotations

import abc
import math

from .. import _backend
from ..array import FormattedArray
from ._conv_props import (
    _X, _check_param, _ints, _is_traced, _layout, _reshape_param, _shape_str, _sizes_legal,
    _vec, ConvDisplay, factor_property, sizes_property,
)
from .base import Layer
from .initializers import (
    BIAS_INITIALIZERS, WEIGHTS_INITIALIZERS, check_initializer, initialize_array, sub_seed,
)

__all__ = ["_ConvolutionCore"]


def _learnable(prop, doc):
    """The ``weights`` or ``bias`` property: ``None`` empties it; an array is checked
    against the layer's ``_<prop>_spec()`` (:meth:`_ConvolutionCore._check_learnable`)."""
    attr = "_" + prop

    def set_(self, value):
        if value is not None and not _replaces(value, getattr(self, attr, None)):
            value = self._check_learnable(prop, value, **getattr(self, f"_{prop}_spec")())
        setattr(self, attr, value)

    return property(lambda self: getattr(self, attr), set_, doc=doc)


def _replaces(value, old) -> bool:
    """Whether ``value`` passes the checks that ``old`` (the stored value) passed, without
    running them: the same array type, shape and dtype, no format, ``old`` not a traced
    stand-in. A training step swaps every learnable in and out several times."""
    if old is None or isinstance(old, FormattedArray) and (old._node is not None
                                                           or old.format):
        return False
    if isinstance(value, FormattedArray):
        if value.format:
            return False
        data = value.data
    else:
        data = value
    return (type(data) is type(old.data if isinstance(old, FormattedArray) else old)
            and value.shape == old.shape and value.dtype == old.dtype)


class _ConvolutionCore(ConvDisplay, Layer, metaclass=abc.ABCMeta):
    """What every MATLAB convolution layer shares, transposed included, for ``_nd``
    convolved dims: name, filter size, stride, ``num_filters``/``num_channels``,
    initialisers, learn-rate and L2 factors, ``weights``/``bias`` in MATLAB's layout,
    ``initialize``/``predict`` and the display. What the edges do (padding, or the
    transposed layer's cropping) and the arithmetic are hooks: :meth:`_resolve`,
    :meth:`_store_geometry`, :meth:`_geometry_str` and :meth:`_apply`. Not a layer by
    itself; :class:`ConvolutionLayerBase` adds padding and dilation.
    """

    learnable_names = ("weights", "bias")
    _nd = 2
    _fs_names = "(h, w)"  # the filter_size / dilation_factor components, for messages
    _stride_names = "(a, b)"
    _weights_layout = f"h{_X}w{_X}C{_X}F"
    _filters_first = False  # weights k1 … kd × F × C (transposed) instead of × C × F
    _weights_note = ""  # appended to the weights-shape error
    _edges = ()  # the subclass's geometry properties, set in this order after the stride
    _type_name = ""

    @property
    def num_filters(self) -> int:
        """Number of filters (output channels); read-only."""
        return self._num_filters

    @property
    def num_channels(self):
        """``"auto"`` until resolved, else the number of input channels; read-only."""
        return self._num_channels

    def _init_common(self, args):
        """Set every property from the constructor's arguments (its ``locals()``): the
        hyperparameters in the constructor's order, the geometry (:attr:`_edges`) after
        the stride, ``num_channels`` where the layer takes it, then the learnables."""
        self._weights = None
        self._bias = None
        for prop in ("name", "filter_size", "stride", *self._edges, "weights_initializer",
                     "bias_initializer", "weight_learn_rate_factor", "bias_learn_rate_factor",
                     "weight_l2_factor", "bias_l2_factor"):
            setattr(self, prop, args[prop])
        if "num_channels" in args:
            self._num_channels = self._num_channels_arg(args["num_channels"])
        self.weights = args["weights"]
        self.bias = args["bias"]

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

    stride = sizes_property("stride", "_stride_names",
                            "The step per convolved dim; a scalar sets every dim.")

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

    # learnables: MATLAB's layout, checked against the layer's _weights_spec/_bias_spec ----
    weights = _learnable("weights", "MATLAB-layout weights, or ``None`` until initialised.")
    bias = _learnable("bias", "MATLAB-layout bias, or ``None`` until initialised.")

    def _weights_spec(self):
        """The shape the weights must have (plain layout ``k1 … kd × C × F``, or
        ``× F × C`` transposed; the grouped layer overrides): the arguments of
        :meth:`_check_learnable` but ``prop`` and ``value``."""
        c = ("C", "_num_channels", "num_channels", "channels")
        nf = self._num_filters
        return dict(
            dims=self._filter_size + ((nf, c) if self._filters_first else (c, nf)),
            least=self._nd, layout=self._weights_layout,
            what=f"filter_size {self._pub(self._filter_size)}, num_filters {nf}{self._weights_note}",
        )

    def _bias_spec(self):
        """The bias: ``1 × … × 1 × F``, or ``F`` values."""
        return dict(dims=(1,) * self._nd + (self._num_filters,), least=0, flat=True,
                    what=f"num_filters {self._num_filters}")

    def _check_learnable(self, prop, value, dims, what, least, layout=None, flat=False):
        """``value`` (``weights`` or ``bias``: ``prop``) in the full shape ``dims``, once
        it fits them; MATLAB drops trailing singleton dims, so from ``least`` dims on a
        shorter array is padded with ones, and ``flat`` also takes the ``(prod(dims),)``
        vector. A dim of ``dims`` is a size, or ``(label, attr[, prop, noun])``: a size
        the array sets, stored in ``attr``; one with a ``prop`` must agree with it once
        known. Every error names the array's shape and what fixes the sizes."""
        xp = _check_param(value, prop)
        shape = tuple(value.shape)
        n = len(dims)
        if layout is not None and not least <= len(shape) <= n:
            raise ValueError(
                f"{prop} must be an {layout} array ({n} dims; MATLAB may drop trailing "
                f"singletons), got shape {shape}"
            )
        vector = (math.prod(dims),) if flat else None
        full = dims if shape == vector else shape + (1,) * (n - len(shape))
        if not (shape == vector or least <= len(shape) <= n) or any(
                isinstance(d, int) and d != s for d, s in zip(dims, full)):
            want = _shape_str(d if isinstance(d, int) else d[0] for d in dims)
            raise ValueError(
                f"{prop} must have shape {want}{f' or {vector}' if flat else ''} ({what}), "
                f"got shape {shape}"
            )
        free = [(i, d, s) for i, (d, s) in enumerate(zip(dims, full)) if not isinstance(d, int)]
        for i, (_, attr, *bound), s in free:
            known = getattr(self, attr)
            if bound and known not in (None, "auto") and s != known:
                raise ValueError(
                    f"{bound[0]} is {known} but the {prop} of shape {shape} have {s} {bound[1]} "
                    f"(dim {i + 1}); make them agree"
                )
        if not (_is_traced(value) and shape == vector):  # a traced stand-in stays as it is
            value = _reshape_param(value, xp, full, prop)
        for _, (_, attr, *_), s in free:
            setattr(self, attr, s)
        return value

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
        cf = (self._num_filters, c) if self._filters_first else (c, self._num_filters)
        return self._filter_size + cf

    def _fans(self, c):
        """MATLAB's ``(numIn, numOut)``: the fans of the weights array as laid out."""
        k = math.prod(self._filter_size)
        cf = (self._num_filters, c) if self._filters_first else (c, self._num_filters)
        return k * cf[0], k * cf[1]

    def _weights_channels(self):
        """Input channels the current weights take."""
        return self._weights.shape[self._nd + self._filters_first]

    def _conv_weights(self):
        return self._weights

    def _conv_bias(self):
        return self._bias

    @abc.abstractmethod
    def _dispatch(self, fmt):
        """``weights_format`` for :func:`fmtarray.conv` (None: its default) for input
        format ``fmt``; a ``ValueError`` listing the accepted formats otherwise."""

    def _conv_sizes(self, fmt, shape):
        """Sizes of the convolved dims of an input: the ``S`` dims, then ``T`` when the
        weights format convolves it."""
        wfmt = self._dispatch(fmt)
        sizes = [shape[i] for i, ch in enumerate(fmt) if ch == "S"]
        if wfmt is not None and "T" in wfmt:
            sizes.append(shape[fmt.index("T")])
        return tuple(sizes)

    def output_size(self, input_size):
        """Output sizes of the convolved dims for their input sizes (may be < 1)."""
        nd = self._nd
        names = "(H, W)" if nd == 2 else ("(H, W, D)" if nd == 3 else "(N,)")
        sizes = _ints(input_size, "input_size", lengths=(nd,), low=0,
                      legal=f"the sizes {names} of the convolved dims, non-negative integers")
        return self._resolve(sizes)[0]

    # geometry hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _resolve(self, sizes):
        """``(out, before, after)`` per convolved dim for input sizes ``sizes``."""

    @abc.abstractmethod
    def _store_geometry(self, fmt, shape):
        """Store the edges an automatic mode ("same", "causal") gives this input."""

    @abc.abstractmethod
    def _geometry_str(self, before, after) -> str:
        """The geometry that gives a too-small output, for the error message."""

    @abc.abstractmethod
    def _apply(self, x, wfmt, before, after):
        """The arithmetic: ``x`` through the layer with resolved edges."""

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
                self._bias_initializer, self._bias_spec()["dims"], fan_in=fan_in, fan_out=fan_out,
                seed=sub_seed(seed, 1), xp=xp, dtype=dtype, device=device,
                prop="bias_initializer",
            )
        self._resolve_channels(c)
        self._store_geometry(fmt, shape)
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
        out, before, after = self._resolve(sizes)
        if min(out) < 1:
            raise ValueError(
                f"layer {self._name!r}: input of size {sizes} (format {fmt!r}) is too small: "
                f"{self._geometry_str(before, after)} give output size {out}; output sizes "
                "must be >= 1"
            )
        return self._apply(x, wfmt, before, after)

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
