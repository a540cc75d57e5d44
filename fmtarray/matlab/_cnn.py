"""MATLAB names for the CNN layer family: grouped, 1-D and 3-D convolution, dropout, leaky ReLU, global average pooling."""

from __future__ import annotations

__all__: list[str] = []
