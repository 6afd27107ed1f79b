"""`cellmono docs` from the outside: bad input is refused in one line and deletes nothing, a failing
notebook is named with its cell and exits 1 without a traceback, `serve` stays on loopback and stops
cleanly on Ctrl-C, and no step reaches the network."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cellmono.core.errors import CellmonoError
from cellmono.ops import pages
from cellmono.ops.diagrams import render_svg
from cellmono.ops.docs import MARKER, build_site, layer_contract, layers_diagram
from docs_support import CELLMONO, ROOT, cellmono


def notebook(*cells: tuple[str, str]) -> str:
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": kind, "id": f"cell{index}", "metadata": {}, "source": source,
         **({"outputs": [], "execution_count": None} if kind == "code" else {})}
        for index, (kind, source) in enumerate(cells, start=1)]})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project: a README with a diagram and two notebooks."""
    root = tmp_path / "project"
    (root / "nbs").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "README.md").write_text("# demo\n\n```mermaid\nflowchart LR\n    readme[Readme] --> site[Site]\n```\n")
    (root / "nbs" / "00_one.ipynb").write_text(notebook(("markdown", "# one\n\n> First."), ("code", "#| default_exp core.one")))
    (root / "nbs" / "01_two.ipynb").write_text(notebook(("markdown", "# two\n\n> Second."), ("code", "x = 2")))
    return root


def tree(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def refused(completed: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert completed.returncode == 2, (completed.returncode, completed.stderr)
    assert completed.stderr.startswith("cellmono: error: ") and completed.stderr.count("\n") == 1, completed.stderr
    assert "Traceback" not in completed.stderr
    for phrase in phrases:
        assert phrase in completed.stderr, completed.stderr


def test_out_inside_the_work_tree_is_refused(project: Path) -> None:
    before = tree(project)
    for inside in (project / "nbs" / "site", project, project / "_docs" / "deeper"):
        refused(cellmono("docs", "build", "--out", str(inside), cwd=project), "is inside the work tree")
    assert tree(project) == before and not (project / "nbs" / "site").exists()


def test_out_at_a_folder_of_other_files_is_refused_and_nothing_deleted(project: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("months of work")
    (mine / "sub" / "index.html").write_text("my own page")
    refused(cellmono("docs", "build", "--out", str(mine), cwd=project), "is not empty and holds no previous docs build")
    assert tree(mine) == {"thesis.tex": b"months of work", "sub/index.html": b"my own page"}
    refused(cellmono("docs", "build", "--out", str(mine / "thesis.tex"), cwd=project), "is a file, not a folder")


def test_a_previous_build_is_replaced(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    first = cellmono("docs", "build", "--out", str(out), cwd=project)
    assert first.returncode == 0, first.stderr
    assert re.match(r"built 3 pages with 1 diagrams in [\d.]+ s: ", first.stdout), first.stdout
    (project / "nbs" / "01_two.ipynb").unlink()
    again = cellmono("docs", "build", "--out", str(out), cwd=project)
    assert again.returncode == 0, again.stderr
    assert sorted(tree(out)) == [MARKER, "00_one.html", "index.html", "style.css"]


def test_a_notebook_that_fails_names_itself_and_its_cell(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    assert cellmono("docs", "build", "--out", str(out), cwd=project).returncode == 0
    before = tree(out)
    (project / "nbs" / "01_two.ipynb").write_text(notebook(
        ("markdown", "# two"), ("code", "x = 2"), ("markdown", "```mermaid\nflowchart LR\n    a[never closed --> b\n```")))
    failed = cellmono("docs", "build", "--out", str(out), cwd=project)
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.startswith("cellmono: error: nbs/01_two.ipynb cell 3 (id cell3): mermaid diagram does not render")
    assert "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1
    assert tree(out) == before, "a failed build must leave the previous one whole"


def test_a_notebook_that_is_not_json_names_itself(project: Path, tmp_path: Path) -> None:
    (project / "nbs" / "01_two.ipynb").write_text('{"cells": [ {"cell_type": "markdown",')
    failed = cellmono("docs", "build", "--out", str(tmp_path / "site"), cwd=project)
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr.startswith("cellmono: error: nbs/01_two.ipynb: not valid JSON: ")
    assert "Traceback" not in failed.stderr and not (tmp_path / "site").exists()


def test_a_cell_nbconvert_cannot_convert_is_named(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When nbconvert itself fails, the build converts cell by cell to name the one at fault."""
    exporter = pages._exporter()

    class Failing:
        def from_notebook_node(self, notebook: Any) -> Any:
            if any("explode" in cell.source for cell in notebook.cells):
                raise ValueError("cannot render this output")
            return exporter.from_notebook_node(notebook)

    monkeypatch.setattr(pages, "_exporter", lambda: Failing())
    (project / "nbs" / "01_two.ipynb").write_text(notebook(("markdown", "# two"), ("code", "x = 2"), ("code", "explode()")))
    with pytest.raises(CellmonoError, match=r"^nbs/01_two.ipynb cell 3 \(id cell3\): cannot be converted: "
                                            r"ValueError: cannot render this output$"):
        build_site(project, project.parent / "site", workers=1)


def test_serve_stays_on_loopback_and_stops_on_ctrl_c(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    assert cellmono("docs", "build", "--out", str(out), cwd=project).returncode == 0
    server = subprocess.Popen([sys.executable, "-c", CELLMONO, "docs", "serve", "--out", str(out), "--port", "0"],
                              cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              # started as a background job of a script is: with SIGINT ignored (Ctrl-C must still stop it)
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/ \(Ctrl-C stops\)", line)
        assert match, line
        port = int(match.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/00_one.html", timeout=10) as response:
            assert "<title>one · demo</title>" in response.read().decode()
        with pytest.raises(OSError):  # bound to 127.0.0.1 only: another loopback address finds nobody
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
        server.send_signal(signal.SIGINT)
        stdout, stderr = server.communicate(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stdout.strip().endswith("stopped")


def test_serve_refuses_a_folder_without_a_build(tmp_path: Path, project: Path) -> None:
    refused(cellmono("docs", "serve", "--out", str(tmp_path), cwd=project), "holds no docs build")


def test_layout_prints_the_diagram_of_the_contract() -> None:
    completed = cellmono("docs", "layout")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == layers_diagram(layer_contract(ROOT / "pyproject.toml"))


def test_diagrams_are_written_and_drawn_with_the_network_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """mermaid-py only writes text and mermaidx draws in-process: neither opens a connection."""
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    text = layers_diagram(layer_contract(ROOT / "pyproject.toml"))
    svg = render_svg(text)
    assert "<p>transports</p>" in svg


def test_mermaid_py_online_renderer_is_never_used() -> None:
    for path in (ROOT / "cellmono").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"\bMermaid\(|mermaid\.ink|from mermaid import|import mermaid\b", source), path
