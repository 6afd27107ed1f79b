"""The worker path of a CPU-heavy cell, before and after promotion, with real components:
- in process, a saturated cell shares the app's loop in turns (`MemoryTransport.turn`): timers, the broker client
  and the trigger loop keep running while requests queue, where a burst of inline handlers used to hold the loop
  for all of them (64 x 10 ms) and a promotion under load timed out on its own pings;
- over NATS, a reply is written before the responder takes the next queued request, not after its run."""
from __future__ import annotations

import asyncio
import statistics
import threading
import time

import pytest
from pydantic import BaseModel

from brokers import require, start_nats

from cellmono.core.envelope import Envelope
from cellmono.core.transport import MemoryTransport
from cellmono.transports.nats import NatsTransport

BUSY_S = 0.01


def spin(seconds: float) -> None:
    """Hold the thread for `seconds`, as a CPU-bound handler does."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


async def busy(envelope: Envelope) -> Envelope:
    spin(BUSY_S)
    return envelope.reply({"ok": True})


async def lateness_under_load(transport: MemoryTransport, callers: int, seconds: float) -> list[float]:
    """How late a 10 ms timer wakes while `callers` call a CPU-bound responder back to back."""
    await transport.subscribe("hot.work", busy, responder=True)
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            await transport.request(Envelope.trusted("hot.work", "request", {}), 30.0)

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    late: list[float] = []
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        asked = time.monotonic()
        await asyncio.sleep(0.01)
        late.append(time.monotonic() - asked - 0.01)
    stop.set()
    await asyncio.gather(*tasks)
    await transport.close()
    return late


def test_a_saturated_cell_leaves_the_loop_its_turns() -> None:
    shared = asyncio.run(lateness_under_load(MemoryTransport(), callers=16, seconds=1.5))
    held = asyncio.run(lateness_under_load(MemoryTransport(turn_budget=3600.0), callers=16, seconds=1.5))
    # in turns, a timer waits for about one handler; without, for every caller's handler (16 x 10 ms)
    assert statistics.median(shared) < 0.5 * statistics.median(held), (statistics.median(shared),
                                                                        statistics.median(held))
    assert statistics.median(shared) < 8 * BUSY_S, statistics.median(shared)


class Work(BaseModel):
    n: int


@pytest.fixture(scope="module")
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


def test_a_nats_reply_is_not_held_behind_the_next_handler(nats_server) -> None:
    held_s = 0.1

    async def slow(envelope: Envelope) -> Envelope:
        spin(held_s)
        return envelope.reply({"n": envelope.payload["n"]})

    ready, stop = threading.Event(), threading.Event()

    def serve() -> None:  # the worker: its own thread and loop, as its own process would have
        async def main() -> None:
            responder = NatsTransport(nats_server.url, prefix="turns")
            await responder.start()
            await responder.subscribe("hot.work", slow, responder=True, queue="hot")
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)
            await responder.close()
        asyncio.run(main())

    async def scenario() -> list[float]:
        requester = NatsTransport(nats_server.url, prefix="turns")
        await requester.start()
        ratios = []
        for _ in range(3):
            started = time.monotonic()
            arrived: list[float] = []

            async def ask(n: int) -> None:
                await requester.request(Envelope.trusted("hot.work", "request", {"n": n}), 10.0)
                arrived.append(time.monotonic() - started)

            await asyncio.gather(ask(1), ask(2))  # both queue at the one responder
            ratios.append(min(arrived) / max(arrived))
        await requester.close()
        return ratios

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        assert ready.wait(10)
        ratios = asyncio.run(scenario())
    finally:
        stop.set()
        worker.join(10)
    # the first answer comes after one handler (about half the second's time), not after both
    assert statistics.median(ratios) < 0.75, ratios
