"""The full role x tool authorization matrix, over both protocol revisions, plus limits (429, 503, 413),
in process through the gateway's ASGI app on the example app's own settings and roles."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cellmono.core.app import App
from cellmono.topology.services import app_from_settings
import tempfile
from pathlib import Path

from cellmono.core.config import load_settings
from cellmono.gateway.server import MemoryAudit
from cellmono.gateway.http import GatewayHTTP
from cellmono.gateway.bridge import GatewayGuard
from cellmono.runtime.serve import build
from gateway_support import ROOT, mcp_json, modern_request

pytestmark = pytest.mark.anyio

TOOLS = ("notes.add", "notes.get", "search.query", "digest.summary")
ARGUMENTS = {"notes.add": {"title": "matrix"}, "notes.get": {"id": 1}, "search.query": {"text": "bus"},
             "digest.summary": {}}
# What settings.ini's [roles] promise, written out by hand so that a policy change shows up here.
MATRIX = {
    "admin": {"notes.add", "notes.get", "search.query", "digest.summary"},
    "editor": {"notes.add", "notes.get", "search.query", "digest.summary"},
    "reader": {"notes.get", "search.query", "digest.summary"},
    "nobody": set(),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway_app(**gateway_options: str) -> tuple[App, GatewayHTTP, dict[str, str], MemoryAudit]:
    """The example app behind its gateway as `cellmono serve` builds it: policy, minted tokens, bus guard."""
    folder = Path(tempfile.mkdtemp(prefix="cellmono-authz-"))
    settings = load_settings(ROOT / "settings.ini", environ={})
    sections = {**settings.extra_sections,
                "gateway": {**settings.extra_sections.get("gateway", {}), "state": str(folder), **gateway_options},
                "security": {**settings.extra_sections["security"], "audit_path": str(folder / "audit.sqlite"),
                             "signing_keys": str(folder / "keys.json"), "store_path": str(folder / "store.sqlite"),
                             "kek_file": str(folder / "kek.json")}}
    app = app_from_settings(settings.model_copy(update={"extra_sections": sections}))
    audit = MemoryAudit()
    served = build(app, audit=audit, create_admin=False)
    assert isinstance(app.bus.guard, GatewayGuard)  # the guard checks every call again on delivery
    credentials = {role: served.api_keys.create(f"user-{role}", [role] if role != "nobody" else []) for role in MATRIX}
    return app, served.http, credentials, audit


async def legacy_session(client: httpx.AsyncClient, key: str) -> dict[str, str]:
    """Open a 2025-11-25 session; the headers to use on it."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    opened = await client.post("/mcp", headers=headers, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert opened.status_code == 200, opened.text
    headers = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    await client.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


async def test_role_by_tool_matrix_on_both_protocol_revisions() -> None:
    app, http_app, credentials, audit = gateway_app()
    transport = httpx.ASGITransport(app=http_app)
    async with app, http_app.running(), httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as client:
        checked = 0
        for role, allowed in MATRIX.items():
            key = credentials[role]
            headers, body = modern_request("tools/list", key=key)
            listed = (await client.post("/mcp", headers=headers, content=body)).json()["result"]["tools"]
            assert {tool["name"] for tool in listed} == allowed, role
            session = await legacy_session(client, key)
            legacy_listed = mcp_json((await client.post("/mcp", headers=session, json={
                "jsonrpc": "2.0", "id": 1, "method": "tools/list"})))["result"]["tools"]
            assert {tool["name"] for tool in legacy_listed} == allowed, role
            for tool in TOOLS:
                headers, body = modern_request("tools/call", {"name": tool, "arguments": ARGUMENTS[tool]}, key=key)
                modern = await client.post("/mcp", headers=headers, content=body)
                legacy = await client.post("/mcp", headers=session, json={
                    "jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": tool, "arguments": ARGUMENTS[tool]}})
                for response in (modern, legacy):
                    if tool in allowed:
                        assert response.status_code == 200, (role, tool, response.text)
                        assert mcp_json(response)["result"]["isError"] is False, (role, tool, response.text)
                    else:
                        assert response.status_code == 403, (role, tool, response.status_code)
                        challenge = response.headers["www-authenticate"]
                        assert 'error="insufficient_scope"' in challenge and f"tool:call:{tool}" in challenge
                    checked += 1
        assert checked == 2 * len(MATRIX) * len(TOOLS)
    denials = [r for r in audit.records if r.outcome == "denied"]
    assert len(denials) == 2 * sum(len(TOOLS) - len(allowed) for allowed in MATRIX.values())
    assert all(record.decision == "deny" and record.tool for record in denials)


