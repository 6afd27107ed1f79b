"""The bank ledger with the store and the inbox on the engine (`--store engine`): the workers keep their
effects and their inbox records on the broker they share (an R3 KV bucket on the 3-node JetStream cluster;
two Redis hashes), so a command redelivered to *another* worker is not applied again. The checker is strict:
any double effect fails (`assert_applied_once(..., engine=True)`)."""
from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from brokers import require, start_redis
from cluster_support import partition_support, require_cluster
from ledger import (DURABLE, PREFIX, STREAM, Engine, History, Worker, assert_applied_once, check, client, dump,
                    nemesis, settle)

from cellmono.core.bus import Bus
from cellmono.transports.nats import NatsTransport
from cellmono.transports.redis import RedisTransport

pytestmark = pytest.mark.anyio
SEED = int(os.environ.get("CELLMONO_NEMESIS_SEED", "17"))


def _judge(history: History, verdict, root) -> None:
    dump(history, verdict, root / "history.json")
    print(verdict.summary())
    assert len(history.acknowledged) >= 100, f"too few commands acknowledged: {verdict.summary()}"
    assert not verdict.lost, verdict.summary()
    assert not verdict.unknown_effects and not verdict.mismatched, verdict.summary()
    assert verdict.balance_total == 8 * 1000, verdict.summary()
    assert_applied_once(verdict, engine=True)  # first: without the inbox (--at-least-once) this is what fails
    assert not verdict.audit_problems, verdict.audit_problems


@pytest.mark.slow
async def test_engine_ledger_under_the_nemesis_applies_nothing_twice(tmp_path) -> None:
    supported, how = partition_support()
    faults = ("kill", "pause", "leader", "partition") if supported else ("kill", "pause", "leader")
    print(f"nemesis seed {SEED}; partitions: {how if supported else 'SKIPPED: ' + how}")
    cluster = require_cluster()
    engine = Engine("nats", cluster.urls)
    workers = [Worker(f"w{number}", tmp_path, cluster.url(name), "nats", store="engine", replicas=3)
               for number, name in enumerate(cluster.names[1:], start=1)]
    history = History()
    bus = Bus(NatsTransport(cluster.urls, prefix=PREFIX, durable=DURABLE, reconnect_wait=0.2, stream_replicas=3),
              timeout=5)
    try:
        for worker in workers:
            await asyncio.to_thread(worker.start)
        await bus.start()
        stop = asyncio.Event()
        sender = asyncio.create_task(client(bus, history, SEED, stop))
        await asyncio.sleep(1.0)
        done = await nemesis(cluster, history, SEED, 20.0, faults=faults, stream=STREAM)
        stop.set()
        await asyncio.wait_for(sender, 60)
        await settle(history, [], seconds=60, engine=engine)
        verdict = check(history, [worker.folder for worker in workers], engine)
    finally:
        await asyncio.wait_for(bus.stop(timeout=1), 15)
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        cluster.cleanup()
    print(f"faults: {done}")
    assert done, "the nemesis did nothing"
    _judge(history, verdict, tmp_path)


@pytest.mark.slow
async def test_engine_ledger_on_redis_with_the_primary_killed_applies_nothing_twice(tmp_path) -> None:
    server = require(start_redis)
    engine = Engine("redis", server.url)
    workers = [Worker(f"w{number}", tmp_path, server.url, "redis", store="engine") for number in (1, 2)]
    history = History()
    bus = Bus(RedisTransport(server.url, prefix=PREFIX, durable=DURABLE, reconnect_wait=0.2), timeout=5)
    rng, kills = random.Random(SEED), 0
    try:
        for worker in workers:
            await asyncio.to_thread(worker.start)
        await bus.start()
        stop = asyncio.Event()
        sender = asyncio.create_task(client(bus, history, SEED, stop))
        end = time.monotonic() + 12.0
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            history.faults.append((time.monotonic(), "kill -9 the primary"))
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await asyncio.to_thread(server.start)
            kills += 1
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(sender, 60)
        await settle(history, [], seconds=60, engine=engine)
        verdict = check(history, [worker.folder for worker in workers], engine)
    finally:
        await asyncio.wait_for(bus.stop(timeout=1), 15)
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        server.cleanup()
    assert kills >= 3
    _judge(history, verdict, tmp_path)
