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
Properties, initialisers, factors and display come from the convolution layers' core
(:mod:`fmtarray.layers.convolution`); this module adds cropping and the
``h × w × F × C`` layout. See ``docs/reference/transposed.md``.
"""

from __future__ import annotations

from .. import _format
from ..ops.transposed_conv import transposed_conv, transposed_output_size
from ._conv_props import _X, _padding, _pos_int, _vec, check_properties
from ._conv_core import _ConvolutionCore

__all__ = ["TransposedConvolution2DLayer", "transposed_conv2d_layer"]

CROPPING_MODES = ("manual", "same")


def _cropping(value, prop="cropping"):
    """``(mode, (t, b, l, r))`` from ``c``, ``(a, b)``, ``(t, b, l, r)``, a ``2×2``
    ``[[t, l], [b, r]]`` matrix or ``"same"``."""
    return _padding(value, prop, strings=("same",))


class TransposedConvolution2DLayer(_ConvolutionCore):
    """Transposed 2-D convolution layer (MATLAB ``transposedConv2dLayer``).

    Parameters
    ----------
    filter_size, num_filters, num_channels, bias_initializer, bias,
    weight_learn_rate_factor, bias_learn_rate_factor, weight_l2_factor, bias_l2_factor, name
        As :class:`~fmtarray.layers.Convolution2DLayer`.
    stride
        ``s`` or ``(sh, sw)``, default ``(1, 1)``: the upsampling factor.
    cropping
        ``c`` (every edge), ``(a, b)`` (top/bottom ``a``, left/right ``b``),
        ``(t, b, l, r)``, or ``"same"`` (output = input · stride); sets
        :attr:`cropping_size` and :attr:`cropping_mode`. Default ``0``.
    weights_initializer
        As :class:`~fmtarray.layers.Convolution2DLayer`, with the fans MATLAB defines for
        this layer: ``numIn = h·w·F`` and ``numOut = h·w·C`` (those of the weights array
        ``h × w × F × C``).
    weights
        ``h × w × F × C`` array (MATLAB layout: filters before channels; trailing
        singletons may be dropped) or ``None`` (default).
    """

    _nd = 2
    _type_name = "2-D Transposed Convolution"
    _weights_layout = f"h{_X}w{_X}F{_X}C"
    _filters_first = True
    _weights_note = "; transposed weights put the filters before the channels"
    _edges = ("cropping",)

    def __init__(self, filter_size, num_filters, *, stride=1, cropping=0, num_channels="auto",
                 weights_initializer="glorot", bias_initializer="zeros", weights=None,
                 bias=None, weight_learn_rate_factor=1, bias_learn_rate_factor=1,
                 weight_l2_factor=1, bias_l2_factor=0, name=""):
        self._num_filters = _pos_int(num_filters, "num_filters")
        self._init_common(locals())

    # cropping: what the transposed layer has instead of padding and dilation -----------
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

    # hooks of the core ----------------------------------------------------------------
    def _dispatch(self, fmt):
        return None if _format.conv2d_layer_dims(fmt) == "SS" else "STUC"

    def _resolve(self, sizes):
        if self._cropping_mode == "same":
            crop = "same"
        else:
            t, b, left, r = self._cropping_size
            crop = (t, left), (b, r)
        return transposed_output_size(sizes, self._filter_size, self._stride, (1, 1), crop)

    def _store_geometry(self, fmt, shape):
        if self._cropping_mode == "same":
            _, cb, ca = self._resolve(self._conv_sizes(fmt, shape))
            self._cropping_size = (cb[0], ca[0], cb[1], ca[1])

    def _geometry_str(self, before, after) -> str:
        return (f"filter_size {self._filter_size}, stride {self._stride} and cropping_size "
                f"{(before[0], after[0], before[1], after[1])}")

    def _apply(self, x, wfmt, before, after):
        return transposed_conv(x, self._weights, self._bias, stride=self._stride,
                               cropping=(before, after), weights_format=wfmt)

    # display --------------------------------------------------------------------------
    def description(self) -> str:
        h, w = self._filter_size
        crop = "'same'" if self._cropping_mode == "same" else _vec(self._cropping_size)
        return (f"{self._num_filters} {h}{_X}{w} transposed convolutions with stride "
                f"{_vec(self._stride)} and cropping {crop}")

    _property_names = (
        "name", "filter_size", "num_channels", "num_filters", "stride", "cropping_mode",
        "cropping_size", "weights_initializer", "bias_initializer", "weights", "bias",
        "weight_learn_rate_factor", "bias_learn_rate_factor", "weight_l2_factor",
        "bias_l2_factor", "num_inputs", "input_names", "num_outputs", "output_names",
    )

    def _geometry_rows(self):
        return [("CroppingMode", repr(self._cropping_mode)),
                ("CroppingSize", _vec(self._cropping_size))]


_LEGAL = ("stride", "cropping", "num_channels", "weights_initializer", "bias_initializer",
          "weights", "bias", "weight_learn_rate_factor", "bias_learn_rate_factor",
          "weight_l2_factor", "bias_l2_factor", "name")


def transposed_conv2d_layer(filter_size, num_filters, **properties) -> TransposedConvolution2DLayer:
    """Create a :class:`TransposedConvolution2DLayer` (MATLAB ``transposedConv2dLayer``).

    ``transposed_conv2d_layer(4, 8, stride=2, cropping="same")`` doubles the height and
    width with 8 filters of 4×4. An unknown property is a ``TypeError`` listing them.
    """
    check_properties("transposed_conv2d_layer", properties, _LEGAL)
    return TransposedConvolution2DLayer(filter_size, num_filters, **properties)
