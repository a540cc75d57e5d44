"""torch's convolution: ``torch.nn.functional.conv1d/2d/3d`` and ATen's
``convolution_backward`` behind the registry, on CPU and CUDA tensors alike.

Imported by :mod:`.registry` the first time a torch tensor is convolved (torch never
becomes a dependency of fmtarray); :mod:`._cupy` reuses :func:`forward_tensors` and
:func:`backward_tensors` for CuPy arrays handed over by DLPack.

* **Layout.** The kernel array (dims :attr:`.spec.Layout.dims`, e.g. ``"01CN"``) is
  permuted to torch's ``NC*`` order, a view. When that view is contiguous (``NCHW``
  tensors formatted ``"BCSS"``) or channels-last (``NHWC`` tensors formatted ``"BSSC"``)
  it goes in as it is: torch runs either memory format natively. Anything else (the
  canonical, batch-innermost ``SSCB`` storage; ``SCBT``) is copied once into
  channels-last (2-D and 3-D; contiguous for 1-D). Measured on the 2-core CPU machine
  (canonical data of the nine ``benchmarks/conv.py`` cases, forward + backward):
  channels-last beat both an ``NCHW`` copy and handing torch the strided view on every
  case but the ``SCBT`` forward (within noise), by up to 3.6x (depthwise 11.6 ms
  against 41.9 ms ``NCHW``); 3-D: channels-last-3d as fast or faster (35x on a
  depthwise case); 1-D: copying first and letting torch copy are the same. The
  output, whatever memory format torch gives it, is permuted back to ``layout.dims``
  order (a view).
* **Weights.** MATLAB's ``(*k, Cg, Fg, G)`` becomes torch's ``(F, Cg, *k)`` in the
  memory format the input runs in (a permuting copy). The copy is cached (:class:`_WeightCache`:
  keyed on the data pointer, shape, strides, dtype, device and the tensor's version
  counter, checked against a weak reference to the tensor, small LRU, thread-safe),
  except when autograd records the call (``w.requires_grad`` with grad mode on): then
  the re-layout is part of torch's graph and ``loss.backward()`` reaches ``w``.
  In-place updates through the tensor (``w.add_(…)``, ``optimizer.step()``) bump the
  version counter and invalidate the entry; writes that bypass it (through ``w.data``
  or a NumPy/DLPack alias of the memory) are not seen: call :func:`clear_weight_cache`
  after those. Wrapper and fake tensors (``torch.compile``, functorch), inference
  tensors and weights over a quarter of the cache's byte budget are converted on
  every call instead.
* **Padding.** Zero padding that torch's symmetric ``padding=`` reproduces (the windows
  read the same values) goes to the convolution; the rest (asymmetric zero padding,
  other constants, the mirror modes) is applied first by ``F.pad`` (constant,
  ``replicate``, and ``reflect`` = ``"symmetric-exclude-edge"`` when every pad is shorter
  than its dim) or :func:`fmtarray._kernels.pad.pad` (``"symmetric-include-edge"``,
  which torch lacks), trimmed to the rows the windows read; the input gradient then
  goes through :func:`~fmtarray._kernels.pad.pad_vjp`.
* **Gradients**: one entry for both ops, one ``convolution_backward`` call computing
  whichever of ``gx`` / ``gw`` is wanted. ``gw`` comes back as a view in MATLAB's layout.
* **Declines** input dilation (``lhs_dilation``; the portable entry materialises it)
  and non-float dtypes. Result dtype: the spec's (``x``, ``w`` and ``b`` are cast).
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref

import torch
import torch.nn.functional as F

from ... import _backend
from ..pad import pad, pad_vjp
from .registry import Algo, register
from .spec import output_size

__all__ = ["forward_tensors", "backward_tensors", "torch_weights", "clear_weight_cache",
           "DTYPES"]

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}
_F_PAD_MODE = {"replicate": "replicate", "symmetric-exclude-edge": "reflect"}


# ---------------------------------------------------------------------------------------
# geometry: what torch's padding= does, what is padded beforehand


@functools.lru_cache(maxsize=512)
def _geometry(spec):
    """``(conv_padding, pre_before, pre_after)``: torch's symmetric ``padding=`` and the
    padding applied before the convolution (``None`` when there is none)."""
    conv_pad, pre_b, pre_a = [], [], []
    zero = spec.zero_padding
    for n, k, s, dl, pb, pa, out, padded, used in zip(
            spec.sp, spec.k, spec.stride, spec.dilation, spec.pb, spec.pa, spec.out,
            spec.padded, spec.used):
        pa = pa - min(pa, padded - used)  # rows after the last window are never read
        if zero and output_size(n, k, s, dl, pb, pb) == out:
            # the windows start at the same place and read zeros or data alike
            conv_pad.append(pb)
            pre_b.append(0)
            pre_a.append(0)
        elif zero:
            m = min(pb, pa)
            conv_pad.append(m)
            pre_b.append(pb - m)
            pre_a.append(pa - m)
        else:
            conv_pad.append(0)
            pre_b.append(pb)
            pre_a.append(pa)
    pre = (tuple(pre_b), tuple(pre_a)) if any(pre_b) or any(pre_a) else (None, None)
    return (tuple(conv_pad),) + pre


def _pre_pad(x, spec, before, after):
    """``x`` (``N, C, *sp``) padded by ``before``/``after`` with ``spec.value``."""
    d = spec.d
    fpad = []
    for b, a in zip(reversed(before), reversed(after)):
        fpad += [b, a]
    v = spec.value
    if not isinstance(v, str):
        return F.pad(x, fpad, mode="constant", value=float(v))
    mode = _F_PAD_MODE.get(v)
    if mode == "reflect" and any(max(b, a) >= n for b, a, n in zip(before, after, x.shape[2:])):
        mode = None  # torch's reflect needs pads shorter than the dim (ours mirror on)
    if mode is not None:
        return F.pad(x, fpad, mode=mode)
    return pad(_backend.namespace(x), x, before, after, tuple(range(2, d + 2)), v)


# ---------------------------------------------------------------------------------------
# layouts


@functools.lru_cache(maxsize=256)
def _perms(dims):
    """``(to_nc, from_nc)``: axes taking ``dims`` order to ``N, C, 0, 1, …`` and back
    (``None``: already in that order)."""
    d = len(dims) - 2
    target = "NC" + "".join(str(i) for i in range(d))
    to = tuple(dims.index(c) for c in target)
    back = tuple(target.index(c) for c in dims)
    ident = tuple(range(d + 2))
    return (None if to == ident else to), (None if back == ident else back)


def _to_nc(a, dims):
    to = _perms(dims)[0]
    return a if to is None else a.permute(to)


def _from_nc(a, dims):
    back = _perms(dims)[1]
    return a if back is None else a.permute(back)


def _memory_format(x, d):
    """``(format, copy)``: the memory format ``x`` (``N, C, *sp``) runs in, and whether
    it must be copied into it."""
    cl = _CHANNELS_LAST.get(d)
    if x.is_contiguous():
        return torch.contiguous_format, False
    if cl is not None:
        return cl, not x.is_contiguous(memory_format=cl)
    return torch.contiguous_format, True


def _input(x, d, dtype):
    """``x`` (``N, C, *sp`` view) in the memory format torch runs fastest, and that
    format."""
    if x.dtype != dtype:
        x = x.to(dtype)
    fmt, copy = _memory_format(x, d)
    if copy:
        x = x.contiguous(memory_format=fmt)
    return x, fmt


# ---------------------------------------------------------------------------------------
# weights: MATLAB (*k, Cg, Fg, G) -> torch (F, Cg, *k), cached


def _convert(w, spec, dtype, fmt):
    d = spec.d
    wt = w.permute((d + 2, d + 1, d) + tuple(range(d)))  # (G, Fg, Cg, *k)
    wt = wt.reshape((spec.F, spec.Cg) + tuple(spec.k))
    if wt.dtype != dtype:
        wt = wt.to(dtype)
    return wt.contiguous(memory_format=fmt)


class _WeightCache:
    """Converted weights per source tensor state; a small thread-safe LRU whose entries
    die with their source tensor."""

    def __init__(self, size=64, max_bytes=512 * 2**20):
        self.size = size
        self.max_bytes = max_bytes
        self._lock = threading.RLock()  # a weakref callback may run in a holder
        self._d = collections.OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(w, dtype, fmt):
        """``(key, root)``; ``(None, None)`` for tensors the cache cannot follow (wrapper
        and fake tensors; inference tensors raise on ``_version``)."""
        root = w._base
        if root is None:
            root = w
        if type(root) not in _PLAIN:
            return None, None
        return (w.data_ptr(), w.shape, w.stride(), w.dtype, w.device, w._version, dtype,
                fmt), root

    def get(self, w, spec, dtype, fmt):
        try:
            key, root = self.key(w, dtype, fmt)
        except (RuntimeError, AttributeError, NotImplementedError):
            key = None
        if key is None:
            return _convert(w, spec, dtype, fmt)
        with self._lock:
            hit = self._d.get(key)
            if hit is not None and hit[0]() is root:
                self._d.move_to_end(key)
                self.hits += 1
                return hit[1]
            self.misses += 1
        if torch.is_inference_mode_enabled():  # an inference tensor: unusable elsewhere
            return _convert(w, spec, dtype, fmt)
        with torch.no_grad():
            wt = _convert(w, spec, dtype, fmt)
        nbytes = wt.numel() * wt.element_size()
        if nbytes > self.max_bytes // 4:
            return wt
        ref = weakref.ref(root, lambda _r, k=key: self._drop(k))
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._d[key] = (ref, wt, nbytes)
            self._bytes += nbytes
            while self._d and (len(self._d) > self.size or self._bytes > self.max_bytes):
                _, (_, _, nb) = self._d.popitem(last=False)
                self._bytes -= nb
        return wt

    def _drop(self, key):
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= old[2]

    def clear(self):
        with self._lock:
            self._d.clear()
            self._bytes = 0


_PLAIN = (torch.Tensor, torch.nn.Parameter)
_CACHE = _WeightCache()


def clear_weight_cache():
    """Forget every converted weight (after writing weights behind torch's back)."""
    _CACHE.clear()


def torch_weights(w, spec, dtype, fmt, cache=True):
    """MATLAB-layout ``w`` as torch's ``(F, Cg, *k)`` in memory format ``fmt``."""
    if w.requires_grad and torch.is_grad_enabled():
        return _convert(w, spec, dtype, fmt)  # recorded by autograd
    if not cache:
        return _convert(w, spec, dtype, fmt)
    return _CACHE.get(w, spec, dtype, fmt)


def _matlab_weights(gw, spec):
    """torch ``(F, Cg, *k)`` gradient as a view in MATLAB's ``(*k, Cg, Fg, G)``."""
    d = spec.d
    g = gw.reshape((spec.G, spec.Fg, spec.Cg) + tuple(spec.k))
    return g.permute(tuple(range(3, d + 3)) + (2, 1, 0))


# ---------------------------------------------------------------------------------------
# forward and backward on tensors in layout.dims order


def _operands(spec, dims, x, w, cache):
    """``(dtype, conv_padding, pre_pad, xn, wt)``: torch's ``N, C, *sp`` input (in the
    memory format it runs fastest, padded beforehand where torch's ``padding=`` cannot
    express the padding) and the matching ``(F, Cg, *k)`` weights."""
    dtype = DTYPES[spec.dtype]
    conv_pad, pre_b, pre_a = _geometry(spec)
    xn, fmt = _input(_to_nc(x, dims), spec.d, dtype)
    if pre_b is not None:
        xn = _pre_pad(xn, spec, pre_b, pre_a)
    return dtype, conv_pad, (pre_b, pre_a), xn, torch_weights(w, spec, dtype, fmt, cache)


def forward_tensors(spec, dims, x, w, b, cache=True):
    """``y`` (``dims`` order, a view of torch's output) of ``x`` and MATLAB weights ``w``."""
    dtype, conv_pad, _, xn, wt = _operands(spec, dims, x, w, cache)
    if b is not None and b.dtype != dtype:
        b = b.to(dtype)
    y = _CONV[spec.d](xn, wt, b, spec.stride, conv_pad, spec.dilation, spec.G)
    return _from_nc(y, dims)


def backward_tensors(spec, dims, gy, x, w, needs, cache=True):
    """``(gx, gw)`` (``None`` where ``needs`` is false): ``gx`` in ``dims`` order,
    ``gw`` in MATLAB's layout."""
    d = spec.d
    dtype, conv_pad, (pre_b, pre_a), xn, wt = _operands(spec, dims, x, w, cache)
    gn = _to_nc(gy, dims)
    if gn.dtype != dtype:
        gn = gn.to(dtype)
    gx, gw, _ = torch.ops.aten.convolution_backward(
        gn, xn, wt, None, spec.stride, conv_pad, spec.dilation, False, (0,) * d, spec.G,
        (bool(needs[0]), bool(needs[1]), False))
    if needs[0]:
        if pre_b is not None:
            gx = pad_vjp(_backend.namespace(gx), gx, pre_b, pre_a, tuple(range(2, d + 2)),
                         spec.value)
        gx = _from_nc(gx, dims)
    else:
        gx = None
    gw = _matlab_weights(gw, spec) if needs[1] else None
    return gx, gw


def applies(spec, layout):
    """``None``, or why torch's kernels cannot run this call."""
    if any(s > 1 for s in spec.lhs_dilation):
        return ("input dilation (lhs_dilation) is not a torch convolution argument; the "
                "portable entry materialises it")
    if spec.dtype not in DTYPES:
        return f"dtype {spec.dtype}: torch convolves {', '.join(DTYPES)}"
    if not 1 <= spec.d <= 3:  # pragma: no cover - ConvSpec allows 1-3 dims only via the op
        return f"{spec.d} convolved dims: torch has conv1d/2d/3d"
    return None


def _forward(xp, spec, layout, x, w, b):
    return forward_tensors(spec, layout.dims, x, w, b)


def _backward(xp, spec, layout, gy, x, w, needs):
    return backward_tensors(spec, layout.dims, gy, x, w, needs)


register(Algo(
    "torch.aten", "torch", ("forward", "input_grad", "weight_grad"), applies,
    forward=_forward, backward=_backward,
    domain="every convolution of torch tensors (CPU, CUDA) without input dilation: "
           "F.conv1d/2d/3d forward, one aten.convolution_backward for both gradients; "
           "NCHW/NHWC tensors enter without copies, other layouts are copied once to "
           "channels-last; weights re-laid out once per version (cached); padding "
           "torch cannot express is applied by F.pad / fmtarray's pad first"))
