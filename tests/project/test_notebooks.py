"""Every notebook is a design doc: title, one-line summary, Rationale, Architecture with a mermaid diagram."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "nbs").glob("*.ipynb"))


def markdown(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_reads_as_a_design_doc(notebook: Path) -> None:
    text = markdown(notebook)
    lines = text.splitlines()
    assert lines and lines[0].startswith("# "), "starts with a title"
    assert any(line.startswith("> ") for line in lines[:4]), "a one-line summary under the title"
    assert "## Rationale" in text, "a Rationale section"
    architecture = text.find("## Architecture")
    assert architecture != -1, "an Architecture section"
    assert "```mermaid" in text[architecture:], "a mermaid diagram under Architecture"


def test_no_notebook_is_committed_with_outputs() -> None:
    for notebook in NOTEBOOKS:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        assert not any(cell.get("outputs") for cell in cells if cell["cell_type"] == "code"), notebook.name
