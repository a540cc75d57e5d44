"""CuPy's convolution: torch's cuDNN kernels through DLPack, when torch has CUDA.

CuPy 14 removed its cuDNN bindings, so CuPy has no convolution of its own. When torch
with CUDA is importable, the CuPy arrays are handed to torch without copies
(``torch.from_dlpack``: same device memory, strides kept, the two libraries' streams
ordered by the DLPack protocol), :mod:`._torch`'s :func:`~._torch.forward_tensors` /
:func:`~._torch.backward_tensors` run cuDNN (layout choices, padding and the fused
``convolution_backward`` as for torch tensors), and the results come back the same
way (``cupy.from_dlpack``). The caller only ever sees CuPy arrays. Without torch, or
with a CPU-only torch, the entry declines with the reason and the portable entry runs
(im2col + cuBLAS ``matmul``).

Weights are re-laid out on every call (no cache: a CuPy array has no version counter
to tell an in-place update; the re-layout is one small device copy).

This adapter imports torch (not CuPy) at import time, lazily on the first CuPy
convolution; CuPy itself is imported when the entry runs. Not run on this project's
machine (no GPU): see ``docs/`` and the issue notes.
"""

from __future__ import annotations

import functools

from .registry import Algo, register

__all__ = ["torch_cuda"]


@functools.lru_cache(maxsize=1)
def torch_cuda():
    """``(module _torch, None)`` when torch with a usable CUDA device is importable,
    else ``(None, reason)``."""
    try:
        import torch
    except ImportError:
        return None, ("torch is not installed: CuPy 14 has no cuDNN, so CuPy "
                      "convolutions use torch's cuDNN kernels through DLPack when torch "
                      "with CUDA is importable")
    if getattr(torch.version, "cuda", None) is None:
        return None, (f"torch {torch.__version__} is a CPU-only build (no CUDA): cuDNN is "
                      "reached through a CUDA build of torch")
    try:
        ok = torch.cuda.is_available()
    except Exception as e:  # pragma: no cover - driver problems
        return None, f"torch.cuda is not usable ({e})"
    if not ok:
        return None, "torch.cuda.is_available() is False (no GPU or driver visible to torch)"
    from . import _torch

    return _torch, None


def applies(spec, layout):
    T, reason = torch_cuda()
    if T is None:
        return reason
    return T.applies(spec, layout)


def _to_torch(a):
    import torch

    if a is None:
        return None
    try:
        return torch.from_dlpack(a)
    except (BufferError, RuntimeError, TypeError, ValueError):
        # e.g. negative strides, which DLPack cannot describe: one copy
        import cupy

        return torch.from_dlpack(cupy.ascontiguousarray(a))


def _to_cupy(t):
    import cupy

    return None if t is None else cupy.from_dlpack(t)


def _bias(b):
    if b is None:
        return None
    import cupy

    return cupy.ascontiguousarray(b)  # may be a broadcast (zero-stride) view of a scalar


def _forward(xp, spec, layout, x, w, b):
    T = torch_cuda()[0]
    y = T.forward_tensors(spec, layout.dims, _to_torch(x), _to_torch(w),
                          _to_torch(_bias(b)), cache=False)
    return _to_cupy(y)


def _backward(xp, spec, layout, gy, x, w, needs):
    T = torch_cuda()[0]
    gx, gw = T.backward_tensors(spec, layout.dims, _to_torch(gy), _to_torch(x), _to_torch(w),
                                needs, cache=False)
    return _to_cupy(gx), _to_cupy(gw)


register(Algo(
    "cupy.torch_cudnn", "cupy", ("forward", "input_grad", "weight_grad"), applies,
    forward=_forward, backward=_backward,
    domain="CuPy arrays when torch with CUDA is importable: torch's cuDNN convolution "
           "(forward, one convolution_backward for both gradients) on the same device "
           "memory through DLPack, no copies; no input dilation"))
