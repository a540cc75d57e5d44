"""The original MATLAB names: data (``dlarray`` and its accessors), ``dlconv``, the
layers of the seed's layer array, ``dlnetwork`` and training."""


from __future__ import annotations

from ..array import FormattedArray, dims, extractdata, finddim, stripdims
from ..layers.convolution import Convolution2DLayer
from ..ops.convolution import conv
from ._common import LEARNABLE_OPTIONS, _make, _options, _reraise, conv_layer_options

__all__ = [
    # data
    "dlarray", "dims", "finddim", "stripdims", "extractdata",
    # functions
    "dlconv",
    # layers
    "convolution2dLayer",
    "imageInputLayer", "reluLayer", "softmaxLayer", "maxPooling2dLayer", "averagePooling2dLayer",
    "fullyConnectedLayer", "batchNormalizationLayer", "dlnetwork",
    # training
    "trainingOptions", "trainnet", "trainNetwork",
]


# data ---------------------------------------------------------------------------------


def dlarray(X, fmt: str = "") -> FormattedArray:
    """MATLAB ``dlarray(X)`` / ``dlarray(X, fmt)``: a :class:`fmtarray.FormattedArray`."""
    return FormattedArray(X, fmt)


# ``dims``, ``finddim``, ``stripdims`` and ``extractdata`` are imported above under their
# MATLAB names (they are the same functions).


# functions ----------------------------------------------------------------------------

_DLCONV_OPTIONS = {
    "Stride": "stride",
    "DilationFactor": "dilation_factor",
    "Padding": "padding",
    "PaddingValue": "padding_value",
    "WeightsFormat": "weights_format",
    "DataFormat": "data_format",
}


def dlconv(X, weights, bias, *args, **kwargs):
    """MATLAB ``dlconv(X, weights, bias, Name=Value...)``: :func:`fmtarray.conv`.

    Options: ``Stride``, ``DilationFactor``, ``Padding`` (also MATLAB's ``2×d``
    ``[before; after]`` matrix), ``PaddingValue``, ``WeightsFormat``, ``DataFormat``.
    """
    opts = _options("dlconv", args, kwargs, _DLCONV_OPTIONS)
    try:  # the arguments are checked by fa.conv's normalisers (fmtarray._validate)
        return conv(X, weights, bias, **opts)
    except (TypeError, ValueError) as e:
        _reraise("dlconv", e, _DLCONV_OPTIONS)


# layers -------------------------------------------------------------------------------

_CONV2D_OPTIONS = conv_layer_options("DilationFactor", "Padding", "PaddingValue",
                                     "NumChannels")


def convolution2dLayer(filterSize, numFilters, *args, **kwargs) -> Convolution2DLayer:  # noqa: N802
    """MATLAB ``convolution2dLayer(filterSize, numFilters, Name=Value...)``.

    Accepts ``Name=Value`` keywords or MATLAB's positional ``"Name", Value`` pairs
    (names case-insensitive): ``Stride``, ``DilationFactor``, ``Padding``,
    ``PaddingValue``, ``NumChannels``, ``WeightsInitializer``, ``BiasInitializer``,
    ``Weights``, ``Bias``, ``WeightLearnRateFactor``, ``BiasLearnRateFactor``,
    ``WeightL2Factor``, ``BiasL2Factor``, ``Name``.  Returns a
    :class:`fmtarray.layers.Convolution2DLayer`.
    """
    return _make("convolution2dLayer", Convolution2DLayer, args, kwargs, _CONV2D_OPTIONS,
                 filterSize, numFilters,
                 pos_table={"FilterSize": "filter_size", "NumFilters": "num_filters"})


# layers: input, activation, pooling, fully connected, normalisation; networks ----------

