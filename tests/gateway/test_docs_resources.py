"""The design docs as MCP resources end to end: `cellmono serve` as a real process on an app that adds
`cellmono.ops.docs_resources:DocsCell` in its settings, and the official MCP SDK client (both revisions). The index
and a page are read; a page name that is unknown or reaches outside the folder, and a caller without `docs:read`, get
MCP errors that the audit log records; an app that does not add the cell serves no docs."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cellmono.security.audit import AuditLog
from gateway_support import CELLMONO, ROOT, serve, state_environment

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def settings(folder: Path) -> Path:
    path = folder / "settings.ini"
    path.write_text(f"""[app]
name = docs-app
cells = docs

[bus]
transport = memory

[security]
audience = cellmono
role.admin = *:*
role.reader = resource:read:docs.*

[cell.docs]
class = cellmono.ops.docs_resources:DocsCell
folder = {ROOT / "nbs"}

[gateway]
host = 127.0.0.1
""")
    return path


def client(url: str, key: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)


async def test_the_docs_are_resources_for_callers_with_docs_read(tmp_path: Path) -> None:
    app = settings(tmp_path)
    with serve(tmp_path / "state", "--settings", str(app)) as running:
        reader = subprocess.run([CELLMONO, "serve", "--settings", str(app), "--new-key", "reader", "--role", "reader"],
                                cwd=ROOT, env={**os.environ, **state_environment(running.state)},
                                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        for mode in ("2026-07-28", "legacy"):
            async with client(running.url, running.key, mode) as mcp:
                assert [r.uri for r in (await mcp.list_resources()).resources] == ["docs://llms.txt"]
                index = (await mcp.read_resource("docs://llms.txt")).contents[0].text
                assert "- [core.cell](docs://pages/06_cell):" in index
                page = (await mcp.read_resource("docs://pages/06_cell")).contents[0]
                assert page.mime_type == "text/markdown" and page.text.startswith("# core.cell")
                for bad in ("docs://pages/99_nope", "docs://pages/..%2Fsettings", "docs://nope"):
                    with pytest.raises(MCPError) as refused:
                        await mcp.read_resource(bad)
                    assert refused.value.code == -32602
        async with client(running.url, reader, "2026-07-28") as mcp:
            with pytest.raises(MCPError) as denied:
                await mcp.read_resource("docs://llms.txt")
            assert denied.value.code == -32003 and "docs:read" in denied.value.message
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=15) == 0
    with AuditLog(tmp_path / "state" / "audit.sqlite", create=False) as log:
        reads = [(e.fields["resource"], e.fields["outcome"]) for e in log.entries()
                 if e.fields["action"] == "gateway.resources/read"]
    assert reads.count(("docs.page", "ok")) == 2 and reads.count(("docs.index", "denied")) == 1
    assert len([r for r in reads if r[1] == "invalid"]) == 6


async def test_an_app_without_the_cell_serves_no_docs(tmp_path: Path) -> None:
    with serve(tmp_path / "state", "--settings", "examples/conformance/settings.ini") as running:
        async with client(running.url, running.key, "2026-07-28") as mcp:
            assert not [r for r in (await mcp.list_resources()).resources if r.uri.startswith("docs://")]
            with pytest.raises(MCPError) as unknown:
                await mcp.read_resource("docs://llms.txt")
            assert unknown.value.code == -32602
