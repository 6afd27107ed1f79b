"""The stdio hint works from any folder: `cellmono serve` prints absolute paths and a ready-to-paste
`mcpServers` block; a real MCP client launches exactly that command from an unrelated folder and lists the tools.
A tool whose input model has no JSON schema is a one-line `ConfigError` naming the cell and the tool."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parents[2]
CELLMONO = str(Path(sys.executable).parent / "cellmono")


def app_folder(tmp_path: Path) -> Path:
    """A copy of the example app in a temporary folder: its keys, audit log and store are written there."""
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(ROOT / "settings.ini", folder / "settings.ini")
    (folder / "examples").symlink_to(ROOT / "examples")
    return folder


def printed_hint(folder: Path) -> str:
    """What `cellmono serve` prints once it listens, started in `folder`."""
    process = subprocess.Popen([CELLMONO, "serve", "--port", "0", "--seconds", "30"], cwd=folder, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "health:" in line:
                break
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    return "".join(lines)


@pytest.mark.anyio
async def test_the_printed_stdio_block_works_from_another_folder(tmp_path: Path) -> None:
    folder = app_folder(tmp_path)
    text = printed_hint(folder)
    block = json.loads(text[text.index("{"):text.rindex("}") + 1])
    server = block["mcpServers"]["notes"]
    assert Path(server["command"]).is_absolute() and os.access(server["command"], os.X_OK)
    settings = server["args"][server["args"].index("--settings") + 1]
    assert Path(settings) == (folder / "settings.ini").resolve()
    assert f"claude mcp add notes -- {server['command']} serve --stdio --settings {settings}" in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # a client's launch: no venv, no cwd of ours
    parameters = StdioServerParameters(command=server["command"], args=server["args"], cwd=str(elsewhere),
                                       env=environment)
    async with Client(parameters, cache=None) as mcp:
        names = {tool.name for tool in (await mcp.list_tools()).tools}
    assert names == {"notes.add", "notes.get", "search.query", "digest.summary"}
    assert not list(elsewhere.iterdir())  # the state lives beside the settings file, not in the client's cwd
    assert (folder / "var").is_dir()


SCHEMALESS = '''
from pydantic import BaseModel, ConfigDict
from cellmono.core.cell import Cell, Empty, tool


class Opaque:
    pass


class Poke(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque | None = None


class WeirdCell(Cell):
    name = "weird"

    @tool(requires="weird:use")
    async def poke(self, request: Poke) -> Empty:
        """Poke."""
        return Empty()
'''


@pytest.mark.parametrize("command", [["serve", "--port", "0", "--seconds", "1"], ["serve", "--stdio"], ["verify"]])
def test_a_tool_without_a_json_schema_is_a_config_error(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "weird.py").write_text(SCHEMALESS)
    (tmp_path / "settings.ini").write_text("[app]\ncells = weird\n\n[cell.weird]\nclass = weird:WeirdCell\n")
    result = subprocess.run([CELLMONO, *command], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "cell 'weird' tool 'weird.poke': its input model Poke has no JSON schema" in result.stderr
    assert not list(tmp_path.glob("**/api-keys.json"))  # refused before an admin key was made
