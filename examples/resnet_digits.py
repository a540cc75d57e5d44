"""A ResNet-style layer graph on scikit-learn's 8×8 handwritten digits (no download).

The network, built MATLAB's way (``dlnetwork``, ``addLayers``, ``connectLayers``)::

    imageinput 8×8×1 → conv_stem 3×3×16 'same' → bn_stem → relu_stem
      → block 1: conv_1a 3×3×16 'same' → bn_1a → relu_1a → conv_1b 3×3×16 'same' → bn_1b
                 → add_1 (+ relu_stem, the identity skip) → relu_1
      → block 2: dwconv_2 3×3 channel-wise (grouped, 16 groups) 'same' → bn_2a → relu_2a
                 → conv_2b 1×1×16 → bn_2b → add_2 (+ relu_1, the identity skip) → relu_2
      → gap (global average pooling, 1×1×16) → fc 10 → softmax

Both skips are identities: every layer keeps 8×8×16, so no projection is needed.

It trains with ``fa.train`` (adam) on NumPy, is scored on the held-out quarter, then moves
to torch with ``net.to("torch")`` (float32) and compares the test predictions; a float64
copy (the trained learnables and state cast to float64 on the host, loaded into a network
built by the same code) is compared too.

    python examples/resnet_digits.py                 # train, score, move to torch
    python examples/resnet_digits.py --epochs 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fmtarray as fa  # noqa: E402
from fmtarray.layers import (  # noqa: E402
    addition_layer, batch_normalization_layer, convolution2d_layer, fully_connected_layer,
    global_average_pooling2d_layer, grouped_conv2d_layer, image_input_layer, relu_layer,
    softmax_layer,
)
from train_digits import load_digits_split, to_sscb  # noqa: E402

WIDTH = 16  # channels of every convolution


def resnet_graph(width=WIDTH, normalization="zerocenter"):
    """The ResNet-style layer graph (uninitialised), built with add_layers/connect_layers."""
    net = fa.Network()
    net.add_layers([
        image_input_layer((8, 8, 1), normalization=normalization, name="imageinput"),
        convolution2d_layer(3, width, padding="same", name="conv_stem"),
        batch_normalization_layer(name="bn_stem"),
        relu_layer(name="relu_stem"),
    ])
    # residual block 1: two 3×3 convolutions, identity skip
    net.add_layers([
        convolution2d_layer(3, width, padding="same", name="conv_1a"),
        batch_normalization_layer(name="bn_1a"),
        relu_layer(name="relu_1a"),
        convolution2d_layer(3, width, padding="same", name="conv_1b"),
        batch_normalization_layer(name="bn_1b"),
        addition_layer(2, name="add_1"),
        relu_layer(name="relu_1"),
    ])
    # residual block 2: a channel-wise (depth-wise) 3×3 then a 1×1 (point-wise) convolution
    net.add_layers([
        grouped_conv2d_layer(3, 1, "channel-wise", padding="same", name="dwconv_2"),
        batch_normalization_layer(name="bn_2a"),
        relu_layer(name="relu_2a"),
        convolution2d_layer(1, width, name="conv_2b"),
        batch_normalization_layer(name="bn_2b"),
        addition_layer(2, name="add_2"),
        relu_layer(name="relu_2"),
    ])
    # head
    net.add_layers([
        global_average_pooling2d_layer(name="gap"),
        fully_connected_layer(10, name="fc"),
        softmax_layer(name="softmax"),
    ])
    net.connect_layers("relu_stem", "conv_1a")
    net.connect_layers("relu_stem", "add_1/in2")
    net.connect_layers("relu_1", "dwconv_2")
    net.connect_layers("relu_1", "add_2/in2")
    net.connect_layers("relu_2", "gap")
    return net


def training_options(epochs=12, **changes):
    """The options the example trains with (adam, fixed seed)."""
    opts = fa.TrainingOptions(
        "adam", initial_learn_rate=0.01, mini_batch_size=32, max_epochs=epochs,
        learn_rate_schedule="piecewise", learn_rate_drop_period=max(1, (2 * epochs) // 3),
        learn_rate_drop_factor=0.1, shuffle="every-epoch", l2_regularization=1e-4, seed=0,
        verbose=False,
    )
    return opts.replace(**changes) if changes else opts


def host(x):
    """A host NumPy array of a FormattedArray's values (any library, any device)."""
    return np.asarray(fa._backend.to_numpy(getattr(x, "data", x)))


