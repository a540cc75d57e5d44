"""``GroupedConvolution2DLayer``: MATLAB's ``groupedConvolution2dLayer``.

The input's ``C`` channels are split into ``num_groups`` groups of
``num_channels_per_group``; each group has its own ``num_filters_per_group`` filters, and
the outputs are the groups' outputs one after the other (``F = num_filters_per_group ·
num_groups`` channels, group-major, as MATLAB and torch order them).
``num_groups="channel-wise"`` makes one group per input channel (depth-wise
convolution), resolved when the layer first sees its input.

It takes the formats of :class:`~fmtarray.layers.Convolution2DLayer` (SPEC §3.2) and
shares its base (:class:`~fmtarray.layers.convolution.ConvolutionLayerBase`): padding,
stride, dilation, padding values, initialisers, factors, display. The arithmetic is
:func:`fmtarray.conv` with ``[h, w, C/g, F/g, g]`` weights.

MATLAB layouts: weights ``h × w × NumChannelsPerGroup × NumFiltersPerGroup ×
NumGroups``, bias ``1 × 1 × NumFiltersPerGroup × NumGroups``.
"""

from __future__ import annotations

import math

from .. import _backend, _format, _tape
from ..array import FormattedArray
from ._conv_props import (
    _X, COMMON_PROPERTIES, _ints, _is_traced, _pos_int, check_properties,
)
from .convolution import Convolution2DLayer, ConvolutionLayerBase

__all__ = ["GroupedConvolution2DLayer", "grouped_conv2d_layer"]


def _num_groups_arg(value):
    if isinstance(value, str):
        if value.lower() != "channel-wise":
            raise ValueError(
                f"num_groups must be a positive integer or 'channel-wise', got {value!r}"
            )
        return None
    return _ints(value, "num_groups", lengths=(1,), low=1,
                 legal="a positive integer or 'channel-wise'")[0]


def _group_major(b):
    """The ``1×1×Fg×G`` bias as the ``F`` vector conv takes (group ``g``'s filters at
    ``g·Fg … g·Fg + Fg - 1``); differentiable."""
    data = b._data if isinstance(b, FormattedArray) else b
    _, _, fg, g = data.shape
    if fg == 1 or g == 1:
        return b  # one non-singleton dim: conv reads it in order
    xp = _backend.namespace(data)
    y = xp.reshape(xp.permute_dims(data, (3, 2, 0, 1)), (fg * g,))
    if not _is_traced(b):
        return y
    out = FormattedArray._wrap(y, "")
    return _tape.record(
        out, (b,),
        lambda gr, needs: (xp.permute_dims(xp.reshape(gr, (g, fg, 1, 1)), (2, 3, 1, 0)),),
        "grouped_bias",
    )


