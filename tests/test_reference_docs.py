"""The layer reference (docs/reference/index.md) lists every layer class that
fmtarray.layers exports, so it cannot fall behind the code."""

from __future__ import annotations

import inspect
import pathlib

import fmtarray.layers as layers

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_every_exported_layer_is_in_the_reference():
    text = (DOCS / "reference" / "index.md").read_text()
    classes = [n for n, c in vars(layers).items() if inspect.isclass(c) and n.endswith("Layer")
               and n != "Layer" and not inspect.isabstract(c) and "Base" not in n]
    assert len(classes) >= 20
    missing = [n for n in classes if f"`{n}`" not in text]
    assert not missing, f"add these layers to docs/reference/index.md: {missing}"
    for page in ("cnn_layers.md", "transposed.md"):
        assert page in text and (DOCS / "reference" / page).exists()
