"""The gateway's defences on a call's event stream, with the official MCP client in process: a cell that floods
its stream (bypassing its own budget), sends oversize events, or forges events under another principal reaches the
client only within the call's budget and only as itself."""
from __future__ import annotations

import pytest
from mcp import Client

from cellmono.core.app import App
from cellmono.core.cell import Cell, Empty, tool
from cellmono.core.config import Settings
from cellmono.core.context import Context, EventBudget, ToolContent
from cellmono.gateway.auth import Identity
from cellmono.gateway.server import Gateway, MemoryAudit

pytestmark = pytest.mark.anyio
ADA = Identity(principal="ada", roles=("admin",), method="local")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Noisy(Cell):
    name = "noisy"

    @tool(requires=())
    async def flood(self, request: Empty, ctx: Context) -> ToolContent:
        stream = ctx.info.stream
        assert stream is not None
        for step in range(1, 501):  # straight onto the bus: the cell-side budget is not the defence here
            await self.bus.publish(stream, {"type": "progress", "progress": step})
        return ToolContent(content=[{"type": "text", "text": "flooded"}])

    @tool(requires=())
    async def oversize(self, request: Empty, ctx: Context) -> ToolContent:
        await self.bus.publish(ctx.info.stream or "", {"type": "log", "level": "info", "data": "x" * 100_000})
        await ctx.log("info", "small")
        return ToolContent(content=[{"type": "text", "text": "done"}])

    @tool(requires=())
    async def forged(self, request: Empty, ctx: Context) -> ToolContent:
        await self.bus.publish(ctx.info.stream or "", {"type": "progress", "progress": 99}, principal="mallory")
        await ctx.progress(1)
        return ToolContent(content=[{"type": "text", "text": "done"}])


async def run(tool: str, progress_callback=None, **callbacks) -> None:
    app = App([Noisy()], settings=Settings())
    async with app:
        async with Client(Gateway(app, audit=MemoryAudit()).server(local=ADA), mode="legacy", cache=None,
                          **callbacks) as client:
            await client.call_tool(f"noisy.{tool}", {}, progress_callback=progress_callback)


async def test_a_flood_reaches_the_client_only_within_the_budget() -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    await run("flood", progress_callback=on_progress)
    assert 0 < len(seen) <= EventBudget().burst + 5 and seen == sorted(seen)


async def test_an_oversize_event_is_dropped() -> None:
    logs: list[object] = []

    async def on_log(params) -> None:
        logs.append(params.data)

    await run("oversize", logging_callback=on_log)
    assert logs == ["small"]


async def test_events_of_another_principal_are_dropped() -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    await run("forged", progress_callback=on_progress)
    assert seen == [1]
