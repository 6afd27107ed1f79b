"""Property-based fuzz of the gateway: at least 10,000 malformed requests (bad JSON, wrong JSON-RPC
shapes and types, header/body mismatches, huge and deeply nested payloads, bad tokens) driven through
the ASGI app in process, plus a sample over real HTTP. Never a 5xx, the server keeps answering, and
its memory stays bounded."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cellmono.topology.services import app_from_settings
from cellmono.gateway.auth import ApiKeys, Authenticator
from cellmono.core.config import load_settings
from cellmono.gateway.server import Gateway, MemoryAudit
from cellmono.gateway.http import GatewayHTTP
from cellmono.runtime.serve import runtime_of, token_minter
from gateway_support import META, ROOT, modern_request, serve

EXAMPLES = int(os.environ.get("CELLMONO_FUZZ_EXAMPLES", "10000"))
MAX_BODY = 64 * 1024

KEYS = ApiKeys()
ADMIN = KEYS.create("admin", ["admin"])
READER = KEYS.create("reader", ["reader"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
methods = st.sampled_from(["tools/call", "tools/list", "server/discover", "initialize", "ping", "resources/list",
                           "notifications/initialized", "nope", ""]) | st.text(max_size=12)
tools = st.sampled_from(["notes.add", "notes.get", "search.query", "digest.summary", "nope", ""]) | st.text(max_size=12)
versions = st.sampled_from(["2026-07-28", "2025-11-25", "2025-06-18", "1999-01-01", "", None]) | st.text(max_size=10)
tokens = st.sampled_from([ADMIN, READER, None, "", "cmk_x_y", "a.b.c", ADMIN[:-2], "eyJhbGciOiJub25lIn0.e30."]) | \
    st.text(max_size=40)


@st.composite
def requests(draw) -> tuple[dict[str, str], bytes]:
    """One malformed (or occasionally valid) request: headers and body."""
    method, tool = draw(methods), draw(tools)
    params = draw(st.sampled_from(["ok", "junk", "missing", "meta-only"]))
    body_params: object
    if params == "ok":
        body_params = {"name": tool, "arguments": draw(json_values), "_meta": META}
    elif params == "junk":
        body_params = draw(json_values)
    elif params == "meta-only":
        body_params = {"_meta": draw(st.sampled_from([META, {}, {"x": 1}, None]))}
    else:
        body_params = None
    message: dict[str, object] = {"jsonrpc": draw(st.sampled_from(["2.0", "1.0", 2, None])), "method": method}
    if draw(st.booleans()):
        message["id"] = draw(st.integers() | st.text(max_size=5) | st.none() | st.lists(st.integers(), max_size=2))
    if body_params is not None:
        message["params"] = body_params
    shape = draw(st.sampled_from(["message", "message", "message", "bytes", "json", "nested", "huge", "batch"]))
    if shape == "message":
        body = json.dumps(message).encode()
    elif shape == "bytes":
        body = draw(st.binary(max_size=200))
    elif shape == "json":
        body = json.dumps(draw(json_values)).encode()
    elif shape == "nested":
        depth = draw(st.integers(min_value=50, max_value=20_000))
        body = (b"[" * depth + b"]" * depth)[:MAX_BODY - 1] if draw(st.booleans()) else \
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notes.add","arguments":' + \
            b'{"a":' * min(depth, 5000) + b"1" + b"}" * min(depth, 5000) + b"}}"
    elif shape == "huge":
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notes.add","arguments":{"title":"' + \
            b"x" * draw(st.integers(min_value=MAX_BODY - 200, max_value=MAX_BODY + 5000)) + b'"}}}'
    else:
        body = json.dumps([message, message]).encode()
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""])),
               "Accept": draw(st.sampled_from(["application/json, text/event-stream", "application/json",
                                               "text/event-stream", "*/*", ""]))}
    version = draw(versions)
    if version is not None:
        headers["MCP-Protocol-Version"] = version
    if draw(st.booleans()):
        headers["Mcp-Method"] = draw(st.sampled_from([method, "tools/call", "tools/list"]) | st.text(max_size=8))
    if draw(st.booleans()):
        headers["Mcp-Name"] = draw(st.sampled_from([tool, "notes.add"]) | st.text(max_size=8))
    token = draw(tokens)
    if token is not None:
        headers["Authorization"] = draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", ""])) + token
    if draw(st.integers(min_value=0, max_value=20)) == 0:
        headers["Mcp-Session-Id"] = draw(st.text(max_size=40))
    if draw(st.integers(min_value=0, max_value=30)) == 0:
        headers["Origin"] = draw(st.sampled_from(["https://evil.example", "http://localhost:1", "null"]))
    headers = {key: value for key, value in headers.items() if value.isascii() and value == value.strip() and value.isprintable()}
    return headers, body


def rss() -> int:
    return psutil.Process().memory_info().rss


def test_ten_thousand_malformed_requests_in_process() -> None:
    loop = asyncio.new_event_loop()
    settings_ = load_settings(ROOT / "settings.ini", environ={})
    folder = Path(tempfile.mkdtemp(prefix="cellmono-fuzz-"))  # keys, audit log and store: never in the work tree
    sections = {**settings_.extra_sections, "gateway": {"max_body_bytes": str(MAX_BODY), "rate": "1e9", "burst": "1e9",
                                                        "tool_rate": "1e9", "tool_burst": "1e9", "max_sessions": "200",
                                                        "audit_refusals": "1000000000"},  # every refusal recorded
                "security": {**settings_.extra_sections.get("security", {}), "audit_path": str(folder / "audit.sqlite"),
                             "signing_keys": str(folder / "signing-keys.json"),
                             "store_path": str(folder / "store.sqlite"), "kek_file": str(folder / "kek.json")}}
    app = app_from_settings(settings_.model_copy(update={"extra_sections": sections}))
    audit = MemoryAudit(limit=1000)
    gateway = Gateway(app, audit=audit)
    gateway.minter = token_minter(runtime_of(app), gateway.policy)
    http_app = GatewayHTTP(gateway, Authenticator(api_keys=KEYS))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://127.0.0.1:8765")
    stop, ready = asyncio.Event(), asyncio.Event()

    async def hold() -> None:  # the app and session manager live in one task, as under a server
        async with app, http_app.running():
            ready.set()
            await stop.wait()

    holder = loop.create_task(hold())
    loop.run_until_complete(ready.wait())
    statuses: dict[int, int] = {}
    memory: list[int] = []
    sample: list[tuple[dict[str, str], bytes]] = []

    async def send(headers: dict[str, str], body: bytes) -> int:
        response = await client.post("/mcp", headers=headers, content=body)
        return response.status_code

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests())
    def one(request: tuple[dict[str, str], bytes]) -> None:
        status = loop.run_until_complete(send(*request))
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500 or status == 503, (status, request[0], request[1][:300])
        if sum(statuses.values()) % 5 == 0:
            sample.append(request)

    try:
        one()
        headers, body = modern_request("tools/call", {"name": "digest.summary", "arguments": {}}, key=ADMIN)
        assert loop.run_until_complete(send(headers, body)) == 200  # still serving
        # Bounded memory: replaying the same malformed traffic again and again must not grow the process
        # (hypothesis' own bookkeeping is done by now, so growth here would be the gateway's).
        for _ in range(4):
            for request in sample:
                assert loop.run_until_complete(send(*request)) < 500
            gc.collect()
            memory.append(rss())
    finally:
        stop.set()
        loop.run_until_complete(holder)
        loop.run_until_complete(client.aclose())
        loop.close()
    assert sum(statuses.values()) >= EXAMPLES
    assert statuses.get(503, 0) == 0  # nothing was shed: the cap was never reached sequentially
    assert audit.count >= EXAMPLES and len(audit.records) == 1000
    print("statuses:", dict(sorted(statuses.items())), "rss MB:", [round(m / 2**20) for m in memory])
    assert memory[-1] - memory[1] < 8 * 2**20, memory  # after a warm-up round, no growth per request


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_malformed_requests_over_real_http(request, http_server) -> None:
    headers, body = request
    response = http_server["client"].post(http_server["url"], headers=headers, content=body)
    assert response.status_code < 500, (response.status_code, headers, body[:300])


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("fuzz-state")
    environment = {"CELLMONO__GATEWAY__MAX_BODY_BYTES": str(MAX_BODY), "CELLMONO__GATEWAY__RATE": "1e9",
                   "CELLMONO__GATEWAY__BURST": "1e9", "CELLMONO__GATEWAY__TOOL_RATE": "1e9",
                   "CELLMONO__GATEWAY__TOOL_BURST": "1e9"}
    with serve(state, environment=environment) as running, httpx.Client(timeout=30) as client:
        yield {"url": running.url, "client": client, "process": running.process}
        headers, body = modern_request("tools/list", key=running.key)
        assert client.post(running.url, headers=headers, content=body).status_code == 200  # still up
        assert running.process.poll() is None
