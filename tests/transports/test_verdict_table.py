"""One table of messages, one verdict each, the same on every transport that crosses a byte boundary:
the memory transport in serializing mode, NATS and Redis. Equal model classes, unions, datetimes, bytes,
extra fields, values JSON cannot carry, and the size limit on both sides of the boundary (request and
reply). A message the memory bus accepts must not be refused by a broker after promotion, and the other
way round; the error types must match too, since cells and callers catch them."""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from brokers import require, start_nats, start_redis

from cellmono.core.app import App
from cellmono.core.cell import Cell, handles
from cellmono.core.transport import MemoryTransport
from cellmono.transports.nats import NatsTransport
from cellmono.transports.redis import RedisTransport

pytestmark = pytest.mark.anyio
LIMIT = 16 * 1024  # the same max_bytes on every transport; NATS' server limit (1 MiB) is above it


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Point(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    x: int
    y: int


class SamePoint(BaseModel):  # the caller's own copy of the cell's model: equal fields, another class
    x: int
    y: int


class Stamp(BaseModel):
    at: dt.datetime


class Blob(BaseModel):
    data: bytes


class Either(BaseModel):
    value: int | str


class Measure(BaseModel):
    value: float


class Shapes(Cell):
    """A cell whose handlers take typed input and echo what they validated."""

    name = "shapes"

    @handles("shapes.point")
    async def point(self, point: Point) -> Point:
        return point

    @handles("shapes.stamp")
    async def stamp(self, stamp: Stamp) -> str:
        return stamp.at.isoformat()

    @handles("shapes.blob")
    async def blob(self, blob: Blob) -> int:
        return len(blob.data)

    @handles("shapes.either")
    async def either(self, either: Either) -> str:
        return f"{type(either.value).__name__}:{either.value}"

    @handles("shapes.measure")
    async def measure(self, measure: Measure) -> float:
        return measure.value

    @handles("shapes.text")
    async def text(self, text: str) -> str:
        return text

    @handles("shapes.grow")
    async def grow(self, size: int) -> str:
        return "x" * size


BIG = "y" * LIMIT
# (case, subject, payload, expected verdict): ("ok", normalized result) or ("error", error type)
TABLE: list[tuple[str, str, Any, tuple[str, Any]]] = [
    ("own model class", "shapes.point", Point(x=1, y=2), ("ok", {"x": 1, "y": 2})),
    ("equal model class", "shapes.point", SamePoint(x=1, y=2), ("ok", {"x": 1, "y": 2})),
    ("dict of the model", "shapes.point", {"x": 1, "y": 2}, ("ok", {"x": 1, "y": 2})),
    ("extra field", "shapes.point", {"x": 1, "y": 2, "z": 3}, ("error", "PayloadInvalid")),
    ("wrong type", "shapes.point", {"x": "one", "y": 2}, ("error", "PayloadInvalid")),
    ("union refuses a list", "shapes.either", {"value": [1]}, ("error", "PayloadInvalid")),
    ("union keeps int", "shapes.either", {"value": 1}, ("ok", "int:1")),
    ("union keeps str", "shapes.either", {"value": "1"}, ("ok", "str:1")),
    ("aware datetime", "shapes.stamp", Stamp(at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
     ("ok", "2026-01-02T03:04:05+00:00")),
    ("naive datetime", "shapes.stamp", {"at": dt.datetime(2026, 1, 2, 3, 4, 5)}, ("ok", "2026-01-02T03:04:05")),
    ("datetime as text", "shapes.stamp", {"at": "2026-01-02T03:04:05Z"}, ("ok", "2026-01-02T03:04:05+00:00")),
    ("utf-8 bytes", "shapes.blob", Blob(data=b"abc"), ("ok", 3)),
    ("non-utf-8 bytes", "shapes.blob", Blob(data=b"\xff\xfe"), ("error", "MalformedMessage")),
    ("a set travels as a list", "shapes.either", {"value": {1, 2}}, ("error", "PayloadInvalid")),
    ("an object", "shapes.text", object(), ("error", "MalformedMessage")),
    ("float", "shapes.measure", {"value": 1.5}, ("ok", 1.5)),
    ("NaN travels as null", "shapes.measure", {"value": math.nan}, ("error", "PayloadInvalid")),
    ("small request", "shapes.text", "x" * 100, ("ok", "x" * 100)),
    ("request just under the limit", "shapes.text", "x" * (LIMIT - 2048), ("ok", "x" * (LIMIT - 2048))),
    ("request over the limit", "shapes.text", BIG, ("error", "MessageTooLarge")),
    ("reply over the limit", "shapes.grow", LIMIT, ("error", "MessageTooLarge")),
]


def transport(kind: str, url: str | None):
    if kind == "memory":
        return MemoryTransport(serialize=True, max_bytes=LIMIT)
    if kind == "nats":
        return NatsTransport(url, prefix="verdict", max_bytes=LIMIT)
    return RedisTransport(url, prefix="verdict", max_bytes=LIMIT)


def normalized(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


async def verdicts(kind: str) -> dict[str, tuple[str, Any]]:
    server = None if kind == "memory" else require(start_nats if kind == "nats" else start_redis)
    try:
        app = App([Shapes()], transport=transport(kind, None if server is None else server.url))
        await app.start()
        found: dict[str, tuple[str, Any]] = {}
        try:
            for case, subject, payload, _ in TABLE:
                try:
                    found[case] = ("ok", normalized(await app.bus.request(subject, payload, timeout=5)))
                except Exception as error:  # the verdict is the error's type
                    found[case] = ("error", type(error).__name__)
        finally:
            await app.stop()
        return found
    finally:
        if server is not None:
            server.cleanup()


async def test_memory_nats_and_redis_give_every_message_the_same_verdict() -> None:
    table = {kind: await verdicts(kind) for kind in ("memory", "nats", "redis")}
    differ = {case: {kind: table[kind][case] for kind in table} for case in table["memory"]
              if not table["memory"][case] == table["nats"][case] == table["redis"][case]}
    assert not differ, f"the transports disagree: {differ}"
    expected = {case: verdict for case, _, _, verdict in TABLE}
    for kind, found in table.items():
        wrong = {case: (found[case], expected[case]) for case in expected if found[case] != expected[case]}
        assert not wrong, f"{kind}: (got, expected) {wrong}"
