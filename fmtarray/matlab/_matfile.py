"""MATLAB names for learnables to and from MATLAB .mat files."""

from __future__ import annotations

__all__: list[str] = []
