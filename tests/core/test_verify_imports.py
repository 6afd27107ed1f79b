"""`cellmono verify` sees every way one cell's module can reach another's: `importlib.import_module`,
`__import__`, a relative dynamic import, and a helper module (or a chain of them) that imports another cell.
Each is reported by the real command, in a subprocess, with the path it took; a clean app still passes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TARGET = '''
from pydantic import BaseModel
from cellmono.core.cell import Cell, tool


class Word(BaseModel):
    text: str


class AlphaCell(Cell):
    name = "alpha"

    @tool(requires="alpha:use")
    async def shout(self, request: Word) -> Word:
        return Word(text=request.text.upper())
'''

CELL = '''
{prelude}
from pydantic import BaseModel
from cellmono.core.cell import Cell, tool


class Text(BaseModel):
    text: str


class {cls}(Cell):
    name = "{name}"

    @tool(requires="{name}:use")
    async def echo(self, request: Text) -> Text:
        {body}
        return request
'''

WAYS = {
    "import_module": ("import importlib", "importlib.import_module('shop.alpha')"),
    "import_module_from": ("from importlib import import_module", "import_module('shop.' + 'alpha')"),
    "dunder_import": ("", "__import__('shop.alpha')"),
    "relative_dynamic": ("import importlib", "importlib.import_module('.alpha', __package__)"),
    "helper": ("from . import shared", ""),
    "helper_chain": ("from .util import tools", ""),
}


def write_app(folder: Path, ways: list[str]) -> Path:
    package = folder / "shop"
    (package / "util").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "alpha.py").write_text(TARGET)
    (package / "shared.py").write_text("from .alpha import Word  # a helper that reaches into a cell\n")
    (package / "util" / "__init__.py").write_text("")
    (package / "util" / "tools.py").write_text("from .. import deep\n")
    (package / "deep.py").write_text("import importlib\n\ndef load():\n    return importlib.import_module('shop.alpha')\n")
    sections = ["[cell.alpha]\nclass = shop.alpha:AlphaCell\n"]
    for way in ways:
        prelude, body = WAYS[way]
        (package / f"{way}.py").write_text(CELL.format(prelude=prelude, cls="UserCell", name=way.replace("_", ""),
                                                       body=body or "pass"))
        sections.append(f"[cell.{way.replace('_', '')}]\nclass = shop.{way}:UserCell\n")
    cells = ", ".join(["alpha"] + [way.replace("_", "") for way in ways])
    settings = folder / "settings.ini"
    settings.write_text(f"[app]\ncells = {cells}\n\n" + "\n".join(sections))
    return settings


def verify(settings: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "cellmono"), "verify", "--settings", str(settings)],
                          capture_output=True, text=True, timeout=120, cwd=settings.parent)


@pytest.mark.parametrize("way", sorted(WAYS))
def test_each_way_of_reaching_another_cell_is_reported(tmp_path: Path, way: str) -> None:
    result = verify(write_app(tmp_path, [way]))
    assert result.returncode != 0, result.stdout
    name = way.replace("_", "")
    assert f"cell {name!r} (module shop.{way}) imports module shop.alpha of cell 'alpha'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if way == "helper":
        assert "through shop.shared" in result.stderr
    if way == "helper_chain":
        assert "through shop.util.tools -> shop.deep" in result.stderr


def test_a_clean_app_passes(tmp_path: Path) -> None:
    settings = write_app(tmp_path, [])
    result = verify(settings)
    assert result.returncode == 0 and result.stdout.startswith("ok: 1 cells"), result.stderr
    assert verify(ROOT / "settings.ini").returncode == 0  # the example app: cells share contracts, no cell


def test_a_computed_name_is_not_a_false_alarm(tmp_path: Path) -> None:
    """A name the code computes cannot be checked statically; the notebook says so, and verify stays quiet."""
    settings = write_app(tmp_path, [])
    (tmp_path / "shop" / "plugin.py").write_text(textwrap.dedent(CELL.format(
        prelude="import importlib\nNAME = 'json'", cls="PluginCell", name="plugin",
        body="importlib.import_module(NAME)")))
    settings.write_text(settings.read_text().replace("cells = alpha", "cells = alpha, plugin")
                        + "\n[cell.plugin]\nclass = shop.plugin:PluginCell\n")
    assert verify(settings).returncode == 0
