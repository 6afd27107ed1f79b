"""Living diagrams: the committed diagrams must equal what the live app generates."""

from __future__ import annotations

import re
from pathlib import Path

from cellmono.core.app import App, cells_from_settings

ROOT = Path(__file__).resolve().parents[2]


def fenced_diagram(path: Path, marker: str) -> str:
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\s*```mermaid\n(.*?)```", text, re.DOTALL)
    assert match, f"{path} has no mermaid block after <!-- {marker} -->"
    return match.group(1)


def example_app() -> App:
    """The example app as settings.ini composes it; drawing it needs no keys, so none are created."""
    settings, cells = cells_from_settings(ROOT / "settings.ini")
    return App(cells, settings=settings)


def test_readme_shows_the_example_apps_real_topology() -> None:
    generated = example_app().to_mermaid()
    committed = fenced_diagram(ROOT / "README.md", "diagram: cellmono diagram")
    assert committed == generated, "README diagram drifted: paste the output of `cellmono diagram`"


def test_example_readme_shows_the_same_topology() -> None:
    generated = example_app().to_mermaid()
    committed = fenced_diagram(ROOT / "examples" / "notes" / "README.md", "diagram: cellmono diagram")
    assert committed == generated, "examples/notes/README.md diagram drifted: paste `cellmono diagram`"
