"""``DropoutLayer``: MATLAB's ``dropoutLayer``.

* ``predict`` (inference) is the identity.
* ``forward`` (training) is inverted dropout, as MATLAB: each element is zeroed with
  probability ``p`` (the mask is ``rand(size(X)) >= p``) and the kept ones are scaled
  by ``1 / (1 - p)``, so the expected value is unchanged. The mask is a constant: the
  gradient with respect to the input is ``mask · scale`` times the cotangent.

Random numbers. The mask is drawn on the host (NumPy's PCG64, like the initialisers)
and moved to the input's library, dtype and device, so the same seed gives the same
masks on every library. The ``k``-th ``forward`` call (``k = 0, 1, …``) uses the stream
``numpy.random.default_rng([seed, k])`` where ``seed`` is

1. the layer's own ``seed`` (constructor argument) when given, else
2. the seed :meth:`fmtarray.Network.initialize` hands the layer (derived from the
   network's ``seed``), else
3. none: fresh entropy on every call.

``reset()`` restarts the count (``k = 0``). A ``numpy.random.Generator`` given as the
seed is drawn from directly (its stream advances).
"""

from __future__ import annotations

import itertools
import math
import numbers

from .. import _backend
from ..array import FormattedArray
from ..ops.elementwise import multiply
from ._conv_props import display, matlab_number
from .base import Layer, check_name
from .initializers import check_seed

__all__ = ["DropoutLayer", "dropout_layer"]


def _probability(value):
    legal = "a real number in [0, 1)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"probability must be {legal}, got {type(value).__name__} {value!r}")
    if not (math.isfinite(float(value)) and 0 <= value < 1):
        raise ValueError(f"probability must be {legal}, got {value!r}")
    return float(value)


class DropoutLayer(Layer):
    """Dropout (MATLAB ``dropoutLayer``): zeroes elements at random in training.

    Parameters
    ----------
    probability
        The probability of dropping an element, in ``[0, 1)``; default 0.5.
    seed
        ``None`` (default: the network's initialisation seed, else fresh entropy), a
        non-negative integer or a ``numpy.random.Generator``; see the module docstring.
    name
        Layer name, default ``""``.

    Any format; the output has the input's format.
    """

    default_name = "dropout"

    def __init__(self, probability=0.5, *, seed=None, name=""):
        self.name = check_name(name)
        self.probability = probability
        self.seed = seed
        self._init_seed = None
        self._calls = itertools.count()

    @property
    def probability(self) -> float:
        """The probability of dropping an element (MATLAB ``Probability``)."""
        return self._probability

    @probability.setter
    def probability(self, value):
        self._probability = _probability(value)

    @property
    def seed(self):
        """The layer's own seed, or ``None``."""
        return self._seed

    @seed.setter
    def seed(self, value):
        self._seed = check_seed(value, "DropoutLayer seed")

    def reset(self):
        """Restart the sequence of masks (the next ``forward`` draws mask 0 again)."""
        self._calls = itertools.count()

    def initialize(self, x=None, *, seed=None):
        """Take the network's seed for the masks (when the layer has none of its own)."""
        self._init_seed = check_seed(seed, "DropoutLayer.initialize")
        self.reset()
        return self

    def _stream(self):
        base = self._seed if self._seed is not None else self._init_seed
        k = next(self._calls)
        if base is None or not isinstance(base, numbers.Integral) and not isinstance(base, list):
            return base  # None (fresh entropy) or a Generator
        return (list(base) if isinstance(base, list) else [int(base)]) + [k]

    def mask(self, x):
        """The next scaled mask for ``x`` (an array of ``x``'s library, dtype, device and
        shape): ``1 / (1 - p)`` where kept, 0 where dropped."""
        xd = x._data if isinstance(x, FormattedArray) else x
        xp = _backend.namespace(xd)
        u = _backend.random_uniform(tuple(xd.shape), 0.0, 1.0, seed=self._stream(), xp=xp,
                                    dtype=xd.dtype, device=_backend.device(xd))
        return xp.astype(u >= self._probability, xd.dtype) * (1.0 / (1.0 - self._probability))

    def predict(self, x):
        """Inference: the identity."""
        return x

    def forward(self, x):
        """Training: ``(x · mask, {})`` with a fresh mask (see :meth:`mask`)."""
        if self._probability == 0:
            return x, {}
        m = self.mask(x)
        if isinstance(x, FormattedArray):
            m = FormattedArray._wrap(m, x.format)
        return multiply(x, m), {}

    def type_name(self) -> str:
        return "Dropout"

    def description(self) -> str:
        return f"{round(self._probability * 100, 4):g}% dropout"

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        return {"name": self.name, "probability": self._probability, "seed": self._seed,
                "num_inputs": 1, "input_names": ("in",), "num_outputs": 1,
                "output_names": ("out",)}

    def __repr__(self):
        return display("DropoutLayer", [("Name", repr(self.name)), None, "Hyperparameters",
                                        ("Probability", matlab_number(self._probability))])


def dropout_layer(probability=0.5, *, seed=None, name="") -> DropoutLayer:
    """Create a :class:`DropoutLayer` (MATLAB ``dropoutLayer``)."""
    return DropoutLayer(probability, seed=seed, name=name)
