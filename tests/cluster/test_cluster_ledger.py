"""The bank ledger on a 3-node JetStream cluster under a seeded nemesis: two workers, each in its own folder,
serve the `ledger` cell; the client records every acknowledged transfer; the checker reads the workers'
stores and audit chains afterwards. Nothing acknowledged may be lost, nothing may be applied twice,
balances are conserved and every audit chain verifies."""
from __future__ import annotations

import pytest

from cluster_support import require_cluster
from ledger import judge
from scenarios import nemesis_faults, run_cluster_ledger

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_ledger_under_kills_pauses_leader_kills_and_partitions(tmp_path) -> None:
    faults = nemesis_faults()
    cluster = require_cluster()
    try:
        history, verdict, done = await run_cluster_ledger(cluster, tmp_path, faults)
    finally:
        cluster.cleanup()
    print(f"faults: {done}")
    assert done, "the nemesis did nothing"
    judge(history, verdict, tmp_path)
