"""Per-cell telemetry on a real app over the memory transport: load, queues, windows, declared facts."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, handles
from cellmono.core.config import Settings
from cellmono.ops.telemetry import Telemetry

pytestmark = pytest.mark.anyio


class Text(BaseModel):
    text: str


class Echo(Cell):
    name = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    @handles("echo.say")
    async def say(self, request: Text) -> Text:
        return request

    @handles("echo.wait")
    async def wait(self, request: Text) -> Text:
        await self.gate.wait()
        return request

    @handles("echo.events")
    async def heard(self, event: Text) -> None:
        await self.gate.wait()


def metered_app(telemetry: dict[str, str] | None = None, **declared: str) -> tuple[App, Telemetry, Echo]:
    echo = Echo()
    settings = Settings(cells={"echo": {"class": "x:Echo", **declared}},
                        extra_sections={"telemetry": telemetry or {}})
    app = App([echo], settings=settings)
    return app, Telemetry.attach(app), echo


async def test_in_flight_and_queued_while_handlers_wait() -> None:
    app, telemetry, echo = metered_app()
    async with app:
        calls = [asyncio.create_task(app.bus.request("echo.wait", Text(text="x"))) for _ in range(3)]
        for _ in range(5):
            await app.bus.publish("echo.events", Text(text="e"))
        await asyncio.sleep(0.05)
        busy = telemetry.snapshot()["echo"]
        echo.gate.set()
        await asyncio.gather(*calls)
        await asyncio.sleep(0.05)
        idle = telemetry.snapshot()["echo"]
    assert busy.in_flight == 4  # three requests and the one event being handled
    assert busy.queued == 4  # the other events wait in the mailbox
    assert (idle.in_flight, idle.queued, idle.requests) == (0, 0, 8)


async def test_largest_context_and_code_size() -> None:
    app, telemetry, _ = metered_app({"context_sample_every": "1", "latency_sample_every": "1", "bytes_per_token": "2"})
    async with app:
        for size in (10, 5000, 100):
            await app.bus.request("echo.say", Text(text="a" * size))
        metrics = telemetry.snapshot()["echo"]
    assert 5000 < metrics.context_bytes < 5100
    assert metrics.code_bytes > 1000  # this test module's source
    assert metrics.code_tokens == -(-metrics.code_bytes // 2)


async def test_users_leave_the_window() -> None:
    app, telemetry, _ = metered_app({"window": "0.2"})
    async with app:
        for user in ("ann", "bob", "ann", None):
            await app.bus.request("echo.say", Text(text="x"), principal=user)
        assert telemetry.snapshot()["echo"].concurrent_users == 2
        await asyncio.sleep(0.3)
        assert telemetry.snapshot()["echo"].concurrent_users == 0


async def test_p95_is_windowed() -> None:
    app, telemetry, echo = metered_app({"window": "0.2"})
    async with app:
        echo.gate.set()
        await app.bus.request("echo.say", Text(text="x"))
        first = telemetry.snapshot()["echo"]
        await asyncio.sleep(0.3)
        telemetry.snapshot()
        await asyncio.sleep(0.01)
        later = telemetry.snapshot()["echo"]
    assert first.p95_ms is not None and first.p95_ms_by_subject["echo.say"] is not None
    assert later.p95_ms is None and later.requests == 1  # no calls in the window; the count is cumulative


@pytest.mark.parametrize("declared", [{"tenants": "true", "isolation": "pci", "slo_p95_ms": "50"}])
async def test_declared_facts(declared: dict[str, str]) -> None:
    app, telemetry, _ = metered_app(**declared)
    async with app:
        await app.bus.request("echo.say", Text(text="x"))
        metrics = telemetry.snapshot()["echo"]
    assert (metrics.tenants, metrics.isolation, metrics.slo_p95_ms, metrics.untrusted) == (True, "pci", 50.0, False)
