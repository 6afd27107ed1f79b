"""End to end: `cellmono serve` as a real process, the official MCP SDK client over streamable HTTP
(2026-07-28 and 2025-11-25) and over stdio, OAuth JWTs from a JWKS file, a clean SIGTERM stop."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway_support import CELLMONO, ROOT, serve, state_environment

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client(url: str, token: str | None, mode: str) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with serve(tmp_path_factory.mktemp("state")) as running:
        yield running


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_sdk_client_lists_and_calls_tools(server, mode: str) -> None:
    async with client(server.url, server.key, mode) as mcp:
        assert mcp.protocol_version == ("2026-07-28" if mode != "legacy" else "2025-11-25")
        tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
        assert set(tools) == {"notes.add", "notes.get", "search.query", "digest.summary"}
        assert tools["notes.add"].input_schema["required"] == ["title"]
        assert tools["notes.add"].output_schema["title"] == "Note"
        added = await mcp.call_tool("notes.add", {"title": f"written over {mode}", "tags": ["e2e"]})
        assert not added.is_error and added.structured_content["title"] == f"written over {mode}"
        got = await mcp.call_tool("notes.get", {"id": added.structured_content["id"]})
        assert got.structured_content == added.structured_content
        found = await mcp.call_tool("search.query", {"text": f"written over {mode}"})
        assert any(hit["id"] == added.structured_content["id"] for hit in found.structured_content["hits"])
        invalid = await mcp.call_tool("notes.get", {"id": "not a number"})
        assert invalid.is_error and "payload is not a valid NoteRef" in invalid.content[0].text
        missing = await mcp.call_tool("notes.get", {"id": 99999})
        assert missing.is_error and "no note with id 99999" in missing.content[0].text


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_sdk_client_without_credentials_is_refused(server, mode: str) -> None:
    with pytest.raises(Exception) as caught:
        async with client(server.url, None, mode) as mcp:
            await mcp.list_tools()
    assert "needs a bearer token" in repr(caught.value) or "401" in repr(caught.value), caught.value


async def test_roles_limit_what_a_reader_sees_and_calls(server, tmp_path: Path) -> None:
    import subprocess
    env = {**os.environ, **state_environment(server.state)}
    key = subprocess.run([CELLMONO, "serve", "--new-key", "rita", "--role", "reader"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    for mode in ("2026-07-28", "legacy"):
        async with client(server.url, key, mode) as mcp:
            names = {tool.name for tool in (await mcp.list_tools()).tools}
            assert names == {"notes.get", "search.query", "digest.summary"}
            with pytest.raises(MCPError) as denied:
                await mcp.call_tool("notes.add", {"title": "not allowed"})
            assert "tool:call:notes.add" in str(denied.value) or "403" in str(denied.value)
            assert not (await mcp.call_tool("digest.summary", {})).is_error


async def test_stdio_serves_the_same_tools(tmp_path: Path) -> None:
    parameters = StdioServerParameters(command=CELLMONO, args=["serve", "--stdio"], cwd=str(ROOT),
                                       env={**os.environ, **state_environment(tmp_path / "state")})
    async with Client(parameters, cache=None) as mcp:
        names = {tool.name for tool in (await mcp.list_tools()).tools}
        assert names == {"notes.add", "notes.get", "search.query", "digest.summary"}
        added = await mcp.call_tool("notes.add", {"title": "over stdio"})
        assert added.structured_content["title"] == "over stdio"


def test_jwt_bearer_tokens_from_a_jwks_file(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    public = jwt.algorithms.get_default_algorithms()["EdDSA"].to_jwk(private.public_key(), as_dict=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "alg": "EdDSA"}]}))
    environment = {"CELLMONO__GATEWAY__JWKS": str(jwks), "CELLMONO__GATEWAY__ISSUER": "https://issuer.test",
                   "CELLMONO__GATEWAY__API_KEYS": "false"}
    with serve(tmp_path / "state", environment=environment) as running:
        assert running.key == ""  # no API keys: none created

        def token(**claims: object) -> str:
            body = {"sub": "ada", "iss": "https://issuer.test", "aud": running.url, "exp": time.time() + 300,
                    "scope": "tool:call:notes.get notes:read", **claims}
            return jwt.encode(body, private, algorithm="EdDSA", headers={"kid": "k1"})

        from gateway_support import modern_request
        with httpx.Client(timeout=10) as http:
            def post(method: str, params: dict | None, bearer: str) -> httpx.Response:
                headers, body = modern_request(method, params, key=bearer)
                return http.post(running.url, headers=headers, content=body)

            listed = post("tools/list", None, token())
            assert listed.status_code == 200, listed.text
            assert [tool["name"] for tool in listed.json()["result"]["tools"]] == ["notes.get"]
            denied = post("tools/call", {"name": "notes.add", "arguments": {"title": "x"}}, token())
            assert denied.status_code == 403 and 'error="insufficient_scope"' in denied.headers["www-authenticate"]
            for bad in (token(aud="http://127.0.0.1:1/mcp"), token(exp=time.time() - 600), token(iss="https://evil"),
                        jwt.encode({"sub": "ada"}, "secret", algorithm="HS256")):
                refused = post("tools/list", None, bad)
                assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
            metadata = http.get(running.url.rsplit("/", 1)[0] + "/.well-known/oauth-protected-resource/mcp").json()
            assert metadata["resource"] == running.url


def test_sigterm_stops_cleanly_and_the_audit_log_has_every_request(tmp_path: Path) -> None:
    with serve(tmp_path / "state") as running:
        from gateway_support import modern_request
        with httpx.Client(timeout=10) as http:
            headers, body = modern_request("tools/call", {"name": "digest.summary", "arguments": {}}, key=running.key)
            assert http.post(running.url, headers=headers, content=body).status_code == 200
            headers, body = modern_request("tools/list", None, key="cmk_wrong_key")
            assert http.post(running.url, headers=headers, content=body).status_code == 401
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=15) == 0
    from cellmono.security.audit import AuditLog
    with AuditLog(tmp_path / "state" / "audit.sqlite", create=False) as log:
        assert log.verify().ok  # the hash chain is intact
        records = [entry.fields for entry in log.entries()]
    gateway = [(r["actor"], r["action"], r["resource"], r["outcome"]) for r in records if r["action"].startswith("gateway.")]
    assert gateway == [("admin", "gateway.tools/call", "digest.summary", "ok"),
                       ("anonymous", "gateway.tools/list", "", "unauthenticated")]
    call = next(r for r in records if r["action"] == "gateway.tools/call")
    assert call["correlation_id"] and call["latency"] > 0
    # the bus guard checked the same call again on delivery, with the caller's token: one record per call, the
    # guard's check folded into the gateway's record, no `deliver` record of its own (issue 14)
    assert call["details"]["check"] == "granted" and call["details"]["token_id"]
    assert call["details"]["requires"] == ["notes:read"]  # what the tool's handler declares
    assert not [r for r in records if r["action"] == "deliver" and r["correlation_id"] == call["correlation_id"]]
