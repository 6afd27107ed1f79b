"""Runbooks as MCP tools (issue 15 §6) through a real `cellmono serve` and the official `mcp` client: listed only
when the app exposes them, refused without `runbook:run:NAME`, a dry run by default, applied only with
`runbook:apply:NAME` after a dry run, audited under the caller, and no secret in a tool result or archive."""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cellmono.gateway.auth import ApiKeys

from runbooks_support import audit_runs, fresh_app, serve_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _app(folder: Path, expose: str) -> Path:
    settings = fresh_app(folder)
    text = re.sub(r"^cells = (.*)$", r"cells = \1, runbooks", settings.read_text(), count=1, flags=re.MULTILINE)
    text = text.replace("[security]\n", "[security]\nrole.operator = tool:call:runbooks.*, runbook:run:*\n"
                        "role.applier = tool:call:runbooks.*, runbook:run:*, runbook:apply:promote-cell\n", 1)
    text = text.replace("[gateway]\n", "[gateway]\ncall_timeout = 300\n", 1)  # a run starts a kernel: seconds
    settings.write_text(text + "\n[cell.runbooks]\nclass = cellmono.ops.runbook_tool:RunbookToolCell\n"
                        f"expose = {expose}\nsettings = {settings}\n")
    return settings


def _client(url: str, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(300.0))
    return Client(streamable_http_client(url, http_client=http), mode="2026-07-28", cache=None)


def _keys(folder: Path) -> dict[str, str]:
    keys = ApiKeys(folder / "var" / "api-keys.json")
    return {role: keys.create(f"{role}-user", [role]) for role in ("admin", "operator", "applier", "reader")}


async def test_only_exposed_runbooks_are_tools_and_each_is_gated(tmp_path: Path) -> None:
    settings = _app(tmp_path, "health-check, promote-cell")
    keys = _keys(tmp_path)
    with serve_app(tmp_path) as url:
        async with _client(url, keys["admin"]) as mcp:
            tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
        runbook_tools = sorted(name for name in tools if name.startswith("runbooks."))
        assert runbook_tools == ["runbooks.health-check", "runbooks.health-check-apply", "runbooks.promote-cell",
                                 "runbooks.promote-cell-apply"]
        schema = tools["runbooks.promote-cell"].input_schema
        assert sorted(schema["properties"]) == ["cell", "key", "replicas", "transport"]
        assert schema["additionalProperties"] is False
        async with _client(url, keys["reader"]) as mcp:
            assert not [tool for tool in (await mcp.list_tools()).tools if tool.name.startswith("runbooks.")]
            with pytest.raises(MCPError) as denied:
                await mcp.call_tool("runbooks.health-check", {})
            assert "403" in str(denied.value) or "runbook" in str(denied.value)
        before = settings.read_text()
        async with _client(url, keys["operator"]) as mcp:
            dry = await mcp.call_tool("runbooks.promote-cell", {})
            assert not dry.is_error, dry.content
            assert (dry.structured_content["mode"], dry.structured_content["ok"]) == ("dry-run", True)
            with pytest.raises(MCPError):
                await mcp.call_tool("runbooks.promote-cell-apply", {})
            bad = await mcp.call_tool("runbooks.promote-cell", {"replicas": "many"})
            assert bad.is_error
        assert settings.read_text() == before, "a dry run or a refused apply changed the settings"
        async with _client(url, keys["applier"]) as mcp:
            unrehearsed = await mcp.call_tool("runbooks.promote-cell-apply", {"replicas": 2})
            assert unrehearsed.is_error and "needs a successful dry run" in unrehearsed.content[0].text
            applied = await mcp.call_tool("runbooks.promote-cell-apply", {})
            assert not applied.is_error, applied.content
            assert (applied.structured_content["mode"], applied.structured_content["ok"]) == ("apply", True)
        assert "placement = process" in settings.read_text()
    runs = audit_runs(tmp_path)
    assert [(run["actor"], run["details"]["mode"]) for run in runs] == [("operator-user", "dry-run"),
                                                                      ("applier-user", "apply")]


async def test_no_runbook_is_a_tool_unless_listed_and_no_secret_reaches_a_result(tmp_path: Path) -> None:
    _app(tmp_path, "health-check")
    keys = _keys(tmp_path)
    probe = ApiKeys(tmp_path / "var" / "api-keys.json").create("probe", ["reader"])
    with serve_app(tmp_path, {"PROBE_KEY": probe}) as url:
        async with _client(url, keys["admin"]) as mcp:
            names = {tool.name for tool in (await mcp.list_tools()).tools}
            assert {name for name in names if name.startswith("runbooks.")} == {"runbooks.health-check",
                                                                                "runbooks.health-check-apply"}
            result = await mcp.call_tool("runbooks.health-check", {"probe_key": "env:PROBE_KEY"})
            assert not result.is_error and result.structured_content["ok"], result.content
            refused = await mcp.call_tool("runbooks.health-check", {"probe_key": probe})
            assert refused.is_error and "never the secret itself" in refused.content[0].text
    texts = [repr(result.content), repr(result.structured_content), repr(refused.content)]
    texts += [path.read_text() for path in (tmp_path / "var" / "runbooks").glob("*.ipynb")]
    texts.append((tmp_path / "var" / "audit.sqlite").read_bytes().decode("latin-1"))
    assert "probe key authenticates as 'probe'" in "".join(texts)
    assert not [text for text in texts if probe in text]
