"""A worker provisioned on Redis serves its cell with its own ACL user and nothing more: it reads and writes its
cell's store records and exactly-once inbox, while another cell's record hash or inbox, the key tables, `FLUSHALL`
and `KEYS` are refused (`EngineDenied` naming the key or command); Redis logged no denial while it served; a wrong
password and `cellmono workers revoke` lock it out with one line. Real Valkey, real `cellmono` subprocesses."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
import redis

from brokers import require, start_redis
from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.core.errors import AccessDenied, NoResponders, RequestTimeout
from cellmono.security.engine_keys import EngineDenied
from cellmono.security.engine_redis import RedisRecords
from cellmono.security.engine_store import record_name
from cellmono.security.guard import Principal
from cellmono.topology.engine_link import broker_tables, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.provision import Registry, answer_registrations, workers_section
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint
from worker_support import CELLMONO, cellmono, connect_refusals, load_cell_module, wait_pinged

CELLS = '''
from pydantic import BaseModel
from cellmono.core.cell import Cell, handles

class Add(BaseModel):
    amount: int

class Tick(BaseModel):
    n: int

class CounterCell(Cell):
    name = "counter"

    @handles("counter.add", requires="counter:use")
    async def add(self, request: Add) -> int:
        total = (self.store.get_json("total") or 0) + request.amount
        self.store.put_json("total", total)
        return total

    @handles("ticks.>")
    async def tick(self, event: Tick) -> None:
        self.store.put_json("ticks", (self.store.get_json("ticks") or 0) + 1)

class OtherCell(Cell):
    name = "other"

    @handles("other.do", requires="other:use")
    async def do(self, request: Add) -> int:
        return request.amount
'''


@pytest.fixture
def deployment(tmp_path):
    server = require(start_redis)
    code, app, machine2 = (tmp_path / name for name in ("code", "app", "machine2"))
    for folder in (code, app, machine2):
        folder.mkdir()
    (code / "redis_cells.py").write_text(CELLS)
    sys.path.insert(0, str(code))
    env = {key: value for key, value in os.environ.items() if key != "CELLMONO_KEK"}
    env["PYTHONPATH"] = os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])
    settings = app / "settings.ini"
    settings.write_text(f"""
