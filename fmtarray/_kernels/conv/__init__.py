"""Convolution kernels behind one front door (see ``docs/architecture.md``).

* :mod:`.spec` — :class:`ConvSpec` and :class:`Layout`; the output-size and padding rules;
* :mod:`.tuning` — every threshold, one dataclass, :func:`tuning` to change them;
* :mod:`.registry` — algorithms as entries, selection, :func:`explain`;
* :mod:`.portable` — the array-API path every library falls back to;
* ``_numpy``, ``_torch``, ``_jax``, ``_cupy``, ``_dask`` — each library's adapter,
  imported only when an array of that library is convolved.
"""

from .registry import OPS, Algo, Choice, algorithms, backward, explain, forward, register, select
from .spec import ConvSpec, Layout, output_size, resolve_padding, same_padding
from .thresholds import Tuning, current, tuning

__all__ = ["OPS", "Algo", "Choice", "ConvSpec", "Layout", "Tuning", "algorithms", "backward",
           "current", "explain", "forward", "output_size", "register", "resolve_padding",
           "same_padding", "select", "tuning"]
