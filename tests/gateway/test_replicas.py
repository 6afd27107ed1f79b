"""Two real `cellmono serve` replicas (each its own state folder; the signing keys, KEK and API keys copied, as an
operator provisions them; one real nats-server) behind a round-robin TCP proxy written here (asyncio, loopback, one
backend per connection, no keep-alive on the client: each request lands on the other replica). The official MCP
client runs a 2025-11-25 session (initialize, tools/list, tools/call) across both, and answers an elicitation and a
sampling request on the replica that did not ask; a session id presented with
another principal's key is refused; DELETE ends it on both; the 2026-07-28 MRTR continuation is answered by the
other replica, and a replayed one is refused; a rate limit holds over both replicas, not per replica, on NATS and on Valkey; an expired session is adopted by
no replica; once the engine is gone every replica answers 429 (fail closed), never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import mcp_types as types
import anyio
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from brokers import require, start_nats, start_redis
from cellmono.gateway.auth import ApiKeys
from gateway_support import serve

pytestmark = pytest.mark.anyio
SETTINGS = "examples/conformance/settings.ini"
SHARED = ("signing-keys.json", "kek.json", "api-keys.json")  # what an operator provisions on every replica


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RoundRobin:
    """A TCP proxy on 127.0.0.1: each connection goes to the next backend; `served` lists (backend, request line)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.next, self.served = ports, 0, []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RoundRobin:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/mcp"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self.next % len(self.ports)
        self.next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.ports[backend])
        except OSError:
            writer.close()
            return
        first = await reader.readline()
        self.served.append((backend, first.decode("latin-1").strip()))
        up_writer.write(first)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                for _ in range(1_000_000):  # bounded: ends with the connection
                    chunk = await source.read(65536)
                    if not chunk:
                        break
                    sink.write(chunk)
                    await sink.drain()
            with contextlib.suppress(OSError):
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def posts(self) -> list[int]:
        return [backend for backend, line in self.served if line.startswith("POST")]


@pytest.fixture(scope="module")
def nats_url():
    server = require(start_nats)
    yield f"nats://127.0.0.1:{server.port}"
    server.cleanup()


@contextlib.contextmanager
def replicas(tmp_path: Path, url: str, **gateway: str) -> Iterator[tuple[list[int], dict[str, str]]]:
    """Two replicas of the conformance app on one broker (`url`: NATS or Redis); their ports and API keys (admin,
    reader, mallory)."""
    broker = "REDIS" if url.startswith("redis") else "NATS"
    environment = {f"CELLMONO__{broker}__URL": url, "CELLMONO__GATEWAY_STATE__BUCKET": f"gw{tmp_path.name[-30:]}",
                   "CELLMONO__TASKS__BUCKET": f"tk{tmp_path.name[-30:]}", "CELLMONO__LOG__LEVEL": "WARNING",
                   **{f"CELLMONO__GATEWAY__{key.upper()}": value for key, value in gateway.items()}}
    first, second = tmp_path / "a", tmp_path / "b"
    second.mkdir()
    with serve(first, "--settings", SETTINGS, environment=environment) as a:
        keys = ApiKeys(first / "api-keys.json")
        made = {"admin": a.key, "reader": keys.create("reader-user", ["reader"]),
                "mallory": keys.create("mallory", ["admin"])}
        for name in SHARED:
            shutil.copy(first / name, second / name)
        with serve(second, "--settings", SETTINGS, environment=environment) as b:
            yield [int(a.url.split(":")[2].split("/")[0]), int(b.url.split(":")[2].split("/")[0])], made


def client(url: str, key: str, mode: str, **callbacks: object) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30.0),
                              limits=httpx2.Limits(max_keepalive_connections=0))  # a new connection a request
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None, **callbacks)


