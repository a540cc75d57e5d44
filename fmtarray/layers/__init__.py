"""Layers: one family per module."""

from .base import Layer  # noqa: F401
from .convolution import Convolution2DLayer, convolution2d_layer  # noqa: F401
from .activation import ReLULayer, SoftmaxLayer, relu_layer, softmax_layer  # noqa: F401
from .fully_connected import FullyConnectedLayer, fully_connected_layer  # noqa: F401
from .input import ImageInputLayer, image_input_layer  # noqa: F401
from .normalization import BatchNormalizationLayer, batch_normalization_layer  # noqa: F401
from .pooling import (  # noqa: F401
    AveragePooling2DLayer, MaxPooling2DLayer, average_pooling2d_layer, max_pooling2d_layer,
)
from .combination import (  # noqa: F401
    AdditionLayer, ConcatenationLayer, DepthConcatenationLayer, MultiplicationLayer,
    addition_layer, concatenation_layer, depth_concatenation_layer, multiplication_layer,
)
from .flatten import FlattenLayer, flatten_layer  # noqa: F401
from .transposed_convolution import TransposedConvolution2DLayer, transposed_conv2d_layer  # noqa: F401,E501
from .convolution import ConvolutionLayerBase  # noqa: F401
from .convolution_nd import (  # noqa: F401
    Convolution1DLayer, Convolution3DLayer, convolution1d_layer, convolution3d_layer,
)
from .grouped_convolution import GroupedConvolution2DLayer, grouped_conv2d_layer  # noqa: F401
from .dropout import DropoutLayer, dropout_layer  # noqa: F401
from .activation import LeakyReLULayer, leaky_relu_layer  # noqa: F401
from .pooling import GlobalAveragePooling2DLayer, global_average_pooling2d_layer  # noqa: F401
