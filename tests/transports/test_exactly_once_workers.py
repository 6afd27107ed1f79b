"""Exactly-once through the real deployment path: `cellmono worker` replicas built from settings.

A non-idempotent ledger cell (read balance, write balance + 1, count the key's applications, all
through `self.store`) runs in two worker replicas over NATS and over Redis. One replica is killed
with SIGKILL mid-flow and started again. Every acknowledged command has exactly one effect, and the
inbox in the workers' store holds one row per command: the settings path wires the inbox without
a line of code in the cell.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from brokers import require, start_nats, start_redis
from worker_support import spawn_worker, stop, wait_ready, worker_logs

from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.security.guard import security_section
from cellmono.security.store import open_store
from cellmono.topology.placement import build_transport
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint

CELL = '''
from cellmono.core.cell import Cell, handles
from cellmono.core.envelope import Envelope


class LedgerCell(Cell):
    """Not idempotent on purpose: a second run of a command credits twice."""

    name = "ledger"

    @handles("ledger.credit")
    async def credit(self, event: dict, envelope: Envelope) -> None:
        key = envelope.idempotency_key
        self.store.put_json("balance", self.store.get_json("balance", 0) + event["amount"])
        self.store.put_json(f"applied/{key}", self.store.get_json(f"applied/{key}", 0) + 1)
'''


def write_app(folder: Path, kind: str, url: str) -> Path:
    (folder / "eo_ledger.py").write_text(CELL)
    settings = folder / "settings.ini"
    settings.write_text(f"""
[app]
name = eo
cells = ledger
[bus]
drain_timeout = 2
[log]
level = WARNING
[security]
allow_public = true
kek_file = var/kek.json
[cell.ledger]
class = eo_ledger:LedgerCell
placement = process
transport = {kind}
replicas = 2
[{kind}]
url = {url}
prefix = eo
durable = ledger.>
ack_wait = 1
max_deliver = 5
""")
    return settings


def ledger_state(settings: Path, keys: list[str]) -> tuple[int, dict[str, int], int]:
    """(balance, applications per key, inbox rows) from the workers' store."""
    store = open_store(security_section(settings))
    try:
        ledger = store.namespace("ledger")
        applied = {key: ledger.get_json(f"applied/{key}", 0) for key in keys}
        balance = ledger.get_json("balance", 0)
    finally:
        store.close()
    database = sqlite3.connect(security_section(settings).store_path, timeout=30)
    try:
        rows = database.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]
    except sqlite3.OperationalError:  # no inbox table: the workers run without it
        rows = 0
    finally:
        database.close()
    return balance, applied, rows


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_worker_replica_killed_mid_flow_applies_each_command_once(tmp_path: Path, kind: str) -> None:
    server = require(start_nats if kind == "nats" else start_redis)
    settings = write_app(tmp_path, kind, server.url)
    keys = [f"cmd-{number}" for number in range(400)]
    sys.path.insert(0, str(tmp_path))

    async def run() -> None:
        from eo_ledger import LedgerCell
        bus = Bus(build_transport(load_settings(settings, environ={}), kind), timeout=5)
        await bus.start()
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="ledger"), contract_fingerprint(LedgerCell))
        workers = [spawn_worker(settings, "ledger", replica) for replica in (1, 2)]
        try:
            await wait_ready(bus, "ledger", (1, 2), tmp_path)
            for number, key in enumerate(keys):
                await bus.publish("ledger.credit", {"amount": 1}, idempotency_key=key)
                if number == 150:
                    os.kill(workers[0].pid, signal.SIGKILL)  # mid-flow, holding an unacknowledged command
                if number == 250:
                    workers.append(spawn_worker(settings, "ledger", 1))  # back, as a supervisor would
            give_up = time.monotonic() + 60
            while ledger_state(settings, keys[-1:])[0] < len(keys) and time.monotonic() < give_up:
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.5)  # past ack_wait: any redelivery has come and gone
        finally:
            stop(workers)
            await bus.stop()

    try:
        asyncio.run(run())
        balance, applied, rows = ledger_state(settings, keys)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("eo_ledger", None)
        server.cleanup()
    assert {key: count for key, count in applied.items() if count != 1} == {}, worker_logs(tmp_path)
    assert balance == len(keys)
    assert rows == len(keys)  # the inbox recorded each command: wired by the settings path
