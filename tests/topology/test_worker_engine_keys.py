"""A worker in its own folder (its own var/, no copy of the app's key ring) serves the app's tokens, because
the app publishes its public keys on the engine; a token the app revokes is refused by that worker within 1 s.
Real nats-server / Valkey, real worker process (`python -m cellmono.cli.worker`)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokers import require, start_nats, start_redis
from cellmono.core.bus import Bus
from cellmono.core.errors import AccessDenied, NoResponders, RequestTimeout
from cellmono.core.config import load_settings
from cellmono.security.guard import Principal
from cellmono.topology.engine_link import broker_tables, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, PING_SUBJECT, answer_control, contract_fingerprint

CELL = '''
from pydantic import BaseModel
from cellmono.core.cell import Cell, handles

class Say(BaseModel):
    text: str

class EchoCell(Cell):
    name = "echo"

    @handles("echo.say", requires="echo:use")
    async def say(self, request: Say) -> str:
        return request.text
'''


@pytest.fixture(params=["nats", "redis"])
def broker(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


def write_folder(folder: Path, kind: str, url: str) -> Path:
    """An app folder: settings and the cell's module; nothing else (each folder makes its own var/)."""
    folder.mkdir()
    (folder / "echo_cell.py").write_text(CELL)
    settings = folder / "settings.ini"
    settings.write_text(f"""
[app]
name = engine-keys
cells = echo
[log]
level = WARNING
[roles]
caller = echo:use
[cell.echo]
class = echo_cell:EchoCell
placement = process
transport = {kind}
[{kind}]
url = {url}
prefix = ek
""")
    return settings


def test_a_worker_in_its_own_folder_verifies_the_apps_tokens_and_sees_revocations(broker, tmp_path) -> None:
    kind, server = broker
    app_settings = write_folder(tmp_path / "app", kind, server.url)
    worker_settings = write_folder(tmp_path / "worker", kind, server.url)  # another machine: no shared disk

    async def scenario() -> None:
        settings = load_settings(app_settings)
        runtime = Runtime.from_settings(settings)
        engine = await link_engine(runtime, broker_tables(kind, server.url, "engine-keys"), signer=True)
        bus = Bus(build_transport(settings, kind), timeout=5)
        await bus.start()
        module = __import__("importlib").util.spec_from_file_location("echo_cell", tmp_path / "app" / "echo_cell.py")
        echo = __import__("importlib").util.module_from_spec(module)
        module.loader.exec_module(echo)
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="echo"), contract_fingerprint(echo.EchoCell))
        log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "cellmono.cli.worker", "--settings", str(worker_settings),
                                   "--cell", "echo"], cwd=worker_settings.parent, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            give_up = time.monotonic() + 30
            while True:
                try:
                    await bus.request(PING_SUBJECT.format(cell="echo", replica=1), timeout=1)
                    break
                except (NoResponders, RequestTimeout):
                    assert worker.poll() is None and time.monotonic() < give_up, \
                        (tmp_path / "worker.log").read_text()
                    await asyncio.sleep(0.1)
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
            log.close()
            await bus.stop()
            await engine.close()
            await runtime.close()

    asyncio.run(scenario())
