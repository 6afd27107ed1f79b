"""The offline docs site of this project: every page, every diagram drawn, nothing from the network,
the work tree untouched, a real browser finds the drawings; Quarto's configuration and the README's
layer diagram agree with the project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cellmono.ops.diagrams import default_cache_folder, mermaid_blocks
from cellmono.ops.docs import DEFAULT_OUT, MARKER, build_site, layer_contract, layers_diagram, notebook_paths, site_pages
from docs_support import ROOT, cellmono, expected_labels, svg_text

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
DRAWING = re.compile(r'<figure class="diagram">(<svg\b.*?</svg>)</figure>', re.DOTALL)


def git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored=no"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's site, built once for the module (drawings come from the user's diagram cache)."""
    out = tmp_path_factory.mktemp("docs") / "site"
    build_site(ROOT, out, cache=default_cache_folder())
    return out


def source_markdown(source: str) -> str:
    path = ROOT / source
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")


def test_building_leaves_the_work_tree_as_it_was(tmp_path: Path) -> None:
    """`cellmono docs build` into a folder outside the tree, then into the default `_docs/`: `git status` never changes."""
    before = git_status()
    outside = cellmono("docs", "build", "--out", str(tmp_path / "site"))
    assert outside.returncode == 0, outside.stderr
    assert git_status() == before
    default = cellmono("docs", "build")
    assert default.returncode == 0, default.stderr
    assert git_status() == before
    assert (ROOT / DEFAULT_OUT / MARKER).is_file() and (ROOT / DEFAULT_OUT / "index.html").is_file()
    print(outside.stdout, default.stdout)  # the build times, for the record (pytest -s)


def test_every_notebook_and_the_readme_has_a_page(site: Path) -> None:
    expected = {"index.html"} | {path.relative_to(ROOT / "nbs").with_suffix(".html").as_posix()
                                 for path in notebook_paths(ROOT)}
    built = {path.relative_to(site).as_posix() for path in site.rglob("*.html")}
    assert built == expected
    assert set(json.loads((site / MARKER).read_text())["files"]) == expected | {"style.css"}


def test_navigation_is_grouped_by_layer_in_layer_order(site: Path) -> None:
    """The sidebar's groups follow the import contract from the bottom up: notebooks are numbered by layer."""
    groups = re.findall(r"<h2>([\w/]+)</h2>", (site / "index.html").read_text())
    layers = [name.split(".")[-1] for layer in reversed(layer_contract(ROOT / "pyproject.toml")) for name in layer]
    assert groups[0] == "guide"
    packaged = [group for group in groups if group in layers]
    assert len(packaged) == len(set(packaged)), f"a layer's notebooks are not numbered together: {groups}"
    rank = {name: index for index, layer in enumerate(reversed(layer_contract(ROOT / "pyproject.toml")))
            for name in (package.split(".")[-1] for package in layer)}
    assert [rank[group] for group in packaged] == sorted(rank[group] for group in packaged), groups
    assert set(groups) <= {"guide", "api", "runbooks", *layers}, groups


def test_no_page_loads_anything_from_the_network(site: Path) -> None:
    remote = re.compile(r"""<(?:script|link|img|iframe|source|embed|object)\b[^>]*\b(?:src|href|data)\s*=\s*["']?\s*(?:https?:)?//""",
                        re.IGNORECASE)
    for path in [*site.rglob("*.html"), site / "style.css"]:
        text = path.read_text(encoding="utf-8")
        assert not remote.search(text), f"{path.name} loads from the network: {remote.search(text)}"
        styles = text if path.suffix == ".css" else "".join(re.findall(r"<style\b.*?</style>", text, re.DOTALL))
        assert not re.search(r"@import|url\(\s*['\"]?\s*(?:https?:)?//", styles, re.IGNORECASE), path.name
        assert not re.search(r"<script\b", text, re.IGNORECASE), f"{path.name} runs a script"


def test_every_diagram_is_drawn_inline_with_the_labels_of_its_text(site: Path) -> None:
    checked = 0
    for page in site_pages(ROOT):
        blocks = mermaid_blocks(source_markdown(page.source))
        drawings = DRAWING.findall((site / page.href).read_text(encoding="utf-8"))
        assert len(drawings) == len(blocks), f"{page.source}: {len(blocks)} diagrams, {len(drawings)} drawn"
        for number, (text, svg) in enumerate(zip(blocks, drawings), start=1):
            assert f'<svg id="diagram-{number}"' in svg
            seen = svg_text(svg)
            missing = [label for label in expected_labels(text) if label not in seen]
            assert not missing, f"{page.source} diagram {number} lacks {missing}"
            checked += 1
    assert checked >= 30, checked


def chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if CI:
            pytest.fail("chromium is missing: .ci/system-packages installs Debian's chromium")
        pytest.skip("headless Chromium is not installed here (apt-get install chromium)")
    return browser


