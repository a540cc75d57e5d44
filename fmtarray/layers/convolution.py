"""Convolution layers: the forward layers' base (:class:`ConvolutionLayerBase`) and
``Convolution2DLayer``, MATLAB's ``convolution2dLayer`` (SPEC §3.2–§3.5).

The base adds dilation and padding (its size, mode and value) to what every MATLAB
convolution layer has (:class:`~fmtarray.layers._conv_core._ConvolutionCore`: filter
size, stride, initialisers, learn-rate and L2 factors, ``weights``/``bias`` in MATLAB's
layout, the display) for ``_nd`` convolved dims; a subclass says which formats
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

from .. import _format, _validate
from ..ops.convolution import conv, resolve_padding
from ._conv_core import _ConvolutionCore
from ._conv_props import (
    PADDING_VALUE_MODES, _padding, _padding_value, _pos_int, COMMON_PROPERTIES,
    check_properties, sizes_property,
)

__all__ = ["ConvolutionLayerBase", "Convolution2DLayer", "convolution2d_layer",
           "PADDING_VALUE_MODES"]

class ConvolutionLayerBase(_ConvolutionCore):
    """What MATLAB's (forward) convolution layers share: the core plus dilation and
    padding (its size, mode and value), for ``_nd`` convolved dims.

    Subclasses set the class attributes and implement :meth:`_dispatch` (format ->
    weights format, or a ``ValueError``). The constructor is the plain layers'
    (``filter_size, num_filters``, ``num_channels``; see :class:`Convolution2DLayer`);
    the grouped layer has its own and overrides the weights/bias layout hooks. Not a
    layer by itself.
    """

    _pad_strings = ("same", "valid")
    _edges = ("dilation_factor", "padding", "padding_value")

    def __init__(self, filter_size, num_filters, *, stride=1, dilation_factor=1, padding=0,
                 padding_value=0, num_channels="auto", weights_initializer="glorot",
                 bias_initializer="zeros", weights=None, bias=None, weight_learn_rate_factor=1,
                 bias_learn_rate_factor=1, weight_l2_factor=1, bias_l2_factor=0, name=""):
        self._num_filters = _pos_int(num_filters, "num_filters")
        self._init_common(locals())

    dilation_factor = sizes_property("dilation_factor", "_fs_names",
                                     "The dilation per convolved dim; a scalar sets every dim.")

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

    # geometry -----------------------------------------------------------------------
    def _padding_arg(self):
        if self._padding_mode != "manual":
            return self._padding_mode
        return self._before, self._after

    def _pads(self, sizes):
        """MATLAB's ``PaddingSize`` for convolved input sizes ``sizes``."""
        _, before, after = self._resolve(sizes)
        return self._pad_public(before, after)

    def _resolve(self, sizes):
        return resolve_padding(sizes, self._filter_size, self._stride, self._dilation_factor,
                               self._padding_arg())

    def _store_geometry(self, fmt, shape):
        if self._padding_mode != "manual":
            _, self._before, self._after = self._resolve(self._conv_sizes(fmt, shape))

    def _geometry_str(self, before, after) -> str:
        return (f"filter_size {self._pub(self._filter_size)} with dilation_factor "
                f"{self._pub(self._dilation_factor)}, stride {self._pub(self._stride)} and "
                f"padding_size {self._pad_public(before, after)}")

    def _apply(self, x, wfmt, before, after):
        return conv(x, self._conv_weights(), self._conv_bias(), stride=self._stride,
                    dilation_factor=self._dilation_factor, padding=(before, after),
                    padding_value=self._padding_value, weights_format=wfmt)


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
