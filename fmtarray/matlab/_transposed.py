"""MATLAB names for transposed convolution: dltranspconv and transposedConv2dLayer."""

from __future__ import annotations

from ..layers.transposed_convolution import TransposedConvolution2DLayer
from ..ops.transposed_conv import transposed_conv
from ._common import _make, _options, _reraise, conv_layer_options

__all__ = ["dltranspconv", "transposedConv2dLayer"]

_DLTRANSPCONV_OPTIONS = {
    "Stride": "stride",
    "DilationFactor": "dilation_factor",
    "Cropping": "cropping",
    "WeightsFormat": "weights_format",
    "DataFormat": "data_format",
}


def dltranspconv(X, weights, bias, *args, **kwargs):
    """MATLAB ``dltranspconv(X, weights, bias, Name=Value...)``: :func:`fmtarray.transposed_conv`.

    ``weights`` in MATLAB's layout ``filterSize × numFilters × numChannels`` (grouped:
    ``filterSize × numFiltersPerGroup × numChannelsPerGroup × numGroups``). Options:
    ``Stride``, ``DilationFactor``, ``Cropping`` (a number, one per dim, ``[t b l r]``,
    a ``2×d`` ``[before; after]`` matrix or ``"same"``), ``WeightsFormat``,
    ``DataFormat``.
    """
    opts = _options("dltranspconv", args, kwargs, _DLTRANSPCONV_OPTIONS)
    try:
        return transposed_conv(X, weights, bias, **opts)
    except (TypeError, ValueError) as e:
        _reraise("dltranspconv", e, _DLTRANSPCONV_OPTIONS)


_LAYER_OPTIONS = conv_layer_options("Cropping", "NumChannels")


def transposedConv2dLayer(filterSize, numFilters, *args, **kwargs):  # noqa: N802
    """MATLAB ``transposedConv2dLayer(filterSize, numFilters, Name=Value...)``.

    Options (``Name=Value`` or positional pairs, case-insensitive): ``Stride``,
    ``Cropping`` (a number, ``[a b]``, ``[t b l r]`` or ``"same"``), ``NumChannels``,
    ``WeightsInitializer``, ``BiasInitializer``, ``Weights`` (``h×w×F×C``), ``Bias``
    (``1×1×F``), ``WeightLearnRateFactor``, ``BiasLearnRateFactor``, ``WeightL2Factor``,
    ``BiasL2Factor``, ``Name``. Returns a
    :class:`fmtarray.layers.TransposedConvolution2DLayer`.
    """
    return _make("transposedConv2dLayer", TransposedConvolution2DLayer, args, kwargs,
                 _LAYER_OPTIONS, filterSize, numFilters,
                 pos_table={"FilterSize": "filter_size", "NumFilters": "num_filters"})
