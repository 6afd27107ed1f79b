"""The ledger scenarios the cluster tests share: two workers on a 3-node JetStream cluster under the nemesis, or on
one Redis whose primary is killed and restarted; each with its workers' store on their own disks or on the engine."""
from __future__ import annotations

import asyncio
import os

from cluster_support import partition_support
from ledger import DURABLE, PREFIX, STREAM, History, Worker, nemesis, primary_kills, run_workload

from cellmono.core.bus import Bus
from cellmono.transports.nats import NatsTransport
from cellmono.transports.redis import RedisTransport

SEED = int(os.environ.get("CELLMONO_NEMESIS_SEED", "17"))


def nemesis_faults() -> tuple[str, ...]:
    """Every fault, partitions only where the machine allows them (the reason printed when it does not)."""
    supported, how = partition_support()
    print(f"nemesis seed {SEED}; partitions: {how if supported else 'SKIPPED: ' + how}")
    return ("kill", "pause", "leader", "partition") if supported else ("kill", "pause", "leader")


async def run_cluster_ledger(cluster, root, faults: tuple[str, ...], *, engine=None, **worker_options):
    """Two workers on the cluster's nodes 2 and 3 (`worker_options`: their store), the client on every node, 20 s
    of nemesis; (history, verdict, faults done)."""
    workers = [Worker(f"w{number}", root, cluster.url(name), "nats", **worker_options)
               for number, name in enumerate(cluster.names[1:], start=1)]
    history = History()
    bus = Bus(NatsTransport(cluster.urls, prefix=PREFIX, durable=DURABLE, reconnect_wait=0.2, stream_replicas=3),
              timeout=5)

    async def replicated() -> None:
        replicas = await cluster.stream_replicas(STREAM)
        assert replicas == 3, f"the ledger stream has {replicas} replicas: a node's loss would lose it"

    async def faults_after_a_second():
        await asyncio.sleep(1.0)
        return await nemesis(cluster, history, SEED, 20.0, faults=faults, stream=STREAM)
    verdict, done = await run_workload(bus, workers, history, SEED, faults_after_a_second, engine=engine,
                                       started=replicated)
    return history, verdict, done


async def run_redis_ledger(server, root, *, engine=None, **worker_options):
    """Two workers on one Redis (`worker_options`: their store), 12 s of primary kills; (history, verdict, kills)."""
    workers = [Worker(f"w{number}", root, server.url, "redis", **worker_options) for number in (1, 2)]
    history = History()
    bus = Bus(RedisTransport(server.url, prefix=PREFIX, durable=DURABLE, reconnect_wait=0.2), timeout=5)
    verdict, kills = await run_workload(bus, workers, history, SEED, lambda: primary_kills(server, history, SEED, 12.0),
                                        engine=engine)
    return history, verdict, kills