async def raw(url: str, key: str, body: dict | None, session: str | None = None, method: str = "POST",
              version: str = "2025-11-25") -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "Mcp-Protocol-Version": version}
    if session:
        headers["Mcp-Session-Id"] = session
    async with httpx2.AsyncClient(timeout=30.0, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
        return await http.request(method, url, headers=headers, content=json.dumps(body) if body else None)


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}}, "clientInfo": {"name": "t", "version": "1"}}}


async def answer_form(context: object, params: types.ElicitRequestParams) -> types.ElicitResult:
    fields = params.requested_schema.get("properties", {})
    return types.ElicitResult(action="accept", content={name: "Ada" for name in fields})


async def test_replicas_share_sessions_continuations_and_limits(tmp_path: Path, nats_url: str) -> None:
    with replicas(tmp_path, nats_url) as (ports, keys):
        async with RoundRobin(ports) as proxy:
            # 2025-11-25 through the official client: every request on a new connection, so on the other replica
            async with client(proxy.url, keys["admin"], "legacy") as mcp:
                tools = await mcp.list_tools()
                assert any(tool.name == "test_simple_text" for tool in tools.tools)
                said = await mcp.call_tool("test_simple_text", {})
                assert not said.is_error, said.content
                again = await mcp.list_tools()
                assert len(again.tools) == len(tools.tools)
            posts = proxy.posts()
            assert len(posts) >= 3 and set(posts) == {0, 1}, proxy.served

            # the session is its principal's: another key, on either replica, gets 404 as for an unknown id
            opened = await raw(proxy.url, keys["admin"], INITIALIZE)
            session = opened.headers["mcp-session-id"]
            for _ in range(2):
                stolen = await raw(proxy.url, keys["mallory"], {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                   session)
                assert stolen.status_code == 404, stolen.text[:200]
            listed = await raw(proxy.url, keys["admin"], {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, session)
            assert listed.status_code == 200, listed.text[:200]
            # DELETE on one replica ends it on both
            assert (await raw(proxy.url, keys["admin"], None, session, "DELETE")).status_code < 300
            for _ in range(2):
                gone = await raw(proxy.url, keys["admin"], {"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, session)
                assert gone.status_code == 404, gone.text[:200]

            # 2026-07-28 MRTR: the continuation lands on the other replica (sealed with the shared keys)
            async with client(proxy.url, keys["admin"], "2026-07-28", elicitation_callback=answer_form) as mcp:
                hello = await mcp.call_tool("test_input_required_result_elicitation", {})
                assert hello.content[0].text == "Hello, Ada!"
            await replayed_continuation_is_refused(proxy.url, keys["admin"])


async def sample(context: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="forty-two"),
                                     model="stub")


@pytest.mark.parametrize("engine", ["nats", "redis"])
async def test_a_2025_question_answered_on_the_other_replica_reaches_the_asker(tmp_path: Path, nats_url: str,
                                                                              engine: str) -> None:
    """The tool call (and its SSE stream) is held by one replica; the client's answer to the elicitation or sampling
    request, POSTed on a new connection, lands on the other: it must still reach the asking handler."""
    redis = require(start_redis) if engine == "redis" else None
    try:
        await questions_across(tmp_path, redis.url if redis else nats_url)
    finally:
        if redis:
            redis.cleanup()


async def questions_across(tmp_path: Path, url: str) -> None:
    with replicas(tmp_path, url) as (ports, keys):
        async with RoundRobin(ports) as proxy:
            async with client(proxy.url, keys["admin"], "legacy", elicitation_callback=answer_form,
                              sampling_callback=sample) as mcp:
                for _ in range(2):  # twice: the call lands once on each replica, so each forwards once
                    with anyio.fail_after(20):
                        said = await mcp.call_tool("test_elicitation", {"message": "Who are you?"})
                    expected = 'User response: action=accept, content={"username": "Ada", "email": "Ada"}'
                    assert said.content[0].text == expected, said.content
                    with anyio.fail_after(20):
                        sampled = await mcp.call_tool("test_sampling", {"prompt": "6 x 7?"})
                    assert sampled.content[0].text == "LLM response: forty-two", sampled.content
            assert set(proxy.posts()) == {0, 1}, proxy.served
            # an answer is taken only from the session's own principal: another gets 404, as for an unknown session
            session = (await raw(proxy.url, keys["admin"], INITIALIZE)).headers["mcp-session-id"]
            forged = {"jsonrpc": "2.0", "id": "ask-elsewhere-1", "result": {"action": "accept"}}
            for _ in range(2):
                assert (await raw(proxy.url, keys["mallory"], forged, session)).status_code == 404
                assert (await raw(proxy.url, keys["admin"], forged, session)).status_code == 202  # expires unread


async def replayed_continuation_is_refused(url: str, key: str) -> None:
    """The same sealed requestState sent twice, once to each replica: the first is answered, the second refused."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities":
            {"elicitation": {}}, "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}
    call = {"name": "test_input_required_result_elicitation", "arguments": {}, "_meta": meta}
    headers = {"Mcp-Method": "tools/call", "Mcp-Name": "test_input_required_result_elicitation"}

    async def post(params: dict) -> dict:
        async with httpx2.AsyncClient(timeout=30.0, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
            response = await http.post(url, headers={
                "Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json", "Mcp-Protocol-Version": "2026-07-28", **headers},
                content=json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}))
        return response.json()

    first = (await post(call))["result"]
    assert first["resultType"] == "input_required", first
    answers = {name: {"action": "accept", "content": {"name": "Ada"}} for name in first["inputRequests"]}
    continued = {**call, "inputResponses": answers, "requestState": first["requestState"]}
    done = await post(continued)
    assert "result" in done and done["result"].get("resultType") != "input_required", done
    replay = await post(continued)
    assert replay.get("error", {}).get("message") == "Invalid or expired requestState", replay


@pytest.mark.parametrize("engine", ["nats", "redis"])
async def test_a_rate_limit_holds_over_both_replicas_and_fails_closed(tmp_path: Path, engine: str) -> None:
    broker = require(start_nats if engine == "nats" else start_redis)  # its own: this test stops it
    try:
        with replicas(tmp_path, broker.url, rate="0.01", burst="6", session_idle_timeout="4") as (ports, keys):  # 6 calls in 10 minutes, in all
            async with RoundRobin(ports) as proxy:
                if time.time() % 600 > 570:  # the window is fixed (600 s, from the epoch): never straddle its end
                    await asyncio.sleep(600 - time.time() % 600 + 0.5)
                statuses = []
                for number in range(9):  # counted at authentication; without a session the SDK then answers 400
                    answered = await raw(proxy.url, keys["reader"], {"jsonrpc": "2.0", "id": number, "method": "ping"})
                    statuses.append(answered.status_code)
                assert set(proxy.posts()) == {0, 1}
                assert statuses.count(429) == 3, statuses  # per replica it would be 0: each saw only 4 or 5
                # a session's record expires on the engine after session_idle_timeout: no replica adopts it then
                session = (await raw(proxy.url, keys["admin"], INITIALIZE)).headers["mcp-session-id"]
                await asyncio.sleep(6.5)
                for number in range(2):
                    expired = await raw(proxy.url, keys["admin"], {"jsonrpc": "2.0", "id": number,
                                                                    "method": "tools/list"}, session)
                    assert expired.status_code == 404, expired.text[:200]
                broker.kill()  # the engine goes away: every replica refuses (429 with Retry-After), never a 500
                for number in range(2):
                    refused = await raw(proxy.url, keys["admin"], {"jsonrpc": "2.0", "id": number, "method": "ping"})
                    assert refused.status_code == 429 and "unreachable" in refused.text, refused.text[:200]
                    assert refused.headers["retry-after"] == "1"
    finally:
        broker.cleanup()
