"""The README's "Use it from Python" snippets run as written."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def snippets():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index("## Use it from Python")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_numpy_torch_and_meta_snippets():
    found = snippets()
    assert len(found) == 3
    assert "import neuroplastic as npl" in found[0] and "neuroplastic.torch" in found[1]
    assert "meta_loss" in found[2]


@pytest.mark.parametrize("index", range(len(snippets())))
def test_snippet_runs(index):
    code = snippets()[index]
    if "import torch" in code and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: the README's PyTorch snippet is skipped")
    exec(compile(code, f"README.md (Python snippet {index + 1})", "exec"), {"__name__": "__readme__"})
