"""Handler contexts across real brokers: a cell bound on a worker's bus (its own NATS or Redis connection), called
from a gateway-side bus. Progress and log events, the `input_required` answer and the caller's cancellation cross
each transport unchanged (plain events and replies), and events of another principal are told apart."""
from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from cellmono.core.bus import CANCEL_HEADER, Bus
from cellmono.core.cell import Cell, Empty, tool
from cellmono.core.context import CallInfo, Context, ToolContent, is_input_required
from cellmono.core.transport import MemoryTransport

from brokers import require, start_nats, start_redis

BROKERS = ["memory", "nats", "redis"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def redis_server():
    server = require(start_redis)
    yield server
    server.cleanup()


class Steps(BaseModel):
    steps: int = 3
    pause: float = 0.0


class Worker(Cell):
    name = "work"

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    @tool(requires=())
    async def count(self, request: Steps, ctx: Context) -> ToolContent:
        for step in range(request.steps):
            await ctx.progress(step + 1, request.steps, f"step {step + 1}")
            await ctx.log("info", {"step": step + 1})
        return ToolContent(content=[{"type": "text", "text": "counted"}])

    @tool(requires=())
    async def ask(self, request: Empty, ctx: Context) -> ToolContent:
        answer = await ctx.elicit("Name?", {"type": "object", "properties": {"name": {"type": "string"}}}, key="name")
        return ToolContent(content=[{"type": "text", "text": f"hi {answer['content']['name']}"}])

    @tool(requires=())
    async def slow(self, request: Steps, ctx: Context) -> ToolContent:
        self.started.set()
        try:
            await asyncio.sleep(request.pause)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return ToolContent(content=[{"type": "text", "text": "slept"}])


@pytest.fixture(params=BROKERS)
async def pair(request):
    """(gateway bus, worker bus, worker cell): two connections to one broker (one bus in memory)."""
    prefix = f"ctx{int(time.time() * 1000) % 1000000}"
    if request.param == "memory":
        transports = [MemoryTransport()]
    elif request.param == "nats":
        from cellmono.transports.nats import NatsTransport
        url = request.getfixturevalue("nats_server").url
        transports = [NatsTransport(url, prefix=prefix, retry_delay=0.05) for _ in range(2)]
    else:
        from cellmono.transports.redis import RedisTransport
        url = request.getfixturevalue("redis_server").url
        transports = [RedisTransport(url, prefix=prefix, retry_delay=0.05) for _ in range(2)]
    buses = [Bus(transport) for transport in transports]
    for bus in buses:
        await bus.start()
    gateway, worker = buses[0], buses[-1]
    cell = Worker()
    cell.bus = worker
    for spec in cell.tools():
        await worker.handle(spec.subject, cell.bind(spec))
    yield gateway, worker, cell
    for bus in buses:
        await bus.stop()


def text(result) -> str:
    return ToolContent.model_validate(result).content[0]["text"]


async def call(gateway: Bus, subject: str, payload: dict, info: CallInfo, principal: str = "ada"):
    envelope = gateway.envelope(subject, payload, kind="request", timeout=10, principal=principal,
                                headers={**info.header(), CANCEL_HEADER: "1"})
    return envelope, await gateway.send_request(envelope)


@pytest.mark.anyio
async def test_progress_and_logs_cross_the_broker_as_events(pair) -> None:
    gateway, _, _ = pair
    seen: list[tuple[str | None, dict]] = []
    await gateway.subscribe("cellmono.stream.t1", lambda event: seen.append((event.principal, event.payload)))
    info = CallInfo(stream="cellmono.stream.t1", progress=True, log_level="info")
    _, result = await call(gateway, "work.count", {"steps": 3}, info)
    assert text(result) == "counted"
    for _ in range(200):
        if len(seen) == 6:
            break
        await asyncio.sleep(0.01)
    assert [p["progress"] for _, p in seen if p["type"] == "progress"] == [1, 2, 3]
    assert [p["data"] for _, p in seen if p["type"] == "log"] == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert {principal for principal, _ in seen} == {"ada"}  # the gateway drops events of any other principal


@pytest.mark.anyio
async def test_a_question_crosses_as_input_required_and_the_answer_resumes(pair) -> None:
    gateway, _, _ = pair
    _, first = await call(gateway, "work.ask", {}, CallInfo(client=("elicitation",)))
    assert is_input_required(first) and first["inputRequests"]["name"]["method"] == "elicitation/create"
    answers = {"name": {"action": "accept", "content": {"name": "Ada"}}}
    _, second = await call(gateway, "work.ask", {}, CallInfo(client=("elicitation",), answers=answers))
    assert text(second) == "hi Ada"


@pytest.mark.anyio
async def test_the_callers_cancellation_cancels_the_handler_in_the_worker(pair) -> None:
    gateway, _, cell = pair
    request = asyncio.create_task(call(gateway, "work.slow", {"pause": 30}, CallInfo()))
    await asyncio.wait_for(cell.started.wait(), 5)
    request.cancel()
    await asyncio.wait_for(cell.cancelled.wait(), 5)  # the worker's handler saw asyncio (anyio) cancellation
    with pytest.raises(asyncio.CancelledError):
        await request


@pytest.mark.anyio
async def test_only_the_caller_may_cancel(pair) -> None:
    gateway, _, cell = pair
    envelope = gateway.envelope("work.slow", {"pause": 0.5}, kind="request", timeout=10, principal="ada",
                                headers={CANCEL_HEADER: "1"})
    request = asyncio.create_task(gateway.send_request(envelope))
    await asyncio.wait_for(cell.started.wait(), 5)
    await gateway.publish("cellmono.cancel", {"id": envelope.id}, principal="mallory")
    assert text(await request) == "slept"
    assert not cell.cancelled.is_set()
