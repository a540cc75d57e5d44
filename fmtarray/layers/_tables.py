"""Tables of a network's parameters: MATLAB's ``net.Learnables`` / ``net.State`` tables
(:class:`ParameterTable`) and the summary of :meth:`fmtarray.Network.learnables_table`
(:class:`LearnablesTable`).

They live with the layer protocol (not in :mod:`fmtarray.network`) because they only
read layers' values; :class:`fmtarray.Network` builds them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import _backend
from ..array import FormattedArray, _dtype_name

__all__ = ["ParameterTable", "ParameterRow", "LearnablesTable", "LearnableRow"]

_X = "\u00d7"


# MATLAB's Learnables / State table ------------------------------------------------------------


class ParameterRow(NamedTuple):
    """One row of a :class:`ParameterTable`: MATLAB's ``Layer``, ``Parameter``, ``Value``."""

    Layer: str
    Parameter: str
    Value: Any


def _summary(v) -> str:
    """MATLAB's cell summary of a value: ``{5×5×1×20 dlarray}``."""
    shape = tuple(getattr(v, "shape", ()))
    dims = _X.join(map(str, shape if len(shape) >= 2 else (shape + (1, 1))[:2]))
    if isinstance(v, FormattedArray):
        return f"{{{dims} dlarray}}"
    if _backend.is_array(v):
        return f"{{{dims} {_dtype_name(v.dtype)}}}"
    return f"{{{type(v).__name__}}}"


class ParameterTable(dict):
    """MATLAB's ``net.Learnables`` / ``net.State`` table, which is also the
    ``{layer_name: {parameter: value}}`` tree of :meth:`fmtarray.Network.learnables`.

    As a ``dict`` it is that tree (``len()``, iteration, ``t["conv"]["weights"]``,
    ``==``), so it goes wherever a tree goes: ``dlgradient(loss, net.Learnables)``
    (which returns the gradients as a ``ParameterTable`` too), ``sgdmupdate``,
    ``net.predict(x, learnables=t)``, :func:`fmtarray.grad`, ``net.Learnables = t``.

    As a table it has one row per parameter, in the tree's order, with MATLAB's
    columns:

    * ``t.Layer``, ``t.Parameter``, ``t.Value``: the columns, as lists in row order
      (``Parameter`` holds fmtarray's parameter names: ``weights``, ``bias``,
      ``trained_mean``…);
    * ``t.height`` (MATLAB ``height(t)``, also ``t.num_rows``): the number of rows;
      ``len(t)`` stays the dict's, the number of layers;
    * ``t.row(i)`` or ``t[i]`` for an int ``i`` (negative counts from the end): the
      :class:`ParameterRow` ``(Layer, Parameter, Value)``; ``t.rows``: all of them;
    * ``print(t)``: MATLAB's display, values summarised as ``{5×5×1×20 dlarray}``.

    The table is a snapshot: changing it does not change the network; assign it back
    (``net.Learnables = t``) to store values.
    """

    def copy(self):
        return type(self)(self)

    @property
    def rows(self) -> list[ParameterRow]:
        """Every row, in order (layers in the tree's order, their parameters in order)."""
        return [ParameterRow(layer, p, v) for layer, params in self.items()
                for p, v in params.items()]

    @property
    def Layer(self) -> list[str]:  # noqa: N802 - MATLAB's column name
        """The ``Layer`` column: the layer name of each row."""
        return [r.Layer for r in self.rows]

    @property
    def Parameter(self) -> list[str]:  # noqa: N802
        """The ``Parameter`` column: the parameter name of each row."""
        return [r.Parameter for r in self.rows]

    @property
    def Value(self) -> list:  # noqa: N802
        """The ``Value`` column: the value of each row (the arrays themselves)."""
        return [r.Value for r in self.rows]

    @property
    def height(self) -> int:
        """The number of rows (MATLAB ``height(t)``); ``len(t)`` is the number of layers."""
        return sum(len(params) for params in self.values())

    num_rows = height

    @property
    def width(self) -> int:
        """The number of columns (MATLAB ``width(t)``): 3."""
        return 3

    def row(self, i) -> ParameterRow:
        """Row ``i`` (0-based; negative counts from the end)."""
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"row index must be an int, got {type(i).__name__} {i!r}")
        rows = self.rows
        if not -len(rows) <= i < len(rows):
            raise IndexError(f"row index {i} is out of range: the table has {len(rows)} rows")
        return rows[i]

    def __getitem__(self, key):
        """``t["conv"]``: the layer's ``{parameter: value}`` (dict access);
        ``t[i]`` for an int ``i``: row ``i`` (:meth:`row`)."""
        if isinstance(key, int) and not isinstance(key, bool) and not dict.__contains__(self, key):
            return self.row(key)
        return dict.__getitem__(self, key)

    def __repr__(self):
        rows = self.rows
        if not rows:
            return "  0\u00d73 empty table (Layer, Parameter, Value)"
        head = ("Layer", "Parameter", "Value")
        body = [(f'"{r.Layer}"', f'"{r.Parameter}"', _summary(r.Value)) for r in rows]
        widths = [max(len(c) for c in col) for col in zip(head, *body)]
        lines = [f"  {len(rows)}{_X}3 table", ""]
        lines.append("    " + "    ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        lines.append("    " + "    ".join("_" * w for w in widths))
        lines.append("")
        for row in body:
            lines.append("    " + "    ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(lines)

    __str__ = __repr__


# the learnables summary of Network.learnables_table() ------------------------------------


class LearnableRow(NamedTuple):
    layer: str
    parameter: str
    shape: tuple
    learn_rate_factor: float
    l2_factor: float


class LearnablesTable:
    """The learnable parameters of a network: one :class:`LearnableRow` per parameter.

    Iterate over it, index it, or print it.
    """

    def __init__(self, rows):
        self.rows = list(rows)

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    @property
    def num_values(self) -> int:
        """Total number of learnable values."""
        total = 0
        for r in self.rows:
            n = 1
            for s in r.shape:
                n *= s
            total += n
        return total

    def __str__(self):
        head = ("Layer", "Parameter", "Shape", "LearnRateFactor", "L2Factor")
        body = [
            (r.layer, r.parameter, _X.join(map(str, r.shape)) or "scalar",
             f"{r.learn_rate_factor:g}", f"{r.l2_factor:g}")
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        layers = len({r.layer for r in self.rows})
        lines = [
            f"{len(self.rows)} learnable parameters in {layers} layers ({self.num_values} values):",
            "",
        ]
        for row in [head] + body:
            lines.append("   " + "   ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(lines)

    __repr__ = __str__
