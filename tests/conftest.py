"""Shared fixtures: the async backend and the transports every conformance test runs on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from cellmono.bus import Bus
from cellmono.transport import MemoryTransport, Transport

# Transport kinds the conformance suite runs on. The broker transports add themselves here.
TRANSPORT_KINDS = ["memory", "memory-serialized"]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def make_memory_transport(kind: str, **options: object) -> Transport:
    return MemoryTransport(serialize=kind == "memory-serialized", **options)  # type: ignore[arg-type]


@pytest.fixture(params=TRANSPORT_KINDS)
def transport_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def transport_factory(transport_kind: str) -> Callable[..., Transport]:
    """Builds a fresh transport of the parametrized kind; options go to its constructor."""
    return lambda **options: make_memory_transport(transport_kind, **options)


@pytest.fixture
async def bus(transport_factory: Callable[..., Transport]) -> AsyncIterator[Bus]:
    bus = Bus(transport_factory(), timeout=2.0)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop(timeout=2.0)
