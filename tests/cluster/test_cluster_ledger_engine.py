"""The bank ledger with the store and the inbox on the engine (`--store engine`): the workers keep their
effects and their inbox records on the broker they share (an R3 KV bucket on the 3-node JetStream cluster;
two Redis hashes), so a command redelivered to *another* worker is not applied again. The checker is strict:
any double effect fails (`judge(..., engine=True)`). The scenarios (`scenarios.py`) are those of `test_cluster_ledger.py`
and `test_cluster_ledger_redis.py`."""
from __future__ import annotations

import pytest

from brokers import require, start_redis
from cluster_support import require_cluster
from ledger import Engine, judge
from scenarios import nemesis_faults, run_cluster_ledger, run_redis_ledger

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_engine_ledger_under_the_nemesis_applies_nothing_twice(tmp_path) -> None:
    faults = nemesis_faults()
    cluster = require_cluster()
    try:
        history, verdict, done = await run_cluster_ledger(cluster, tmp_path, faults, engine=Engine("nats", cluster.urls),
                                                          store="engine", replicas=3)
    finally:
        cluster.cleanup()
    print(f"faults: {done}")
    assert done, "the nemesis did nothing"
    judge(history, verdict, tmp_path, engine=True)  # without the inbox (--at-least-once) the applied-once check fails


@pytest.mark.slow
async def test_engine_ledger_on_redis_with_the_primary_killed_applies_nothing_twice(tmp_path) -> None:
    server = require(start_redis)
    try:
        history, verdict, kills = await run_redis_ledger(server, tmp_path, engine=Engine("redis", server.url),
                                                         store="engine")
    finally:
        server.cleanup()
    assert kills >= 3
    judge(history, verdict, tmp_path, engine=True)
