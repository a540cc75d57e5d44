"""MATLAB names for custom training loops: dlfeval, dlgradient, sgdmupdate, adamupdate, onehotencode, crossentropy, ...."""

from __future__ import annotations

__all__: list[str] = []
