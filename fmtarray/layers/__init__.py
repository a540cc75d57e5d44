"""Layers: one family per module."""

from .base import Layer  # noqa: F401
