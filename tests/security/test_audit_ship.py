"""Audit chains shipped to a real engine (nats-server JetStream, Valkey streams) and verified from it: the shipper
resumes after a restart and an engine outage without losing or doubling a record; the engine refuses duplicates
and steps back; a deleted, reordered, altered or duplicated record and a truncated chain are each detected, naming
node and seq."""
from __future__ import annotations

import asyncio
import json

import pytest

from brokers import require, start_nats, start_redis
from cellmono.security.audit import AuditLog
from cellmono.security.audit_ship import AuditChainBroken, AuditShipper, verify_engine
from cellmono.security.audit_streams import AuditStreamConflict, Shipped, audit_stream
from cellmono.security.records import AuditRecord
from cellmono.security.signing import SigningKeys


@pytest.fixture(params=["nats", "redis"])
def engine(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


def _stream(kind, server, copy=False):
    if kind == "nats":
        return audit_stream(kind, server.url, stream="AUDITCOPY" if copy else "AUDIT",
                            prefix="auditcopy" if copy else "audit")
    return audit_stream(kind, server.url, namespace="copy" if copy else "cellmono")


def _append(log: AuditLog, count: int, actor: str = "alice") -> None:
    for n in range(count):
        log.append(AuditRecord(actor=actor, action="tool.call", resource=f"notes.{n}"))


async def _two_nodes(kind, server, tmp_path, ring, count=6):
    """App and worker logs shipped to the engine; the app's last anchor names the worker's head."""
    stream = _stream(kind, server)
    await stream.start()
    logs = {name: AuditLog(tmp_path / f"{name}.sqlite", anchor_keys=ring, anchor_every=4) for name in ("app", "w1")}
    shippers = {name: AuditShipper(log, stream, name) for name, log in logs.items()}
    for name, log in logs.items():
        _append(log, count, actor=name)
        await shippers[name].ship_once()
    await shippers["app"].ship_once()  # sees w1's head
    logs["app"].anchor()
    await shippers["app"].ship_once()
    return stream, logs


async def _copy(kind, server, source, edit=None):
    """A copy of the engine's chains written raw (no ordering headers, auto ids): `edit(node, payloads)` tampers."""
    copy = _stream(kind, server, copy=True)
    await copy.start()
    for node in await source.nodes():
        payloads = edit(node, await source.records(node)) if edit else await source.records(node)
        anchors = await source.anchors(node)
        if kind == "nats":
            js = copy._js
            for data in payloads:
                await js.publish(f"auditcopy.{node}", data)
            for data in anchors:
                await js.publish(f"auditcopy.anchors.{node}", data)
        else:
            client = copy._client
            await client.sadd("copy:audit:nodes", node)
            for data in payloads:
                await client.xadd(f"copy:audit:{node}", {b"r": data})
            for data in anchors:
                await client.xadd(f"copy:audit:{node}:anchors", {b"a": data})
    return copy


async def _broken(stream, ring) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as caught:
        await verify_engine(stream, ring.public_keys(), ring.mac_key, raise_on_failure=True)
    return caught.value


def test_shipping_resumes_after_a_restart_and_an_engine_outage(engine, tmp_path) -> None:
    kind, server = engine
    ring = SigningKeys()

    async def scenario() -> None:
        stream = _stream(kind, server)
        await stream.start()
        log = AuditLog(tmp_path / "app.sqlite", anchor_keys=ring, anchor_every=5)
        shipper = AuditShipper(log, stream, "app", interval=0.05)
        _append(log, 7)
        assert await shipper.ship_once() == 7
        await stream.close()
        server.kill()  # the engine goes away; appends go on, locally
        _append(log, 5)
        server.start()
        restarted = _stream(kind, server)  # a new process: it knows nothing but the engine
        await restarted.start()
        again = AuditShipper(log, restarted, "app", interval=0.05)
        assert await again.ship_once() == 5  # only what the engine lacked
        assert await again.ship_once() == 0
        payloads = await restarted.records("app")
        assert [Shipped.from_bytes(data).seq for data in payloads] == list(range(1, 13))
        reports = await verify_engine(restarted, ring.public_keys(), ring.mac_key, raise_on_failure=True)
        assert reports["app"].records == 12 and reports["app"].head_hash == log.head()[1]
        await restarted.close()
        log.close()
    asyncio.run(scenario())


def test_the_background_shipper_survives_an_outage(engine, tmp_path) -> None:
    kind, server = engine
    ring = SigningKeys()

    async def scenario() -> None:
        stream = _stream(kind, server)
        await stream.start()
        log = AuditLog(tmp_path / "app.sqlite", anchor_keys=ring)
        shipper = AuditShipper(log, stream, "app", interval=0.05)
        shipper.start()
        _append(log, 3)
        server.kill()
        _append(log, 4)
        await asyncio.sleep(0.3)  # the loop fails quietly while the engine is away
        server.start()
        for _ in range(200):  # bounded: up to 10 s for the client to reconnect and ship the rest
            if shipper.shipped == 7:
                break
            await asyncio.sleep(0.05)
        await shipper.stop()
        assert [Shipped.from_bytes(data).seq for data in await stream.records("app")] == list(range(1, 8))
        await stream.close()
        log.close()
    asyncio.run(scenario())


def test_the_engine_refuses_a_duplicate_and_a_step_back(engine, tmp_path) -> None:
    kind, server = engine

    async def scenario() -> None:
        first, second = _stream(kind, server), _stream(kind, server)
        await first.start()
        await second.start()
        await first.append("app", Shipped(1, "{}", "h1"))
        await second.append("app", Shipped(2, "{}", "h2"))  # a second shipper (a restarted process) goes on
        with pytest.raises(AuditStreamConflict):
            await first.append("app", Shipped(2, "{}", "h2"))  # the same record again: refused
        stale = _stream(kind, server)
        await stale.start()
        await stale.head("app")
        await second.append("app", Shipped(3, "{}", "h3"))
        with pytest.raises(AuditStreamConflict):  # written after a predecessor that is no longer the last: refused
            await stale.append("app", Shipped(3 if kind == "redis" else 4, "{}", "h4"))
        await stale.close()
        await second.head("app")
        with pytest.raises(AuditStreamConflict):
            await second.append("app", Shipped(1, "{}", "h1"))  # a step back: refused
        assert [Shipped.from_bytes(data).seq for data in await second.records("app")] == [1, 2, 3]
        await first.close()
        await second.close()
    asyncio.run(scenario())


def test_a_deleted_record_is_detected(engine, tmp_path) -> None:
    kind, server = engine
    ring = SigningKeys()

    async def scenario() -> None:
        stream, _ = await _two_nodes(kind, server, tmp_path, ring)
        assert all(report.ok for report in (await verify_engine(stream, ring.public_keys())).values())
        if kind == "nats":
            message = await stream._js.get_msg("AUDIT", 1, subject="audit.w1", next=True)
            message = await stream._js.get_msg("AUDIT", message.seq + 2, subject="audit.w1", next=True)
            await stream._js.delete_msg("AUDIT", message.seq)  # w1's record 3
        else:
            await stream._client.xdel("cellmono:audit:w1", "3-0")
        error = await _broken(stream, ring)
        assert (error.node, error.seq) == ("w1", 3), error.problems
        await stream.close()
    asyncio.run(scenario())


@pytest.mark.parametrize("tamper", ["reorder", "edit", "duplicate", "truncate"])
def test_a_tampered_copy_is_detected(engine, tmp_path, tamper) -> None:
    kind, server = engine
    ring = SigningKeys()

    def edit(node, payloads):
        if node != "w1":
            return payloads
        if tamper == "reorder":
            return payloads[:1] + [payloads[2], payloads[1]] + payloads[3:]
        if tamper == "duplicate":
            return payloads[:3] + [payloads[2]] + payloads[3:]
        if tamper == "truncate":  # the last record goes: only the app's cross-anchor knows it existed
            return payloads[:-1]
        fields = json.loads(payloads[3])
        fields["body"] = fields["body"].replace('"actor":"w1"', '"actor":"mallory"')
        return payloads[:3] + [json.dumps(fields).encode()] + payloads[4:]

    async def scenario() -> None:
        stream, _ = await _two_nodes(kind, server, tmp_path, ring)
        clean = await _copy(kind, server, stream) if tamper == "truncate" else None
        if clean is not None:  # the untampered copy verifies: the failure below is the tampering's
            assert all(report.ok for report in (await verify_engine(clean, ring.public_keys())).values())
            await clean.close()
            return await _truncated(kind, server, stream, ring, edit)
        copy = await _copy(kind, server, stream, edit)
        error = await _broken(copy, ring)
        expected = {"reorder": 2, "edit": 4, "duplicate": 3}[tamper]
        assert (error.node, error.seq) == ("w1", expected), error.problems
        await copy.close()
        await stream.close()
    asyncio.run(scenario())


async def _truncated(kind, server, stream, ring, edit) -> None:
    if kind == "nats":
        await stream._js.purge_stream("AUDITCOPY")
    else:
        for key in await stream._client.keys("copy:*"):
            await stream._client.delete(key)
    copy = await _copy(kind, server, stream, edit)
    error = await _broken(copy, ring)
    assert (error.node, error.seq) == ("w1", 6), error.problems
    assert "truncated" in error.problems[0]
    await copy.close()
    await stream.close()


def test_cli_verify_engine_reports_each_node_and_exits_2_naming_node_and_seq(engine, tmp_path, capsys) -> None:
    from cellmono.cli.main import main
    from cellmono.core.config import load_settings
    from cellmono.security.engine_kv import EngineKeys
    from cellmono.topology.engine_link import broker_tables, engine_namespace

    kind, server = engine
    ring = SigningKeys()
    app_name = load_settings(None).app.name
    namespace = engine_namespace(app_name)

    async def ship() -> None:
        keys = EngineKeys(broker_tables(kind, server.url, app_name))  # the public keys, as the app publishes them
        await keys.start()
        await keys.publish(ring)
        await keys.close()
        stream = audit_stream(kind, server.url, **({"namespace": namespace} if kind == "redis" else {}))
        await stream.start()
        for name in ("app", "w1"):
            log = AuditLog(tmp_path / f"{name}.sqlite", anchor_keys=ring, anchor_every=4)
            _append(log, 5, actor=name)
            log.close()  # the shutdown anchor
            await AuditShipper(AuditLog(tmp_path / f"{name}.sqlite", anchor_keys=ring), stream, name).ship_once()
        await stream.close()

    async def delete_w1_record_2() -> None:
        if kind == "nats":
            import nats
            connection = await nats.connect(server.url)
            js = connection.jetstream()
            first = await js.get_msg("AUDIT", 1, subject="audit.w1", next=True)
            await js.delete_msg("AUDIT", (await js.get_msg("AUDIT", first.seq + 1, subject="audit.w1", next=True)).seq)
            await connection.close()
        else:
            import redis.asyncio
            client = redis.asyncio.Redis.from_url(server.url)
            await client.xdel(f"{namespace}:audit:w1", "2-0")
            await client.aclose()

    asyncio.run(ship())
    argv = ["audit", "verify", "--engine", "--broker", server.url, "--settings", str(tmp_path / "none.ini")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "app: 5 records, head 5" in out and "w1: 5 records, head 5" in out and out.count(", ok") == 2, out
    asyncio.run(delete_w1_record_2())
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "w1: 4 records" in captured.out and "FAILED" in captured.out
    assert "audit chain of node w1 is broken at record 2" in captured.err and "Traceback" not in captured.err


def test_an_engine_down_at_start_is_retried_and_nothing_is_lost(engine, tmp_path) -> None:
    from cellmono.security.audit_ship import ship_app_audit
    from types import SimpleNamespace

    kind, server = engine
    ring = SigningKeys()
    server.kill()  # the engine is not there when the node starts

    async def scenario() -> None:
        log = AuditLog(tmp_path / "app.sqlite", anchor_keys=ring)
        transport = SimpleNamespace(name=kind, url=server.url)
        shipper = await ship_app_audit(SimpleNamespace(bus=SimpleNamespace(transport=transport),
                                                       services=SimpleNamespace(audit=log)), "app")
        assert shipper is not None
        shipper.interval = 0.05
        _append(log, 4)
        await asyncio.sleep(0.5)  # connect attempts fail, quietly; the records wait in SQLite
        assert shipper.shipped is None
        server.start()
        for _ in range(600):  # bounded: up to 30 s (a loaded CI machine) for a connect attempt to succeed and ship
            if shipper.shipped == 4:
                break
            await asyncio.sleep(0.05)
        assert shipper.shipped == 4, f"shipped {shipper.shipped} of 4 after the engine came back"
        await shipper.stop(close_stream=True)
        reader = _stream(kind, server)
        await reader.start()
        reports = await verify_engine(reader, ring.public_keys(), ring.mac_key, raise_on_failure=True)
        assert reports["app"].records == 4
        await reader.close()
        log.close()
    asyncio.run(scenario())


def test_an_audit_stream_an_older_cellmono_made_gets_direct_gets_and_keeps_its_chains(tmp_path) -> None:
    """A provisioned worker reads its chain's head by a direct get naming its subject (its permissions allow no
    other read); a stream made before, without direct gets, is updated by the app's next start, messages kept."""
    server = require(start_nats)
    ring = SigningKeys()

    async def scenario() -> None:
        import nats
        from nats.js.api import StreamConfig
        connection = await nats.connect(server.url)
        js = connection.jetstream()
        await js.add_stream(StreamConfig(name="AUDIT", subjects=["audit.*", "audit.anchors.*"]))  # the old config
        elsewhere = _stream("nats", server, copy=True)  # w0's chain as an older cellmono shipped it
        await elsewhere.start()
        old = AuditLog(tmp_path / "w0.sqlite", anchor_keys=ring)
        _append(old, 2)
        await AuditShipper(old, elsewhere, "w0").ship_once()
        shipped = await elsewhere.records("w0")
        for data in shipped:
            await js.publish("audit.w0", data)
        stream = _stream("nats", server)
        await stream.start()  # the app's start: the stream now allows direct gets
        assert (await js.stream_info("AUDIT")).config.allow_direct is True
        assert await stream.records("w0") == shipped and len(shipped) == 2
        assert (await stream.head("w0"))[0] == 2
        log = AuditLog(tmp_path / "w1.sqlite", anchor_keys=ring)
        _append(log, 3)
        await AuditShipper(log, stream, "w1").ship_once()
        head = await stream.head("w1")
        assert head is not None and head[0] == 3, head
        for closing in (stream, elsewhere):
            await closing.close()
        await connection.close()
        log.close()
        old.close()

    try:
        asyncio.run(scenario())
    finally:
        server.cleanup()
