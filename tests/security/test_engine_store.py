"""The encrypted store and the exactly-once inbox on a real engine (nats-server JetStream KV, Valkey): same
sealing as SQLite, tampering and moved values detected, rotation across processes, all-or-nothing commits,
exactly one of two writers with the same read version, and no double effect when two workers get the same
command."""
from __future__ import annotations

import asyncio
import base64
import threading

import pytest

from brokers import require, start_nats, start_redis
from cellmono.core.cell import store_transaction
from cellmono.core.envelope import Envelope
from cellmono.security import engine_inbox
from cellmono.security.engine_inbox import EngineInbox
from cellmono.security.engine_records import engine_records
from cellmono.security.engine_store import EngineStore, record_name
from cellmono.security.inbox import _Conflict, exactly_once
from cellmono.security.keys import StaticKeyProvider, StoreCorrupted

KEK = bytes(range(32))


@pytest.fixture(scope="module", params=["nats", "redis"])
def engine(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


_apps = iter(range(10_000))


@pytest.fixture
def stores(engine):
    """Two stores on one fresh app's records, each with its own connection (two worker processes)."""
    kind, server = engine
    app = f"t{next(_apps)}"
    opened = [EngineStore(engine_records(kind, server.url, app=app), StaticKeyProvider(KEK), key_cache_seconds=0.0)
              for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def test_only_ciphertext_and_wrapped_keys_reach_the_engine(stores) -> None:
    first, second = stores
    first.put("notes", "secret/1", b"the plaintext nobody on the engine may read")
    assert second.get("notes", "secret/1") == b"the plaintext nobody on the engine may read"
    table = first.table
    everything = b"".join(table.read(name)[1] or b"" for name in table.records(""))
    assert b"plaintext" not in everything
    assert KEK not in everything and base64.b64encode(KEK) not in everything  # the KEK never leaves the provider


def test_a_tampered_or_moved_value_is_store_corrupted(stores) -> None:
    first, second = stores
    first.put("notes", "a", b"alpha")
    first.put("notes", "b", b"beta")
    table, name = first.table, record_name("notes", "a")
    read = table.read(name)
    assert table.commit({name: read}, {name: read[1][:-1] + bytes([read[1][-1] ^ 1])})
    with pytest.raises(StoreCorrupted, match="fails authentication"):
        second.get("notes", "a")
    assert table.commit({name: table.read(name)}, {name: table.read(record_name("notes", "b"))[1]})
    with pytest.raises(StoreCorrupted, match="moved from another key"):
        second.get("notes", "a")  # b's value under a's name: the associated data binds the key


def test_rotation_and_rewrap_reach_another_process(stores) -> None:
    first, second = stores
    first.put("notes", "old", b"under the first key")
    before = second._active_key("notes")[0]
    assert first.rotate_data_keys() == ["notes"]
    first.put("notes", "new", b"under the second key")
    assert second.get("notes", "new") == b"under the second key"  # a data-key id it never saw: read, unwrapped
    assert second._active_key("notes")[0] != before  # and its own writes move to the new key
    assert second.put("notes", "mine", b"x") == 1

    class NewKek(StaticKeyProvider):  # the operator rotated the KEK: new wraps under it, old ones still open
        old = StaticKeyProvider(KEK)

        def unwrap(self, key_id: str, wrapped: bytes, associated: bytes) -> bytes:
            source = self.old if key_id == self.old.current_key_id() else super()
            return source.unwrap(key_id, wrapped, associated)

    assert EngineStore(first.table, NewKek(bytes(32))).rewrap() >= 2
    only_new = EngineStore(second.table, StaticKeyProvider(bytes(32)))  # a process given only the new KEK
    assert only_new.get("notes", "old") == b"under the first key"


def test_a_commit_is_all_or_nothing(stores) -> None:
    first, _ = stores
    table = first.table
    assert table.commit({"x.a": (0, None)}, {"x.a": b"1"})
    stale = (0, None)  # x.a exists now: this check must fail the whole commit, though it comes last
    assert not table.commit({"x.b": (0, None), "x.c": (0, None), "x.a": stale}, {"x.b": b"2", "x.c": b"3"})
    assert table.read("x.b") == (0, None) and table.read("x.c") == (0, None)
    assert table.records("x.") == ["x.a"]


def test_two_writers_with_the_same_read_version_exactly_one_commits(stores) -> None:
    first, second = stores
    first.put("acct", "a", b"100")
    one, two = EngineInbox(first).begin("c", "k1"), EngineInbox(second).begin("c", "k2")
    for transaction, store, amount in ((one, first, 1), (two, second, 10)):
        view = transaction.view(store.namespace("acct"))
        view.put("a", str(int(view.get("a")) - amount).encode())
    assert one.commit() is True
    with pytest.raises(_Conflict):
        two.commit()
    assert second.get("acct", "a") == b"99"
    assert EngineInbox(first).recorded("c", "k2") is None  # the loser's inbox record did not land either


def _deliver_to_both(stores, commands: int = 12) -> tuple[int, int, list[str]]:
    """Each command delivered to two workers at once (a redelivery to another worker): (final total, expected,
    applications per key)."""
    applied: list[str] = []
    lock = threading.Lock()

    def worker(store: EngineStore) -> None:
        inbox, namespace = EngineInbox(store), store.namespace("ledger")

        async def handle(envelope: Envelope) -> Envelope:
            view = store_transaction.get().view(namespace)
            view.put("total", str(int(view.get("total") or b"0") + envelope.payload["amount"]).encode())
            view.put(f"effect/{envelope.idempotency_key}/{id(store)}", b"1")
            with lock:
                applied.append(envelope.idempotency_key)
            return envelope.reply({"ok": True})

        async def run() -> None:
            once = exactly_once(handle, inbox, "nats:LEDGER:ledger", attempts=64)
            for number in range(commands):
                await once(Envelope(kind="request", subject="ledger.add", payload={"amount": number + 1},
                                    idempotency_key=f"tx-{number}"))
        asyncio.run(run())

    threads = [threading.Thread(target=worker, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    total = int(stores[0].get("ledger", "total") or b"0")
    effects = stores[0].keys_of("ledger", "effect/")
    return total, sum(range(1, commands + 1)), effects


def test_no_double_effect_when_two_workers_get_the_same_commands(stores) -> None:
    total, expected, effects = _deliver_to_both(stores)
    assert total == expected
    assert len(effects) == 12  # one effect record per command, from whichever worker won


def test_without_the_inbox_check_two_workers_apply_twice(stores, monkeypatch) -> None:
    """The test above guards something: with every inbox record unique (the check disabled), doubles appear."""
    counter = iter(range(10**6))
    real = engine_inbox.inbox_record
    monkeypatch.setattr(engine_inbox, "inbox_record", lambda consumer, key: real(consumer, f"{key}-{next(counter)}"))
    total, expected, effects = _deliver_to_both(stores)
    assert total > expected and len(effects) > 12
