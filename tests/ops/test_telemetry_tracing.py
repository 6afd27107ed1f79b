"""Traces across a real broker hop: the same send/process spans as in process, `messaging.system = nats`,
the traceparent carried by the envelope through nats-server; and tracing in the serialized memory transport."""

from __future__ import annotations

import pytest
from brokers import require, start_nats
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, handles
from cellmono.core.config import Settings
from cellmono.core.transport import MemoryTransport
from cellmono.ops.tracing import Tracing
from cellmono.transports.nats import NatsTransport

pytestmark = pytest.mark.anyio


class Word(BaseModel):
    text: str


class Upper(Cell):
    name = "upper"

    @handles("upper.shout")
    async def shout(self, word: Word) -> Word:
        return Word(text=word.text.upper())


class Caller(Cell):
    name = "caller"
    requests = ("upper.shout",)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def nats_server():  # type: ignore[no-untyped-def]
    server = require(start_nats)
    yield server
    server.cleanup()


TRACED = Settings(extra_sections={"telemetry": {"tracing": "true"}})


async def test_traceparent_crosses_nats(nats_server) -> None:  # type: ignore[no-untyped-def]
    responder = App([Upper()], settings=TRACED, transport=NatsTransport(nats_server.url, prefix="trace"))
    caller = App([Caller()], settings=TRACED, transport=NatsTransport(nats_server.url, prefix="trace"))
    caller.violations = lambda: []  # type: ignore[method-assign]  # the handler lives in the other process
    responder_tracing, caller_tracing = Tracing.attach(responder), Tracing.attach(caller)
    assert responder_tracing is not None and caller_tracing is not None
    async with responder, caller:
        assert await caller.bus.request("upper.shout", Word(text="hi")) == {"text": "HI"}
    (sent,) = caller_tracing.spans()
    (processed,) = responder_tracing.spans()
    assert (sent.name, processed.name) == ("send upper.shout", "process upper.shout")
    assert processed.context.trace_id == sent.context.trace_id
    assert processed.parent is not None and processed.parent.span_id == sent.context.span_id
    assert {sent.attributes["messaging.system"], processed.attributes["messaging.system"]} == {"nats"}


async def test_serialized_memory_keeps_the_trace() -> None:
    app = App([Upper()], settings=TRACED, transport=MemoryTransport(serialize=True))
    tracing = Tracing.attach(app)
    assert tracing is not None
    async with app:
        await app.bus.request("upper.shout", Word(text="hi"))
    sent, processed = sorted(tracing.spans(), key=lambda span: span.name, reverse=True)
    assert processed.parent is not None and processed.parent.span_id == sent.context.span_id
    assert processed.attributes["messaging.system"] == "cellmono.inproc"