class GroupedConvolution2DLayer(ConvolutionLayerBase):
    """2-D grouped convolutional layer (MATLAB ``groupedConvolution2dLayer``).

    Parameters
    ----------
    filter_size
        ``h`` or ``(h, w)``.
    num_filters_per_group
        Positive integer: filters in each group.
    num_groups
        Positive integer, or ``"channel-wise"`` (one group per input channel; resolved
        by :meth:`initialize`).  The input's channels must be a multiple of it.
    stride, dilation_factor, padding, padding_value, weights_initializer,
    bias_initializer, weight_learn_rate_factor, bias_learn_rate_factor,
    weight_l2_factor, bias_l2_factor, name
        As :class:`~fmtarray.layers.Convolution2DLayer`; the initialisers use
        ``numIn = h·w·NumChannelsPerGroup`` and ``numOut = h·w·NumFiltersPerGroup``.
    weights
        ``h × w × Cg × Fg × G`` (MATLAB layout; a trailing singleton ``G = 1`` may be
        dropped) or ``None``.  Given weights fix ``num_channels_per_group`` and
        ``num_groups``.
    bias
        ``1 × 1 × Fg × G`` array or ``None``.
    """

    _nd = 2
    _type_name = "2-D Grouped Convolution"
    _pad_form = "(t, b, l, r)"
    _weights_layout = f"h{_X}w{_X}Cg{_X}Fg{_X}G"
    default_name = "groupconv"

    def __init__(self, filter_size, num_filters_per_group, num_groups, *, stride=1,
                 dilation_factor=1, padding=0, padding_value=0, weights_initializer="glorot",
                 bias_initializer="zeros", weights=None, bias=None, weight_learn_rate_factor=1,
                 bias_learn_rate_factor=1, weight_l2_factor=1, bias_l2_factor=0, name=""):
        self._fg = _pos_int(num_filters_per_group, "num_filters_per_group")
        self._groups = _num_groups_arg(num_groups)  # None: channel-wise, unresolved
        self._channel_wise = self._groups is None
        self._cg = "auto"
        self._init_common(locals())

    # the 2-D layer's padding forms (SPEC §3.3) and PaddingSize [t b l r]
    _parse_padding = Convolution2DLayer._parse_padding
    _pad_public = Convolution2DLayer._pad_public

    @property
    def num_filters_per_group(self) -> int:
        """Filters per group; read-only."""
        return self._fg

    @property
    def num_groups(self):
        """The number of groups, or ``"channel-wise"`` until the input resolves it;
        read-only."""
        return "channel-wise" if self._groups is None else self._groups

    @property
    def num_channels_per_group(self):
        """``"auto"`` until resolved, else input channels per group; read-only."""
        return self._cg

    @property
    def num_filters(self):
        """All the filters, ``num_filters_per_group · num_groups`` (the output channels),
        or ``None`` while ``num_groups`` is unresolved; read-only."""
        return None if self._groups is None else self._fg * self._groups

    @property
    def num_channels(self):
        """``"auto"`` until resolved, else the input channels
        (``num_channels_per_group · num_groups``); read-only."""
        return "auto" if self._cg == "auto" or self._groups is None else self._cg * self._groups

    @property
    def num_parameters(self):
        if self._cg == "auto" or self._groups is None:
            return None
        return (math.prod(self._filter_size) * self._cg + 1) * self._fg * self._groups

    # learnables: h × w × Cg × Fg × G weights (a trailing G = 1 may be dropped) and
    # 1 × 1 × Fg × G bias -------------------------------------------------------------------
    def _weights_spec(self):
        groups = ("G", "_groups", "num_groups", "groups")
        return dict(dims=self._filter_size + (("Cg", "_cg"), self._fg, groups), least=2,
                    layout=self._weights_layout,
                    what=f"filter_size {self._filter_size}, num_filters_per_group {self._fg}")

    def _bias_spec(self):
        known = self._groups is not None  # else the bias sets num_groups: four dims
        return dict(dims=(1, 1, self._fg, self._groups if known else ("G", "_groups")),
                    least=3 if known else 4,
                    what=f"num_filters_per_group {self._fg}, num_groups {self.num_groups}")

    # hooks of ConvolutionLayerBase ------------------------------------------------------
    def _check_channels(self, c, fmt, shape):
        g = self._groups
        if g is not None and c % g:
            raise ValueError(
                f"num_groups is {g} but the input (format {fmt!r}, shape {tuple(shape)}) has {c} "
                f"channels, not a multiple of {g}"
            )
        if self._cg != "auto" and g is not None and c != self._cg * g:
            raise ValueError(
                f"the weights take {self._cg} channels per group x {g} groups = {self._cg * g} "
                f"channels but the input (format {fmt!r}, shape {tuple(shape)}) has {c}"
            )

    def _resolve_channels(self, c):
        if self._groups is None:
            self._groups = c
        self._cg = c // self._groups

    def _weights_shape(self, c):
        g = self._groups if self._groups is not None else c
        return self._filter_size + (c // g, self._fg, g)

    def _fans(self, c):
        k = math.prod(self._filter_size)
        g = self._groups if self._groups is not None else c
        return k * (c // g), k * self._fg

    def _weights_channels(self):
        return self._weights.shape[2] * self._weights.shape[4]

    def _check_input(self, c, fmt, shape):
        if self._weights_channels() != c:
            self._check_channels(c, fmt, shape)
            raise ValueError(  # reached when the weights were set after initialisation
                f"layer {self._name!r}: the weights of shape {tuple(self._weights.shape)} take "
                f"{self._weights_channels()} channels but the input (format {fmt!r}, shape "
                f"{shape}) has {c}"
            )

    def _conv_bias(self):
        return _group_major(self._bias)

    def _dispatch(self, fmt):
        return None if _format.conv2d_layer_dims(fmt) == "SS" else "STCUU"

    # display ------------------------------------------------------------------------------
    def description(self) -> str:
        h, w = self._filter_size
        if self._channel_wise:
            what = f"channel-wise {h}{_X}{w} convolutions ({self._fg} per channel)"
        else:
            g = self.num_groups
            what = f"{g} group{'s' if g != 1 else ''} of {self._fg} {h}{_X}{w} convolutions"
        dil = ("" if self._dilation_factor == (1, 1)
               else f", dilation factor {self._vec_str(self._dilation_factor)}")
        return (f"{what} with stride "
                f"{self._vec_str(self._stride)}{dil} and padding {self._pad_str()}")

    _property_names = (
        "name", "filter_size", "num_groups", "num_channels_per_group", "num_filters_per_group",
        "stride", "dilation_factor", "padding_mode", "padding_size", "padding_value",
        "weights_initializer", "bias_initializer", "weights", "bias",
        "weight_learn_rate_factor", "bias_learn_rate_factor", "weight_l2_factor",
        "bias_l2_factor", "num_inputs", "input_names", "num_outputs", "output_names",
    )

    def _channel_rows(self):
        g = "'channel-wise'" if self._groups is None else str(self._groups)
        cg = "'auto'" if self._cg == "auto" else str(self._cg)
        return [("NumGroups", g), ("NumChannelsPerGroup", cg),
                ("NumFiltersPerGroup", str(self._fg))]


_LEGAL = COMMON_PROPERTIES


def grouped_conv2d_layer(filter_size, num_filters_per_group, num_groups,
                         **properties) -> GroupedConvolution2DLayer:
    """Create a :class:`GroupedConvolution2DLayer` (MATLAB ``groupedConvolution2dLayer``).

    ``grouped_conv2d_layer(3, 1, "channel-wise", padding="same")`` is a depth-wise
    3×3 convolution; ``properties`` are the layer's keyword arguments (an unknown one
    is a ``TypeError`` listing them).
    """
    check_properties("grouped_conv2d_layer", properties, _LEGAL)
    return GroupedConvolution2DLayer(filter_size, num_filters_per_group, num_groups,
                                     **properties)
