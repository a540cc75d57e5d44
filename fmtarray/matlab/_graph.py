"""MATLAB names for layer graphs: dlnetwork editing (addLayers, connectLayers, ...) and the combination layers."""

from __future__ import annotations

__all__: list[str] = []
