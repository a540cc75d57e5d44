"""A jitted JAX training step over FormattedArrays: conv → relu → conv on "SSCB" data.

FormattedArray is a JAX pytree (the data is the leaf, the format static), so the learnables
can be a plain dict of FormattedArrays and the whole step — forward, ``jax.grad``, the SGD
update — is one ``jax.jit``-compiled function.  The network learns to imitate a fixed
random "teacher" network of the same shape.

    python examples/jax_train_step.py [--steps 30]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import fmtarray as fa


def init_params(seed=0, c_in=3, hidden=8, c_out=2, k=3):
    """Glorot-uniform weights (MATLAB layout ``k × k × C × F``, format "SSCU"), zero biases."""
    rng = np.random.default_rng(seed)

    def glorot(c, f):
        lim = np.sqrt(6.0 / (k * k * (c + f)))
        w = rng.uniform(-lim, lim, (k, k, c, f)).astype(np.float32)
        return fa.FormattedArray(jnp.asarray(w), "SSCU")

    def zeros(f):
        return fa.FormattedArray(jnp.zeros((f,), jnp.float32), "C")

    return {"w1": glorot(c_in, hidden), "b1": zeros(hidden),
            "w2": glorot(hidden, c_out), "b2": zeros(c_out)}


def forward(params, x):
    """conv 3×3 "same" → relu → conv 3×3 "same"; ``x`` is an "SSCB" FormattedArray."""
    h = fa.relu(fa.conv(x, params["w1"], params["b1"], padding="same"))
    return fa.conv(h, params["w2"], params["b2"], padding="same")


def loss_fn(params, x, y):
    """Mean squared error; ``jax.grad`` needs a raw scalar, hence ``.data``."""
    return fa.mean(fa.square(forward(params, x) - y)).data


@jax.jit
def train_step(params, x, y, lr):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    # FormattedArray leaves: tree_map sees the raw data and rebuilds FormattedArrays
    params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
    return params, loss


def make_data(seed=1, size=16, c_in=3, batch=8):
    """Random "SSCB" images and the teacher network's outputs for them."""
    rng = np.random.default_rng(seed)
    # the data arrive batch-first (NHWC, as JAX users hold them): "BSSC" → canonical "SSCB"
    x = fa.FormattedArray(jnp.asarray(rng.standard_normal((batch, size, size, c_in)), jnp.float32), "BSSC")
    teacher = init_params(seed=seed + 1, c_in=c_in)
    y = forward(teacher, x)
    return x, y


def main(steps=30, lr=0.05, verbose=True):
    """Train for ``steps`` jitted steps; returns the losses (floats), one per step."""
    x, y = make_data()
    params = init_params()
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        params, loss = train_step(params, x, y, lr)
        losses.append(float(loss))
        if step == 0:
            t_compile = time.perf_counter() - t0
            t0 = time.perf_counter()
        if verbose and (step % max(1, steps // 10) == 0 or step == steps - 1):
            print(f"step {step:3d}  loss {losses[-1]:.5f}")
    if verbose:
        per_step = (time.perf_counter() - t0) / max(1, steps - 1)
        print(f"x: {x!r}")
        print(f"first step (trace + compile) {t_compile:.2f} s, then {1e3 * per_step:.2f} ms per step")
        print(f"loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    return losses


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.05)
    args = ap.parse_args()
    main(args.steps, args.lr)
