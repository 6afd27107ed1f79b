"""A provisioned worker reads only its own cells' share of the engine: with its credential, on a real nats-server
whose authorization include `cellmono workers provision` wrote, the worker of `counter` serves requests and durable
events (its records, data key and exactly-once inbox entries), while `vault`'s record, data key and inbox entry,
and every unscoped form of the stream API (an unfiltered consumer, a direct get without a subject, a stream
message get, the stream's info) are refused by the server and raise `EngineDenied` at once, never a timeout; it
publishes its anchors' public key under its own node name, and may not write another node's entry.
Real nats-server, real `cellmono` subprocesses."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from brokers import free_port, require
from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.core.errors import AccessDenied
from cellmono.security.engine_keys import EngineDenied
from cellmono.security.engine_inbox import EngineInbox
from cellmono.security.audit_ship import AUDIT_KEYS_TABLE
from cellmono.security.engine_keys import EngineUnavailable
from cellmono.security.engine_kv import NatsTables
from cellmono.security.engine_records import NatsRecords
from cellmono.security.engine_store import EngineStore
from cellmono.security.nats_identity import nats_identity, use_nkey
from cellmono.security.guard import Principal
from cellmono.topology.engine_link import broker_tables, link_engine
from cellmono.topology.placement import build_transport
from cellmono.topology.provision import Registry, answer_registrations, workers_section
from cellmono.topology.services import Runtime
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint
from cellmono.transports.brokers import safe_name
from worker_support import CELLMONO, cellmono, load_cell_module, start_nats_with_auth, wait_pinged

CELLS = '''
from pydantic import BaseModel
from cellmono.core.cell import Cell, handles
from cellmono.core.envelope import Envelope

class Add(BaseModel):
    amount: int

class CounterCell(Cell):
    name = "counter"

    @handles("counter.add", requires="counter:use")
    async def add(self, request: Add) -> int:
        total = (self.store.get_json("total") or 0) + request.amount
        self.store.put_json("total", total)
        return total

    @handles("counter.tally")
    async def tally(self, event: dict, envelope: Envelope) -> None:
        self.store.put_json("tallied", (self.store.get_json("tallied") or 0) + event["amount"])

class VaultCell(Cell):
    name = "vault"

    @handles("vault.note")
    async def note(self, event: dict, envelope: Envelope) -> None:
        self.store.put_json("note", event)
'''
APP_PASSWORD = "app-password-for-tests"
BUCKET, STREAM = "isol_store", "KV_isol_store"


def consumer(cell: str) -> str:
    """The exactly-once consumer of `cell`'s durable listener, as `transports.jetstream` names it."""
    return f"nats:CELLMONO_{safe_name(f'is.{cell}.' + ('tally' if cell == 'counter' else 'note'))}:{safe_name(cell)}"


def refused(call, *what: str) -> EngineDenied:
    """The `EngineDenied` that `call()` raises, within 2 s (the server refuses: no timeout is waited for)."""
    started = time.monotonic()
    with pytest.raises(EngineDenied) as caught:
        call()
    assert time.monotonic() - started < 2.0, "a refusal must not wait for a timeout"
    message = str(caught.value)
    assert isinstance(caught.value, AccessDenied) and "re-provision" in message and "\n" not in message, message
    assert all(part in message for part in what), message
    return caught.value


ANCHOR_KID = "k0123456789abcdef"


def put_anchor_key(url: str, key: str, value: bytes = b"a key of the worker's own") -> None:
    """Put `key` in the anchor keys table at `url` (as whoever this process connects as)."""
    async def put() -> None:
        tables = NatsTables(url, namespace="cellmono_isol")  # made by the app; never by a worker
        await tables.start()
        try:
            await tables.put(AUDIT_KEYS_TABLE, key, value)
        finally:
            await tables.close()
    asyncio.run(put())


def subscription_refused(url: str, subject: str) -> bool:
    """True when nats-server refuses this process's subscription to `subject` (a permissions violation)."""
    import nats
    errors: list[str] = []

    async def collect(error: Exception) -> None:
        errors.append(str(error))

    async def attempt() -> None:
        connection = await nats.connect(url, connect_timeout=2, error_cb=collect, **nats_identity())
        try:
            await connection.subscribe(subject)
            await connection.flush(2)
            await asyncio.sleep(0.3)  # the server's -ERR for the subscription arrives after its PONG
        finally:
            await connection.close()
    asyncio.run(attempt())
    return any("permissions violation" in error.lower() and subject.lower() in error.lower() for error in errors)


def anchor_keys(url: str) -> dict[str, bytes]:
    """The anchor keys table at `url`, as the app reads it."""
    found: dict[str, bytes] = {}

    async def read() -> None:
        tables = NatsTables(url, namespace="cellmono_isol", create=False)
        await tables.start()
        try:
            await tables.watch(AUDIT_KEYS_TABLE, lambda key, value: found.__setitem__(key, value))
        finally:
            await tables.close()
    asyncio.run(read())
    return found


