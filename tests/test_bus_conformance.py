"""The bus semantics every transport must share, run on each transport kind in conftest.TRANSPORT_KINDS."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from cellmono.bus import Bus
from cellmono.envelope import Envelope
from cellmono.errors import (AccessDenied, BusClosed, MessageTooLarge, NoResponders, RemoteError,
                             RequestTimeout, SubjectError)

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    number: int


async def settle(condition, seconds: float = 3.0) -> None:
    """Wait until `condition()` is true; fail after `seconds`."""
    give_up = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def test_wildcards_follow_nats_rules(bus: Bus) -> None:
    heard: dict[str, list[str]] = {"one": [], "rest": [], "exact": []}
    await bus.subscribe("orders.*", lambda e: heard["one"].append(e.subject))
    await bus.subscribe("orders.>", lambda e: heard["rest"].append(e.subject))
    await bus.subscribe("orders.created", lambda e: heard["exact"].append(e.subject))
    for subject in ("orders.created", "orders.eu.created", "orders", "other.created"):
        await bus.publish(subject)
    await settle(lambda: len(heard["rest"]) == 2 and heard["one"] and heard["exact"])
    await asyncio.sleep(0.05)
    assert heard == {"one": ["orders.created"], "rest": ["orders.created", "orders.eu.created"],
                     "exact": ["orders.created"]}


async def test_invalid_subjects_are_refused(bus: Bus) -> None:
    for subject in ("", "a..b", "has space", "wild.*"):
        with pytest.raises(SubjectError):
            await bus.publish(subject)
    with pytest.raises(SubjectError):
        await bus.subscribe("a.>.b", lambda e: None)


async def test_queue_group_delivers_each_message_to_one_member(bus: Bus) -> None:
    received: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for member in received:
        await bus.subscribe("jobs", lambda e, member=member: received[member].append(Item.model_validate(e.payload).number),
                            queue="workers")
    for number in range(60):
        await bus.publish("jobs", Item(number=number))
    await settle(lambda: sum(map(len, received.values())) >= 60)
    await asyncio.sleep(0.05)
    everything = sorted(item for numbers in received.values() for item in numbers)
    assert everything == list(range(60)), "each message exactly once"
    assert all(received.values()), "every member got work"


async def test_request_reply_with_models(bus: Bus) -> None:
    await bus.handle("double", lambda e: Item(number=Item.model_validate(e.payload).number * 2))
    assert await bus.request("double", Item(number=21), response=Item) == Item(number=42)


async def test_timeout_is_typed_and_the_bus_keeps_serving(bus: Bus) -> None:
    async def slow(envelope: Envelope) -> int:
        await asyncio.sleep(5)
        return 0
    await bus.handle("slow", slow)
    await bus.handle("fast", lambda e: 1)
    started = time.monotonic()
    with pytest.raises(RequestTimeout) as caught:
        await bus.request("slow", timeout=0.1)
    assert time.monotonic() - started < 1.0
    assert isinstance(caught.value, TimeoutError) and "'slow'" in str(caught.value)
    assert await bus.request("fast") == 1


async def test_remote_errors_carry_type_and_message(bus: Bus) -> None:
    def broken(envelope: Envelope) -> None:
        raise ValueError("bad thing")

    def denied(envelope: Envelope) -> None:
        raise AccessDenied("needs notes:write")
    await bus.handle("broken", broken)
    await bus.handle("denied", denied)
    with pytest.raises(RemoteError) as caught:
        await bus.request("broken")
    assert caught.value.remote_type == "ValueError" and "bad thing" in str(caught.value)
    with pytest.raises(AccessDenied) as denial:
        await bus.request("denied")
    assert denial.value.remote and isinstance(denial.value, PermissionError)
    await bus.handle("alive", lambda e: "yes")  # the bus is still up and serving
    assert await bus.request("alive") == "yes"


async def test_no_responders_is_fast(bus: Bus) -> None:
    started = time.monotonic()
    with pytest.raises(NoResponders) as caught:
        await bus.request("nobody.here", timeout=5)
    assert time.monotonic() - started < 1.0, "must not wait for the timeout"
    assert "'nobody.here'" in str(caught.value)


async def test_ordering_per_subscription(bus: Bus) -> None:
    seen: list[int] = []
    await bus.subscribe("sequence", lambda e: seen.append(e.payload))
    for number in range(1000):
        await bus.publish("sequence", number)
    await settle(lambda: len(seen) == 1000)
    assert seen == list(range(1000))


async def test_drain_finishes_work_already_accepted(transport_factory) -> None:
    bus = Bus(transport_factory())
    await bus.start()
    handled: list[int] = []

    async def slowly(envelope: Envelope) -> None:
        await asyncio.sleep(0.001)
        handled.append(envelope.payload)
    await bus.subscribe("work", slowly)
    for number in range(50):
        await bus.publish("work", number)
    await bus.stop(timeout=5)
    assert handled == list(range(50)), "stop() must drain accepted messages"
    with pytest.raises(BusClosed):
        await bus.publish("work", 99)
    with pytest.raises(BusClosed):
        await bus.request("work")


async def test_deadline_propagates_to_nested_requests(bus: Bus) -> None:
    deadlines: list[float] = []
    await bus.handle("inner", lambda e: deadlines.append(e.deadline))

    async def outer(envelope: Envelope) -> None:
        await bus.request("inner", timeout=60)
    await bus.handle("outer", outer)
    before = time.time()
    await bus.request("outer", timeout=1)
    assert deadlines and deadlines[0] <= before + 1.1, "the caller's shorter deadline wins"


async def test_identity_travels_with_the_message(bus: Bus) -> None:
    seen: list[tuple] = []
    await bus.handle("whoami", lambda e: seen.append((e.principal, e.tenant, e.capability)) or e.principal)
    assert await bus.request("whoami", principal="ada", tenant="acme", capability="token-1") == "ada"
    assert seen == [("ada", "acme", "token-1")]


async def test_oversize_messages_are_refused(transport_kind: str, transport_factory) -> None:
    if transport_kind == "memory":
        pytest.skip("the fast in-memory mode passes objects by reference: no byte boundary to limit")
    bus = Bus(transport_factory(max_bytes=10_000))
    await bus.start()
    try:
        got: list[int] = []
        await bus.subscribe("big", lambda e: got.append(len(e.payload)))
        await bus.handle("echo", lambda e: e.payload)
        with pytest.raises(MessageTooLarge):
            await bus.publish("big", "x" * 20_000)
        with pytest.raises(MessageTooLarge):
            await bus.request("echo", "x" * 20_000)
        await bus.publish("big", "x" * 100)  # a normal message still flows
        await settle(lambda: got == [100])
    finally:
        await bus.stop()
