"""Faults against real brokers: unreachable at start, broker restart mid-run, malformed bytes injected by
another client, a replica with a different contract version."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokers import free_port, require, start_nats, start_redis

from cellmono.core.bus import Bus
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint
from cellmono.transports.brokers import BrokerUnavailable
from cellmono.transports.nats import NatsTransport
from cellmono.transports.redis import RedisTransport

ROOT = Path(__file__).resolve().parents[2]
CELLMONO = str(Path(sys.executable).parent / "cellmono")
WORKER = [sys.executable, "-m", "cellmono.cli.worker"]  # how a promoted app spawns its workers
pytestmark = pytest.mark.anyio


def private_state(folder: Path) -> dict[str, str]:
    """Environment overrides that keep the app's keys, audit log and store in `folder`, out of the work tree."""
    files = {"SIGNING_KEYS": "signing-keys.json", "AUDIT_PATH": "audit.sqlite", "STORE_PATH": "store.sqlite",
             "KEK_FILE": "kek.json"}
    return {f"CELLMONO__SECURITY__{key}": str(folder / name) for key, name in files.items()}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_unreachable_broker_is_exit_2_naming_the_url(kind: str, tmp_path: Path) -> None:
    url = f"{'nats' if kind == 'nats' else 'redis'}://127.0.0.1:{free_port()}"
    env = {**os.environ, "CELLMONO__CELL_SEARCH__PLACEMENT": "process", "CELLMONO__CELL_SEARCH__TRANSPORT": kind,
           f"CELLMONO__{kind.upper()}__URL": url, f"CELLMONO__{kind.upper()}__CONNECT_TIMEOUT": "0.5",
           "CELLMONO__WORKERS__RETRY_GIVE_UP": "1",  # a broker not up yet is retried (topology.provision); not for long here
           **private_state(tmp_path)}
    for command in ([CELLMONO, "run", "--seconds", "1"], [CELLMONO, "worker", "--cell", "search"],
                    [*WORKER, "--cell", "search"]):
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 2, (command, result.stdout[-1000:], result.stderr[-1000:])
        assert "Traceback" not in result.stderr and url in result.stderr, result.stderr
        assert result.stderr.startswith("cellmono: error: cannot connect to")
        assert time.monotonic() - started < 15


async def test_nats_restart_fails_in_flight_fast_and_keeps_durable_messages() -> None:
    server = require(start_nats)
    try:
        caller = Bus(NatsTransport(server.url, reconnect_wait=0.2, durable=("keep.>",)), timeout=10)
        worker = Bus(NatsTransport(server.url, reconnect_wait=0.2), timeout=10)
        await caller.start()
        await worker.start()

        async def slow(envelope):
            await asyncio.sleep(30)

        await worker.handle("slow", slow)
        for number in range(20):
            await caller.publish("keep.items", number)  # stored in JetStream (file storage) before the crash
        pending = asyncio.create_task(caller.request("slow", timeout=10))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        server.restart(down_for=0.5)  # kill -9, then start again on the same port and store
        with pytest.raises(BrokerUnavailable, match="lost"):
            await pending
        assert time.monotonic() - started < 3, "an in-flight request must fail fast, not wait for its timeout"
        received: list[int] = []
        give_up = time.monotonic() + 20
        while True:  # the client reconnects by itself with backoff
            try:
                await worker.subscribe("keep.>", lambda envelope: received.append(envelope.payload),
                                       durable=True, queue="keeper")
                break
            except BrokerUnavailable:
                assert time.monotonic() < give_up, "did not reconnect"
                await asyncio.sleep(0.2)
        while len(received) < 20 and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
        assert sorted(received) == list(range(20))  # durable messages survived the broker restart
        await caller.stop(timeout=1)
        await worker.stop(timeout=1)
    finally:
        server.cleanup()


