"""Memory-transport specifics: bounded mailboxes with backpressure, bounded in-flight requests."""

from __future__ import annotations

import asyncio

import pytest

from cellmono.core.bus import Bus
from cellmono.core.envelope import Envelope
from cellmono.core.transport import MemoryTransport

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("serialize", [False, True])
async def test_full_mailbox_makes_publishers_wait(serialize: bool) -> None:
    transport = MemoryTransport(serialize=serialize, capacity=5)
    deepest = 0
    handled: list[int] = []
    release = asyncio.Event()

    async with Bus(transport) as bus:
        async def slow(envelope: Envelope) -> None:
            nonlocal deepest
            await release.wait()
            deepest = max(deepest, len(subscription.mailbox))
            handled.append(envelope.payload)

        subscription = await bus.subscribe("work", slow)
        publisher = asyncio.create_task(_publish_all(bus, 40))
        await asyncio.sleep(0.05)
        assert not publisher.done(), "the publisher must be held back while the subscriber is stuck"
        assert len(subscription.mailbox) <= 5
        release.set()
        await asyncio.wait_for(publisher, 5)
        await asyncio.sleep(0.05)
    assert handled == list(range(40)), "backpressure loses nothing and keeps the order"
    assert deepest <= 5


async def _publish_all(bus: Bus, count: int) -> None:
    for number in range(count):
        await bus.publish("work", number)


async def test_in_flight_requests_are_bounded() -> None:
    running = 0
    most = 0

    async def slow(envelope: Envelope) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return envelope.payload

    async with Bus(MemoryTransport(max_in_flight=3)) as bus:
        await bus.handle("slow", slow)
        results = await asyncio.gather(*(bus.request("slow", number) for number in range(20)))
    assert results == list(range(20)) and most == 3
