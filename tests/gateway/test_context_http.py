"""Handler contexts end to end: `cellmono serve` on the conformance app as a real process and the official MCP SDK
client over streamable HTTP, on both revisions: progress and logs reach the client, elicitation and sampling are
asked (2025: server-initiated requests; 2026: InputRequiredResult with a sealed requestState), a tampered or foreign
state is refused and audited, and a client without the capability gets -32021."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from cellmono.security.audit import AuditLog
from gateway_support import CELLMONO, META, ROOT, serve, state_environment

pytestmark = pytest.mark.anyio
SETTINGS = "examples/conformance/settings.ini"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with serve(tmp_path_factory.mktemp("state"), "--settings", SETTINGS) as running:
        yield running


async def answer_form(context, params) -> types.ElicitResult:
    fields = params.requested_schema.get("properties", {})
    return types.ElicitResult(action="accept", content={name: "Ada" for name in fields})


async def answer_sampling(context, params) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", model="stub", content=types.TextContent(type="text", text="Paris"))


def client(server, mode: str, **callbacks) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {server.key}"}, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(server.url, http_client=http), mode=mode, cache=None, **callbacks)


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_elicitation_and_sampling_reach_the_client(server, mode: str) -> None:
    async with client(server, mode, elicitation_callback=answer_form, sampling_callback=answer_sampling) as mcp:
        hello = await mcp.call_tool("test_input_required_result_elicitation", {})
        assert hello.content[0].text == "Hello, Ada!"
        said = await mcp.call_tool("test_sampling", {"prompt": "Capital of France?"})
        assert said.content[0].text == "LLM response: Paris"
        rounds = await mcp.call_tool("test_input_required_result_multi_round", {})
        assert rounds.content[0].text == "Ada likes Ada."


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_progress_reaches_the_client(server, mode: str) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with client(server, mode) as mcp:
        await mcp.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
    assert seen == [0, 50, 100]


async def test_logs_reach_a_2025_client_at_its_level(server) -> None:
    logs: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(f"{params.level}:{params.data}")

    async with client(server, "legacy", logging_callback=on_log) as mcp:
        await mcp.set_logging_level("info")
        await mcp.call_tool("test_tool_with_logging", {})
        await mcp.set_logging_level("error")
        await mcp.call_tool("test_tool_with_logging", {})
    assert logs == ["info:Tool execution started", "info:Tool processing data", "info:Tool execution completed"]


def call(server, params: dict, meta: dict | None = None, key: str | None = None) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {**params, "_meta": meta or META}}
    return httpx.post(server.url, json=body, timeout=10, headers={
        "Authorization": f"Bearer {key or server.key}", "Accept": "application/json, text/event-stream",
        "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": params["name"]})


def test_tampered_and_foreign_request_state_is_refused_and_audited(tmp_path: Path) -> None:
    meta = {**META, "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
    answered = {"confirm": {"action": "accept", "content": {"ok": True}}}
    with serve(tmp_path / "state", "--settings", SETTINGS) as server:
        first = call(server, {"name": "test_input_required_result_tampered_state", "arguments": {}}, meta).json()
        state = first["result"]["requestState"]
        assert first["result"]["resultType"] == "input_required" and "round-1" not in state  # sealed, not readable
        good = call(server, {"name": "test_input_required_result_tampered_state", "arguments": {},
                             "inputResponses": answered, "requestState": state}, meta).json()
        assert good["result"]["content"][0]["text"] == "state-ok: round-1"
        other = subprocess.run([CELLMONO, "serve", "--settings", SETTINGS, "--new-key", "eve", "--role", "admin"],
                               cwd=ROOT, env={**os.environ, **state_environment(server.state)}, capture_output=True,
                               text=True, check=True).stdout.strip().splitlines()[-1]
        stolen = call(server, {"name": "test_input_required_result_tampered_state", "arguments": {},
                               "inputResponses": answered, "requestState": state}, meta, key=other)
        assert stolen.json()["error"]["code"] == -32602, stolen.text  # another principal cannot resume it
        tampered = state[:-4] + ("AAAA" if not state.endswith("AAAA") else "BBBB")
        for name, forged in [("test_input_required_result_tampered_state", tampered),
                             ("test_input_required_result_tampered_state", "v1.forged"),
                             ("test_input_required_result_request_state", state)]:  # minted for another tool: foreign
            refused = call(server, {"name": name, "arguments": {}, "inputResponses": answered, "requestState": forged}, meta)
            assert refused.json()["error"]["code"] == -32602, refused.text
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    with AuditLog(tmp_path / "state" / "audit.sqlite", create=False) as log:
        assert log.verify().ok
        records = [entry.fields for entry in log.entries()]
    refusals = [r for r in records if r["outcome"] == "rejected" and r["reason"] == "invalid or expired requestState"]
    assert len(refusals) == 4


def test_a_client_without_elicitation_gets_a_clear_error(server) -> None:
    refused = call(server, {"name": "test_input_required_result_elicitation", "arguments": {}}).json()
    assert refused["error"]["code"] == -32021
    assert refused["error"]["data"]["requiredCapabilities"] == {"elicitation": {}}
    assert "needs the client capability 'elicitation'" in refused["error"]["message"]
