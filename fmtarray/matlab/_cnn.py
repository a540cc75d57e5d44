"""MATLAB names for the CNN layer family: grouped, 1-D and 3-D convolution, dropout,
leaky ReLU, global average pooling (and the ``leakyrelu`` function).

Each takes MATLAB's positional arguments and ``Name, Value`` options (as pairs or as
keywords, names case-insensitive) and returns the layer of :mod:`fmtarray.layers`.
"""

from __future__ import annotations

import numbers

from ..layers.activation import LeakyReLULayer
from ..layers.convolution_nd import Convolution1DLayer, Convolution3DLayer
from ..layers.dropout import DropoutLayer
from ..layers.grouped_convolution import GroupedConvolution2DLayer
from ..layers.pooling import GlobalAveragePooling2DLayer
from ..ops.elementwise import leaky_relu
from ._common import _make, conv_layer_options

__all__ = [
    "groupedConvolution2dLayer", "convolution1dLayer", "convolution3dLayer", "dropoutLayer",
    "leakyReluLayer", "globalAveragePooling2dLayer", "leakyrelu",
]

_CONV_OPTIONS = conv_layer_options("DilationFactor", "Padding", "PaddingValue")
_CONV_ND_OPTIONS = conv_layer_options("DilationFactor", "Padding", "PaddingValue",
                                      "NumChannels")
_CONV_POS = {"FilterSize": "filter_size", "NumFilters": "num_filters"}


def groupedConvolution2dLayer(filterSize, numFiltersPerGroup, numGroups, *args,  # noqa: N802, N803
                              **kwargs) -> GroupedConvolution2DLayer:
    """MATLAB ``groupedConvolution2dLayer(filterSize, numFiltersPerGroup, numGroups,
    Name=Value...)``: a :class:`fmtarray.layers.GroupedConvolution2DLayer`.

    ``numGroups``: a positive integer or ``"channel-wise"``. Options: ``Stride``,
    ``DilationFactor``, ``Padding``, ``PaddingValue``, ``WeightsInitializer``,
    ``BiasInitializer``, ``Weights`` (``h×w×C/g×F/g×g``), ``Bias`` (``1×1×F/g×g``),
    ``WeightLearnRateFactor``, ``BiasLearnRateFactor``, ``WeightL2Factor``,
    ``BiasL2Factor``, ``Name``.
    """
    return _make("groupedConvolution2dLayer", GroupedConvolution2DLayer, args, kwargs,
                 _CONV_OPTIONS, filterSize, numFiltersPerGroup, numGroups,
                 pos_table={"FilterSize": "filter_size",
                            "NumFiltersPerGroup": "num_filters_per_group",
                            "NumGroups": "num_groups"})


def convolution1dLayer(filterSize, numFilters, *args, **kwargs) -> Convolution1DLayer:  # noqa: N802, N803
    """MATLAB ``convolution1dLayer(filterSize, numFilters, Name=Value...)``: a
    :class:`fmtarray.layers.Convolution1DLayer`. Options as
    :func:`groupedConvolution2dLayer` plus ``NumChannels``; ``Padding`` also takes
    ``"causal"``; ``Weights`` are ``filterSize×C×numFilters``, ``Bias`` ``1×numFilters``."""
    return _make("convolution1dLayer", Convolution1DLayer, args, kwargs, _CONV_ND_OPTIONS,
                 filterSize, numFilters, pos_table=_CONV_POS)


def convolution3dLayer(filterSize, numFilters, *args, **kwargs) -> Convolution3DLayer:  # noqa: N802, N803
    """MATLAB ``convolution3dLayer(filterSize, numFilters, Name=Value...)``: a
    :class:`fmtarray.layers.Convolution3DLayer`. Options as :func:`convolution1dLayer`
    (``Padding``: ``p``, ``[a b c]``, the ``2×3`` matrix ``[t l f; b r k]`` or
    ``"same"``); ``Weights`` are ``h×w×d×C×F``, ``Bias`` ``1×1×1×F``."""
    return _make("convolution3dLayer", Convolution3DLayer, args, kwargs, _CONV_ND_OPTIONS,
                 filterSize, numFilters, pos_table=_CONV_POS)


def _leading_number(args):
    """MATLAB's optional first positional argument (a number before the pairs)."""
    if args and isinstance(args[0], numbers.Real) and not isinstance(args[0], bool):
        return (args[0],), args[1:]
    return (), args


def dropoutLayer(*args, **kwargs) -> DropoutLayer:  # noqa: N802
    """MATLAB ``dropoutLayer`` / ``dropoutLayer(probability, Name=...)``: a
    :class:`fmtarray.layers.DropoutLayer` (``Probability`` default 0.5). Options:
    ``Name``, and the fmtarray extension ``Seed`` (MATLAB uses ``rng``)."""
    pos, rest = _leading_number(args)
    return _make("dropoutLayer", DropoutLayer, rest, kwargs, {"Name": "name", "Seed": "seed"},
                 *pos, pos_table={"Probability": "probability"})


def leakyReluLayer(*args, **kwargs) -> LeakyReLULayer:  # noqa: N802
    """MATLAB ``leakyReluLayer`` / ``leakyReluLayer(scale, Name=...)``: a
    :class:`fmtarray.layers.LeakyReLULayer` (``Scale`` default 0.01)."""
    pos, rest = _leading_number(args)
    return _make("leakyReluLayer", LeakyReLULayer, rest, kwargs, {"Name": "name"}, *pos,
                 pos_table={"Scale": "scale"})


def globalAveragePooling2dLayer(*args, **kwargs) -> GlobalAveragePooling2DLayer:  # noqa: N802
    """MATLAB ``globalAveragePooling2dLayer(Name=...)``: a
    :class:`fmtarray.layers.GlobalAveragePooling2DLayer`."""
    return _make("globalAveragePooling2dLayer", GlobalAveragePooling2DLayer, args, kwargs,
                 {"Name": "name"})


def leakyrelu(X, scaleFactor=0.01):  # noqa: N803
    """MATLAB ``Y = leakyrelu(X, scaleFactor)``: :func:`fmtarray.leaky_relu`."""
    return leaky_relu(X, scaleFactor)