async def test_redis_restart_fails_in_flight_fast_and_reconnects() -> None:
    server = require(start_redis)
    try:
        caller = Bus(RedisTransport(server.url, reconnect_wait=0.2), timeout=10)
        worker = Bus(RedisTransport(server.url, reconnect_wait=0.2), timeout=10)
        await caller.start()
        await worker.start()

        async def slow(envelope):
            await asyncio.sleep(30)

        await worker.handle("slow", slow)
        await worker.handle("echo", lambda envelope: envelope.payload)
        pending = asyncio.create_task(caller.request("slow", timeout=10))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        server.restart(down_for=0.3)
        with pytest.raises(BrokerUnavailable):
            await pending
        assert time.monotonic() - started < 3
        give_up = time.monotonic() + 20
        while True:  # the reader resubscribes after the restart
            try:
                assert await caller.request("echo", "back", timeout=1) == "back"
                break
            except Exception:
                assert time.monotonic() < give_up, "did not reconnect"
                await asyncio.sleep(0.2)
        await caller.stop(timeout=1)
        await worker.stop(timeout=1)
    finally:
        server.cleanup()


@pytest.mark.parametrize("kind", ["nats", "redis"])
async def test_malformed_bytes_from_another_client_are_rejected_and_dead_lettered(kind: str) -> None:
    server = require(start_nats if kind == "nats" else start_redis)
    try:
        make = (lambda: NatsTransport(server.url, prefix="mal")) if kind == "nats" else \
            (lambda: RedisTransport(server.url, prefix="mal"))
        consumer_transport = make()
        consumer, watcher = Bus(consumer_transport), Bus(make())
        await consumer.start()
        await watcher.start()
        handled, dead, heard = [], [], []
        await watcher.subscribe("dead.>", lambda envelope: dead.append(envelope.payload), durable=True, queue="ops")
        await consumer.subscribe("orders.>", lambda envelope: handled.append(envelope.payload), durable=True,
                                 queue="billing")
        await consumer.subscribe("events.x", lambda envelope: heard.append(envelope.payload))
        await asyncio.sleep(0.1)
        garbage = b"\xff\xfe not an envelope"
        if kind == "nats":  # straight into the broker, as another client would
            import nats
            raw = await nats.connect(server.url)
            await raw.publish("mal.e.orders.new", garbage)
            await raw.publish("mal.e.events.x", garbage)
            await raw.flush()
            await raw.close()
        else:
            import redis.asyncio as aioredis
            raw = aioredis.Redis.from_url(server.url)
            await raw.xadd("mal:stream:orders.>", {"s": "orders.new", "d": garbage})
            await raw.publish("mal.e.events.x", garbage)
            await raw.aclose()
        await watcher.publish("orders.new", {"n": 1})
        await watcher.publish("events.x", "ok")
        give_up = time.monotonic() + 15
        while (not dead or handled != [{"n": 1}] or heard != ["ok"]) and time.monotonic() < give_up:
            await asyncio.sleep(0.05)
        assert handled == [{"n": 1}] and heard == ["ok"]  # the consumers kept going
        assert dead and dead[0]["reason"].startswith("malformed") and "raw" in dead[0], dead
        assert consumer_transport.rejected >= 2
        await consumer.stop(timeout=1)
        await watcher.stop(timeout=1)
    finally:
        server.cleanup()


def test_replica_with_another_contract_version_is_refused(tmp_path: Path) -> None:
    server = require(start_nats)
    try:
        (tmp_path / "search_v2.py").write_text(
            "from examples.notes.search import SearchCell\n\n"
            "class SearchCellV2(SearchCell):\n    name = 'search'\n    version = '2'\n")
        settings = tmp_path / "settings.ini"
        settings.write_text((ROOT / "settings.ini").read_text().replace(
            "class = examples.notes.search:SearchCell",
            "class = search_v2:SearchCellV2\nplacement = process\n") + f"\n[nats]\nurl = {server.url}\n")

        async def app_answers_contract():
            from examples.notes.search import SearchCell  # the repository's example, importable from ROOT
            bus = Bus(NatsTransport(server.url))
            await bus.start()
            await answer_control(bus, CONTRACT_SUBJECT.format(cell="search"), contract_fingerprint(SearchCell))
            result = await asyncio.to_thread(
                subprocess.run, [*WORKER, "--settings", str(settings), "--cell", "search"],
                cwd=ROOT, capture_output=True, text=True, timeout=60,
                env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
            await bus.stop()
            return result

        import anyio
        result = anyio.run(app_answers_contract)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr
        assert "this replica serves contract" in result.stderr and "version 2" in result.stderr, result.stderr
    finally:
        server.cleanup()
