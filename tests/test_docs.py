"""Every ```python block in docs/ runs (blocks of one page share a namespace, in order)."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if "```python" in p.read_text())


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_code_blocks_run(page, tmp_path, monkeypatch):
    if "import jax" in page.read_text() and importlib.util.find_spec("jax") is None:
        pytest.skip(f"{page.name} needs jax, which is not installed")
    monkeypatch.chdir(tmp_path)  # any file a snippet writes lands in a temp dir
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    ns: dict = {"__name__": f"docs_{page.stem}"}
    for i, src in enumerate(blocks):
        try:
            exec(compile(src, f"{page.name}[block {i}]", "exec"), ns)
        except Exception as e:  # pragma: no cover - the message is the point
            raise AssertionError(f"{page.name} block {i} failed: {e!r}\n{src}") from e
