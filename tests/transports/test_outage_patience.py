"""An engine outage in the middle of deliveries uses up no durable message's tries (issue 17: "a crashed broker
loses nothing"). The cell's store and exactly-once inbox are on an engine server of their own, which is killed
for a few seconds while commands arrive; the bus' broker stays up. A handler failing on the outage (a
`ConnectionError`: `EngineUnavailable`) runs again within its delivery (`failure_of`'s `outage_patience`), so with
`max_deliver = 2` nothing is dead-lettered and every command is applied once. The control run without patience
dead-letters commands on the same outage: the test sees the defence. Real nats-server and Valkey."""
from __future__ import annotations

import asyncio
import time

import pytest

from brokers import Server, require, start_nats, start_redis
from cellmono.core.bus import Bus
from cellmono.core.cell import Cell, handles
from cellmono.core.envelope import Envelope
from cellmono.security.engine_inbox import EngineInbox
from cellmono.security.engine_records import engine_records
from cellmono.security.engine_store import EngineStore
from cellmono.security.keys import StaticKeyProvider
from cellmono.transports.nats import NatsTransport
from cellmono.transports.redis import RedisTransport

pytestmark = pytest.mark.anyio
COMMANDS = 24


class Ledger(Cell):
    name = "ledger"

    @handles("ledger.credit")
    async def credit(self, event: dict, envelope: Envelope) -> None:
        self.store.put_json(f"applied/{envelope.idempotency_key}", 1)


async def through_an_outage(kind: str, engine: Server, bus_url: str, patience: float, down: float) -> tuple[int, int]:
    """(commands applied, commands dead-lettered) after COMMANDS credits sent across a `down`-second engine kill."""
    store = EngineStore(engine_records(kind, engine.url, app=f"outage{int(patience)}", timeout=1.0),
                        StaticKeyProvider(b"k" * 32))
    options = dict(prefix=f"p{int(patience)}", durable=["ledger.>"], inbox=EngineInbox(store), max_deliver=2,
                   retry_delay=0.05, ack_wait=5.0, outage_patience=patience, reconnect_wait=0.1)
    transport = NatsTransport(bus_url, **options) if kind == "nats" else RedisTransport(bus_url, **options)
    bus = Bus(transport)
    await bus.start()
    cell = Ledger()
    cell.store = store.namespace("ledger")
    try:
        await bus.subscribe("ledger.credit", cell.bind(Ledger.specs[0]), queue="ledger", durable=True)
        for number in range(COMMANDS):
            if number == 4:
                await asyncio.to_thread(engine.kill)  # the engine crashes while commands keep coming
                outage_ends = time.monotonic() + down
            if number > 4 and time.monotonic() >= outage_ends and engine.process.poll() is not None:
                await asyncio.to_thread(engine.start)
            await bus.publish("ledger.credit", {"n": number}, idempotency_key=f"c-{number}")
            await asyncio.sleep(down / COMMANDS * 1.5)
        if engine.process.poll() is not None:
            await asyncio.to_thread(engine.start)
        give_up = time.monotonic() + 40  # bounded: applied or dead-lettered, every command ends somewhere
        while time.monotonic() < give_up:
            done = sum(1 for key in await asyncio.to_thread(cell.store.keys, "applied/"))
            if done + transport.counters.dead_lettered >= COMMANDS:
                break
            await asyncio.sleep(0.2)
        return done, transport.counters.dead_lettered
    finally:
        await bus.stop()
        store.close()


def engine_and_bus(kind: str) -> tuple[Server, Server]:
    start = start_nats if kind == "nats" else start_redis
    return require(start), require(start)


@pytest.mark.parametrize("kind", ["nats", "redis"])
@pytest.mark.parametrize("patience", [30.0, 0.0], ids=["patient", "control-without-patience"])
async def test_an_engine_outage_is_waited_out_and_nothing_is_dead_lettered(kind: str, patience: float) -> None:
    engine, broker = engine_and_bus(kind)
    try:
        applied, dead = await through_an_outage(kind, engine, broker.url, patience=patience, down=3.0)
    finally:
        engine.cleanup()
        broker.cleanup()
    if patience:
        assert (applied, dead) == (COMMANDS, 0), f"{applied} applied, {dead} dead-lettered of {COMMANDS}"
    else:  # the same outage without patience dead-letters commands: the defence is what the test sees
        assert dead > 0 and applied + dead == COMMANDS, f"{applied} applied, {dead} dead-lettered of {COMMANDS}"