[app]
name = rprov
cells = counter, other
[log]
level = WARNING
[roles]
caller = counter:use, other:use
[cell.counter]
class = redis_cells:CounterCell
placement = process
transport = redis
[cell.other]
class = redis_cells:OtherCell
placement = process
transport = redis
[redis]
url = {server.url}
prefix = rp
durable = ticks.>
[store]
backend = engine
""")
    provisioned = cellmono("workers", "provision", "w1", "--cells", "counter", "--settings", str(settings),
                           "--credential", str(machine2 / "w1.credential"), cwd=app, env=env)
    assert provisioned.returncode == 0, provisioned.stderr
    yield tmp_path, settings, server, env, provisioned
    server.cleanup()
    sys.path.remove(str(code))


def test_provision_writes_a_private_credential_and_an_acl_user(deployment) -> None:
    tmp_path, settings, server, env, provisioned = deployment
    path = tmp_path / "machine2" / "w1.credential"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    document = json.loads(path.read_text())
    password = document["url"].split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert document["broker"] == "redis" and len(password) >= 40
    output = provisioned.stdout + provisioned.stderr
    assert password not in output and document["token"] not in output and "no aclfile" in output
    assert "migrate = false" in document["settings"]
    registry = (tmp_path / "app" / "var" / "workers.json").read_text()
    assert password not in registry and '"password_sha256"' in registry
    rules = " ".join(str(part) for part in redis.Redis.from_url(server.url).acl_getuser("worker-w1")["keys"])
    assert "rprov:store:{counter}*" in rules and "{other}" not in rules


def test_a_redis_worker_serves_its_cell_only_and_revoke_locks_it_out(deployment) -> None:
    tmp_path, settings_path, server, env, _ = deployment
    machine2, code = tmp_path / "machine2", tmp_path / "code"
    document = json.loads((machine2 / "w1.credential").read_text())
    admin = redis.Redis.from_url(server.url)

    async def scenario() -> None:
        settings = load_settings(settings_path)
        runtime = Runtime.from_settings(settings)  # the app's store on Redis: laid out per namespace
        engine = await link_engine(runtime, broker_tables("redis", server.url, "rprov"), signer=True)
        bus = Bus(build_transport(settings, "redis"), timeout=5)
        await bus.start()
        cells = load_cell_module(code / "redis_cells.py", "redis_cells_app")
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="counter"), contract_fingerprint(cells.CounterCell))
        await answer_registrations(bus, runtime, Registry(workers_section(settings).registry))
        runtime.store.namespace("other").put_json("secret", "the other cell's record")
        admin.acl_log_reset()
        log = tmp_path / "worker.log"
        with open(log, "wb") as output:
            worker = subprocess.Popen([CELLMONO, "worker", "--credential", "w1.credential"], cwd=machine2, env=env,
                                      stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            try:
                await wait_pinged(bus, "counter", worker, log)
            except AssertionError:  # what its ACL refused says which rule is missing
                raise AssertionError(f"refused by Redis: {[(e.get('reason'), e.get('object')) for e in admin.acl_log()]}")
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            for amount, total in ((2, 2), (3, 5)):
                assert await bus.request("counter.add", {"amount": amount}, principal="alice", capability=token) == total
            assert runtime.store.namespace("counter").get_json("total") == 5  # the worker's record, read at the app
            for n in range(3):  # durable events: exactly once, the inbox record in the counter's own hash
                await bus.publish("ticks.one", {"n": n}, idempotency_key=f"tick-{n}", principal="alice",
                                  capability=token)
            give_up = time.monotonic() + 20
            while runtime.store.namespace("counter").get_json("ticks") != 3:
                assert time.monotonic() < give_up and worker.poll() is None, log.read_text(errors="replace")
                await asyncio.sleep(0.1)
            assert any(field.startswith(b"_inbox.") for field in admin.hkeys("rprov:store:{counter}"))
            while not admin.exists("cellmono_rprov:audit:counter-1"):  # its audit chain, shipped with its own user
                assert time.monotonic() < give_up + 20 and worker.poll() is None, log.read_text(errors="replace")
                await asyncio.sleep(0.2)
            denials = [entry for entry in admin.acl_log() if entry.get("username") == "worker-w1"]
            assert denials == [], denials  # serving needed nothing outside its ACL

            _attack(document["url"])

            revoked = cellmono("workers", "revoke", "w1", "--settings", str(settings_path), cwd=settings_path.parent,
                               env=env)
            assert revoked.returncode == 0, revoked.stderr
            cut = time.monotonic()
            while True:  # its connections are gone: nobody serves the counter any more
                try:
                    await bus.request("counter.add", {"amount": 1}, principal="alice", capability=token, timeout=0.5)
                except (NoResponders, RequestTimeout, AccessDenied):
                    break
                assert time.monotonic() - cut < 10, "the revoked worker still serves"
                await asyncio.sleep(0.1)
            with pytest.raises(redis.exceptions.AuthenticationError):
                redis.Redis.from_url(document["url"]).ping()
        finally:
            worker.terminate()
            worker.wait(15)
            await bus.stop()
            await engine.close()
            await runtime.close()

    asyncio.run(scenario())
    again = cellmono("worker", "--credential", "w1.credential", cwd=machine2, env=env, timeout=60)
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1, again.stderr
    assert "refused worker 'w1'" in again.stderr and "Traceback" not in again.stderr


def _attack(url: str) -> None:
    """With the worker's own Redis user: the other cell's records and inbox, the key tables, FLUSHALL, KEYS."""
    client = redis.Redis.from_url(url)
    try:
        client.hget("rprov:store:{counter}", "counter.dG90YWw")  # its own: allowed
        for attempt in (lambda: client.hgetall("rprov:store:{other}"),
                        lambda: client.hset("rprov:store:{other}", "other.eA", b"forged"),
                        lambda: client.hgetall("rprov:store:{_inbox.other_0}"),
                        lambda: client.hset("cellmono_rprov:keys", "forged", b"{}"),
                        lambda: client.hset("rprov:store:{_inbox}", "_active._inbox", b"1"),
                        lambda: client.hgetall("rprov:store"),
                        lambda: client.flushall(), lambda: client.keys("*"), lambda: client.config_get("*"),
                        lambda: client.publish("rp.r.other.do", b"{}")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        client.close()
    records = RedisRecords(url, name="rprov:store", migrate=False)  # the engine store's own client, as the worker
    try:
        assert records.read(record_name("counter", "total"))[1] is not None
        with pytest.raises(EngineDenied, match=r"rprov:store:\{other\}"):
            records.read(record_name("other", "secret"))
        with pytest.raises(EngineDenied, match=r"rprov:store:\{other\}"):
            records.commit({}, {record_name("other", "secret"): b"forged"})
    finally:
        records.close()


def test_a_wrong_password_is_refused_with_one_line(deployment) -> None:
    tmp_path, _, server, env, _ = deployment
    machine2 = tmp_path / "machine2"
    document = json.loads((machine2 / "w1.credential").read_text())
    document["url"] = document["url"].replace("@", "x@", 1)
    document["settings"] = document["settings"].replace("@", "x@", 1)
    (machine2 / "w1.credential").write_text(json.dumps(document))
    refused = cellmono("worker", "--credential", "w1.credential", cwd=machine2, env=env, timeout=60)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "refused worker 'w1'" in refused.stderr and "Traceback" not in refused.stderr
    assert document["url"].split("@")[0].split(":")[-1] not in refused.stderr  # never the password


def test_a_worker_started_before_the_app_is_told_to_start_the_app_first(deployment) -> None:
    tmp_path, _, server, env, _ = deployment
    early = cellmono("worker", "--credential", "w1.credential", cwd=tmp_path / "machine2", env=env, timeout=60)
    assert early.returncode == 2 and len(early.stderr.splitlines()) == 1, early.stderr
    assert "start the app first" in early.stderr and "Traceback" not in early.stderr


def test_with_an_aclfile_the_worker_user_survives_a_redis_restart(tmp_path) -> None:
    from brokers import Server, free_port, redis_binary
    (tmp_path / "users.acl").write_text("user default on nopass ~* &* +@all\n")
    port = free_port()
    server = require(lambda: Server("redis", [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                              "--dir", str(tmp_path), "--aclfile", str(tmp_path / "users.acl")],
                                    port, str(tmp_path)).start())
    try:
        (tmp_path / "redis_acl_cells.py").write_text(CELLS)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
        (tmp_path / "settings.ini").write_text(f"""