def test_a_browser_offline_finds_the_drawn_diagram(site: Path, tmp_path: Path) -> None:
    """Headless Chromium with the network blocked opens a page with a diagram: the DOM holds the drawing."""
    browser = chromium()
    page = site / "05_config.html"
    completed = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    dom = completed.stdout
    assert completed.returncode == 0, completed.stderr[-2000:]
    drawing = DRAWING.search(dom)
    assert drawing, "no <svg> inside figure.diagram in the browser's DOM"
    svg = drawing.group(1)
    # the browser parsed the drawing into SVG elements: it serializes `<path .../>` as `<path ...></path>`
    assert "</path>" in svg and "</svg>" in svg
    text = mermaid_blocks(source_markdown("nbs/05_config.ipynb"))[0]
    assert all(label in svg_text(svg) for label in expected_labels(text))


def quarto_files(root: Path, patterns: list[str]) -> set[str]:
    """What Quarto renders for `patterns`: glob matches, skipping `.` and `_` files and folders."""
    found = set()
    for pattern in patterns:
        for path in root.glob(pattern):
            relative = path.relative_to(root)
            if path.is_file() and not any(part.startswith((".", "_")) for part in relative.parts):
                found.add(relative.as_posix())
    return found


def quarto_config(root: Path) -> dict[str, object]:
    config = yaml.safe_load((root / "_quarto.yml").read_text(encoding="utf-8"))
    assert config["project"]["type"] == "website" and config["project"]["output-dir"] == DEFAULT_OUT
    assert config["execute"]["enabled"] is False
    return config


def expected_sources(root: Path) -> set[str]:
    return {"README.md"} | {path.relative_to(root).as_posix() for path in notebook_paths(root)}


def test_quarto_renders_exactly_the_notebooks_that_exist() -> None:
    config = quarto_config(ROOT)
    assert quarto_files(ROOT, config["project"]["render"]) == expected_sources(ROOT)  # type: ignore[index]


def test_quarto_render_list_covers_runbooks(tmp_path: Path) -> None:
    """The same configuration on a tree with `nbs/runbooks/`, a checkpoint and a nested notebook."""
    shutil.copy(ROOT / "_quarto.yml", tmp_path / "_quarto.yml")
    (tmp_path / "README.md").write_text("# demo\n")
    for name in ("nbs/00_errors.ipynb", "nbs/runbooks/restart.ipynb", "nbs/runbooks/rotate_keys.ipynb",
                 "nbs/.ipynb_checkpoints/00_errors-checkpoint.ipynb", "nbs/_drafts/idea.ipynb"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    config = quarto_config(tmp_path)
    rendered = quarto_files(tmp_path, config["project"]["render"])  # type: ignore[index]
    assert rendered == expected_sources(tmp_path)
    assert {"nbs/runbooks/restart.ipynb", "nbs/runbooks/rotate_keys.ipynb"} <= rendered


def test_quarto_sidebar_groups_the_notebooks_as_the_site_does() -> None:
    """Each notebook falls in exactly one section of nbs/sidebar.yml, the one named after its page's group."""
    config = quarto_config(ROOT)
    assert config["metadata-files"] == ["nbs/sidebar.yml"]
    sidebar = yaml.safe_load((ROOT / "nbs" / "sidebar.yml").read_text(encoding="utf-8"))
    contents = sidebar["website"]["sidebar"]["contents"]
    assert contents[0] == "README.md"
    sections = {entry["section"]: {source for item in entry["contents"] for source in quarto_files(ROOT, [item["auto"]])}
                for entry in contents[1:]}
    for page in site_pages(ROOT)[1:]:
        homes = [name for name, sources in sections.items() if page.source in sources]
        assert homes == [page.group], f"{page.source} (group {page.group}) is in sidebar sections {homes}"


def readme_layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index("\n## Layout\n"):]


def test_readme_layout_diagram_is_the_import_contract() -> None:
    match = re.search(r"<!-- diagram: cellmono docs layout -->\s*```mermaid\n(.*?)```", readme_layout(), re.DOTALL)
    assert match, "README's Layout section has no mermaid block after <!-- diagram: cellmono docs layout -->"
    generated = layers_diagram(layer_contract(ROOT / "pyproject.toml"))
    assert match.group(1) == generated, "README layer diagram drifted: paste the output of `cellmono docs layout`"


def test_readme_layout_says_what_each_subpackage_holds() -> None:
    section = readme_layout()
    packages = {path.parent.name for path in (ROOT / "cellmono").glob("*/__init__.py")}
    contract = {name.split(".")[-1] for layer in layer_contract(ROOT / "pyproject.toml") for name in layer}
    assert packages == contract, "every subpackage is a layer of the import contract"
    for package in sorted(packages):
        line = re.search(rf"^- `cellmono\.{package}`[^\n]*: .{{20,}}$", section, re.MULTILINE)
        assert line, f"README's Layout section has no line saying what cellmono.{package} holds"
