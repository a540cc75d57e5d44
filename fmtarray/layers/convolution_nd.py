"""1-D and 3-D convolution layers: MATLAB's ``convolution1dLayer`` and
``convolution3dLayer``, thin subclasses of
:class:`~fmtarray.layers.convolution.ConvolutionLayerBase` (properties, initialisers,
factors and display as :class:`~fmtarray.layers.Convolution2DLayer`).

Which dims they convolve, by input format (a missing ``C`` is one channel, and the
output then gains a ``C`` dim):

==================================================  =================  ===============
input                                               convolved dims     weights format
==================================================  =================  ===============
1-D: ``SCB``, ``SC``, ``SB``, ``SCBT``, ``SCT``,    ``S`` (``T`` is    ``k×C×F``
``SBT``                                             batch-like)
1-D: ``CBT``, ``CT``, ``BT``                        ``T``              ``k×C×F``
3-D: ``SSSCB``, ``SSSC``, ``SSSB``, ``SSSCBT``,     ``S``, ``S``,      ``h×w×d×C×F``
``SSSCT``, ``SSSBT``                                ``S``
3-D: ``SSCBT``, ``SSCT``, ``SSBT``                  ``S``, ``S``,      ``h×w×d×C×F``
                                                    ``T``
==================================================  =================  ===============

As in MATLAB, 1-D image sequences (``SCBT``) are convolved over ``S``, and 2-D image
sequences (``SSCBT``) by a 3-D layer over ``S``, ``S`` and ``T``.
"""

from __future__ import annotations

from ._conv_props import _X, COMMON_PROPERTIES, check_properties
from .convolution import ConvolutionLayerBase

__all__ = ["Convolution1DLayer", "Convolution3DLayer", "convolution1d_layer",
           "convolution3d_layer"]

_FORMATS_1D = {
    "SCB": None, "SC": None, "SB": None, "SCBT": None, "SCT": None, "SBT": None,
    "CBT": "TCU", "CT": "TCU", "BT": "TCU",
}
_FORMATS_3D = {
    "SSSCB": None, "SSSC": None, "SSSB": None, "SSSCBT": None, "SSSCT": None, "SSSBT": None,
    "SSCBT": "SSTCU", "SSCT": "SSTCU", "SSBT": "SSTCU",
}


def _dispatch(table, kind, fmt):
    try:
        return table[fmt]
    except KeyError:
        shown = fmt if fmt else "'' (unformatted)"
        raise ValueError(
            f"a {kind} convolution layer cannot take input of format {shown!r}; accepted formats "
            "are " + ", ".join(table)
        ) from None


class Convolution1DLayer(ConvolutionLayerBase):
    """1-D convolutional layer (MATLAB ``convolution1dLayer``).

    Convolves over the one ``S`` or ``T`` dim the format offers (see the module
    docstring): ``SCB`` over ``S``, ``CBT`` over ``T``, ``SCBT`` over ``S``.

    Parameters
    ----------
    filter_size
        Positive integer ``k``.
    num_filters
        Positive integer: the number of output channels.
    stride, dilation_factor
        Positive integers, default 1.
    padding
        ``p`` (both sides), ``(left, right)``, ``"same"`` (output ``ceil(n / stride)``,
        the odd element on the right) or ``"causal"`` (``(k - 1) · dilation_factor`` on
        the left, none on the right: output ``t`` sees inputs ``<= t`` only).
        Stored as :attr:`padding_size` ``(left, right)`` and :attr:`padding_mode`
        (``"manual"``, ``"same"`` or ``"causal"``).  Default ``0``.
    padding_value
        A number (default ``0``), ``"symmetric-include-edge"``,
        ``"symmetric-exclude-edge"`` or ``"replicate"``.
    num_channels
        ``"auto"`` (default) or a positive integer.
    weights
        ``k × C × F`` array (MATLAB layout; a trailing singleton may be dropped) or
        ``None`` to initialise.
    bias
        ``1 × F`` or ``F`` array, or ``None``.
    weights_initializer, bias_initializer, weight_learn_rate_factor,
    bias_learn_rate_factor, weight_l2_factor, bias_l2_factor, name
        As :class:`~fmtarray.layers.Convolution2DLayer` (``numIn = k·C``,
        ``numOut = k·F``).
    """

    _nd = 1
    _fs_names = "(k,)"
    _stride_names = "(s,)"
    _weights_layout = f"k{_X}C{_X}F"
    _pad_strings = ("same", "causal", "valid")
    _pad_form = "(left, right)"
    _type_name = "1-D Convolution"
    default_name = "conv1d"

    def _dispatch(self, fmt):
        return _dispatch(_FORMATS_1D, "1-D", fmt)


class Convolution3DLayer(ConvolutionLayerBase):
    """3-D convolutional layer (MATLAB ``convolution3dLayer``).

    Convolves ``SSSCB`` input over its three ``S`` dims and ``SSCBT`` input over
    ``S``, ``S`` and ``T`` (see the module docstring).

    Parameters
    ----------
    filter_size
        ``k`` (cube) or ``(h, w, d)``.
    num_filters
        Positive integer: the number of output channels.
    stride, dilation_factor
        ``s`` or ``(a, b, c)`` / ``(h, w, d)``; default 1.
    padding
        ``p`` (every edge), ``(a, b, c)`` (both sides of each dim), six values
        ``(t, b, l, r, f, k)`` (before/after per dim), MATLAB's ``2×3`` matrix
        ``[[t, l, f], [b, r, k]]`` (top, left, front; bottom, right, back) or
        ``"same"``.  Stored as :attr:`padding_size`, the ``2×3`` matrix
        ``((t, l, f), (b, r, k))``, and :attr:`padding_mode`.
    padding_value, num_channels, weights_initializer, bias_initializer, factors, name
        As :class:`~fmtarray.layers.Convolution2DLayer` (``numIn = h·w·d·C``,
        ``numOut = h·w·d·F``).
    weights
        ``h × w × d × C × F`` array (MATLAB layout) or ``None``.
    bias
        ``1 × 1 × 1 × F`` or ``F`` array, or ``None``.
    """

    _nd = 3
    _fs_names = "(h, w, d)"
    _stride_names = "(a, b, c)"
    _weights_layout = f"h{_X}w{_X}d{_X}C{_X}F"
    _pad_form = "[[t, l, f], [b, r, k]]"
    _type_name = "3-D Convolution"
    default_name = "conv3d"

    def _pad_public(self, before, after):
        return tuple(before), tuple(after)

    def _dispatch(self, fmt):
        return _dispatch(_FORMATS_3D, "3-D", fmt)


_LEGAL = COMMON_PROPERTIES[:4] + ("num_channels",) + COMMON_PROPERTIES[4:]


def convolution1d_layer(filter_size, num_filters, **properties) -> Convolution1DLayer:
    """Create a :class:`Convolution1DLayer` (MATLAB ``convolution1dLayer``);
    ``properties`` are its keyword arguments (an unknown one is a ``TypeError``)."""
    check_properties("convolution1d_layer", properties, _LEGAL)
    return Convolution1DLayer(filter_size, num_filters, **properties)


def convolution3d_layer(filter_size, num_filters, **properties) -> Convolution3DLayer:
    """Create a :class:`Convolution3DLayer` (MATLAB ``convolution3dLayer``);
    ``properties`` are its keyword arguments (an unknown one is a ``TypeError``)."""
    check_properties("convolution3d_layer", properties, _LEGAL)
    return Convolution3DLayer(filter_size, num_filters, **properties)
