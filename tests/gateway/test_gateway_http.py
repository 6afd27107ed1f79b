"""The gateway's HTTP door, rule by rule (moved from the scenario cell of the `http` notebook): an app with one
tool per right, an API key for a reader and one for an admin, driven in process through the ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cellmono.core.app import App
from cellmono.core.config import Settings
from cellmono.gateway.auth import ApiKeys, Authenticator
from cellmono.gateway.http import GatewayHTTP
from cellmono.gateway.server import Gateway, MemoryAudit
from gateway_support import META, Echo

pytestmark = pytest.mark.anyio

METADATA_URL = "http://127.0.0.1:8765/.well-known/oauth-protected-resource/mcp"


@dataclass
class Door:
    """The gateway's ASGI app with its client, keys and audit records."""

    client: httpx.AsyncClient
    audit: MemoryAudit
    reader_key: str
    admin_key: str

    def modern(self, method: str, params: dict[str, Any] | None = None, *, key: str | None | bool = True,
               name: str | None = None, headers: dict[str, str] | None = None
               ) -> tuple[dict[str, str], dict[str, Any]]:
        """Headers and body of a 2026-07-28 request (`key=True`: the reader's key)."""
        params = {**(params or {}), "_meta": META}
        sent = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method,
                "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if name is not None or "name" in params:
            sent["Mcp-Name"] = name if name is not None else params["name"]
        credential = self.reader_key if key is True else key
        if credential:
            sent["Authorization"] = f"Bearer {credential}"
        sent.update(headers or {})
        return sent, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}

    async def post(self, method: str, params: dict[str, Any] | None = None, **options: Any) -> httpx.Response:
        headers, body = self.modern(method, params, **options)
        return await self.client.post("/mcp", headers=headers, json=body)


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    settings = Settings(extra_sections={
        "security": {"role.reader": "tool:call:echo.say, echo:read", "role.admin": "*:*"},
        "gateway": {"max_body_bytes": "4096", "rate": "1000", "burst": "1000"}})
    app = App([Echo()], settings=settings)
    keys = ApiKeys()
    reader_key, admin_key = keys.create("rita", ["reader"]), keys.create("root", ["admin"])
    audit = MemoryAudit()
    http_app = GatewayHTTP(Gateway(app, audit=audit), Authenticator(api_keys=keys))
    async with app, http_app.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app),
                                                           base_url="http://127.0.0.1:8765") as client:
        yield Door(client, audit, reader_key, admin_key)


async def test_list_call_and_discover(door: Door) -> None:
    listed = await door.post("tools/list")
    assert listed.status_code == 200 and [t["name"] for t in listed.json()["result"]["tools"]] == ["echo.say"]
    called = await door.post("tools/call", {"name": "echo.say", "arguments": {"text": "hi"}})
    assert called.status_code == 200 and called.json()["result"]["structuredContent"] == {"text": "hi"}
    discovered = await door.post("server/discover")
    assert discovered.status_code == 200 and "2026-07-28" in discovered.json()["result"]["supportedVersions"]


async def test_header_body_mismatch_is_refused_before_authentication(door: Door) -> None:
    mismatch = await door.post("tools/call", {"name": "echo.say", "arguments": {"text": "hi"}}, name="echo.shout",
                               key=None)
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020


@pytest.mark.parametrize("key", [None, "cmk_wrong_key"])
async def test_missing_or_wrong_credential_is_401_with_the_metadata_url(door: Door, key: str | None) -> None:
    refused = await door.post("tools/list", key=key)
    assert refused.status_code == 401, refused.text
    assert f'resource_metadata="{METADATA_URL}"' in refused.headers["www-authenticate"]


async def test_forbidden_tool_is_403_naming_its_scopes_and_the_admin_may_call_it(door: Door) -> None:
    forbidden = await door.post("tools/call", {"name": "echo.shout", "arguments": {"text": "hi"}})
    assert forbidden.status_code == 403
    assert 'scope="tool:call:echo.shout echo:write"' in forbidden.headers["www-authenticate"]
    allowed = await door.post("tools/call", {"name": "echo.shout", "arguments": {"text": "hi"}}, key=door.admin_key)
    assert allowed.json()["result"]["structuredContent"] == {"text": "HI"}


async def test_unknown_tool_is_400_and_bad_arguments_a_tool_error(door: Door) -> None:
    assert (await door.post("tools/call", {"name": "nope", "arguments": {}})).status_code == 400
    invalid = await door.post("tools/call", {"name": "echo.say", "arguments": {"text": 5}})
    assert invalid.status_code == 200 and invalid.json()["result"]["isError"] is True


async def test_host_and_origin_are_checked_first(door: Door) -> None:
    headers, body = door.modern("tools/list")
    assert (await door.client.post("http://evil.example/mcp", headers=headers, json=body)).status_code == 421
    evil = {**headers, "Origin": "https://evil.example"}
    assert (await door.client.post("/mcp", headers=evil, json=body)).status_code == 403
    local = {**headers, "Origin": "http://localhost:3000"}
    assert (await door.client.post("/mcp", headers=local, json=body)).status_code == 200


async def test_body_over_the_limit_is_413_and_bad_json_a_parse_error(door: Door) -> None:
    headers, _ = door.modern("tools/list")
    assert (await door.client.post("/mcp", headers=headers, content=b"x" * 5000)).status_code == 413
    assert (await door.client.post("/mcp", headers=headers, content=b"{not json")).json()["error"]["code"] == -32700


async def test_health_metrics_and_resource_metadata(door: Door) -> None:
    await door.post("tools/call", {"name": "echo.say", "arguments": {"text": "hi"}})
    await door.post("tools/call", {"name": "echo.shout", "arguments": {"text": "hi"}})  # denied
    assert (await door.client.get("/healthz")).json()["status"] == "ok"
    exposition = (await door.client.get("/metrics", headers={"Authorization": f"Bearer {door.admin_key}"})).text
    assert 'cellmono_gateway_calls_total{tool="echo.say",outcome="ok"} 1' in exposition
    assert 'cellmono_gateway_calls_total{tool="echo.shout",outcome="denied"} 1' in exposition
    metadata = (await door.client.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert metadata["resource"] == "http://127.0.0.1:8765/mcp" and "echo:write" in metadata["scopes_supported"]


async def test_every_request_is_audited_with_its_outcome(door: Door) -> None:
    await door.post("tools/call", {"name": "echo.say", "arguments": {"text": "hi"}})
    await door.post("tools/call", {"name": "echo.shout", "arguments": {"text": "hi"}})
    await door.post("tools/call", {"name": "echo.say", "arguments": {"text": "hi"}}, name="echo.shout", key=None)
    await door.post("tools/list", key=None)
    outcomes = [(record.principal, record.method, record.outcome, record.status) for record in door.audit.records]
    assert ("rita", "tools/call", "denied", 403) in outcomes and ("anonymous", "tools/call", "rejected", 400) in outcomes
    assert ("anonymous", "tools/list", "unauthenticated", 401) in outcomes and ("rita", "tools/call", "ok", 200) in outcomes
