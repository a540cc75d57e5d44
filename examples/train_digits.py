"""Train the seed's layer array on scikit-learn's 8×8 handwritten digits (no download).

The MATLAB original (seed documentation of ``convolution2dLayer``), adapted to 8×8×1 images::

    layers = [imageInputLayer([8 8 1])      % the seed has [28 28 1]
              convolution2dLayer(5, 20)
              reluLayer
              maxPooling2dLayer(2, Stride=2)
              fullyConnectedLayer(10)
              softmaxLayer];
    options = trainingOptions("sgdm", InitialLearnRate=0.05, MiniBatchSize=32, MaxEpochs=30);
    net = trainnet(XTrain, TTrain, dlnetwork(layers), "crossentropy", options);

The network trains on the CPU with NumPy and is scored on a held-out quarter of the digits.
Then **the same code** runs on another array library (torch when installed, else
``array_api_strict``): same seed, same initial weights, same shuffling, so the loss curve
matches NumPy's to float32 rounding and the test predictions agree.

    python examples/train_digits.py                   # NumPy, then torch / array_api_strict
    python examples/train_digits.py --other none      # NumPy only
    python examples/train_digits.py --plot training-progress.png
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import fmtarray as fa
from fmtarray.layers import (
    convolution2d_layer, fully_connected_layer, image_input_layer,
    max_pooling2d_layer, relu_layer, softmax_layer,
)


def layer_array():
    """The seed's layer array, with the input size adapted to 8×8×1 digits."""
    return [
        image_input_layer((8, 8, 1)),
        convolution2d_layer(5, 20),
        relu_layer(),
        max_pooling2d_layer(2, stride=2),
        fully_connected_layer(10),
        softmax_layer(),
    ]


def load_digits_split(seed=0):
    """Host (NumPy) data: images N×8×8 in [0, 1] float32 and labels, a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    return train_test_split(x, d.target, test_size=0.25, random_state=seed, stratify=d.target)


def to_sscb(images, xp):
    """N×8×8 host images → an ``SSCB`` FormattedArray in the array library ``xp``."""
    return fa.FormattedArray(xp.asarray(images[..., None]), "BSSC")


def run(xp, data, options):
    """Train a fresh network on the library ``xp``; return (net, history, test predictions, s)."""
    x_train, x_test, y_train, y_test = data
    t0 = time.perf_counter()
    net = fa.Network(layer_array())
    net, history = fa.train(net, to_sscb(x_train, xp), y_train, options)
    scores = net.predict(to_sscb(x_test, xp))             # CB class scores
    pred = np.argmax(np.asarray(fa._backend.to_numpy(scores.data)), axis=0)
    return net, history, pred, time.perf_counter() - t0


def library(name):
    if name == "torch":
        import array_api_compat.torch as xp
    elif name == "array_api_strict":
        import array_api_strict as xp
    elif name == "numpy":
        import array_api_compat.numpy as xp
    else:
        raise SystemExit(f"unknown library {name!r}")
    return xp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--other", default="auto",
                   help="second library: torch, array_api_strict, none, or auto (torch if installed)")
    p.add_argument("--plot", default="none", help="save the training-progress plot to this PNG")
    p.add_argument("--verbose", action="store_true", help="print MATLAB's training table")
    args = p.parse_args(argv)

    other = args.other
    if other == "auto":
        import importlib.util

        other = "torch" if importlib.util.find_spec("torch") is not None else "array_api_strict"
    # import the second library before NumPy's BLAS threads start: torch's OpenMP pool
    # loaded after them competes with them (8x slower here on 2 cores)
    other_xp = library(other) if other != "none" else None

    data = load_digits_split()
    x_train, x_test, y_train, y_test = data
    print(f"digits: {len(y_train)} training and {len(y_test)} test images of 8x8x1, 10 classes")
    print(fa.Network(layer_array()).initialize())
    options = fa.TrainingOptions(
        "sgdm", initial_learn_rate=0.05, momentum=0.9, mini_batch_size=32,
        max_epochs=args.epochs, shuffle="every-epoch", l2_regularization=1e-4, seed=0,
        verbose=args.verbose, verbose_frequency=100, plots=args.plot,
    )

    # 1. NumPy on the CPU
    net, hist, pred, secs = run(library("numpy"), data, options)
    acc = 100.0 * np.mean(pred == y_test)
    print(f"\nnumpy: test accuracy {acc:.2f}% ({int(np.sum(pred == y_test))}/{len(y_test)}), "
          f"final mini-batch loss {hist.training_loss[-1]:.4f}, "
          f"{len(hist.training_loss)} iterations, {secs:.1f} s")
    if args.plot != "none":
        print(f"training-progress plot saved to {os.path.abspath(args.plot)}")

    # 2. the same code on another array library
    if other_xp is not None:
        o_net, o_hist, o_pred, o_secs = run(other_xp, data, options.replace(plots="none"))
        o_acc = 100.0 * np.mean(o_pred == y_test)
        a, b = np.asarray(hist.training_loss), np.asarray(o_hist.training_loss)
        w = o_net.learnables()["fc"]["weights"]
        print(f"{other}: test accuracy {o_acc:.2f}%, {o_secs:.1f} s; the weights are "
              f"{fa._backend.library_name(w.data)} arrays")
        print(f"  loss curve vs numpy: max |diff| {np.max(np.abs(a - b)):.2e} over {len(a)} "
              f"iterations (first 10: {np.max(np.abs(a[:10] - b[:10])):.1e}); test predictions "
              f"agree on {int(np.sum(pred == o_pred))}/{len(pred)} images")
    return acc


if __name__ == "__main__":
    main()
