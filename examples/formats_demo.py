"""Formatted arrays in a few lines: canonical order, label broadcasting, reductions, gradients."""

import numpy as np

import fmtarray as fa

rng = np.random.default_rng(0)

# A batch of 2 RGB 4×5 images, given batch-first: stored canonically as SSCB.
x = fa.FormattedArray(rng.standard_normal((2, 3, 4, 5)).astype(np.float32), "BCSS")
print(repr(x))

# Per-channel statistics over space and batch; they combine back by label.
mu = fa.mean(x, "SSB")
sd = fa.std(x, "SSB")
z = (x - mu) / sd
print("normalised:", repr(z))
print("per-channel mean after:", np.round(fa.mean(z, "SSB").data, 6))

# An image sequence (T = 6) broadcast against a per-time-step weight.
seq = fa.FormattedArray(rng.standard_normal((4, 5, 3, 2, 6)).astype(np.float32), "SSCBT")
w_t = fa.FormattedArray(np.linspace(0, 1, 6, dtype=np.float32), "T")
print("weighted sequence:", repr(seq * w_t))

# Gradients flow through formatted code with no backward code.
g = fa.grad(lambda v: fa.sum(fa.square(fa.relu(v))))(x)
print("gradient:", repr(g))
