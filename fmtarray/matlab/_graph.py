"""MATLAB names for layer graphs: dlnetwork editing (addLayers, connectLayers, ...) and the
combination layers (additionLayer, multiplicationLayer, concatenationLayer,
depthConcatenationLayer, flattenLayer).

The editing functions change the network in place and return it, so MATLAB's
``net = addLayers(net, layers)`` works as written.
"""

from __future__ import annotations

from ..layers.combination import (
    AdditionLayer, ConcatenationLayer, DepthConcatenationLayer, MultiplicationLayer,
)
from ..layers.flatten import FlattenLayer
from ._common import _make

__all__ = [
    "addLayers", "connectLayers", "disconnectLayers", "removeLayers", "replaceLayer",
    "additionLayer", "multiplicationLayer", "concatenationLayer", "depthConcatenationLayer",
    "flattenLayer",
]

_NAME = {"Name": "name"}


def _net(func, net):
    from ..network import Network

    if not isinstance(net, Network):
        raise TypeError(
            f"{func}: net must be a dlnetwork (fmtarray.Network), got {type(net).__name__}; "
            "make one with dlnetwork(layers) or dlnetwork() for an empty one"
        )
    return net


def addLayers(net, layers):  # noqa: N802
    """MATLAB ``net = addLayers(net, layers)``: :meth:`fmtarray.Network.add_layers`."""
    return _net("addLayers", net).add_layers(layers)


def connectLayers(net, s, d):  # noqa: N802
    """MATLAB ``net = connectLayers(net, s, d)`` (``"relu_1"``, ``"add/in2"``)."""
    return _net("connectLayers", net).connect_layers(s, d)


def disconnectLayers(net, s, d):  # noqa: N802
    """MATLAB ``net = disconnectLayers(net, s, d)``."""
    return _net("disconnectLayers", net).disconnect_layers(s, d)


def removeLayers(net, layerNames):  # noqa: N802, N803
    """MATLAB ``net = removeLayers(net, layerNames)`` (a name or a list of names)."""
    return _net("removeLayers", net).remove_layers(layerNames)


def replaceLayer(net, layerName, larray):  # noqa: N802, N803
    """MATLAB ``net = replaceLayer(net, layerName, larray)`` (one layer or a chain)."""
    return _net("replaceLayer", net).replace_layer(layerName, larray)


def additionLayer(numInputs, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``additionLayer(numInputs, Name=...)``: :class:`~fmtarray.layers.AdditionLayer`."""
    return _make("additionLayer", AdditionLayer, args, kwargs, _NAME, numInputs,
                 pos_table={"NumInputs": "num_inputs"})


def multiplicationLayer(numInputs, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``multiplicationLayer(numInputs, Name=...)``."""
    return _make("multiplicationLayer", MultiplicationLayer, args, kwargs, _NAME, numInputs,
                 pos_table={"NumInputs": "num_inputs"})


def concatenationLayer(dim, numInputs, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``concatenationLayer(dim, numInputs, Name=...)``: ``dim`` is MATLAB's dim
    number (3 is ``C`` of ``SSCB``) or a label."""
    return _make("concatenationLayer", ConcatenationLayer, args, kwargs, _NAME, dim, numInputs,
                 pos_table={"Dim": "dim", "NumInputs": "num_inputs"})


def depthConcatenationLayer(numInputs, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``depthConcatenationLayer(numInputs, Name=...)`` (joins along ``C``)."""
    return _make("depthConcatenationLayer", DepthConcatenationLayer, args, kwargs, _NAME,
                 numInputs, pos_table={"NumInputs": "num_inputs"})


def flattenLayer(*args, **kwargs):  # noqa: N802
    """MATLAB ``flattenLayer(Name=...)``: :class:`~fmtarray.layers.FlattenLayer`."""
    return _make("flattenLayer", FlattenLayer, args, kwargs, _NAME)
