"""The bus semantics, run unchanged on memory, memory-serialized, NATS and Redis (real servers)."""
from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from cellmono.core.bus import Bus
from cellmono.core.errors import (AccessDenied, BusClosed, MessageTooLarge, NoResponders, RemoteError,
                             RequestTimeout, SubjectError)
from cellmono.core.transport import MemoryTransport

from brokers import require, start_nats, start_redis

BROKERS = ["memory", "memory-serialized", "nats", "redis"]
_prefixes = itertools.count(1)


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


@pytest.fixture(params=BROKERS)
def make_transport(request):
    """A factory of started transports sharing one broker and one fresh prefix (so tests never meet)."""
    kind = request.param
    prefix = f"t{next(_prefixes)}x{int(time.time() * 1000) % 100000}"
    made = []

    async def make(**options):
        if kind == "memory":
            transport = made[0] if made else MemoryTransport(**options)
        elif kind == "memory-serialized":
            transport = made[0] if made else MemoryTransport(serialize=True, **options)
        elif kind == "nats":
            from cellmono.transports.nats import NatsTransport
            server = request.getfixturevalue("nats_server")
            transport = NatsTransport(server.url, prefix=prefix, retry_delay=0.05, ack_wait=2.0, **options)
        else:
            from cellmono.transports.redis import RedisTransport
            server = request.getfixturevalue("redis_server")
            transport = RedisTransport(server.url, prefix=prefix, retry_delay=0.05, ack_wait=2.0, **options)
        if transport not in made:
            await transport.start()
            made.append(transport)
        return transport

    make.kind = kind
    make.prefix = prefix
    return make


async def eventually(condition, timeout=5.0):
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def buses(make_transport, count=2):
    """`count` buses on distinct connections to the same broker (one shared bus in memory)."""
    made = []
    for _ in range(count):
        bus = Bus(await make_transport(), timeout=3)
        await bus.start()
        made.append(bus)
    return made


async def stop_all(*all_buses):
    seen = set()
    for bus in all_buses:
        if id(bus.transport) not in seen:
            seen.add(id(bus.transport))
            await bus.stop()


pytestmark = pytest.mark.anyio


async def test_wildcards(make_transport):
    publisher, listener = await buses(make_transport)
    heard = {"star": [], "tail": [], "exact": []}
    await listener.subscribe("orders.*", lambda envelope: heard["star"].append(envelope.subject))
    await listener.subscribe("orders.>", lambda envelope: heard["tail"].append(envelope.subject))
    await listener.subscribe("orders.new", lambda envelope: heard["exact"].append(envelope.subject))
    for subject in ("orders.new", "orders.eu.new", "orders", "other.new"):
        await publisher.publish(subject)
    assert await eventually(lambda: len(heard["tail"]) == 2 and heard["star"] and heard["exact"])
    await asyncio.sleep(0.05)
    assert heard == {"star": ["orders.new"], "tail": ["orders.new", "orders.eu.new"], "exact": ["orders.new"]}
    await stop_all(publisher, listener)


async def test_invalid_subjects_are_refused(make_transport):
    (bus,) = await buses(make_transport, 1)
    for subject in ("", "a..b", "has space", "wild.*"):
        with pytest.raises(SubjectError):
            await bus.publish(subject)
    with pytest.raises(SubjectError):
        await bus.subscribe("a.>.b", lambda envelope: None)
    await stop_all(bus)


async def test_queue_group_one_member_per_message(make_transport):
    publisher, first, second = await buses(make_transport, 3)
    got = {"first": [], "second": [], "plain": []}
    await first.subscribe("jobs.run", lambda envelope: got["first"].append(envelope.payload), queue="workers")
    await second.subscribe("jobs.run", lambda envelope: got["second"].append(envelope.payload), queue="workers")
    await second.subscribe("jobs.run", lambda envelope: got["plain"].append(envelope.payload))
    for number in range(40):
        await publisher.publish("jobs.run", number)
    assert await eventually(lambda: len(got["first"]) + len(got["second"]) == 40 and len(got["plain"]) == 40)
    await asyncio.sleep(0.05)
    assert sorted(got["first"] + got["second"]) == list(range(40))  # each message once
    if make_transport.kind != "redis":  # Redis groups go to the first member to claim, not round-robin
        assert got["first"] and got["second"]  # both members worked
    await stop_all(publisher, first, second)


async def test_request_reply_and_typed_errors(make_transport):
    caller, server = await buses(make_transport)

    async def divide(envelope):
        return 1 / envelope.payload

    def deny(envelope):
        raise AccessDenied("needs notes:write")

    await server.handle("math.divide", divide)
    await server.handle("secret", deny)
    assert await caller.request("math.divide", 4) == 0.25
    with pytest.raises(RemoteError, match="ZeroDivisionError: division by zero"):
        await caller.request("math.divide", 0)
    with pytest.raises(AccessDenied, match="needs notes:write"):
        await caller.request("secret")
    assert await caller.request("math.divide", 2) == 0.5  # still serving
    await stop_all(caller, server)


async def test_request_goes_to_one_queue_member(make_transport):
    caller, first, second = await buses(make_transport, 3)
    calls = []
    await first.handle("who", lambda envelope: calls.append("first") or "first", queue="svc")
    await second.handle("who", lambda envelope: calls.append("second") or "second", queue="svc")
    answers = [await caller.request("who") for _ in range(30)]
    assert len(calls) == 30 and sorted(answers) == sorted(calls)  # each request answered once
    if make_transport.kind != "redis":  # Redis groups go to the first member to claim, not round-robin
        assert set(answers) == {"first", "second"}
    await stop_all(caller, first, second)


