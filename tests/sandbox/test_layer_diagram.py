"""The sandbox layer's diagram (Architecture of `nbs/20_policy.ipynb`) is drawn from the modules' imports:
each solid arrow is an import that no chain of other imports implies, and every such import is drawn."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cellmono" / "sandbox"
NOTEBOOK = ROOT / "nbs" / "20_policy.ipynb"


def sandbox_imports() -> dict[str, set[str]]:
    """module -> the sandbox modules it imports (relative or absolute), from the exported sources."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        targets = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level == 1:
                    targets.add(node.module.split(".")[0])
                elif node.level == 0 and node.module.startswith("cellmono.sandbox."):
                    targets.add(node.module.split(".")[2])
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph[start])
    while stack:
        module = stack.pop()
        if module not in seen:
            seen.add(module)
            stack.extend(graph.get(module, ()))
    return seen


def transitive_reduction(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(source, target) for source, targets in graph.items() for target in targets
            if not any(target in reachable(graph, other) for other in targets - {target})}


def drawn_edges() -> set[tuple[str, str]]:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    text = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    diagram = text[text.index("## Architecture"):].split("```mermaid\n", 1)[1].split("```", 1)[0]
    names = {node: label for node, label in re.findall(r'^\s*(\w+)\["sandbox\.(\w+)', diagram, re.MULTILINE)}
    edges = set()
    for source, targets in re.findall(r"^\s*(\w+) --> ([\w &]+)$", diagram, re.MULTILINE):
        edges |= {(names[source], names[target.strip()]) for target in targets.split("&")}
    return edges


def test_the_layer_diagram_is_the_import_graph() -> None:
    graph = sandbox_imports()
    assert set(graph) >= {"policy", "guest", "hosttools", "runner", "wasm", "native"}
    assert drawn_edges() == transitive_reduction(graph)


def test_the_layer_has_no_cycle_and_policy_is_its_floor() -> None:
    graph = sandbox_imports()
    assert all(module not in reachable(graph, module) for module in graph)
    assert graph["policy"] == set() and graph["harden"] == set()
