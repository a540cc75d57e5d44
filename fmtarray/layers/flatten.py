"""``FlattenLayer`` (MATLAB ``flattenLayer``): folds the spatial dims into the channels.

``SSCB`` → ``CB``, ``SCBT`` → ``CBT``, ``SSSCB`` → ``CB``; ``CB``/``CBT`` pass through.
The order is MATLAB's column-major one (first ``S`` fastest, ``C`` slowest): an
``H × W × C × N`` input becomes ``reshape(X, H*W*C, N)`` as MATLAB computes it. See
:func:`fmtarray.ops.shape.flatten`.
"""

from __future__ import annotations

from ..ops.shape import flatten
from .base import Layer, check_name

__all__ = ["FlattenLayer", "flatten_layer"]


class FlattenLayer(Layer):
    """Collapses the ``S`` dims of the input into its ``C`` dim (MATLAB ``flattenLayer``)."""

    default_name = "flatten"

    def __init__(self, *, name=""):
        self.name = check_name(name)

    num_inputs = property(lambda self: 1, doc="Number of inputs: 1 (read-only).")
    input_names = property(lambda self: ("in",), doc="Input names: ('in',) (read-only).")
    num_outputs = property(lambda self: 1, doc="Number of outputs: 1 (read-only).")
    output_names = property(lambda self: ("out",), doc="Output names: ('out',) (read-only).")

    def predict(self, x):
        fmt = getattr(x, "format", "")
        if not fmt:
            raise ValueError(
                f"{self._who()} needs a formatted input (it folds the 'S' dims into 'C'), got "
                f"an unformatted array of shape {tuple(getattr(x, 'shape', ()))}"
            )
        return flatten(x)

    def type_name(self) -> str:
        return "Flatten"

    def description(self) -> str:
        return "Flatten"

    def properties(self) -> dict:
        """Every property, by its Python name (MATLAB's ``properties``)."""
        return {n: getattr(self, n) for n in
                ("name", "num_inputs", "input_names", "num_outputs", "output_names")}

    def __repr__(self) -> str:
        return f"FlattenLayer with properties:\n\n{'Name':>18}: {self.name!r}"

    __str__ = __repr__


def flatten_layer(*, name="") -> FlattenLayer:
    """Create a :class:`FlattenLayer` (MATLAB ``flattenLayer``)."""
    return FlattenLayer(name=name)
