"""The gateway's decisions under misuse, in process through its ASGI app (real MCP semantics, real audit log and
capability tokens): the bind address is a served Host, `/metrics` is for operators, the OAuth metadata names its
authorization servers, cells get attenuated tokens, bad arguments are tool errors, unauthenticated floods are
aggregated in the audit log, and sessions are capped per principal. Each test names the defence it guards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, Empty, tool
from cellmono.core.config import Settings
from cellmono.gateway.auth import ApiKeys, Authenticator
from cellmono.gateway.bridge import GatewayGuard, TokenMinter
from cellmono.gateway.http import GatewayHTTP
from cellmono.gateway.server import Gateway, MemoryAudit
from cellmono.security.guard import CapabilityGuard
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import TokenIssuer, TokenVerifier
from gateway_support import META

pytestmark = pytest.mark.anyio


class Text(BaseModel):
    text: str


class Store(Cell):
    name = "store"

    @tool(requires="store:read")
    async def read(self, request: Text) -> Text:
        """Read."""
        return Text(text=f"stored {request.text}")


class Front(Cell):
    name = "front"
    requests = ("store.read",)

    @tool(requires="front:use")
    async def fetch(self, request: Text) -> Text:
        """Ask the store, and report the grants the call's token carries."""
        seen.append(verifier.verify(self.bus_context_token()))
        return await self.bus.request("store.read", request, response=Text)

    @tool(requires="front:use")
    async def ping(self, request: Empty) -> Text:
        """No arguments."""
        return Text(text="pong")

    def bus_context_token(self) -> str:
        from cellmono.core.bus import current_envelope
        envelope = current_envelope.get()
        assert envelope is not None and envelope.capability
        return envelope.capability


seen: list[Any] = []
keys = SigningKeys()
verifier = TokenVerifier(keys, audience="cellmono")


async def door(gateway_section: dict[str, str] | None = None, host: str = "127.0.0.1"
               ) -> tuple[httpx.AsyncClient, GatewayHTTP, MemoryAudit, dict[str, str]]:
    settings = Settings(extra_sections={
        "security": {"role.user": "tool:call:front.*, front:use, store:read, notes:write, other:thing",
                     "role.operator": "gateway:metrics", "role.admin": "*:*"},
        "gateway": {"host": host, "rate": "1e6", "burst": "1e6", **(gateway_section or {})}})
    app = App([Store(), Front()], settings=settings)
    api_keys = ApiKeys()
    credentials = {role: api_keys.create(f"{role}-1", [role]) for role in ("user", "operator", "admin")}
    audit = MemoryAudit()
    gateway = Gateway(app, audit=audit)
    gateway.minter = TokenMinter(TokenIssuer(keys), "cellmono", gateway.policy)
    app.bus.guard = GatewayGuard(CapabilityGuard(verifier), allow_internal=True)
    http_app = GatewayHTTP(gateway, Authenticator(api_keys=api_keys))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app, client=("127.0.0.9", 4000)),
                               base_url=f"http://{host}:8765")
    return client, http_app, audit, credentials


