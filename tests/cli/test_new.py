"""A newcomer's first minutes: `cellmono new hello` writes an app that verifies, whose own test passes, and which a
real MCP client (launched over stdio, as Claude Desktop would) lists and uses: tool, resource template, completion
and prompt. A path that holds anything, or a name Python cannot import, is one line on stderr and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import ResourceTemplateReference

CELLMONO = str(Path(sys.executable).parent / "cellmono")


def cellmono(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CELLMONO, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("newcomer")
    created = cellmono("new", "hello", cwd=where)
    assert created.returncode == 0, created.stderr
    assert f"created a cellmono app in {where / 'hello'}" in created.stdout
    return where / "hello"


def test_the_new_app_verifies_and_its_own_test_passes(hello: Path) -> None:
    verified = cellmono("verify", "--settings", "settings.ini", cwd=hello)
    assert verified.returncode == 0 and "ok: 1 cells, 1 tools, no violations" in verified.stdout, verified
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=hello,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0 and "1 passed" in tested.stdout, tested.stdout + tested.stderr


@pytest.mark.anyio
async def test_a_real_client_lists_and_uses_its_tool_resource_completion_and_prompt(hello: Path, tmp_path: Path) -> None:
    parameters = StdioServerParameters(command=CELLMONO, args=["serve", "--stdio", "--settings", str(hello / "settings.ini")],
                                       cwd=str(tmp_path), env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    async with Client(parameters, cache=None) as mcp:
        assert [tool.name for tool in (await mcp.list_tools()).tools] == ["greeter.hello"]
        called = await mcp.call_tool("greeter.hello", {"name": "Ada"})
        assert called.structured_content == {"text": "Hello, Ada!"}, called
        templates = (await mcp.list_resource_templates()).resource_templates
        assert [template.uri_template for template in templates] == ["greetings://{name}"]
        assert (await mcp.read_resource("greetings://Ada")).contents[0].text == "Hello, Ada!"
        done = await mcp.complete(ResourceTemplateReference(uri="greetings://{name}"), {"name": "name", "value": "A"})
        assert done.completion.values == ["Ada"]
        assert [prompt.name for prompt in (await mcp.list_prompts()).prompts] == ["greeter.warmer"]
        got = await mcp.get_prompt("greeter.warmer", {"name": "Ada"})
        assert "warm greeting for Ada" in got.messages[0].content.text


@pytest.mark.parametrize("case", ["not empty", "a file", "bad name"])
def test_a_bad_target_is_one_line_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    target = tmp_path / "app"
    if case == "not empty":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif case == "a file":
        target.write_text("mine")
    before = sorted(str(path) for path in tmp_path.rglob("*"))
    args = ["new", "app", "--name", "class"] if case == "bad name" else ["new", "app"]
    refused = cellmono(*args, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused
    assert refused.stderr.startswith("cellmono: error: ") and refused.stderr.count("\n") == 1, refused.stderr
    expected = "is not a Python package name" if case == "bad name" else "cellmono new never writes over files"
    assert expected in refused.stderr
    assert sorted(str(path) for path in tmp_path.rglob("*")) == before
