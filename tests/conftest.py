"""Shared fixtures: the async backend and the transports every conformance test runs on."""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cellmono.bus import Bus
from cellmono.transport import MemoryTransport, Transport

sys.path.insert(0, str(Path(__file__).parent))  # the brokers helper module

# Transport kinds the conformance suite runs on. The broker transports add themselves here.
TRANSPORT_KINDS = ["memory", "memory-serialized", "nats", "redis"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def make_memory_transport(kind: str, **options: object) -> Transport:
    return MemoryTransport(serialize=kind == "memory-serialized", **options)  # type: ignore[arg-type]


@pytest.fixture(params=TRANSPORT_KINDS)
def transport_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def nats_server():
    """A real nats-server with JetStream on a free loopback port, for the whole session."""
    from brokers import require, start_nats
    server = require(start_nats)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server():
    """A real Valkey/Redis server on a free loopback port, for the whole session."""
    from brokers import require, start_redis
    server = require(start_redis)
    yield server
    server.cleanup()


_broker_prefixes = itertools.count(1)


@pytest.fixture
def transport_factory(transport_kind: str, request: pytest.FixtureRequest) -> Callable[..., Transport]:
    """Builds a fresh transport of the parametrized kind; options go to its constructor.

    Broker transports of one test share a fresh subject prefix, so tests never see each other's messages.
    """
    if transport_kind == "nats":
        from cellmono.transports.nats import NatsTransport
        url, prefix = request.getfixturevalue("nats_server").url, f"c{next(_broker_prefixes)}"
        return lambda **options: NatsTransport(url, prefix=prefix, **options)
    if transport_kind == "redis":
        from cellmono.transports.redis import RedisTransport
        url, prefix = request.getfixturevalue("redis_server").url, f"c{next(_broker_prefixes)}"
        return lambda **options: RedisTransport(url, prefix=prefix, **options)
    return lambda **options: make_memory_transport(transport_kind, **options)


@pytest.fixture
async def bus(transport_factory: Callable[..., Transport]) -> AsyncIterator[Bus]:
    bus = Bus(transport_factory(), timeout=2.0)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop(timeout=2.0)