def modern(method: str, params: dict[str, Any], key: str | None) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, "Accept": "application/json",
               "Content-Type": "application/json"}
    if "name" in params:
        headers["Mcp-Name"] = params["name"]
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers, {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": META}}


@pytest.fixture
async def running() -> AsyncIterator[tuple[httpx.AsyncClient, GatewayHTTP, MemoryAudit, dict[str, str]]]:
    client, http_app, audit, credentials = await door({"audit_refusals": "3", "max_sessions_per_principal": "2"})
    async with http_app.gateway.app, http_app.running(), client:
        yield client, http_app, audit, credentials


async def test_the_bind_address_is_a_served_host() -> None:
    # defence: allowed hosts follow the bind address (`--host 127.0.0.2` works without a 421)
    client, http_app, _, credentials = await door(host="127.0.0.2")
    async with http_app.gateway.app, http_app.running(), client:
        headers, body = modern("tools/list", {}, credentials["user"])
        assert (await client.post("/mcp", headers=headers, json=body)).status_code == 200
        assert (await client.post("http://evil.example:8765/mcp", headers=headers, json=body)).status_code == 421


async def test_metrics_need_the_operator_capability(running) -> None:
    # defence: /metrics protected by an operator capability
    client, _, _, credentials = running
    assert (await client.get("/metrics")).status_code == 401
    denied = await client.get("/metrics", headers={"Authorization": f"Bearer {credentials['user']}"})
    assert denied.status_code == 403 and "gateway:metrics" in denied.text
    for role in ("operator", "admin"):
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {credentials[role]}"})
        assert allowed.status_code == 200 and "cellmono_gateway_in_flight" in allowed.text


async def test_protected_resource_metadata_lists_authorization_servers(running) -> None:
    # defence: OAuth protected-resource metadata lists `authorization_servers`
    client, _, _, _ = running
    document = (await client.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert document["authorization_servers"] == []  # API keys only: listed, empty
    client2, http_app, _, _ = await door({"authorization_servers": "https://as.example"})
    async with http_app.gateway.app, http_app.running(), client2:
        document = (await client2.get("/.well-known/oauth-protected-resource")).json()
    assert document["authorization_servers"] == ["https://as.example"]


async def test_a_cell_gets_a_token_for_its_call_only(running) -> None:
    # defence: cells get attenuated tokens (the tool + its declared downstream calls, never the whole grant set)
    client, _, _, credentials = running
    seen.clear()
    headers, body = modern("tools/call", {"name": "front.fetch", "arguments": {"text": "x"}}, credentials["user"])
    answered = (await client.post("/mcp", headers=headers, json=body)).json()
    assert answered["result"]["structuredContent"] == {"text": "stored x"}, answered
    token = seen[0]
    assert token.allows_all(["tool:call:front.fetch", "front:use", "store:read"])
    for other in ("notes:write", "other:thing", "tool:call:front.ping", "tool:call:store.read"):
        assert not token.allows(other), other  # the caller holds these, the call does not need them


async def test_bad_arguments_are_tool_errors_and_an_empty_model_takes_nothing(running) -> None:
    # defence: invalid arguments are MCP `isError` with the validation message, audited; empty input model is closed
    client, http_app, audit, credentials = running
    ping = http_app.gateway.tools["front.ping"].tool.input_schema
    assert ping["additionalProperties"] is False
    for arguments, words in (({"text": 5}, "text"), ({}, "text")):
        headers, body = modern("tools/call", {"name": "front.fetch", "arguments": arguments}, credentials["user"])
        result = (await client.post("/mcp", headers=headers, json=body)).json()["result"]
        assert result["isError"] is True and words in result["content"][0]["text"], result
    headers, body = modern("tools/call", {"name": "front.ping", "arguments": {"sneaky": 1}}, credentials["user"])
    result = (await client.post("/mcp", headers=headers, json=body)).json()["result"]
    assert result["isError"] is True and "sneaky" in result["content"][0]["text"], result
    outcomes = [(record.tool, record.outcome) for record in audit.records if record.method == "tools/call"]
    assert outcomes.count(("front.fetch", "invalid")) == 2 and ("front.ping", "invalid") in outcomes, outcomes


async def test_an_unauthenticated_flood_is_aggregated_in_the_audit_log(running) -> None:
    # defence: unauthenticated traffic cannot flood the audit log (throttled, aggregated, bounded)
    client, http_app, audit, _ = running
    headers, body = modern("tools/list", {}, None)
    for _ in range(200):
        assert (await client.post("/mcp", headers=headers, json=body)).status_code == 401
    refused = [record for record in audit.records if record.principal == "anonymous"]
    assert len(refused) == 3  # the first three of the window, one by one
    http_app.refusals.window = 0.0  # the window ends: the next refusal brings the aggregate
    await client.post("/mcp", headers=headers, json=body)
    aggregate = [record for record in audit.records if record.reason and "refused from" in record.reason]
    assert len(aggregate) == 1 and aggregate[0].reason.startswith("197 refused from 127.0.0.9"), aggregate
    assert len(http_app.refusals) <= http_app.refusals.max_sources


async def test_sessions_are_capped_per_principal(running) -> None:
    # defence: sessions capped per principal (and not usable by another principal)
    client, _, _, credentials = running
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}

    async def open_session(key: str) -> httpx.Response:
        return await client.post("/mcp", json=initialize, headers={
            "Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"})

    opened = [await open_session(credentials["user"]) for _ in range(2)]
    assert [response.status_code for response in opened] == [200, 200]
    refused = await open_session(credentials["user"])
    assert refused.status_code == 429 and "holds 2 sessions" in refused.text
    assert (await open_session(credentials["operator"])).status_code == 200  # others keep theirs
    stolen = await client.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers={
        "Authorization": f"Bearer {credentials['operator']}", "Accept": "application/json, text/event-stream",
        "Mcp-Session-Id": opened[0].headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"})
    assert stolen.status_code == 404