[app]
name = racl
cells = counter
[cell.counter]
class = redis_acl_cells:CounterCell
placement = process
transport = redis
[redis]
url = {server.url}
""")
        made = cellmono("workers", "provision", "w2", "--credential", "w2.credential", cwd=tmp_path, env=env)
        assert made.returncode == 0, made.stderr
        assert "saved to its aclfile" in made.stdout and "worker-w2" in (tmp_path / "users.acl").read_text()
        server.restart()
        url = json.loads((tmp_path / "w2.credential").read_text())["url"]
        assert redis.Redis.from_url(url).ping()  # the user came back from the aclfile
        gone = cellmono("workers", "revoke", "w2", cwd=tmp_path, env=env)
        assert gone.returncode == 0, gone.stderr
        assert "worker-w2" not in (tmp_path / "users.acl").read_text()
    finally:
        server.stop()


def test_logins_redis_refuses_are_audited_at_the_app(deployment) -> None:
    """A wrong password for the worker's user and an unknown user are refused by Redis before the app sees a command;
    the app reads Redis' `ACL LOG` and audits each as `worker.connect` denied, naming the worker it knows; a burst
    is one record (Redis folds it into one entry); what was logged before the app started is not audited again."""
    from cellmono.topology.redis_users import watch_redis_refusals
    tmp_path, settings_path, server, env, _ = deployment
    document = json.loads((tmp_path / "machine2" / "w1.credential").read_text())
    password = document["url"].split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]

    def refused_login(user: str, secret: str) -> None:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, username=user, password=secret).ping()

    def records(actor: str, at_least: int):
        return connect_refusals(runtime.audit, actor, at_least)

    async def scenario() -> None:
        refused_login("ghost", "before the app")  # logged before the app starts: not audited again
        settings = load_settings(settings_path)
        watch = await watch_redis_refusals(settings, runtime.audit, Registry(workers_section(settings).registry).load,
                                           every=0.2)
        assert watch is not None, "the app could not read ACL LOG"
        try:
            for _ in range(3):
                refused_login("worker-w1", password + "x")
            w1 = await records("worker:w1", 1)
            assert len(w1) == 1 and w1[0]["decision"] == "deny" and "127.0.0.1" in w1[0]["reason"], w1
            assert password not in json.dumps(w1)
            refused_login("intruder", "guess")
            assert len(await records("broker-user:intruder", 1)) == 1
            assert await records("broker-user:ghost", 1) == []
        finally:
            await watch.close()

    runtime = Runtime.from_settings(load_settings(settings_path))
    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(runtime.close())
