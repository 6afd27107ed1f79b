"""Cache hints end to end (2026-07-28, SEP-2549): `cellmono serve` on the conformance app as a real process and the
official MCP SDK client. A resource its cell declares pure (`@resource(..., ttl=60)`) is read with `ttlMs` and a
private `cacheScope`, so the SDK's own response cache answers the second read without asking the gateway (the audit
log shows one read); a resource not declared pure is stale at once (`ttlMs` 0) and read every time; an unknown URI is an MCP
error, audited."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from cellmono.security.audit import AuditLog
from gateway_support import mcp_json, modern_request, serve

pytestmark = pytest.mark.anyio
SETTINGS = "examples/conformance/settings.ini"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_pure_resource_carries_cache_hints_on_the_wire(tmp_path: Path) -> None:
    with serve(tmp_path / "state", "--settings", SETTINGS) as running, httpx.Client(timeout=10) as http:
        answers = {}
        for uri in ("test://static-text", "test://template/7/data"):
            headers, body = modern_request("resources/read", {"uri": uri}, key=running.key, name=uri)
            answers[uri] = mcp_json(http.post(running.url, headers=headers, content=body))["result"]
    assert (answers["test://static-text"]["ttlMs"], answers["test://static-text"]["cacheScope"]) == (60_000, "private")
    assert answers["test://template/7/data"]["ttlMs"] == 0  # not declared pure: immediately stale


async def test_the_sdk_cache_spares_the_gateway_a_second_read_of_a_pure_resource(tmp_path: Path) -> None:
    with serve(tmp_path / "state", "--settings", SETTINGS) as running:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {running.key}"}, timeout=httpx2.Timeout(30.0))
        async with Client(streamable_http_client(running.url, http_client=http), mode="2026-07-28") as mcp:
            for _ in range(3):
                first = await mcp.read_resource("test://static-text")
                assert first.contents[0].text == "This is the content of the static text resource."
                assert first.ttl_ms == 60_000
                await mcp.read_resource("test://template/7/data")
            with pytest.raises(MCPError) as unknown:
                await mcp.read_resource("test://nope")
            assert unknown.value.code == -32602 and "Resource not found: test://nope" in unknown.value.message
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=15) == 0
    with AuditLog(tmp_path / "state" / "audit.sqlite", create=False) as log:
        reads = [(entry.fields["resource"], entry.fields["outcome"]) for entry in log.entries()
                 if entry.fields["action"] == "gateway.resources/read"]
    assert reads.count(("conformance.static_text", "ok")) == 1  # the SDK's cache kept it: asked once
    assert reads.count(("conformance.template", "ok")) == 3  # no hint: asked every time
    assert reads[-1] == ("", "invalid")  # the unknown URI, refused and audited