def test_a_worker_reads_only_its_own_cells_share_of_the_engine(tmp_path) -> None:
    code, app, machine2, broker = (tmp_path / name for name in ("code", "app", "machine2", "broker"))
    for folder in (code, app, machine2, broker):
        folder.mkdir()
    (code / "iso_cells.py").write_text(CELLS)
    env = {key: value for key, value in os.environ.items() if key != "CELLMONO_KEK"}
    env["PYTHONPATH"] = os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])
    port = free_port()
    settings_path = app / "settings.ini"
    settings_path.write_text(f"""
[app]
name = isol
cells = counter, vault
[log]
level = WARNING
[roles]
caller = counter:use
[cell.counter]
class = iso_cells:CounterCell
placement = process
[cell.vault]
class = iso_cells:VaultCell
placement = process
[nats]
url = nats://app:{APP_PASSWORD}@127.0.0.1:{port}
prefix = is
durable = counter.tally, vault.note
[store]
backend = engine
[workers]
nats_pid_file = {broker / "nats.pid"}
""")
    provisioned = cellmono("workers", "provision", "w1", "--cells", "counter", "--settings", str(settings_path),
                           "--credential", str(machine2 / "w1.credential"), cwd=app, env=env)
    assert provisioned.returncode == 0, provisioned.stderr
    seed = json.loads((machine2 / "w1.credential").read_text())["nkey_seed"]
    server = require(lambda: start_nats_with_auth(broker, app / "var" / "nats-auth.conf", port))
    sys.path.insert(0, str(code))
    app_url = f"nats://app:{APP_PASSWORD}@127.0.0.1:{port}"
    log = tmp_path / "worker.log"
    kept: dict[str, object] = {}

    def violations() -> list[str]:  # refusals on the engine (JetStream API, KV records)
        return [line for line in server.log_path.read_text(errors="replace").splitlines()
                if "Violation" in line and ('"$JS' in line or '"$KV' in line)]

    async def serve() -> None:
        settings = load_settings(settings_path)
        runtime = Runtime.from_settings(settings)  # the app's store: on the engine too
        kept["keys"] = runtime.store.keys  # the KEK: the worker's credential carries it too
        engine = await link_engine(runtime, broker_tables("nats", app_url, "isol"), signer=True)
        bus = Bus(build_transport(settings, "nats"), timeout=5)
        await bus.start()
        cells = load_cell_module(code / "iso_cells.py", "iso_cells_app")
        await answer_control(bus, CONTRACT_SUBJECT.format(cell="counter"), contract_fingerprint(cells.CounterCell))
        await answer_registrations(bus, runtime, Registry(workers_section(settings).registry))
        vault = runtime.store.namespace("vault")  # another cell's state, written by the app
        vault.put_json("secret", "only the vault may read this")
        assert EngineInbox(runtime.store).begin(consumer("vault"), "k-vault").commit('"done"')
        with open(log, "wb") as output:
            worker = subprocess.Popen([CELLMONO, "worker", "--credential", "w1.credential"], cwd=machine2, env=env,
                                      stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        try:
            await wait_pinged(bus, "counter", worker, log)
            token = runtime.token_for(Principal(id="alice", roles=("caller",)))
            for amount, total in ((2, 2), (3, 5)):
                got = await bus.request("counter.add", {"amount": amount}, principal="alice", capability=token)
                assert got == total, log.read_text()
            await bus.publish("counter.tally", {"amount": 7}, idempotency_key="tally-1", principal="alice",
                              capability=token)  # a durable event: the worker's exactly-once inbox records it
            give_up = time.monotonic() + 20
            while runtime.store.namespace("counter").get_json("tallied") != 7:
                assert time.monotonic() < give_up, (log.read_text(), violations())
                await asyncio.sleep(0.1)
            assert EngineInbox(runtime.store).recorded(consumer("counter"), "tally-1") is not None  # its inbox
            assert runtime.store.namespace("counter").get_json("total") == 5  # the worker's rows, read at the app
            assert violations() == [], violations()  # serving needed no refused engine subject
        finally:
            worker.terminate()
            worker.wait(15)
            await bus.stop()
            await engine.close()
            await runtime.close()

    try:
        put_anchor_key(app_url, f"app-0badc0de.{ANCHOR_KID}", b"the app's")  # as the app's start does: the table
        asyncio.run(serve())
        assert any(key.startswith("counter-1.") for key in anchor_keys(app_url)), anchor_keys(app_url)  # its own
        app_table = NatsRecords(app_url, bucket=BUCKET)
        vault_key = app_table.records("_dek.vault.")[0]  # the vault's data key, as the app sees it
        app_store = EngineStore(app_table, kept["keys"])
        use_nkey(seed)  # from here on, this process connects as the worker (it holds the KEK too)
        table = NatsRecords(f"nats://127.0.0.1:{port}", bucket=BUCKET)
        try:
            store = EngineStore(table, app_store.keys)
            inbox = EngineInbox(store)
            assert store.get("counter", "total") == b"5"  # its cell's record and data key
            assert set(store.keys_of("counter")) == {"total", "tallied"}
            assert store.put("counter", "total", b"6") == 3
            assert inbox.recorded(consumer("counter"), "tally-1") is not None  # its cell's inbox entry

            refused(lambda: store.get("vault", "secret"), "vault")  # another cell's record
            refused(lambda: table.read(vault_key), vault_key)  # its data key
            refused(lambda: inbox.recorded(consumer("vault"), "k-vault"), "_inbox.")  # its inbox entry
            refused(lambda: store.keys_of("vault"), "vault")  # a listing of its records
            refused(lambda: table.records(""), STREAM)  # a listing of the whole bucket
            api = lambda call, request: table._thread.run(table._api(call, request), 6)  # noqa: E731
            refused(lambda: api(f"CONSUMER.CREATE.{STREAM}", {"stream_name": STREAM, "config": {
                "deliver_subject": "_INBOX.sneak", "ack_policy": "none"}}), f"CONSUMER.CREATE.{STREAM}")
            refused(lambda: api(f"STREAM.MSG.GET.{STREAM}", {"last_by_subj": f"$KV.{BUCKET}.{vault_key}"}),
                    "STREAM.MSG.GET")
            refused(lambda: api(f"DIRECT.GET.{STREAM}", {"last_by_subj": f"$KV.{BUCKET}.{vault_key}"}),
                    f"DIRECT.GET.{STREAM}")
            refused(lambda: api(f"STREAM.INFO.{STREAM}", {"subjects_filter": f"$KV.{BUCKET}.vault.>"}),
                    f"STREAM.INFO.{STREAM}")  # it would list the vault's record names
            with pytest.raises(EngineUnavailable, match="filter"):  # its own filter in the subject, another's inside
                api(f"CONSUMER.CREATE.{STREAM}.sneak.$KV.{BUCKET}.counter.>", {"stream_name": STREAM, "config": {
                    "name": "sneak", "deliver_subject": "_INBOX.sneak", "ack_policy": "none",
                    "filter_subject": f"$KV.{BUCKET}.vault.>"}})
            assert app_store.get("vault", "secret") == b'"only the vault may read this"'  # still there, untouched

            # the durable streams hold every cell's commands: only its own consumer, by name and filter
            mine, theirs = (f"CELLMONO_{safe_name(f'is.{subject}')}" for subject in ("counter.tally", "vault.note"))
            sneak = {"name": "sneak", "deliver_subject": "_INBOX.sneak", "ack_policy": "none"}
            refused(lambda: api(f"STREAM.MSG.GET.{theirs}", {"seq": 1}), f"STREAM.MSG.GET.{theirs}")
            refused(lambda: api(f"DIRECT.GET.{theirs}", {"seq": 1}), f"DIRECT.GET.{theirs}")
            refused(lambda: api(f"CONSUMER.CREATE.{theirs}.sneak.is.e.vault.note", {"stream_name": theirs, "config": {
                **sneak, "filter_subject": "is.e.vault.note"}}), f"CONSUMER.CREATE.{theirs}")
            refused(lambda: api(f"CONSUMER.MSG.NEXT.{theirs}.{safe_name('vault')}", {"batch": 1}), "MSG.NEXT")
            refused(lambda: api(f"CONSUMER.CREATE.{mine}.sneak", {"stream_name": mine, "config": sneak}),
                    f"CONSUMER.CREATE.{mine}")  # an unfiltered consumer on its own stream
            refused(lambda: api(f"CONSUMER.CREATE.{mine}.{safe_name('counter')}.is.e.>", {"stream_name": mine, "config": {
                **sneak, "name": safe_name("counter"), "filter_subject": "is.e.>"}}), f"CONSUMER.CREATE.{mine}")
            # the audit stream holds every node's chain: only its own chains' heads, by a direct get naming them
            refused(lambda: api("STREAM.MSG.GET.AUDIT", {"last_by_subj": "audit.vault-1"}), "STREAM.MSG.GET.AUDIT")
            refused(lambda: api("DIRECT.GET.AUDIT.audit.vault-1", {}), "DIRECT.GET.AUDIT.audit.vault-1")
            refused(lambda: api("STREAM.INFO.AUDIT", {"subjects_filter": "audit.*"}), "STREAM.INFO.AUDIT")
            refused(lambda: api("CONSUMER.CREATE.AUDIT.sneak", {"stream_name": "AUDIT", "config": sneak}),
                    "CONSUMER.CREATE.AUDIT")
            # replies: its own inbox only, never the shared one where the app's (and every worker's) replies arrive
            assert subscription_refused(f"nats://127.0.0.1:{port}", "_INBOX.>")
            assert not subscription_refused(f"nats://127.0.0.1:{port}", nats_identity()["inbox_prefix"] + ".>")
            # the anchor keys table: its own node's entries only, never the key that verifies another node's anchors
            for node in ("app-0badc0de", "vault-1"):
                refused(lambda: put_anchor_key(f"nats://127.0.0.1:{port}", f"{node}.{ANCHOR_KID}"), node)
            assert anchor_keys(app_url)[f"app-0badc0de.{ANCHOR_KID}"] == b"the app's", anchor_keys(app_url)
        finally:
            table.close()
            app_store.close()
            use_nkey(None)
    finally:
        server.stop()
        sys.path.remove(str(code))
