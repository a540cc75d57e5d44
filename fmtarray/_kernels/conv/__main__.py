"""``python -m fmtarray._kernels.conv``: print the registered algorithms as Markdown."""

from .registry import markdown_table

print(markdown_table())
