"""A worker given only its credential keeps its state on the engine: app and worker in separate empty folders on a
real nats-server (per-worker users), the worker's store rows are read by the app, its audit chain verifies with
`cellmono audit verify --engine` at the app, and its folder holds nothing but its audit outbox (all shipped) and
its own anchor key. Real nats-server, real `cellmono` subprocesses."""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys

from brokers import free_port, require
from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.security.guard import Principal
from cellmono.topology.engine_link import broker_tables, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.provision import Registry, answer_registrations, workers_section
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint
from worker_support import (CELLMONO, cellmono, folder_files, load_cell_module, make_app_audit_home, start_nats_with_auth,
                            wait_pinged)

CELL = '''
from pydantic import BaseModel
from cellmono.core.cell import Cell, handles

class Add(BaseModel):
    amount: int

class CounterCell(Cell):
    name = "counter"

    @handles("counter.add", requires="counter:use")
    async def add(self, request: Add) -> int:
        total = (self.store.get_json("total") or 0) + request.amount
        self.store.put_json("total", total)
        return total
'''
APP_PASSWORD = "app-password-for-tests"


def test_a_worker_with_only_its_credential_keeps_its_state_on_the_engine(tmp_path) -> None:
    code, app, machine2, broker = (tmp_path / name for name in ("code", "app", "machine2", "broker"))
    for folder in (code, app, machine2, broker):
        folder.mkdir()
    (code / "counter_cell.py").write_text(CELL)  # the deployed code, on PYTHONPATH at both ends
    env = {key: value for key, value in os.environ.items() if key != "CELLMONO_KEK"}
    env["PYTHONPATH"] = os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])
    port = free_port()
    settings_path = app / "settings.ini"
    settings_path.write_text(f"""
[app]
name = engstate
cells = counter
[log]
level = WARNING
[roles]
caller = counter:use
[cell.counter]
class = counter_cell:CounterCell
placement = process
[nats]
url = nats://app:{APP_PASSWORD}@127.0.0.1:{port}
prefix = es
[store]
backend = engine
[workers]
nats_pid_file = {broker / "nats.pid"}
""")
    provisioned = cellmono("workers", "provision", "w1", "--settings", str(settings_path), "--credential",
                           str(machine2 / "w1.credential"), cwd=app, env=env)
    assert provisioned.returncode == 0, provisioned.stderr
    document = json.loads((machine2 / "w1.credential").read_text())
    kek = json.loads((app / "var" / "kek.json").read_text())  # the app's dev key file: the worker cannot read it
    assert document["kek"].startswith(kek["current"] + ":") and "backend = engine" in document["settings"]
    assert document["kek"] not in provisioned.stdout + provisioned.stderr
    server = require(lambda: start_nats_with_auth(broker, app / "var" / "nats-auth.conf", port))
    sys.path.insert(0, str(code))

    async def scenario() -> None:
        settings = load_settings(settings_path)
        runtime = Runtime.from_settings(settings)  # the app's store: on the engine too
        engine = await link_engine(runtime, broker_tables("nats", f"nats://app:{APP_PASSWORD}@127.0.0.1:{port}", "engstate"), signer=True)
        await make_app_audit_home(f"nats://app:{APP_PASSWORD}@127.0.0.1:{port}", "engstate")
        bus = Bus(build_transport(settings, "nats"), timeout=5)
        await bus.start()
        cell = load_cell_module(code / "counter_cell.py", "counter_cell_app")
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="counter"), contract_fingerprint(cell.CounterCell))
        await answer_registrations(bus, runtime, Registry(workers_section(settings).registry))
        log = tmp_path / "worker.log"
        with open(log, "wb") as output:
            worker = subprocess.Popen([CELLMONO, "worker", "--credential", "w1.credential"], cwd=machine2, env=env,
                                      stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            await wait_pinged(bus, "counter", worker, log)
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            for amount, total in ((2, 2), (3, 5), (4, 9)):
                got = await bus.request("counter.add", {"amount": amount}, principal="alice", capability=token)
                assert got == total, log.read_text()
            assert runtime.store.namespace("counter").get_json("total") == 9  # the worker's row, read at the app
        finally:
            worker.terminate()  # a clean stop: the worker ships what is left of its audit chain
            worker.wait(15)
            await bus.stop()
            await engine.close()
            await runtime.close()

    try:
        asyncio.run(scenario())
        verified = cellmono("audit", "verify", "--engine", "--settings", str(settings_path), cwd=app, env=env)
        worker_log = (tmp_path / "worker.log").read_text(errors="replace") + "".join(
            line for line in server.log_path.read_text(errors="replace").splitlines(True) if "Violation" in line)
        assert verified.returncode == 0, (verified.stdout, verified.stderr, worker_log)
        line = next((line for line in verified.stdout.splitlines() if line.startswith("counter-1: ")), "")
        assert line.endswith(", ok") and not line.startswith("counter-1: 0 records"), (verified.stdout, worker_log)
        shipped = int(line.split(": ")[1].split()[0])
        files = folder_files(machine2)
        assert not any(name.endswith(("store.sqlite", "kek.json")) for name in files), files  # no store, no KEK
        assert set(files) <= {"w1.credential", "var/audit.sqlite", "var/audit.sqlite-wal", "var/audit.sqlite-shm",
                              "var/signing-keys.json"}, files  # its audit outbox and its own anchor key only
        with sqlite3.connect(machine2 / "var" / "audit.sqlite") as outbox:
            assert outbox.execute("SELECT count(*) FROM audit").fetchone()[0] == shipped  # every record is shipped
    finally:
        server.stop()
        sys.path.remove(str(code))