def accuracy(net, images, labels, xp=None):
    """Percent of ``images`` (N×8×8 host) whose predicted class is ``labels``."""
    import array_api_compat.numpy as npx

    scores = net.predict(to_sscb(images, xp or npx))
    pred = np.argmax(host(scores), axis=0)
    return 100.0 * float(np.mean(pred == labels)), pred


def as_float64(net):
    """A float64 copy of a trained float32 ``net``: the same graph code, initialised in
    float64, then the learnables and state (batch-norm and input statistics) cast on the
    host and stored."""
    net64 = resnet_graph()
    net64.initialize(dtype=np.float64)
    cast = {k: {n: fa.FormattedArray(host(v).astype(np.float64), v.format)
                for n, v in d.items()} for k, d in net.learnables().items()}
    net64.set_learnables(cast)
    net64.update_state({k: {n: host(v).astype(np.float64) for n, v in d.items()}
                        for k, d in net.state().items()})
    return net64


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--no-torch", action="store_true", help="skip the move to torch")
    args = p.parse_args(argv)

    torch = None
    if not args.no_torch:
        try:  # import torch before NumPy's BLAS threads start (see train_digits.py)
            import torch
        except ImportError:
            torch = None

    x_train, x_test, y_train, y_test = load_digits_split()
    print(f"digits: {len(y_train)} training and {len(y_test)} test images of 8x8x1, 10 classes")
    net = resnet_graph()
    net.initialize(seed=0)
    print(net)
    print(f"{net.num_learnables} learnable values\n")

    import array_api_compat.numpy as npx

    t0 = time.perf_counter()
    net, hist = fa.train(net, to_sscb(x_train, npx), y_train, training_options(args.epochs))
    secs = time.perf_counter() - t0
    acc, pred = accuracy(net, x_test, y_test)
    print(f"numpy: test accuracy {acc:.2f}% ({int(np.sum(pred == y_test))}/{len(y_test)}), "
          f"final mini-batch loss {hist.training_loss[-1]:.4f}, "
          f"{len(hist.training_loss)} iterations in {secs:.1f} s")

    if torch is None:
        return acc
    ref = host(net.predict(to_sscb(x_test, npx)))
    tnet = net.to("torch")
    import array_api_compat.torch as tx

    got = host(tnet.predict(to_sscb(x_test, tx)))
    print(f"torch (float32, cpu): max |diff| of the test predictions from numpy's "
          f"{np.max(np.abs(got - ref)):.2e}")
    if torch.cuda.is_available():
        cnet = net.to("torch", device="cuda")
        xc = fa.FormattedArray(torch.from_numpy(x_test[..., None]).to("cuda"), "BSSC")
        gc = host(cnet.predict(xc))
        print(f"torch (float32, cuda): max |diff| from numpy's {np.max(np.abs(gc - ref)):.2e}")
    else:
        print("torch: no CUDA device here, the GPU move was not run")

    net64 = as_float64(net)
    x64 = x_test.astype(np.float64)
    ref64 = host(net64.predict(to_sscb(x64, npx)))
    got64 = host(net64.to("torch").predict(to_sscb(x64, tx)))
    rel = np.max(np.abs(got64 - ref64)) / np.max(np.abs(ref64))
    acc64, _ = accuracy(net64, x64, y_test)
    print(f"float64 copy: test accuracy {acc64:.2f}%; torch vs numpy max relative difference "
          f"{rel:.2e}; float64 vs float32 predictions max |diff| {np.max(np.abs(ref64 - ref)):.2e}")
    return acc


if __name__ == "__main__":
    main()
