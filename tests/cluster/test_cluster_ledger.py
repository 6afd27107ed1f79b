"""The bank ledger on a 3-node JetStream cluster under a seeded nemesis: two workers, each in its own folder,
serve the `ledger` cell; the client records every acknowledged transfer; the checker reads the workers'
stores and audit chains afterwards. Nothing acknowledged may be lost, nothing may be applied twice,
balances are conserved and every audit chain verifies."""
from __future__ import annotations

import asyncio
import os

import pytest

from cluster_support import partition_support, require_cluster
from ledger import DURABLE, assert_applied_once, PREFIX, STREAM, History, Worker, check, client, dump, nemesis, settle

from cellmono.core.bus import Bus
from cellmono.transports.nats import NatsTransport

pytestmark = pytest.mark.anyio
SEED = int(os.environ.get("CELLMONO_NEMESIS_SEED", "17"))


async def run_ledger(cluster, root, seed: int, seconds: float, faults: tuple[str, ...]):
    workers = [Worker(f"w{number}", root, cluster.url(name), "nats")
               for number, name in enumerate(cluster.names[1:], start=1)]
    history = History()
    bus = Bus(NatsTransport(cluster.urls, prefix=PREFIX, durable=DURABLE, reconnect_wait=0.2, stream_replicas=3),
              timeout=5)
    try:
        for worker in workers:
            await asyncio.to_thread(worker.start)
        await bus.start()
        replicas = await cluster.stream_replicas(STREAM)
        assert replicas == 3, f"the ledger stream has {replicas} replicas: a node's loss would lose it"
        stop = asyncio.Event()
        sender = asyncio.create_task(client(bus, history, seed, stop))
        await asyncio.sleep(1.0)
        done = await nemesis(cluster, history, seed, seconds, faults=faults, stream=STREAM)
        stop.set()
        await asyncio.wait_for(sender, 60)
        await settle(history, [worker.folder for worker in workers], seconds=60)
    finally:
        await asyncio.wait_for(bus.stop(timeout=1), 15)
        for worker in workers:
            await asyncio.to_thread(worker.stop)
    verdict = check(history, [worker.folder for worker in workers])
    dump(history, verdict, root / "history.json")
    return history, verdict, done


@pytest.mark.slow
async def test_ledger_under_kills_pauses_leader_kills_and_partitions(tmp_path) -> None:
    supported, how = partition_support()
    faults = ("kill", "pause", "leader", "partition") if supported else ("kill", "pause", "leader")
    print(f"nemesis seed {SEED}; partitions: {how if supported else 'SKIPPED: ' + how}")
    cluster = require_cluster()
    try:
        history, verdict, done = await run_ledger(cluster, tmp_path, SEED, 20.0, faults)
    finally:
        cluster.cleanup()
    print(f"faults: {done}")
    print(verdict.summary())
    assert len(history.acknowledged) >= 100, f"too few commands acknowledged: {verdict.summary()}"
    assert done, "the nemesis did nothing"
    assert not verdict.lost, verdict.summary()
    assert not verdict.unknown_effects and not verdict.mismatched, verdict.summary()
    assert verdict.balance_total == 8 * 1000, verdict.summary()
    assert not verdict.audit_problems, verdict.audit_problems
    assert_applied_once(verdict)
