"""MATLAB's "Train Network Using Custom Training Loop", ported with ``fmtarray.matlab``.

The MATLAB example trains a small CNN on the digits with ``dlfeval``, ``dlgradient`` and
``sgdmupdate`` and a time-based decay learn-rate schedule ρ_t = ρ_0 / (1 + k·t). Here it
runs on scikit-learn's 8×8 digits (the data of ``examples/train_digits.py``), then the same
network is trained by ``fmtarray.train`` with the same options, and both test accuracies
are printed. Each step carries the MATLAB line it ports.

    python examples/custom_loop.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import fmtarray as fa
from fmtarray.matlab import (
    batchNormalizationLayer, convolution2dLayer, crossentropy, dlarray, dlfeval, dlgradient,
    dlnetwork, extractdata, forward, fullyConnectedLayer, imageInputLayer, onehotdecode, onehotencode,
    predict, reluLayer, sgdmupdate, softmaxLayer,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import load_digits_split  # noqa: E402  (the same data and split)

NUM_EPOCHS = 10          # numEpochs = 10;
MINI_BATCH_SIZE = 32     # miniBatchSize = 128;  (1347 training images here, not 5000)
INITIAL_LEARN_RATE = 0.05  # initialLearnRate = 0.01;
DECAY = 0.01             # decay = 0.01;
MOMENTUM = 0.9           # momentum = 0.9;


def layer_array(num_classes):
    # layers = [
    #     imageInputLayer([28 28 1])
    #     convolution2dLayer(5,20)
    #     batchNormalizationLayer
    #     reluLayer
    #     fullyConnectedLayer(numClasses)
    #     softmaxLayer];
    return [
        imageInputLayer([8, 8, 1]),
        convolution2dLayer(5, 20),
        batchNormalizationLayer(),
        reluLayer(),
        fullyConnectedLayer(num_classes),
        softmaxLayer(),
    ]


def modelLoss(net, X, T):  # noqa: N802, N803  function [loss,gradients,state] = modelLoss(net,X,T)
    Y, state = forward(net, X)                     # [Y,state] = forward(net,X);
    loss = crossentropy(Y, T)                      # loss = crossentropy(Y,T);
    gradients = dlgradient(loss, net.Learnables)   # gradients = dlgradient(loss,net.Learnables);
    return loss, gradients, state


def preprocess_mini_batch(images, labels, classes):
    # function [X,T] = preprocessMiniBatch(dataX,dataT)
    X = dlarray(images[..., None], "BSSC")           # X = cat(4,dataX{:});  (format "SSCB")
    T = onehotencode(labels, 1, ClassNames=classes)  # T = onehotencode(T,1);
    return X, T


def custom_loop(x_train, y_train, classes, seed=0):
    net = dlnetwork(layer_array(len(classes)))      # net = dlnetwork(layers);
    rng = np.random.default_rng(seed)
    velocity = None                                 # velocity = [];
    iteration = 0                                   # iteration = 0;
    n = len(y_train)
    for epoch in range(1, NUM_EPOCHS + 1):          # while epoch < numEpochs
        order = rng.permutation(n)                  #     shuffle(mbq);
        for start in range(0, n - MINI_BATCH_SIZE + 1, MINI_BATCH_SIZE):  # while hasdata(mbq)
            iteration += 1                          #     iteration = iteration + 1;
            idx = order[start:start + MINI_BATCH_SIZE]
            X, T = preprocess_mini_batch(x_train[idx], y_train[idx], classes)  # [X,T] = next(mbq);
            # [loss,gradients,state] = dlfeval(@modelLoss,net,X,T);
            loss, gradients, state = dlfeval(modelLoss, net, X, T)
            net.update_state(state)                 # net.State = state;
            # learnRate = initialLearnRate/(1 + decay*iteration);
            learn_rate = INITIAL_LEARN_RATE / (1 + DECAY * iteration)
            # [net,velocity] = sgdmupdate(net,gradients,velocity,learnRate,momentum);
            net, velocity = sgdmupdate(net, gradients, velocity, learn_rate, MOMENTUM)
        print(f"  epoch {epoch:2d}, iteration {iteration:4d}: mini-batch loss "
              f"{float(extractdata(loss)):.4f}")
    return net


def accuracy(net, x_test, y_test, classes):
    X = dlarray(x_test[..., None], "BSSC")
    scores = predict(net, X)                        # scores = predict(net,X);
    Y = onehotdecode(scores, classes, 1)            # Y = onehotdecode(scores,classes,1)';
    return 100.0 * np.mean(Y == y_test)             # accuracy = mean(TTest==YTest)


def main():
    x_train, x_test, y_train, y_test = load_digits_split()
    classes = list(range(10))                       # classes = categories(imds.Labels);
    print(f"digits: {len(y_train)} training and {len(y_test)} test images of 8x8x1")

    t0 = time.perf_counter()
    print("custom training loop (dlfeval, dlgradient, sgdmupdate):")
    net = custom_loop(x_train, y_train, classes)
    acc_loop = accuracy(net, x_test, y_test, classes)
    t_loop = time.perf_counter() - t0

    # the same network and options through fmtarray.train (no L2: the loop adds none)
    t0 = time.perf_counter()
    options = fa.TrainingOptions(
        "sgdm", initial_learn_rate=INITIAL_LEARN_RATE, momentum=MOMENTUM,
        mini_batch_size=MINI_BATCH_SIZE, max_epochs=NUM_EPOCHS, shuffle="every-epoch",
        l2_regularization=0.0, seed=0, verbose=False,
        learn_rate_schedule=lambda lr0, it, epoch: lr0 / (1 + DECAY * it),
    )
    net2, _ = fa.train(fa.Network(layer_array(len(classes))),
                       dlarray(x_train[..., None], "BSSC"), y_train, options)
    acc_train = accuracy(net2, x_test, y_test, classes)
    t_train = time.perf_counter() - t0

    print(f"\ntest accuracy, custom loop:    {acc_loop:.2f}% ({t_loop:.1f} s)")
    print(f"test accuracy, fmtarray.train: {acc_train:.2f}% ({t_train:.1f} s)")
    print(f"difference: {abs(acc_loop - acc_train):.2f} points")
    return acc_loop, acc_train


if __name__ == "__main__":
    main()
