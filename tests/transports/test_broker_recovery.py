"""A broker restarted under load: requests succeed again within 2 s of the server returning, nothing
acknowledged is lost, and the transport reports its connection state instead of dying silently.

Real servers from `tests/brokers.py` (Valkey with `appendfsync always`, nats-server with JetStream file
storage), killed with SIGKILL while request and durable-publish loops run, then started on the same port.
The 60 s outage is marked `slow` but runs by default (it adds about a minute per broker to the suite).
"""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

from brokers import require, start_nats, start_redis

from cellmono.core.bus import Bus
from cellmono.transports.nats import NatsTransport
from cellmono.transports.redis import RedisTransport

pytestmark = pytest.mark.anyio
RECOVERY = 2.0  # seconds from the server listening again to the first successful request
OUTAGES = [0.2, 1.0, 3.0, 10.0, pytest.param(60.0, marks=pytest.mark.slow)]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def transport(kind: str, url: str):
    if kind == "nats":
        return NatsTransport(url, prefix="rec", durable=("keep.>",), reconnect_wait=0.5, ack_wait=2)
    return RedisTransport(url, prefix="rec", durable=("keep.>",), reconnect_wait=0.5, ack_wait=2)


class Load:
    """Request loops and a durable publisher running against the bus, recording what succeeded when."""

    def __init__(self, caller: Bus) -> None:
        self.caller = caller
        self.successes: list[float] = []  # monotonic times of correct replies
        self.failures: list[tuple[float, str]] = []  # (when the failed call started, what it raised)
        self.acknowledged: list[int] = []  # durable events whose publish returned without error
        self.stopping = False
        self.tasks: list[asyncio.Task] = []

    async def requests(self, lane: int) -> None:
        number = 0
        while not self.stopping:
            number += 1
            payload = f"{lane}-{number}"
            started = time.monotonic()
            try:
                answer = await self.caller.request("echo", payload, timeout=1.0)
                assert answer == payload, (answer, payload)  # a reply never goes to the wrong caller
                self.successes.append(time.monotonic())
            except AssertionError:
                raise
            except Exception as error:
                self.failures.append((started, f"request: {type(error).__name__}: {error}"))
                await asyncio.sleep(0.02)

    async def publisher(self) -> None:
        number = 0
        while not self.stopping:
            started = time.monotonic()
            try:
                await self.caller.publish("keep.items", number, idempotency_key=f"item-{number}")
                self.acknowledged.append(number)
            except Exception as error:
                self.failures.append((started, f"publish: {type(error).__name__}: {error}"))
            number += 1
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.requests(lane)) for lane in range(4)]
        self.tasks.append(asyncio.create_task(self.publisher()))

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks)  # re-raises a wrong reply


async def first_success_after(load: Load, moment: float, limit: float) -> float:
    """Seconds from `moment` to the first correct reply after it (waiting up to `limit`)."""
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        later = [when for when in load.successes if when > moment]
        if later:
            return later[0] - moment
        await asyncio.sleep(0.02)
    return float("inf")


@pytest.mark.parametrize("kind", ["redis", "nats"])
@pytest.mark.parametrize("outage", OUTAGES)
async def test_restart_under_load_recovers_within_2_s_and_loses_nothing_acknowledged(
        kind: str, outage: float, caplog) -> None:
    caplog.set_level(logging.WARNING)
    server = require(start_nats if kind == "nats" else start_redis)
    try:
        caller, worker = Bus(transport(kind, server.url), timeout=5), Bus(transport(kind, server.url), timeout=5)
        await caller.start()
        await worker.start()
        await worker.handle("echo", lambda envelope: envelope.payload)
        received: set[int] = set()
        await worker.subscribe("keep.>", lambda envelope: received.add(envelope.payload), durable=True,
                               queue="keeper")
        load = Load(caller)
        load.start()
        await asyncio.sleep(0.5)
        assert load.successes, f"no request succeeded before the restart: {load.failures[-5:]}"
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(outage / 2)
        for side in (caller, worker):  # the state is visible while the broker is away
            assert side.transport.state()["state"] == "reconnecting", side.transport.state()
        await asyncio.sleep(outage / 2)
        await asyncio.to_thread(server.start)
        back = time.monotonic()
        recovery = await first_success_after(load, back, limit=15)
        assert recovery <= RECOVERY, (f"{kind}: first reply {recovery:.2f} s after the server returned "
                                      f"from a {outage} s outage; last failures {load.failures[-5:]}")
        await asyncio.sleep(1.0)
        steady = time.monotonic()
        await asyncio.sleep(1.0)
        late = [failure for failure in load.failures if failure[0] > steady]
        assert not late, f"requests still fail {steady - back:.1f} s after recovery: {late[:5]}"
        await asyncio.wait_for(load.stop(), 15)  # bounded: a hung request or publish fails here, by name
        for side in (caller, worker):
            state = side.transport.state()
            assert state["state"] == "connected" and state["reconnects"] >= 1, state
        acknowledged = set(load.acknowledged)
        give_up = time.monotonic() + 30
        while not acknowledged <= received and time.monotonic() < give_up:
            await asyncio.sleep(0.1)
        lost = sorted(acknowledged - received)
        assert not lost, f"{len(lost)} acknowledged durable events lost: {lost[:10]}"
        messages = " ".join(record.getMessage() for record in caplog.records)
        assert "reconnected" in messages, "the reconnect is not in the log"
        await asyncio.wait_for(caller.stop(timeout=1), 15)
        await asyncio.wait_for(worker.stop(timeout=1), 15)
    finally:
        server.cleanup()


async def test_redis_reader_survives_an_unexpected_error_and_says_so(caplog) -> None:
    """Not only the client's own errors: whatever breaks the reader, it reconnects and reports it."""
    caplog.set_level(logging.WARNING)
    server = require(start_redis)
    try:
        caller, worker = Bus(transport("redis", server.url), timeout=5), Bus(transport("redis", server.url), timeout=5)
        await caller.start()
        await worker.start()
        await worker.handle("echo", lambda envelope: envelope.payload)
        pubsub = caller.transport.pubsub
        original = pubsub._pubsub.get_message

        async def broken(**options):
            pubsub._pubsub.get_message = original  # once
            raise RuntimeError("pubsub connection not set")  # what redis-py raises on a half-closed pub/sub
        pubsub._pubsub.get_message = broken
        assert await caller.request("echo", "wake", timeout=2) == "wake"  # the reader's next read is the broken one
        give_up = time.monotonic() + 5
        while caller.transport.state()["reconnects"] < 1 and time.monotonic() < give_up:
            await asyncio.sleep(0.02)
        state = caller.transport.state()
        assert state["state"] == "connected" and state["reconnects"] == 1, state
        assert "RuntimeError: pubsub connection not set" in state["last_error"]
        assert await caller.request("echo", "after", timeout=2) == "after"
        assert not pubsub._reader.done(), "the reader task died"
        messages = " ".join(record.getMessage() for record in caplog.records)
        assert "connection lost (RuntimeError" in messages and "reconnected" in messages, messages
        await caller.stop(timeout=1)
        await worker.stop(timeout=1)
    finally:
        server.cleanup()
