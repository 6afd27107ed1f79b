"""A provisioned worker in an empty folder serves the app's callers over a real nats-server with its own user; it
cannot publish to another cell's subjects or write the key tables; a tampered credential is refused and audited
at the app; `cellmono workers revoke` cuts it off within 1 s. Real nats-server, real `cellmono` subprocesses."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokers import free_port, require
from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.core.errors import AccessDenied, NoResponders, RequestTimeout
from cellmono.security.guard import Principal
from cellmono.security.tokens import TokenInvalid
from cellmono.topology.engine_link import broker_tables, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.provision import Registry, answer_registrations, workers_section
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, PING_SUBJECT, answer_control, contract_fingerprint
from worker_support import CELLMONO, ECHO_CELL, cellmono, connect_refusals, start_nats_with_auth, wait_pinged

CELLS = ECHO_CELL + '''
class OtherCell(Cell):
    name = "other"

    @handles("other.do", requires="other:use")
    async def do(self, request: Say) -> str:
        return "other:" + request.text


class RelayCell(Cell):
    name = "relay"
    requests = ("other.do",)
    publishes = ("relay.cancelled",)

    @handles("relay.go", requires="relay:use")
    async def go(self, request: Say) -> str:
        return await self.bus.request("other.do", request)

    @handles("relay.wait", requires="relay:use")
    async def wait(self, request: Say) -> str:
        import asyncio
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await self.bus.publish("relay.cancelled", request)
            raise
        return "late"
'''
APP_PASSWORD = "app-password-for-tests"


def write_app(folder: Path, port: int) -> Path:
    folder.mkdir()
    settings = folder / "settings.ini"
    settings.write_text(f"""
