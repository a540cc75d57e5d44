"""A two-convolution video training step on torch tensors: fmtarray against plain torch.

The step (issue 9): ``SSCBT`` video, 64×64 pixels, 3 channels, batch 2, 32 frames
(64 images); 3×3 convolution 3→16 ("same"), ReLU, 3×3 convolution 16→16 ("same"),
loss = mean of squares, gradients of both layers' weights and biases, SGD update::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/video_step.py

* **plain torch**: ``(B, T, C, H, W)`` tensor viewed as ``(B·T, C, H, W)``,
  ``F.conv2d`` with ``(F, C, kh, kw)`` parameters, ``loss.backward()``, in-place SGD.
* **fmtarray (fa.value_and_grad)**: the same tensor formatted ``"BTCSS"``, weights in
  MATLAB's layout ``(kh, kw, C, F)`` (as the layers hold them), ``fa.conv`` /
  ``fa.relu`` / ``fa.mean``, gradients by fmtarray's own tape, SGD ``w - lr·g``.
* **fmtarray (torch autograd)**: the same fmtarray functions on ``requires_grad``
  tensors, ``loss.backward()``, in-place SGD (torch autograd records fmtarray's ops).

Interleaved turns, medians, 2 torch threads (``--threads``). The targets: fmtarray
within 1.5× of plain torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fmtarray as fa
from fmtarray import FormattedArray

B, T, C, H, W, F1, F2, LR = 2, 32, 3, 64, 64, 16, 16, 1e-3


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, H, W, generator=g)
    w1 = torch.randn(3, 3, C, F1, generator=g) / 5.0  # MATLAB layout (kh, kw, C, F)
    w2 = torch.randn(3, 3, F1, F2, generator=g) / 12.0
    b1, b2 = torch.zeros(F1), torch.zeros(F2)
    return x, w1, b1, w2, b2


def to_torch_layout(w):
    return w.permute(3, 2, 0, 1).contiguous()  # (F, C, kh, kw)


def torch_step(x, p):
    """Plain torch: forward, backward, in-place SGD; returns the loss."""
    w1, b1, w2, b2 = p
    xi = x.reshape(B * T, C, H, W)
    h = F.relu(F.conv2d(xi, w1, b1, padding=1))
    y = F.conv2d(h, w2, b2, padding=1)
    loss = (y * y).mean()
    loss.backward()
    with torch.no_grad():
        for q in p:
            q -= LR * q.grad
            q.grad = None
    return loss.detach()


def fa_loss(params, x):
    w1, b1, w2, b2 = params
    h = fa.relu(fa.conv(x, w1, b1, padding="same"))
    y = fa.conv(h, w2, b2, padding="same")
    return fa.mean(y * y)


_vg = fa.value_and_grad(fa_loss)


def fa_step(x, params):
    """fmtarray's own gradients; returns (loss, new params)."""
    loss, g = _vg(params, x)
    return loss, [p - LR * gp for p, gp in zip(params, g)]


def fa_autograd_step(x, p):
    """fmtarray ops on requires_grad tensors, torch autograd for the gradients."""
    loss = fa_loss([FormattedArray(q, "") if q.ndim != 1 else FormattedArray(q, "C")
                    for q in p], x)
    loss.data.backward()
    with torch.no_grad():
        for q in p:
            q -= LR * q.grad
            q.grad = None
    return loss.data.detach()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, w1, b1, w2, b2 = make()
    X = FormattedArray(x, "BTCSS")
    # plain torch parameters (torch layout) and fmtarray's (MATLAB layout)
    tp = [to_torch_layout(w1).requires_grad_(), b1.clone().requires_grad_(),
          to_torch_layout(w2).requires_grad_(), b2.clone().requires_grad_()]
    fp = [FormattedArray(w1.clone(), ""), FormattedArray(b1.clone(), "C"),
          FormattedArray(w2.clone(), ""), FormattedArray(b2.clone(), "C")]
    ap_ = [w1.clone().requires_grad_(), b1.clone().requires_grad_(),
           w2.clone().requires_grad_(), b2.clone().requires_grad_()]

    # the three agree on the first step's loss and on the updated weights
    l_t = torch_step(x, tp)
    l_f, fp = fa_step(X, fp)
    l_a = fa_autograd_step(X, ap_)
    torch.testing.assert_close(l_f.data.reshape(()), l_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l_a.reshape(()), l_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fp[0].data.permute(3, 2, 0, 1), tp[0].detach(), rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(ap_[2].detach().permute(3, 2, 0, 1), tp[2].detach(), rtol=1e-4,
                               atol=1e-6)

    state = {"fp": fp}

    def run_fa():
        _, state["fp"] = fa_step(X, state["fp"])

    fns = {"plain torch": lambda: torch_step(x, tp), "fmtarray (fa.value_and_grad)": run_fa,
           "fmtarray (torch autograd)": lambda: fa_autograd_step(X, ap_)}
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(args.repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["plain torch"]
    print(f"video training step: SSCBT {H}x{W}x{C}, B={B}, T={T}; conv 3x3 {C}->{F1}, relu, "
          f"conv 3x3 {F1}->{F2}, mean-square loss, SGD | torch {torch.__version__}, "
          f"{args.threads} threads, {args.repeats} interleaved turns, load "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for k, v in med.items():
        print(f"  {k:32s} {v * 1e3:8.2f} ms   x{v / base:5.2f} of plain torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
