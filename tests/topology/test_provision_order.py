"""The app makes every stream; a provisioned worker makes none. Started before the app ever ran, a worker given only
its credential finds no durable stream: it says "start the app first", retries with backoff, and creates nothing
(a stream made first decides its limits: a worker that could make one could make another cell's commands expire).
Once the app has started, the worker serves, and a durable command published then is applied once. Real
nats-server with the include `cellmono workers provision` wrote, real `cellmono worker` process."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from brokers import free_port, require
from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.security.guard import Principal
from cellmono.topology.engine_link import broker_tables, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.provision import Registry, answer_registrations, workers_section
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint
from worker_support import (CELLMONO, cellmono, load_cell_module, make_app_audit_home, start_nats_with_auth,
                            wait_pinged)

CELL = '''
from pydantic import BaseModel
from cellmono.core.cell import Cell, handles

class Order(BaseModel):
    amount: int

class OrdersCell(Cell):
    name = "orders"

    @handles("orders.placed", requires="orders:use")
    async def placed(self, event: Order) -> None:
        self.store.put_json("total", (self.store.get_json("total") or 0) + event.amount)

    @handles("orders.total", requires="orders:use")
    async def total(self, request: dict) -> int:
        return self.store.get_json("total") or 0
'''
APP_PASSWORD = "app-password-for-tests"


def test_a_worker_started_before_the_app_makes_no_stream_and_serves_once_the_app_is_up(tmp_path) -> None:
    code, app, machine2, broker = (tmp_path / name for name in ("code", "app", "machine2", "broker"))
    for folder in (code, app, machine2, broker):
        folder.mkdir()
    (code / "order_cells.py").write_text(CELL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
           "CELLMONO__WORKERS__RETRY_INITIAL": "0.2", "CELLMONO__WORKERS__RETRY_MAX": "1"}
    port = free_port()
    app_url = f"nats://app:{APP_PASSWORD}@127.0.0.1:{port}"
    settings_path = app / "settings.ini"
    settings_path.write_text(f"""
[app]
name = order
cells = orders
[log]
level = WARNING
[roles]
caller = orders:use
[cell.orders]
class = order_cells:OrdersCell
placement = process
[nats]
url = {app_url}
prefix = od
durable = orders.placed
[workers]
nats_pid_file = {broker / "nats.pid"}
""")
    made = cellmono("workers", "provision", "w1", "--settings", str(settings_path), "--credential",
                    str(machine2 / "w1.credential"), cwd=app, env=env)
    assert made.returncode == 0, made.stderr
    server = require(lambda: start_nats_with_auth(broker, app / "var" / "nats-auth.conf", port))
    sys.path.insert(0, str(code))
    log = tmp_path / "worker.log"

    def streams() -> list[str]:
        async def names() -> list[str]:
            import nats
            connection = await nats.connect(app_url)
            try:
                return [info.config.name for info in await connection.jetstream().streams_info()]
            finally:
                await connection.close()
        return asyncio.run(names())

    with open(log, "wb") as output:  # the worker first: no app has run on this broker yet
        worker = subprocess.Popen([CELLMONO, "worker", "--credential", "w1.credential"], cwd=machine2, env=env,
                                  stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    try:
        give_up = time.monotonic() + 30
        while "start the app first" not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < give_up, log.read_text(errors="replace")
            time.sleep(0.1)
        time.sleep(1.0)  # a few retries
        assert worker.poll() is None, log.read_text(errors="replace")
        assert streams() == [], streams()  # it made none
        violations = [line for line in server.log_path.read_text(errors="replace").splitlines()
                      if "Violation" in line and "STREAM.CREATE" in line]
        assert violations == [], violations  # and never tried

        async def the_app() -> None:
            settings = load_settings(settings_path)
            runtime = Runtime.from_settings(settings)
            engine = await link_engine(runtime, broker_tables("nats", app_url, "order"), signer=True)
            await make_app_audit_home(app_url, "order")
            bus = Bus(build_transport(settings, "nats"), timeout=5)
            await bus.start()  # makes the durable stream and the dead letters'
            cells = load_cell_module(code / "order_cells.py", "order_cells_app")
            await answer_control(bus, CONTRACT_SUBJECT.format(cell="orders"), contract_fingerprint(cells.OrdersCell))
            await answer_registrations(bus, runtime, Registry(workers_section(settings).registry))
            try:
                await wait_pinged(bus, "orders", worker, log)
                token = runtime.token_for(Principal(id="alice", roles=("caller",)))
                await bus.publish("orders.placed", {"amount": 7}, idempotency_key="order-1", principal="alice",
                                  capability=token)
                total, deadline = 0, time.monotonic() + 20
                while total != 7:
                    assert time.monotonic() < deadline, log.read_text(errors="replace")
                    await asyncio.sleep(0.1)
                    total = await bus.request("orders.total", {}, principal="alice", capability=token)
            finally:
                await bus.stop()
                await engine.close()
                await runtime.close()
        asyncio.run(the_app())
        made = streams()
        assert "AUDIT" in made and any(name.startswith("CELLMONO_od_orders_placed") for name in made) and \
            any(name.startswith("CELLMONO_od_dead") for name in made), made  # the app's, and only now
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        worker.terminate()
        worker.wait(15)
        server.stop()
        sys.path.remove(str(code))
