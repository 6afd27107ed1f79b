"""Resources, prompts and completions end to end: `cellmono serve` on the conformance app as a real process, the
official MCP SDK client over streamable HTTP (both revisions) listing and using each, and bad input answered by a
clear MCP error that the audit log records."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference, ResourceTemplateReference

from cellmono.security.audit import AuditLog
from gateway_support import CELLMONO, ROOT, modern_request, serve, state_environment

pytestmark = pytest.mark.anyio
SETTINGS = "examples/conformance/settings.ini"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client(url: str, token: str, mode: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with serve(tmp_path_factory.mktemp("state"), "--settings", SETTINGS) as running:
        yield running


def new_key(state: Path, role: str) -> str:
    result = subprocess.run([CELLMONO, "serve", "--settings", SETTINGS, "--new-key", role, "--role", role], cwd=ROOT,
                            env={**os.environ, **state_environment(state)}, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


async def refusal(call) -> MCPError:
    try:
        await call
    except MCPError as error:
        return error
    raise AssertionError("no MCPError")


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_sdk_client_lists_and_uses_resources_prompts_and_completions(server, mode: str) -> None:
    async with client(server.url, server.key, mode) as mcp:
        tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
        assert "test_image_content" in tools and tools["json_schema_2020_12_tool"].input_schema["$defs"]["address"]
        image = await mcp.call_tool("test_image_content", {})
        assert (image.content[0].type, image.content[0].mime_type) == ("image", "image/png")

        resources = {r.uri: r for r in (await mcp.list_resources()).resources}
        assert set(resources) == {"test://static-text", "test://static-binary", "test://watched-resource"}
        assert resources["test://static-binary"].mime_type == "image/png"
        text = (await mcp.read_resource("test://static-text")).contents[0]
        assert text.text == "This is the content of the static text resource."
        blob = (await mcp.read_resource("test://static-binary")).contents[0]
        assert base64.b64decode(blob.blob).startswith(b"\x89PNG")
        templates = (await mcp.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["test://template/{id}/data"]
        data = (await mcp.read_resource("test://template/42/data")).contents[0]
        assert (data.mime_type, json.loads(data.text)["id"]) == ("application/json", "42")

        prompts = {p.name: p for p in (await mcp.list_prompts()).prompts}
        assert [a.name for a in prompts["test_prompt_with_arguments"].arguments] == ["arg1", "arg2"]
        got = await mcp.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
        assert got.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'"
        done = await mcp.complete(PromptReference(name="test_prompt_with_arguments"), {"name": "arg1", "value": "par"})
        assert done.completion.values == ["paris", "park"]
        done = await mcp.complete(ResourceTemplateReference(uri="test://template/{id}/data"), {"name": "id", "value": "12"})
        assert done.completion.values == ["123", "124"]


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_bad_input_is_a_clear_mcp_error(server, mode: str) -> None:
    async with client(server.url, server.key, mode) as mcp:
        unknown = await refusal(mcp.read_resource("test://nope"))
        assert (unknown.code, unknown.message, unknown.data) == (-32602, "Resource not found: test://nope",
                                                                 {"uri": "test://nope"})
        missing = await refusal(mcp.get_prompt("test_prompt_with_arguments", {"arg1": "only one"}))
        assert missing.code == -32602 and "arg2: Field required" in missing.message
        assert (await refusal(mcp.get_prompt("no_such_prompt", {}))).message == "Unknown prompt: no_such_prompt"
        needs = await refusal(mcp.call_tool("test_missing_capability", {}))  # this client declares no sampling
        assert (needs.code, needs.data) == (-32021, {"requiredCapabilities": {"sampling": {}}})
        assert "needs the client capabilities sampling" in needs.message
        assert (await mcp.list_tools()).tools  # the server is still serving


async def test_a_reader_sees_and_uses_only_what_its_role_grants(server) -> None:
    reader = new_key(server.state, "reader")
    async with client(server.url, reader, "2026-07-28") as mcp:
        assert [t.name for t in (await mcp.list_tools()).tools] == ["test_simple_text"]
        listed = [r.uri for r in (await mcp.list_resources()).resources]
        assert listed == ["test://static-text", "test://static-binary"]
        assert (await mcp.read_resource("test://static-text")).contents[0].text
        hidden = await refusal(mcp.read_resource("test://watched-resource"))
        assert hidden.code == -32003 and "resource:read:conformance.watched_resource" in hidden.message
        forbidden = await refusal(mcp.call_tool("test_image_content", {}))
        assert forbidden.code == -32003 and "tool:call:conformance.test_image_content" in forbidden.message


def test_reads_gets_and_refusals_are_audited(tmp_path: Path) -> None:
    with serve(tmp_path / "state", "--settings", SETTINGS) as running:
        with httpx.Client(timeout=10) as http:
            for method, params in [("resources/read", {"uri": "test://static-text"}),
                                   ("resources/read", {"uri": "test://nope"}),
                                   ("prompts/get", {"name": "test_prompt_with_arguments", "arguments": {"arg1": "x"}})]:
                headers, body = modern_request(method, params, key=running.key,
                                               name=params.get("uri") or params.get("name"))
                assert http.post(running.url, headers=headers, content=body).status_code in (200, 400)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=15) == 0
    with AuditLog(tmp_path / "state" / "audit.sqlite", create=False) as log:
        assert log.verify().ok
        records = [entry.fields for entry in log.entries()]
    gateway = [(r["action"], r["resource"], r["outcome"]) for r in records if r["action"].startswith("gateway.")]
    assert gateway == [("gateway.resources/read", "conformance.static_text", "ok"),
                       ("gateway.resources/read", "", "invalid"),
                       ("gateway.prompts/get", "conformance.test_prompt_with_arguments", "invalid")]
    read = next(r for r in records if r["action"] == "gateway.resources/read")
    assert read["details"]["check"] == "granted"  # the bus guard checked the read again on delivery, in this record
    assert not [r for r in records if r["action"] == "deliver" and r["resource"] == "conformance.static_text"]


def test_mcp_param_headers_must_agree_with_the_arguments(server) -> None:
    with httpx.Client(timeout=10) as http:
        def call(region_header: str | None) -> httpx.Response:
            headers, body = modern_request("tools/call", {"name": "test_x_mcp_header", "arguments": {"region": "eu"}},
                                           key=server.key, name="test_x_mcp_header")
            if region_header is not None:
                headers["Mcp-Param-Region"] = region_header
            return http.post(server.url, headers=headers, content=body)

        agreed = call("eu")
        assert agreed.status_code == 200 and agreed.json()["result"]["content"][0]["text"] == "region=eu"
        for wrong in ("us", None):  # another value, or the header missing for a value the body carries
            refused = call(wrong)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == -32020, refused.text
