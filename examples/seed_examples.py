"""Every example of MATLAB's ``convolution2dLayer`` documentation, in fmtarray.

Run: ``python examples/seed_examples.py``.  Each section prints the MATLAB code it
ports, then fmtarray's display or result.  The numbers are also pinned by
``tests/test_conv_layer.py`` and ``tests/test_matlab.py``.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

import fmtarray as fa
from fmtarray.layers import convolution2d_layer
from fmtarray.matlab import convolution2dLayer, dlarray


def section(title, matlab):
    print("=" * 78)
    print(title)
    print(f"  MATLAB: {matlab}")
    print("-" * 78)


def main():
    rng = np.random.default_rng(0)

    section("Create Convolutional Layer", "layer = convolution2dLayer(11,96,'Stride',4)")
    layer = convolution2d_layer(11, 96, stride=4)
    print(layer)
    assert repr(layer) == repr(convolution2dLayer(11, 96, "Stride", 4))

    section("Include a convolutional layer in a Layer array",
            "layers = [imageInputLayer([28 28 1]) convolution2dLayer(5,20) reluLayer "
            "maxPooling2dLayer(2,'Stride',2) fullyConnectedLayer(10) softmaxLayer]")
    L = fa.layers
    layers = fa.Network([
        L.image_input_layer((28, 28, 1)),
        convolution2d_layer(5, 20),
        L.relu_layer(),
        L.max_pooling2d_layer(2, stride=2),
        L.fully_connected_layer(10),
        L.softmax_layer(),
    ])
    print(layers)

    section("Specify Initialization Functions",
            "layer = convolution2dLayer(5,32,'WeightsInitializer','he')")
    layer = convolution2d_layer(5, 32, weights_initializer="he")
    print(layer)
    layer.initialize(((28, 28, 3, 1), "SSCB"), seed=0)
    w = np.asarray(layer.weights)
    print(f"after initialize on 28×28×3 input: weights {w.shape}, variance {w.var():.5f} "
          f"(formula 2/numIn = {2 / (5 * 5 * 3):.5f})")

    section("Specify Custom Initialization Functions",
            "convolution2dLayer(5,32,'WeightsInitializer',@(sz) rand(sz) * 0.0001, "
            "'BiasInitializer',@(sz) rand(sz) * 0.0001)")
    layer = convolution2d_layer(5, 32, weights_initializer=lambda sz: rng.random(sz) * 0.0001,
                                bias_initializer=lambda sz: rng.random(sz) * 0.0001)
    print(layer)
    layer.initialize(((28, 28, 3, 1), "SSCB"))
    print(f"after initialize: weights in [{np.min(layer.weights):.2e}, {np.max(layer.weights):.2e}]")

    section("Specify Weights and Bias Directly",
            "load Conv2dWeights; layer = convolution2dLayer(5,32,'Weights',W,'Bias',b)")
    try:
        import scipy.io as sio
    except ImportError:  # scipy is optional: make the arrays directly
        W, b = rng.standard_normal((5, 5, 3, 32)), rng.standard_normal((1, 1, 32))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "Conv2dWeights.mat")
            sio.savemat(path, {"W": rng.standard_normal((5, 5, 3, 32)),
                               "b": rng.standard_normal((1, 1, 32))})
            m = sio.loadmat(path)
        W, b = m["W"], m["b"]
    layer = convolution2dLayer(5, 32, Weights=W, Bias=b)
    print(layer)

    section("Create Convolutional Layer That Fully Covers Input",
            "layer = convolution2dLayer([6 4],16,'Stride',4,'Padding',[1 0])")
    layer = convolution2d_layer([6, 4], 16, stride=4, padding=[1, 0])
    print(layer)
    x = dlarray(rng.standard_normal((28, 28, 1, 1), dtype=np.float32), "SSCB")
    y = layer(x)
    print(f"28×28×1 input → output {'×'.join(map(str, y.shape[:3]))} ({y.format})")

    section("Number of parameters and output size",
            "32×32×3 input, eight 5×5 filters, stride 2, padding 2")
    layer = convolution2d_layer(5, 8, stride=2, padding=2)
    y = layer(dlarray(rng.standard_normal((32, 32, 3, 1), dtype=np.float32), "SSCB"))
    print(f"feature maps {y.shape[0]}×{y.shape[1]}×{y.shape[2]}, "
          f"neurons {math.prod(y.shape[:3])}, parameters {layer.num_parameters}")

    section("Padding='same'", "convolution2dLayer(3,16,Padding=\"same\")")
    for stride in (1, 2):
        layer = convolution2d_layer(4, 16, padding="same", stride=stride)
        y = layer(dlarray(np.zeros((28, 27, 3, 1), np.float32), "SSCB"))
        print(f"stride {stride}: 28×27 → {y.shape[0]}×{y.shape[1]}, padding [t b l r] = "
              f"[{' '.join(map(str, layer.padding_size))}]  ({layer.description()})")

    section("PaddingValue", "3×3 input [3 1 4; 1 5 9; 2 6 5] padded by 2")
    pic = np.array([[3, 1, 4], [1, 5, 9], [2, 6, 5]], dtype=np.float64)
    for value in (0, "symmetric-include-edge", "symmetric-exclude-edge", "replicate"):
        layer = convolution2d_layer(1, 1, padding=2, padding_value=value,
                                    weights=np.ones((1, 1, 1, 1)), bias=np.zeros(1))
        y = layer(dlarray(pic, "SS"))
        print(f"PaddingValue {value!r}:")
        print(np.asarray(fa.extractdata(y))[:, :, 0].astype(int))

    section("Input formats", "SSCB, SSCBT (T batch-like), SCBT (S × T convolution)")
    layer = convolution2d_layer(3, 4, padding="same")
    for fmt, shape in (("SSCB", (8, 8, 2, 5)), ("SSCBT", (8, 8, 2, 5, 3)), ("SCBT", (8, 2, 5, 10)),
                       ("ST", (8, 10))):
        lay = layer if "C" in fmt else convolution2d_layer(3, 4, padding="same")
        y = lay(dlarray(rng.standard_normal(shape), fmt))
        print(f"{fmt:>6} {shape} → {y.format} {y.shape}")


if __name__ == "__main__":
    main()
