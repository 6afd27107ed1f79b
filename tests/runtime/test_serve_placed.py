"""`cellmono serve` with a cell placed in workers from the start (`placement = process` in settings, as the README's
"Promoting a cell" section shows): the gateway lists and calls the placed cell's tools through the broker, exactly as
it does for a cell in process, with a real nats-server and the official MCP client."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from brokers import require, start_nats
from gateway_support import serve


async def tools_and_call(url: str, key: str) -> tuple[set[str], object]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(60.0))
    async with Client(streamable_http_client(url, http_client=http), mode="2026-07-28", cache=None) as mcp:
        names = {tool.name for tool in (await mcp.list_tools()).tools}
        return names, await mcp.call_tool("search.query", {"text": "bus"})


def test_a_cell_placed_in_workers_at_start_is_served_by_the_gateway(tmp_path: Path) -> None:
    server = require(start_nats)
    try:
        placed = {"CELLMONO__CELL_SEARCH__PLACEMENT": "process", "CELLMONO__CELL_SEARCH__TRANSPORT": "nats",
                  "CELLMONO__CELL_SEARCH__REPLICAS": "1", "CELLMONO__NATS__URL": server.url,
                  "CELLMONO__NATS__PREFIX": f"placed{os.getpid()}", "CELLMONO__LOG__LEVEL": "WARNING"}
        with serve(tmp_path / "state", environment=placed, timeout=90) as running:
            names, result = asyncio.run(tools_and_call(running.url, running.key))
        assert {"search.query", "notes.add"} <= names, names
        assert not result.is_error, result.content
    finally:
        server.cleanup()
