"""End to end: the app and a worker in its own folder (no shared disk) each ship their audit chain to the engine;
`cellmono audit verify --engine` reads both from the engine alone and verifies them, with the anchor keys each
node published. Real nats-server / Valkey, real worker process, the real `cellmono` command."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from brokers import require, start_nats, start_redis
from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.security.audit_ship import ship_app_audit
from cellmono.security.guard import Principal
from cellmono.security.records import audit_record
from cellmono.topology.engine_link import broker_tables, engine_namespace, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint
from worker_support import load_cell_module, spawn_cell_worker, wait_pinged, write_echo_folder

@pytest.fixture(params=["nats", "redis"])
def broker(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


def test_app_and_worker_chains_verify_from_the_engine(broker, tmp_path) -> None:
    kind, server = broker
    app_settings = write_echo_folder(tmp_path / "app", kind, server.url, "audit-ship", "as")
    worker_settings = write_echo_folder(tmp_path / "worker", kind, server.url, "audit-ship", "as")

    async def scenario() -> None:
        settings = load_settings(app_settings)
        runtime = Runtime.from_settings(settings)
        engine = await link_engine(runtime, broker_tables(kind, server.url, "audit-ship"), signer=True)
        bus = Bus(build_transport(settings, kind), timeout=5)
        await bus.start()
        shipper = await ship_app_audit(SimpleNamespace(bus=bus, services=runtime), "app", engine_namespace("audit-ship"))
        assert shipper is not None
        echo = load_cell_module(tmp_path / "app" / "echo_cell.py", "echo_cell")
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="echo"), contract_fingerprint(echo.EchoCell))
        worker = spawn_cell_worker(worker_settings, "echo", tmp_path / "worker.log")
        try:
            await wait_pinged(bus, "echo", worker, tmp_path / "worker.log")
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            for _ in range(3):
                assert await bus.request("echo.say", {"text": "hi"}, principal="alice", capability=token) == "hi"
            runtime.audit.append(audit_record("operator", "test.checked", resource="echo"))  # the app's own record
        finally:
            worker.terminate()  # a clean stop: the worker ships what is left and signs its shutdown anchor
            worker.wait(15)
            await shipper.stop(close_stream=True)
            await bus.stop()
            await engine.close()
            await runtime.close()

    asyncio.run(scenario())
    done = subprocess.run([str(Path(sys.executable).parent / "cellmono"), "audit", "verify", "--engine",
                           "--settings", str(app_settings)], cwd=tmp_path / "app", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr, (tmp_path / "worker.log").read_text())
    lines = done.stdout.splitlines()
    assert any(line.startswith("app: ") and line.endswith(", ok") for line in lines), done.stdout
    worker_line = next(line for line in lines if line.startswith("echo-1: "))
    assert worker_line.endswith(", ok") and not worker_line.startswith("echo-1: 0 records"), done.stdout
