"""The README's code examples, so that tests run them as a reader would."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def python_block(containing: str) -> str:
    """The README's one ```python block that contains ``containing``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
              if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks of README.md contain {containing!r}"
    return blocks[0]
