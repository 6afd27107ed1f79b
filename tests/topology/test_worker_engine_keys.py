"""A worker in its own folder (its own var/, no copy of the app's key ring) serves the app's tokens, because
the app publishes its public keys on the engine; a token the app revokes is refused by that worker within 1 s.
Real nats-server / Valkey, real worker process (`python -m cellmono.cli.worker`)."""
from __future__ import annotations

import asyncio
import time

import pytest

from brokers import require, start_nats, start_redis
from cellmono.core.bus import Bus
from cellmono.core.errors import AccessDenied
from cellmono.core.config import load_settings
from cellmono.security.guard import Principal
from cellmono.topology.engine_link import broker_tables, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint
from worker_support import load_cell_module, spawn_cell_worker, wait_pinged, write_echo_folder

@pytest.fixture(params=["nats", "redis"])
def broker(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


def test_a_worker_in_its_own_folder_verifies_the_apps_tokens_and_sees_revocations(broker, tmp_path) -> None:
    kind, server = broker
    app_settings = write_echo_folder(tmp_path / "app", kind, server.url, "engine-keys", "ek")
    worker_settings = write_echo_folder(tmp_path / "worker", kind, server.url, "engine-keys", "ek")  # another machine: no shared disk

    async def scenario() -> None:
        settings = load_settings(app_settings)
        runtime = Runtime.from_settings(settings)
        engine = await link_engine(runtime, broker_tables(kind, server.url, "engine-keys"), signer=True)
        bus = Bus(build_transport(settings, kind), timeout=5)
        await bus.start()
        echo = load_cell_module(tmp_path / "app" / "echo_cell.py", "echo_cell")
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="echo"), contract_fingerprint(echo.EchoCell))
        worker = spawn_cell_worker(worker_settings, "echo", tmp_path / "worker.log")
        try:
            await wait_pinged(bus, "echo", worker, tmp_path / "worker.log")
            assert (tmp_path / "worker" / "var").exists()  # it made its own state, not the app's ring
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            answer = await bus.request("echo.say", {"text": "hi"}, principal="alice", capability=token)
            assert answer == "hi", (tmp_path / "worker.log").read_text()

            await engine.revoke(runtime.verifier.verify(token).token_id, "test")
            revoked = time.monotonic()
            while True:
                try:
                    await bus.request("echo.say", {"text": "hi"}, principal="alice", capability=token)
                except AccessDenied as error:
                    assert "revoked" in str(error)
                    break
                assert time.monotonic() - revoked < 1.0, "the worker still serves a revoked token after 1 s"
                await asyncio.sleep(0.02)
        finally:
            worker.terminate()
            worker.wait(10)
            await bus.stop()
            await engine.close()
            await runtime.close()

    asyncio.run(scenario())