async def test_no_responders_is_fast(make_transport):
    caller, listener = await buses(make_transport)
    await listener.subscribe("nobody.listens.here", lambda envelope: None)  # a plain listener does not answer
    started = time.perf_counter()
    with pytest.raises(NoResponders, match="nobody"):
        await caller.request("nobody.home", timeout=3)
    with pytest.raises(NoResponders):
        await caller.request("nobody.listens.here", timeout=3)
    assert time.perf_counter() - started < 1.0
    await stop_all(caller, listener)


async def test_timeout(make_transport):
    caller, server = await buses(make_transport)

    async def sleepy(envelope):
        await asyncio.sleep(2)
        return "late"

    await server.handle("sleepy", sleepy)
    started = time.perf_counter()
    with pytest.raises(RequestTimeout):
        await caller.request("sleepy", timeout=0.2)
    assert 0.15 < time.perf_counter() - started < 1.0
    await stop_all(caller, server)


async def test_ordering_per_subscription(make_transport):
    publisher, listener = await buses(make_transport)
    seen = []

    async def slow_record(envelope):
        if envelope.payload % 50 == 0:
            await asyncio.sleep(0.01)  # a handler that suspends must not reorder
        seen.append(envelope.payload)

    await listener.subscribe("seq.*", slow_record)
    for number in range(300):
        await publisher.publish("seq.n", number)
    assert await eventually(lambda: len(seen) == 300)
    assert seen == list(range(300))
    await stop_all(publisher, listener)


async def test_drain_on_close(make_transport):
    publisher, listener = await buses(make_transport)
    finished = []

    async def slow(envelope):
        await asyncio.sleep(0.05)
        finished.append(envelope.payload)

    await listener.subscribe("work.item", slow)
    for number in range(5):
        await publisher.publish("work.item", number)
    assert await eventually(lambda: len(finished) >= 1)
    await listener.stop(timeout=5)
    assert finished == [0, 1, 2, 3, 4]  # everything received was finished before the close returned
    with pytest.raises(BusClosed):
        await listener.publish("work.item", 99)
    await stop_all(publisher)


async def test_size_limit(make_transport):
    if make_transport.kind == "memory":
        pytest.skip("plain memory passes objects by reference: sizes exist once there are bytes")
    transport = await make_transport(max_bytes=2048)
    caller = Bus(transport, timeout=2)
    await caller.start()
    got = []
    await caller.subscribe("big", lambda envelope: got.append(envelope))
    await caller.handle("echo", lambda envelope: envelope.payload)
    await caller.handle("grow", lambda envelope: envelope.payload * 3)
    with pytest.raises(MessageTooLarge, match="over the limit of 2048"):
        await caller.publish("big", "x" * 4096)
    with pytest.raises(MessageTooLarge):
        await caller.request("echo", "x" * 4096)
    with pytest.raises(MessageTooLarge):  # an oversize reply is the caller's typed error
        await caller.request("grow", "y" * 700)
    assert await caller.request("echo", "small") == "small"
    await asyncio.sleep(0.05)
    assert got == []
    await caller.stop()


async def test_context_crosses_the_transport(make_transport):
    caller, server = await buses(make_transport)
    seen = {}

    async def inner(envelope):
        seen.update(principal=envelope.principal, tenant=envelope.tenant, capability=envelope.capability,
                    deadline=envelope.deadline)
        return "ok"

    async def outer(envelope):
        return await server.request("ctx.inner", timeout=60)

    await server.handle("ctx.inner", inner)
    await server.handle("ctx.outer", outer)
    assert await caller.request("ctx.outer", principal="ada", tenant="acme", capability="ada-token", timeout=2) == "ok"
    assert seen["principal"] == "ada" and seen["tenant"] == "acme" and seen["capability"] == "ada-token"
    assert seen["deadline"] - time.time() < 2.1  # the caller's 2 s, not the inner request's 60 s
    await stop_all(caller, server)


async def test_durable_redelivery(make_transport):
    if make_transport.kind.startswith("memory"):
        pytest.skip("memory is never durable: durable=True is accepted and ignored")
    publisher, consumer, watcher = await buses(make_transport, 3)
    attempts: dict[int, int] = {}
    handled = []
    dead = []

    async def flaky(envelope):
        number = envelope.payload
        attempts[number] = attempts.get(number, 0) + 1
        if number == 3:
            raise ValueError("never works")
        if attempts[number] < 3 and number % 2 == 0:
            raise ValueError("fails twice")
        handled.append(number)

    await watcher.subscribe("dead.>", lambda envelope: dead.append(envelope.payload), durable=True, queue="ops")
    await consumer.subscribe("orders.>", flaky, durable=True, queue="billing")
    await asyncio.sleep(0.1)  # the announcement of the new durable pattern reaches the publisher
    for number in range(6):
        await publisher.publish("orders.new", number, idempotency_key=f"order-{number}")
    await publisher.publish("orders.new", 0, idempotency_key="order-0")  # a duplicate publish is dropped
    assert await eventually(lambda: len(handled) == 5 and len(dead) == 1, timeout=15), (handled, dead, attempts)
    assert sorted(handled) == [0, 1, 2, 4, 5]
    assert attempts[3] == consumer.transport.max_deliver and attempts[0] == 3 and attempts[1] == 1
    assert dead[0]["subject"] == "orders.new" and dead[0]["envelope"]["payload"] == 3
    assert "never works" in dead[0]["reason"]
    await stop_all(publisher, consumer, watcher)