async def test_rate_limit_answers_429_with_retry_after() -> None:
    app, http_app, credentials, audit = gateway_app(rate="5", burst="5")
    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://127.0.0.1:8765") as client:
        statuses = []
        for _ in range(8):
            headers, body = modern_request("tools/list", key=credentials["reader"])
            response = await client.post("/mcp", headers=headers, content=body)
            statuses.append(response.status_code)
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 3
        assert int(response.headers["retry-after"]) >= 1
        headers, body = modern_request("tools/list", key=credentials["admin"])  # another principal is unaffected
        assert (await client.post("/mcp", headers=headers, content=body)).status_code == 200
    assert sum(record.outcome == "rate_limited" for record in audit.records) == 3


async def test_per_tool_rate_limit() -> None:
    app, http_app, credentials, _ = gateway_app(tool_rate="2", tool_burst="2")
    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://127.0.0.1:8765") as client:
        async def call(tool: str) -> int:
            headers, body = modern_request("tools/call", {"name": tool, "arguments": ARGUMENTS[tool]}, key=credentials["admin"])
            return (await client.post("/mcp", headers=headers, content=body)).status_code
        assert [await call("digest.summary") for _ in range(3)] == [200, 200, 429]
        assert await call("search.query") == 200  # its own bucket


async def test_concurrency_cap_sheds_with_503_instead_of_queueing() -> None:
    app, http_app, credentials, _ = gateway_app(max_in_flight="4", call_timeout="5")
    release = asyncio.Event()
    notes = app.cells["notes"]
    original = notes.get

    async def slow_get(request):  # hold calls in flight until released
        await release.wait()
        return await original(request)

    notes.get = slow_get  # the bus binds methods at start, so this patches the running cell
    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://127.0.0.1:8765") as client:
        await notes.add(type(notes).add.__annotations__ and __import__("examples.notes.contracts", fromlist=["NewNote"]).NewNote(title="x"))

        async def call() -> httpx.Response:
            headers, body = modern_request("tools/call", {"name": "notes.get", "arguments": {"id": 1}}, key=credentials["admin"])
            return await client.post("/mcp", headers=headers, content=body)

        waiting = [asyncio.create_task(call()) for _ in range(4)]
        await asyncio.sleep(0.2)
        shed = await call()
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        health = (await client.get("/healthz")).json()
        assert health["in_flight"] == 4
        release.set()
        assert [response.status_code for response in await asyncio.gather(*waiting)] == [200] * 4


async def test_body_limit_and_deadline() -> None:
    app, http_app, credentials, _ = gateway_app(max_body_bytes="2048", call_timeout="0.2")
    notes = app.cells["notes"]

    async def stuck(request):
        await asyncio.sleep(5)

    notes.get = stuck
    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://127.0.0.1:8765") as client:
        headers, body = modern_request("tools/call", {"name": "notes.add", "arguments": {"title": "x", "body": "y" * 4000}},
                                       key=credentials["admin"])
        assert (await client.post("/mcp", headers=headers, content=body)).status_code == 413
        headers, body = modern_request("tools/call", {"name": "notes.get", "arguments": {"id": 1}}, key=credentials["admin"])
        timed = await client.post("/mcp", headers=headers, content=body)
        assert timed.status_code == 200 and timed.json()["result"]["isError"] is True
        assert "did not answer within 0.2 s" in timed.json()["result"]["content"][0]["text"]
