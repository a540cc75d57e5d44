"""MATLAB names for transposed convolution: dltranspconv and transposedConv2dLayer."""

from __future__ import annotations

__all__: list[str] = []
