"""The documentation runs: every ```python block of README.md and docs/*.md, page by page.

Each page's blocks run in order in one fresh namespace, in a temporary working directory,
with matplotlib's Agg backend, under the suite's settings (float64 by default, warnings as
errors). Blocks that must not run use ```bash or ```text fences. A failing block's
traceback points at the line of the Markdown file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A fence opens with ```python at the start of a line and closes with ``` on its own line.
_PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
# Inline Markdown links [text](target), not images; external addresses are skipped below.
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of each ```python block, 1-based like an editor."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _PYTHON_BLOCK.finditer(text)]


def relative_links(text: str) -> list[tuple[str, str]]:
    """``(file, anchor)`` of each link to a file of the repository or a heading of a page."""
    out = []
    for m in _LINK.finditer(text):
        target = m.group(1)
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        out.append((file, anchor))
    return out


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lowercase, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#{1,6} (.+)$", _PYTHON_BLOCK.sub("", text), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_only_python_fences_are_collected_with_their_line_numbers():
    text = "# t\n```bash\nmake demo\n```\n```python\nx = 1\n```\n```text\nout\n```\n"
    text += "```python\ny = x\nz = y\n```\n"
    assert python_blocks(text) == [(6, "x = 1\n"), (12, "y = x\nz = y\n")]
    links = "[a](b.md#c) [d](https://e) ![f](g.png) [h](#i)"
    assert relative_links(links) == [("b.md", "c"), ("", "i")]
    assert heading_anchors("## Plates and `to_event`\n```python\n# no\n```") == {
        "plates-and-to_event"
    }


def test_every_page_is_found():
    names = [p.relative_to(ROOT).as_posix() for p in PAGES]
    assert "README.md" in names and "docs/index.md" in names, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = page.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert blocks, f"{page.name} has no ```python block: every page shows a runnable example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    try:
        for line, code in blocks:
            # Pad with newlines so that tracebacks report the line in the Markdown file.
            exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
    finally:
        plt.close("all")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(page: Path):
    text = page.read_text(encoding="utf-8")
    broken = []
    for file, anchor in relative_links(text):
        target = page.parent / file if file else page
        if not target.exists():
            broken.append(f"{file} (no such file)")
        elif anchor and target.suffix == ".md":
            if anchor not in heading_anchors(target.read_text(encoding="utf-8")):
                broken.append(f"{file}#{anchor} (no such heading)")
    assert not broken, f"{page.name} has broken links: {broken}"