_IMAGE_INPUT_OPTIONS = {
    "Normalization": "normalization",
    "NormalizationDimension": "normalization_dimension",
    "Mean": "mean",
    "StandardDeviation": "standard_deviation",
    "Min": "min",
    "Max": "max",
    "Name": "name",
}
_NAME_ONLY = {"Name": "name"}
_POOL_OPTIONS = {"Stride": "stride", "Padding": "padding", "Name": "name"}
_AVG_POOL_OPTIONS = {**_POOL_OPTIONS, "PaddingValue": "padding_value"}
_FC_OPTIONS = {"InputSize": "input_size", **LEARNABLE_OPTIONS}
_BN_OPTIONS = {
    "NumChannels": "num_channels",
    "Epsilon": "epsilon",
    "MeanDecay": "mean_decay",
    "VarianceDecay": "variance_decay",
    "Offset": "offset",
    "Scale": "scale",
    "TrainedMean": "trained_mean",
    "TrainedVariance": "trained_variance",
    "OffsetInitializer": "offset_initializer",
    "ScaleInitializer": "scale_initializer",
    "OffsetLearnRateFactor": "offset_learn_rate_factor",
    "ScaleLearnRateFactor": "scale_learn_rate_factor",
    "OffsetL2Factor": "offset_l2_factor",
    "ScaleL2Factor": "scale_l2_factor",
    "Name": "name",
}


