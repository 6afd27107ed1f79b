"""Cancellation from a real HTTP client: the gateway on uvicorn (127.0.0.1), a 2026-07-28 client that gives up
(disconnects) and a 2025-11-25 client that sends `notifications/cancelled` both stop the cell's handler, which sees
asyncio cancellation, and the call's audit record says `cancelled`."""
from __future__ import annotations

import asyncio

import httpx
import httpx2
import pytest

from brokers import free_port
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from cellmono.core.app import App
from cellmono.core.cell import Cell, Empty, tool
from cellmono.core.config import Settings
from cellmono.core.context import Context, ToolContent
from cellmono.gateway.auth import ApiKeys, Authenticator
from cellmono.gateway.http import GatewayHTTP
from cellmono.gateway.server import Gateway, MemoryAudit

from gateway_support import META

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Slow(Cell):
    name = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.started, self.cancelled = asyncio.Event(), asyncio.Event()

    @tool(requires=())
    async def wait(self, request: Empty, ctx: Context) -> ToolContent:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return ToolContent(content=[])


@pytest.fixture
async def served():
    cell = Slow()
    app = App([cell], settings=Settings(extra_sections={"security": {"role.admin": "*:*"}}))
    keys, audit = ApiKeys(), MemoryAudit()
    key = keys.create("ada", ["admin"])
    http_app = GatewayHTTP(Gateway(app, audit=audit), Authenticator(api_keys=keys))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(http_app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    await app.start()
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp", key, cell, audit
    server.should_exit = True
    await task
    await app.stop()


async def cancelled_records(audit: MemoryAudit) -> list:
    for _ in range(100):
        found = [r for r in audit.records if r.outcome == "cancelled"]
        if found:
            return found
        await asyncio.sleep(0.02)
    return []


async def test_a_2026_client_that_disconnects_cancels_the_call(served) -> None:
    url, key, cell, audit = served
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow.wait", "arguments": {}, "_meta": META}}
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json", "Mcp-Protocol-Version": "2026-07-28",
               "Mcp-Method": "tools/call", "Mcp-Name": "slow.wait"}
    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(client.post(url, json=body, headers=headers, timeout=30))
        await asyncio.wait_for(cell.started.wait(), 5)
        request.cancel()  # the connection closes: the server sees http.disconnect
        with pytest.raises(asyncio.CancelledError):
            await request
    await asyncio.wait_for(cell.cancelled.wait(), 5)
    assert [(r.method, r.tool) for r in await cancelled_records(audit)] == [("tools/call", "slow.wait")]


async def test_a_2025_client_that_cancels_cancels_the_call(served) -> None:
    url, key, cell, audit = served
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30.0))
    async with Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as mcp:
        call = asyncio.create_task(mcp.call_tool("slow.wait", {}))
        await asyncio.wait_for(cell.started.wait(), 5)
        call.cancel()
        await asyncio.wait_for(cell.cancelled.wait(), 5)
    assert [(r.method, r.tool) for r in await cancelled_records(audit)] == [("tools/call", "slow.wait")]
