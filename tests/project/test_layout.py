"""The house keeps its rooms: layers import downward only, no cycles, no late imports of cellmono, small modules."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cellmono"
MAX_LINES = 400
MODULES = sorted(path for path in PACKAGE.rglob("*.py") if path.name != "_modidx.py")


def test_import_linter_contracts_are_kept() -> None:
    """`lint-imports` (pyproject's [tool.importlinter]): the layers contract and no cycles at any depth."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    completed = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "0 broken" in completed.stdout


def test_no_module_imports_cellmono_late() -> None:
    """A cellmono import inside a function is how a cycle hides from a reader: every one sits at module level."""
    late = []
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in top_level:
                if node.level or (node.module or "").split(".")[0] == "cellmono":
                    late.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.Import) and id(node) not in top_level:
                late += [f"{path.relative_to(ROOT)}:{node.lineno}" for alias in node.names
                         if alias.name.split(".")[0] == "cellmono"]
    assert not late, f"late imports of cellmono: {late}"


def test_modules_are_at_most_400_lines() -> None:
    long = {str(path.relative_to(ROOT)): count for path in MODULES
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these modules where their concept splits: {long}"


def test_every_subpackage_states_its_room() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring saying what the room holds"