def imageInputLayer(inputSize, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``imageInputLayer(inputSize, Name=Value...)``: an
    :class:`fmtarray.layers.ImageInputLayer`. Options: ``Normalization``,
    ``NormalizationDimension``, ``Mean``, ``StandardDeviation``, ``Min``, ``Max``, ``Name``."""
    from ..layers.input import ImageInputLayer

    return _make("imageInputLayer", ImageInputLayer, args, kwargs, _IMAGE_INPUT_OPTIONS, inputSize,
                 pos_table={"InputSize": "input_size"})


def reluLayer(*args, **kwargs):  # noqa: N802
    """MATLAB ``reluLayer(Name=...)``: a :class:`fmtarray.layers.ReLULayer`."""
    from ..layers.activation import ReLULayer

    return _make("reluLayer", ReLULayer, args, kwargs, _NAME_ONLY)


def softmaxLayer(*args, **kwargs):  # noqa: N802
    """MATLAB ``softmaxLayer(Name=...)``: a :class:`fmtarray.layers.SoftmaxLayer`."""
    from ..layers.activation import SoftmaxLayer

    return _make("softmaxLayer", SoftmaxLayer, args, kwargs, _NAME_ONLY)


def maxPooling2dLayer(poolSize, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``maxPooling2dLayer(poolSize, Name=Value...)``: a
    :class:`fmtarray.layers.MaxPooling2DLayer`. Options: ``Stride`` (default 1),
    ``Padding`` (``p``, ``[a b]``, ``[t b l r]`` or ``"same"``), ``Name``."""
    from ..layers.pooling import MaxPooling2DLayer

    return _make("maxPooling2dLayer", MaxPooling2DLayer, args, kwargs, _POOL_OPTIONS, poolSize,
                 pos_table={"PoolSize": "pool_size"})


def averagePooling2dLayer(poolSize, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``averagePooling2dLayer(poolSize, Name=Value...)``: a
    :class:`fmtarray.layers.AveragePooling2DLayer`. Options: ``Stride``, ``Padding``,
    ``PaddingValue`` (``0`` or ``"mean"``), ``Name``."""
    from ..layers.pooling import AveragePooling2DLayer

    return _make("averagePooling2dLayer", AveragePooling2DLayer, args, kwargs, _AVG_POOL_OPTIONS,
                 poolSize, pos_table={"PoolSize": "pool_size"})


def fullyConnectedLayer(outputSize, *args, **kwargs):  # noqa: N802, N803
    """MATLAB ``fullyConnectedLayer(outputSize, Name=Value...)``: a
    :class:`fmtarray.layers.FullyConnectedLayer`. Options: ``InputSize``,
    ``WeightsInitializer``, ``BiasInitializer``, ``Weights`` (``outputSize×inputSize``),
    ``Bias``, ``WeightLearnRateFactor``, ``BiasLearnRateFactor``, ``WeightL2Factor``,
    ``BiasL2Factor``, ``Name``."""
    from ..layers.fully_connected import FullyConnectedLayer

    return _make("fullyConnectedLayer", FullyConnectedLayer, args, kwargs, _FC_OPTIONS,
                 outputSize, pos_table={"OutputSize": "output_size"})


def batchNormalizationLayer(*args, **kwargs):  # noqa: N802
    """MATLAB ``batchNormalizationLayer(Name=Value...)``: a
    :class:`fmtarray.layers.BatchNormalizationLayer`. Options: ``NumChannels``,
    ``Epsilon``, ``MeanDecay``, ``VarianceDecay``, ``Offset``, ``Scale``, ``TrainedMean``,
    ``TrainedVariance``, ``OffsetInitializer``, ``ScaleInitializer``,
    ``OffsetLearnRateFactor``, ``ScaleLearnRateFactor``, ``OffsetL2Factor``,
    ``ScaleL2Factor``, ``Name``."""
    from ..layers.normalization import BatchNormalizationLayer

    return _make("batchNormalizationLayer", BatchNormalizationLayer, args, kwargs, _BN_OPTIONS)


_DLNETWORK_OPTIONS = {"Initialize": "initialize"}


def dlnetwork(layers=None, *args, **kwargs):  # noqa: N802
    """MATLAB ``net = dlnetwork``, ``dlnetwork(layers)``, ``dlnetwork(layers, X1,...,XN)``,
    ``dlnetwork(layers, Initialize=tf)``: a :class:`fmtarray.Network`.

    Without ``layers`` (or with ``[]``) the network is empty, to build with
    ``addLayers``/``connectLayers`` (or ``net.add_layers``) and initialise later. With
    layers it is initialised (``Initialize=True``, the default) when every network input
    is an input layer that knows its size, or from the example inputs ``X1,...,XN`` (one
    per network input); otherwise, and with ``Initialize=False``, it is left uninitialised
    (MATLAB gives an uninitialised network when an input has no input layer). Example
    inputs with ``Initialize=False`` are a ``ValueError``.
    """
    from ..network import Network

    fn = "dlnetwork"
    k = 0  # the example inputs come before the Name, Value pairs
    while k < len(args) and not isinstance(args[k], str):
        k += 1
    examples, pairs = args[:k], args[k:]
    opts = _options(fn, pairs, kwargs, _DLNETWORK_OPTIONS)
    init = opts.get("initialize", True)
    if not isinstance(init, bool):
        raise TypeError(f"{fn}: Initialize must be true or false (a bool), got "
                        f"{type(init).__name__} {init!r}")
    net = Network(layers)
    if examples and not init:
        raise ValueError(f"{fn}: example inputs were given with Initialize=False; give "
                         "either the examples (to initialise) or Initialize=False")
    if examples:
        net.initialize(examples[0] if len(examples) == 1 else tuple(examples))
    elif init and len(net) and all(
            callable(getattr(net[n.split("/")[0]], "example_input", None))
            for n in net.input_names):
        net.initialize()
    return net


# training -----------------------------------------------------------------------------

_TRAINING_OPTIONS = {
    "InitialLearnRate": "initial_learn_rate",
    "LearnRateSchedule": "learn_rate_schedule",
    "LearnRateDropPeriod": "learn_rate_drop_period",
    "LearnRateDropFactor": "learn_rate_drop_factor",
    "MiniBatchSize": "mini_batch_size",
    "MaxEpochs": "max_epochs",
    "Shuffle": "shuffle",
    "L2Regularization": "l2_regularization",
    "Momentum": "momentum",
    "GradientDecayFactor": "gradient_decay_factor",
    "SquaredGradientDecayFactor": "squared_gradient_decay_factor",
    "Epsilon": "epsilon",
    "GradientThreshold": "gradient_threshold",
    "GradientThresholdMethod": "gradient_threshold_method",
    "ValidationData": "validation_data",
    "ValidationFrequency": "validation_frequency",
    "ValidationPatience": "validation_patience",
    "OutputNetwork": "output_network",
    "ResetInputNormalization": "reset_input_normalization",
    "Verbose": "verbose",
    "VerboseFrequency": "verbose_frequency",
    "Plots": "plots",
    "OutputFcn": "output_fcn",
    # fmtarray extensions (MATLAB uses rng and the Training Progress window instead)
    "Seed": "seed",
    "Progress": "progress",
}


def trainingOptions(solverName="sgdm", *args, **kwargs):  # noqa: N802
    """MATLAB ``trainingOptions(solverName, Name=Value...)``: a :class:`fmtarray.TrainingOptions`.

    ``solverName``: ``"sgdm"``, ``"adam"`` or ``"rmsprop"``.  Options (``Name=Value``
    or positional ``"Name", Value`` pairs, case-insensitive) are MATLAB's:
    ``InitialLearnRate``, ``LearnRateSchedule`` (``"none"``, ``"piecewise"`` or a
    callable ``f(initialLearnRate, iteration, epoch)``), ``LearnRateDropPeriod``,
    ``LearnRateDropFactor``, ``MiniBatchSize``, ``MaxEpochs``, ``Shuffle``,
    ``L2Regularization``, ``Momentum``, ``GradientDecayFactor``,
    ``SquaredGradientDecayFactor``, ``Epsilon``, ``GradientThreshold``,
    ``GradientThresholdMethod``, ``ValidationData`` (``(X, T)``),
    ``ValidationFrequency``, ``ValidationPatience``, ``OutputNetwork``,
    ``ResetInputNormalization``, ``Verbose``, ``VerboseFrequency``, ``Plots``
    (``"none"``, ``"training-progress"``: saved as ``training-progress.png``, or a
    ``.png`` path), ``OutputFcn``; and two fmtarray extensions, ``Seed`` and
    ``Progress``.  Defaults are MATLAB's.
    """
    from ..training import TrainingOptions

    opts = _options("trainingOptions", args, kwargs, _TRAINING_OPTIONS)
    for k in ("verbose", "reset_input_normalization"):
        if k in opts and not isinstance(opts[k], bool) and opts[k] in (0, 1):
            opts[k] = bool(opts[k])  # MATLAB's logical 0/1
    if opts.get("validation_data") is not None and isinstance(opts["validation_data"], list):
        opts["validation_data"] = tuple(opts["validation_data"])  # MATLAB's {X, T}
    try:
        return TrainingOptions(solverName, **opts)
    except (TypeError, ValueError) as e:
        msg = str(e)
        if msg.startswith("TrainingOptions: invalid solver="):
            msg = msg.replace("TrainingOptions: invalid solver=", "invalid solverName=", 1)
        for ml, py in _TRAINING_OPTIONS.items():
            pre = f"TrainingOptions: invalid {py}="
            if msg.startswith(pre):
                msg = f"invalid {ml} ({py})=" + msg[len(pre):]
                break
        msg = msg.replace("TrainingOptions: ", "", 1)
        raise type(e)(f"trainingOptions: {msg}") from e


def _as_network(net_or_layers):
    from ..network import Network

    if isinstance(net_or_layers, Network):
        return net_or_layers
    if isinstance(net_or_layers, (list, tuple)):
        return Network(list(net_or_layers))
    raise TypeError(f"expected a Network or a list of layers, got {type(net_or_layers).__name__}")


def trainnet(X, T, net, lossFcn="crossentropy", options=None):  # noqa: N803
    """MATLAB ``[net, info] = trainnet(X, T, net, lossFcn, options)``: :func:`fmtarray.train`.

    ``net``: a :class:`fmtarray.Network` or a list of layers; ``lossFcn``:
    ``"crossentropy"`` or a callable ``loss(Y, T)``; ``X``: a FormattedArray or a raw
    array in MATLAB's layout (``h×w×c×N`` images); ``T``: one-hot targets (``CB``) or
    integer class labels.  Returns ``(net, info)`` (a :class:`fmtarray.TrainingHistory`).
    """
    from ..training import train

    if options is None:
        options = trainingOptions("sgdm")
    return train(_as_network(net), X, T, options, loss=lossFcn)


def trainNetwork(X, Y, layers, options=None):  # noqa: N802, N803
    """MATLAB ``[net, info] = trainNetwork(X, Y, layers, options)``: cross-entropy training.

    ``Y``: integer class labels ``0..K-1`` (MATLAB's categorical) or one-hot ``CB``
    targets.  See :func:`trainnet`.
    """
    return trainnet(X, Y, layers, "crossentropy", options)
