"""Exactly-once effects by the framework (issue 17): real nats-server and Valkey, a ledger cell, kills.

Each command credits 1 to a balance and counts its own applications under `applied/KEY`, both
through `self.store`, so a double effect shows as a count of 2 and a balance above the number of
commands. The worker runs in its own process where it must crash (kill -9 right after the inbox
commit, before the ack: the window at-least-once cannot close), and in this process where the
broker is the one killed.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from brokers import require, start_nats, start_redis

from cellmono.core.bus import Bus
from cellmono.core.cell import Cell, handles
from cellmono.core.envelope import Envelope, encode
from cellmono.core.errors import BusClosed, IdempotencyKeyInvalid
from cellmono.transports.brokers import BrokerUnavailable
from cellmono.security.inbox import Inbox
from cellmono.security.keys import StaticKeyProvider
from cellmono.security.store import EncryptedStore

KEK = b"k" * 32
ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import asyncio, os, signal, sys
    from cellmono.core.bus import Bus
    from cellmono.core.cell import Cell, handles
    from cellmono.core.envelope import Envelope
    from cellmono.security.inbox import Inbox, Transaction
    from cellmono.security.keys import StaticKeyProvider
    from cellmono.security.store import EncryptedStore

    kind, url, path, crash_at, mode = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    PURE = mode == "pure"

    class Ledger(Cell):
        name = "ledger"

        @handles("ledger.credit", pure=PURE)
        async def credit(self, event: dict, envelope: Envelope) -> None:
            key = envelope.idempotency_key
            self.store.put_json("balance", self.store.get_json("balance", 0) + event["amount"])
            self.store.put_json(f"applied/{key}", self.store.get_json(f"applied/{key}", 0) + 1)
            if PURE and key == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)  # the effect is written, the ack never sent

    real_commit = Transaction.commit
    def commit(self, result="null"):
        done = real_commit(self, result)
        if self.key == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)  # committed, the ack never sent
        return done
    Transaction.commit = commit

    async def main():
        store = EncryptedStore(path, StaticKeyProvider(b"k" * 32))
        inbox = Inbox(store)
        options = dict(durable=["ledger.>"], inbox=inbox, ack_wait=1.0, retry_delay=0.05)
        if kind == "nats":
            from cellmono.transports.nats import NatsTransport
            transport = NatsTransport(url, **options)
        else:
            from cellmono.transports.redis import RedisTransport
            transport = RedisTransport(url, **options)
        bus = Bus(transport)
        await bus.start()
        cell = Ledger()
        cell.store = store.namespace("ledger")
        await bus.subscribe("ledger.credit", cell.bind(Ledger.specs[0]), queue="ledger", durable=True)
        print("ready", flush=True)
        seen = None
        for _ in range(600):  # bounded: the test kills us long before
            if (inbox.applied, inbox.replayed) != seen:
                seen = (inbox.applied, inbox.replayed)
                print(f"applied {seen[0]} replayed {seen[1]}", flush=True)
            await asyncio.sleep(0.05)

    asyncio.run(main())
''')


class Ledger(Cell):
    name = "ledger"

    @handles("ledger.credit")
    async def credit(self, event: dict, envelope: Envelope) -> None:
        key = envelope.idempotency_key
        self.store.put_json("balance", self.store.get_json("balance", 0) + event["amount"])
        self.store.put_json(f"applied/{key}", self.store.get_json(f"applied/{key}", 0) + 1)


def broker(kind: str):
    return require(start_nats if kind == "nats" else start_redis)


def transport_for(kind: str, url: str, **options):
    if kind == "nats":
        from cellmono.transports.nats import NatsTransport
        return NatsTransport(url, durable=["ledger.>"], reconnect_wait=0.1, **options)
    from cellmono.transports.redis import RedisTransport
    return RedisTransport(url, durable=["ledger.>"], reconnect_wait=0.1, **options)


def applications(path: Path, keys: list[str]) -> tuple[int, dict[str, int]]:
    """(balance, applications per key) as the store holds them, read from a fresh handle."""
    store = EncryptedStore(path, StaticKeyProvider(KEK))
    try:
        ledger = store.namespace("ledger")
        return ledger.get_json("balance", 0), {key: ledger.get_json(f"applied/{key}", 0) for key in keys}
    finally:
        store.close()


async def publish_all(transport, keys: list[str], acknowledged: list[str], deadline: float) -> None:
    """Publish each command until the broker acknowledges it; a retry resends the same envelope (same key)."""
    for index, key in enumerate(keys):
        envelope = Envelope(subject="ledger.credit", payload={"amount": 1, "n": index}, idempotency_key=key)
        while True:
            try:
                await transport.publish(envelope)
                acknowledged.append(key)
                break
            except (BrokerUnavailable, BusClosed):
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.05)


async def wait_until(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


def start_worker(tmp_path: Path, kind: str, url: str, store: Path, crash_at: str, mode: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    worker = subprocess.Popen([sys.executable, str(script), kind, url, str(store), crash_at, mode],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT))
    line = worker.stdout.readline()
    assert line.strip() == "ready", line + worker.stdout.read() if worker.poll() is not None else line
    return worker


def stop(worker: subprocess.Popen) -> str:
    if worker.poll() is None:
        os.kill(worker.pid, signal.SIGKILL)
    out, _ = worker.communicate(timeout=10)
    return out


@pytest.mark.parametrize("kind", ["nats", "redis"])
@pytest.mark.parametrize("mode", ["inbox", "pure"])
def test_worker_killed_between_commit_and_ack(tmp_path, kind, mode):
    """kill -9 of the worker after the effect, before the ack: with the inbox the redelivery is answered
    from the inbox (applied once); a `pure=True` listener opted out and applies it again."""
    server = broker(kind)
    store_path, keys = tmp_path / "store.db", [f"cmd-{i}" for i in range(30)]
    crash_at = keys[12]

    async def run():
        publisher = transport_for(kind, server.url)
        await publisher.start()
        first = start_worker(tmp_path, kind, server.url, store_path, crash_at, mode)
        acknowledged: list[str] = []
        try:
            await publish_all(publisher, keys, acknowledged, time.monotonic() + 20)
            first.wait(30)  # it kills itself at crash_at
            assert first.returncode == -signal.SIGKILL, stop(first)
            second = start_worker(tmp_path, kind, server.url, store_path, "none", mode)
            try:
                done = await wait_until(lambda: applications(store_path, keys)[1][keys[-1]] >= 1, 30)
                await asyncio.sleep(2.5)  # past ack_wait: any redelivery has come
                log = stop(second)
            finally:
                stop(second)
            assert done, log
            return acknowledged, log
        finally:
            stop(first)
            await publisher.close()

    try:
        acknowledged, log = asyncio.run(run())
    finally:
        server.cleanup()
    balance, applied = applications(store_path, keys)
    assert acknowledged == keys
    if mode == "inbox":
        assert applied == {key: 1 for key in keys}, applied  # each effect once, nothing lost
        assert balance == len(keys)
        replayed = [line for line in log.splitlines() if line.startswith("applied")][-1]
        assert not replayed.endswith("replayed 0"), log  # the redelivery happened and met the inbox
    else:
        assert applied[crash_at] == 2, applied  # the opt-out cell saw the redelivery and ran again
        assert balance == len(keys) + 1
        assert all(count == 1 for key, count in applied.items() if key != crash_at), applied


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_broker_killed_mid_run(tmp_path, kind):
    """kill -9 of the broker in the middle of a run, restart on the same port and data: every
    acknowledged command has exactly one effect; none is lost; none is applied twice."""
    server = broker(kind)
    store = EncryptedStore(tmp_path / "store.db", StaticKeyProvider(KEK))
    inbox = Inbox(store)
    keys = [f"cmd-{i}" for i in range(150)]

    async def run() -> list[str]:
        worker = transport_for(kind, server.url, inbox=inbox, ack_wait=1.0, retry_delay=0.05)
        publisher = transport_for(kind, server.url)
        bus = Bus(worker)
        await bus.start()
        await publisher.start()
        cell = Ledger()
        cell.store = store.namespace("ledger")
        await bus.subscribe("ledger.credit", cell.bind(Ledger.specs[0]), queue="ledger", durable=True)
        acknowledged: list[str] = []
        try:
            sending = asyncio.create_task(publish_all(publisher, keys, acknowledged, time.monotonic() + 40))
            await wait_until(lambda: inbox.applied >= 40, 20)
            server.kill()
            await asyncio.sleep(0.3)
            server.start()
            await asyncio.wait_for(sending, 60)
            ledger = store.namespace("ledger")
            await wait_until(lambda: all(ledger.get_json(f"applied/{key}", 0) for key in acknowledged), 40)
            await asyncio.sleep(2.5)  # past ack_wait: redeliveries of unacknowledged commands have come
            return acknowledged
        finally:
            await bus.stop(1.0)
            await publisher.close(1.0)

    try:
        acknowledged = asyncio.run(run())
        ledger = store.namespace("ledger")
        applied = {key: ledger.get_json(f"applied/{key}", 0) for key in keys}
    finally:
        store.close()
        server.cleanup()
    print(f"{kind}: {inbox.replayed} redeliveries answered from the inbox, {inbox.conflicts} conflicts")
    assert acknowledged == keys
    assert {key: count for key, count in applied.items() if count != 1} == {}  # no loss, no double
    assert inbox.applied == len(keys)


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_missing_or_tampered_key_is_a_typed_error(tmp_path, kind):
    """A command without a valid key, or stored under another message id, is dead-lettered as
    `IdempotencyKeyInvalid` without reaching the handler; a bad key is refused at publish."""
    server = broker(kind)
    store = EncryptedStore(tmp_path / "store.db", StaticKeyProvider(KEK))
    inbox = Inbox(store)

    async def run():
        worker = transport_for(kind, server.url, inbox=inbox, ack_wait=1.0, retry_delay=0.05)
        bus = Bus(worker)
        await bus.start()
        ran: list[Envelope] = []

        async def handler(envelope: Envelope) -> None:
            ran.append(envelope)

        await bus.subscribe("ledger.credit", handler, queue="ledger", durable=True)
        try:
            with pytest.raises(IdempotencyKeyInvalid, match="malformed"):
                await bus.publish("ledger.credit", {"amount": 1}, idempotency_key="two words")
            keyless = Envelope(subject="ledger.credit", payload={"amount": 1})
            if kind == "nats":
                stream = worker.durables._jetstream
                swapped = Envelope(subject="ledger.credit", payload={"amount": 1}, idempotency_key="cmd-1")
                await stream.publish("cm.e.ledger.credit", encode(swapped), headers={"Nats-Msg-Id": "cmd-2"})
                await stream.publish("cm.e.ledger.credit", encode(keyless), headers={"Nats-Msg-Id": "cmd-3"})
                expected = 2
            else:
                await worker._client.xadd(worker._stream_key("ledger.>"), {"s": "ledger.credit", "d": encode(keyless)})
                expected = 1
            assert await wait_until(lambda: worker.counters.dead_lettered >= expected, 15)
            await bus.publish("ledger.credit", {"amount": 1}, idempotency_key="cmd-ok")
            assert await wait_until(lambda: inbox.applied == 1, 15)
            return ran, worker.counters.rejected, expected
        finally:
            await bus.stop(1.0)

    try:
        ran, rejected, expected = asyncio.run(run())
    finally:
        store.close()
        server.cleanup()
    assert [envelope.idempotency_key for envelope in ran] == ["cmd-ok"]
    assert rejected == expected