[app]
name = provtest
cells = echo, other, relay
[log]
level = WARNING
[roles]
caller = echo:use, other:use, relay:use
[cell.echo]
class = prov_cells:EchoCell
placement = process
[cell.other]
class = prov_cells:OtherCell
placement = process
[cell.relay]
class = prov_cells:RelayCell
placement = process
[nats]
url = nats://app:{APP_PASSWORD}@127.0.0.1:{port}
prefix = pv
[workers]
nats_pid_file = {folder.parent / "broker" / "nats.pid"}
""")
    return settings


@pytest.fixture
def deployment(tmp_path):
    code = tmp_path / "code"  # the deployed code (pip-installed on a real machine): on PYTHONPATH, not copied
    code.mkdir()
    (code / "prov_cells.py").write_text(CELLS)
    sys.path.insert(0, str(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    broker = tmp_path / "broker"
    broker.mkdir()
    port = free_port()
    settings = write_app(tmp_path / "app", port)
    provisioned = cellmono("workers", "provision", "w1", "--cells", "echo", "--settings", str(settings),
                           "--credential", str(tmp_path / "w1.credential"), cwd=tmp_path / "app", env=env)
    assert provisioned.returncode == 0, provisioned.stderr
    server = require(lambda: start_nats_with_auth(broker, tmp_path / "app" / "var" / "nats-auth.conf", port))
    yield tmp_path, settings, server, env, provisioned
    server.stop()
    sys.path.remove(str(code))


def test_provision_prints_no_secret_and_refuses_overwrite(deployment) -> None:
    tmp_path, settings, server, env, provisioned = deployment
    credential = json.loads((tmp_path / "w1.credential").read_text())
    assert oct((tmp_path / "w1.credential").stat().st_mode & 0o777) == "0o600"
    output = provisioned.stdout + provisioned.stderr
    assert "w1.credential" in output and credential["token"] not in output
    assert credential["nkey_seed"] not in output and "@" not in credential["url"]  # the worker's seed; no password
    include = (tmp_path / "app" / "var" / "nats-auth.conf").read_text()
    assert credential["nkey_seed"] not in include and '"nkey": "U' in include  # the server holds its public key only
    again = cellmono("workers", "provision", "w1", "--settings", str(settings), "--credential",
                     str(tmp_path / "w1.credential"), cwd=tmp_path / "app", env=env)
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1 and "--force" in again.stderr
    assert "Traceback" not in again.stderr


def test_a_provisioned_worker_in_an_empty_folder_serves_and_is_cut_off_by_revoke(deployment) -> None:
    tmp_path, settings_path, server, env, _ = deployment
    empty = tmp_path / "machine2"
    empty.mkdir()
    (tmp_path / "w1.credential").rename(empty / "w1.credential")  # the only file the new machine gets

    async def scenario() -> None:
        settings = load_settings(settings_path)
        runtime = Runtime.from_settings(settings)
        app_url = f"nats://app:{APP_PASSWORD}@127.0.0.1:{server.port}"
        engine = await link_engine(runtime, broker_tables("nats", app_url, "provtest"), signer=True)
        bus = Bus(build_transport(settings, "nats"), timeout=5)
        await bus.start()
        import prov_cells
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="echo"), contract_fingerprint(prov_cells.EchoCell))
        await answer_registrations(bus, runtime, Registry(workers_section(settings).registry))
        served = await bus.transport.subscribe("other.do", _record_other, responder=True)  # the other cell, at the app
        log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen([CELLMONO, "worker", "--credential", "w1.credential"],
                                  cwd=empty, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            give_up = time.monotonic() + 30
            while True:
                try:
                    await bus.request(PING_SUBJECT.format(cell="echo", replica=1), timeout=1)
                    break
                except (NoResponders, RequestTimeout):
                    assert worker.poll() is None and time.monotonic() < give_up, (tmp_path / "worker.log").read_text()
                    await asyncio.sleep(0.1)
            assert not (empty / "settings.ini").exists()
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            assert await bus.request("echo.say", {"text": "hi"}, principal="alice", capability=token) == "hi"

            forged = tmp_path / "forged"  # the same broker user, someone else's token: refused and audited at the app
            forged.mkdir()
            document = json.loads((empty / "w1.credential").read_text())
            document["token"] = runtime.token_for(Principal(id="mallory", roles=("caller",)))
            (forged / "w1.credential").write_text(json.dumps(document))
            (forged / "w1.credential").chmod(0o600)
            refused = await asyncio.to_thread(cellmono, "worker", "--credential", "w1.credential", cwd=forged, env=env,
                                              timeout=30)
            assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
            assert "refused worker 'w1'" in refused.stderr and "Traceback" not in refused.stderr
            runtime.audit.flush()
            denials = [entry.fields for entry in runtime.audit.entries() if entry.fields.get("action") == "worker.register"
                       and entry.fields.get("decision") == "deny"]
            assert denials and denials[-1]["actor"] == "worker:w1", denials

            await _attack_with_worker_user(json.loads((empty / "w1.credential").read_text()))
            assert OTHER_CALLS == [], "the worker's user reached another cell's subject"

            revoked = cellmono("workers", "revoke", "w1", "--settings", str(settings_path), cwd=settings_path.parent,
                               env=env)
            assert revoked.returncode == 0, revoked.stderr
            cut = time.monotonic()
            while True:
                try:
                    await bus.request("echo.say", {"text": "hi"}, principal="alice", capability=token, timeout=0.3)
                except (NoResponders, RequestTimeout, AccessDenied):
                    break
                assert time.monotonic() - cut < 1.0, "the revoked worker still serves after 1 s"
                await asyncio.sleep(0.05)
            listed = cellmono("workers", "list", "--settings", str(settings_path), cwd=settings_path.parent, env=env)
            assert "revoked" in listed.stdout and "password" not in listed.stdout
        finally:
            worker.terminate()
            worker.wait(10)
            log.close()
            await served.unsubscribe()
            await bus.stop()
            await engine.close()
            await runtime.close()
        again = cellmono("worker", "--credential", "w1.credential", cwd=empty, env={
            **env, "CELLMONO__WORKERS__RETRY_GIVE_UP": "1"}, timeout=60)
        assert again.returncode == 2 and len(again.stderr.splitlines()) == 1, again.stderr
        assert "Authorization Violation" in again.stderr and "Traceback" not in again.stderr

    asyncio.run(scenario())


OTHER_CALLS: list[str] = []


async def _record_other(envelope):
    OTHER_CALLS.append(envelope.subject)
    return envelope.reply("other")


async def _attack_with_worker_user(credential: dict) -> None:
    """With the worker's own user: publish a request to another cell and write the engine's key table."""
    import nats
    errors: list[str] = []

    async def collect(error: Exception) -> None:
        errors.append(str(error))
    connection = await nats.connect(credential["url"], nkeys_seed_str=credential["nkey_seed"], error_cb=collect,
                                    max_reconnect_attempts=0)
    try:
        await connection.publish("pv.r.other.do", b"{}")
        await connection.publish("$KV.cellmono_provtest_keys.forged", b"{}")
        await connection.flush()
        await asyncio.sleep(0.3)
    finally:
        await connection.close()
    joined = " ".join(errors).lower()
    assert 'permissions violation for publish to "pv.r.other.do"' in joined, errors
    assert 'permissions violation for publish to "$kv.cellmono_provtest_keys.forged"' in joined, errors


def test_a_provisioned_worker_calls_what_its_cell_declares_and_hears_a_cancel(deployment) -> None:
    """Its NATS user lets it publish the requests its cell declares (`requests`) and hear callers' cancels: a call
    the caller gave up on stops in the worker too (the cell sees the cancellation and announces it)."""
    tmp_path, settings_path, server, env, _ = deployment
    machine = tmp_path / "machine3"
    machine.mkdir()
    provisioned = cellmono("workers", "provision", "w2", "--cells", "relay", "--settings", str(settings_path),
                           "--credential", str(machine / "w2.credential"), cwd=settings_path.parent, env=env)
    assert provisioned.returncode == 0, provisioned.stderr

    async def scenario() -> None:
        settings = load_settings(settings_path)
        runtime = Runtime.from_settings(settings)
        engine = await link_engine(runtime, broker_tables("nats", f"nats://app:{APP_PASSWORD}@127.0.0.1:{server.port}",
                                                          "provtest"), signer=True)
        bus = Bus(build_transport(settings, "nats"), timeout=5)
        await bus.start()
        import prov_cells
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="relay"), contract_fingerprint(prov_cells.RelayCell))
        await answer_registrations(bus, runtime, Registry(workers_section(settings).registry))
        served = await bus.transport.subscribe("other.do", _record_other, responder=True)  # the other cell, at the app
        cancelled = asyncio.Event()

        async def on_cancelled(envelope) -> None:
            cancelled.set()
        announced = await bus.transport.subscribe("relay.cancelled", on_cancelled)
        log = tmp_path / "relay-worker.log"
        with open(log, "wb") as output:
            worker = subprocess.Popen([CELLMONO, "worker", "--credential", "w2.credential"], cwd=machine, env=env,
                                      stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            await wait_pinged(bus, "relay", worker, log)
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            assert await bus.request("relay.go", {"text": "hi"}, principal="alice", capability=token) == "other"
            with pytest.raises(RequestTimeout):
                await bus.request("relay.wait", {"text": "x"}, principal="alice", capability=token, timeout=0.5)
            await asyncio.wait_for(cancelled.wait(), 5)  # the worker's handler saw the caller's cancel
            assert "permissions violation" not in log.read_text(errors="replace").lower(), log.read_text()
        finally:
            worker.terminate()
            worker.wait(10)
            await served.unsubscribe()
            await announced.unsubscribe()
            await bus.stop()
            await engine.close()
            await runtime.close()

    asyncio.run(scenario())


def test_provision_force_revokes_the_token_and_the_password_it_replaces(deployment) -> None:
    tmp_path, settings_path, server, env, _ = deployment
    old = tmp_path / "old"
    old.mkdir()
    (tmp_path / "w1.credential").rename(old / "w1.credential")

    async def scenario() -> None:
        settings = load_settings(settings_path)
        runtime = Runtime.from_settings(settings)
        engine = await link_engine(runtime, broker_tables("nats", f"nats://app:{APP_PASSWORD}@127.0.0.1:{server.port}",
                                                          "provtest"), signer=True)
        bus = Bus(build_transport(settings, "nats"), timeout=5)
        await bus.start()
        import prov_cells
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="echo"), contract_fingerprint(prov_cells.EchoCell))
        await answer_registrations(bus, runtime, Registry(workers_section(settings).registry))
        log = tmp_path / "old-worker.log"
        with open(log, "wb") as output:
            worker = subprocess.Popen([CELLMONO, "worker", "--credential", "w1.credential"], cwd=old, env=env,
                                      stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            await wait_pinged(bus, "echo", worker, log)
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            assert await bus.request("echo.say", {"text": "hi"}, principal="alice", capability=token) == "hi"
            old_token = json.loads((old / "w1.credential").read_text())["token"]
            replaced = await asyncio.to_thread(cellmono, "workers", "provision", "w1", "--cells", "echo", "--force",
                                               "--settings", str(settings_path), "--credential",
                                               str(tmp_path / "new.credential"), cwd=settings_path.parent, env=env)
            assert replaced.returncode == 0, replaced.stderr
            cut = time.monotonic()
            while True:  # the old password is gone: the reload dropped the old worker's connection
                try:
                    await bus.request("echo.say", {"text": "hi"}, principal="alice", capability=token, timeout=0.3)
                except (NoResponders, RequestTimeout, AccessDenied):
                    break
                assert time.monotonic() - cut < 1.0, "the replaced credential still serves after 1 s"
                await asyncio.sleep(0.05)
            while True:  # the old token is revoked on the engine: every verifier refuses it within 1 s
                try:
                    runtime.verifier.verify(old_token)
                except TokenInvalid as error:
                    assert "revoked" in str(error)
                    break
                assert time.monotonic() - cut < 1.0, "the replaced token still verifies after 1 s"
                await asyncio.sleep(0.05)
        finally:
            worker.terminate()
            worker.wait(10)
            await bus.stop()
            await engine.close()
            await runtime.close()
        again = await asyncio.to_thread(cellmono, "worker", "--credential", "w1.credential", cwd=old, env={
            **env, "CELLMONO__WORKERS__RETRY_GIVE_UP": "1"}, timeout=60)
        assert again.returncode == 2 and "Authorization Violation" in again.stderr, again.stderr

    asyncio.run(scenario())


def test_logins_the_broker_refuses_are_audited_at_the_app(deployment) -> None:
    """A wrong password and a revoked worker's nkey are refused by nats-server itself, before the app sees a message;
    the app hears the server's advisory (its system-account user, which the include holds) and audits each as
    `worker.connect` denied, naming the worker when the registry knows its nkey; a burst of refusals from one user
    and host is one record."""
    import nats
    from cellmono.topology.broker_users import watch_refusals
    tmp_path, settings_path, server, env, _ = deployment
    credential = json.loads((tmp_path / "w1.credential").read_text())
    url = f"nats://127.0.0.1:{server.port}"

    async def refused_login(**options) -> None:
        with pytest.raises(Exception, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **options)

    def records(actor: str, at_least: int):
        return connect_refusals(runtime.audit, actor, at_least)

    async def scenario() -> None:
        settings = load_settings(settings_path)
        refusals = await watch_refusals(settings, runtime.audit, Registry(workers_section(settings).registry).load)
        assert refusals is not None, "the app's system-account user could not log in"
        try:
            for _ in range(5):  # a burst from one user and host: one record
                await refused_login(user="mallory", password="guess")
            mallory = await records("broker-user:mallory", 1)
            assert len(mallory) == 1 and mallory[0]["decision"] == "deny", mallory
            assert "Authentication Failure" in mallory[0]["reason"] and "127.0.0.1" in mallory[0]["reason"]
            await asyncio.sleep(0.5)
            assert len(await records("broker-user:mallory", 2)) == 1

            revoked = await asyncio.to_thread(cellmono, "workers", "revoke", "w1", "--settings", str(settings_path),
                                              cwd=settings_path.parent, env=env)
            assert revoked.returncode == 0, revoked.stderr
            await refused_login(nkeys_seed_str=credential["nkey_seed"], name="w1/echo-1-4242")  # as `cellmono worker`
            w1 = await records("worker:w1", 1)  # names its connection; an nkey login carries no user to match
            assert len(w1) == 1 and w1[0]["decision"] == "deny" and "names itself" in w1[0]["reason"], w1
            await refused_login(nkeys_seed_str=credential["nkey_seed"], name="intruder/echo-1-1")  # a name it does not know
            assert len(await records("broker-user:?", 1)) == 1
            assert credential["nkey_seed"] not in json.dumps(w1)  # no secret in the record
        finally:
            await refusals.close()

    runtime = Runtime.from_settings(load_settings(settings_path))
    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(runtime.close())
