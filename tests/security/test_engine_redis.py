"""The engine store on a real Valkey, laid out per namespace: records written by the old code path (the shared
`<app>:store` / `:rev` hashes and `_dek.<id>` data keys, rebuilt here as that code wrote them) are all moved by the
app, revisions and inbox expiries kept; a crash halfway is finished by the next start; a worker that may not
migrate is refused with one line."""
from __future__ import annotations

import pytest

from brokers import require, start_redis
from cellmono.security.engine_inbox import INBOX_NAMESPACE, EngineInbox, inbox_record
from cellmono.security.engine_redis import MOVE, RedisRecords, StoreLayoutOld, record_namespace
from cellmono.security.engine_store import EngineStore, Read, Writes, record_name
from cellmono.security.keys import StaticKeyProvider
from cellmono.transports.brokers import safe_name

KEK = bytes(range(32))

# The Redis table as cellmono wrote it before one hash per namespace (19e_engine_records, then): two shared hashes.
OLD_COMMIT = """
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  if tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') ~= tonumber(ARGV[i + 1]) then return 0 end
  i = i + 2
end
for _ = 1, tonumber(ARGV[i]) do
  redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
  if ARGV[i + 2] == 'd' then redis.call('HDEL', KEYS[1], ARGV[i + 1])
  else redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 3]) end
  if tonumber(ARGV[i + 4]) > 0 then
    redis.call('HPEXPIRE', KEYS[1], ARGV[i + 4], 'FIELDS', 1, ARGV[i + 1])
    redis.call('HPEXPIRE', KEYS[2], ARGV[i + 4], 'FIELDS', 1, ARGV[i + 1])
  end
  i = i + 4
end
return 1
"""


def _old(record: str) -> str:
    """The name the old code gave a record: data keys were `_dek.<id>`, without their namespace."""
    return "_dek." + record.rpartition(".")[2] if record.startswith("_dek.") else record


class OldRedisRecords:
    """The old layout's `RecordTable`: values in `<name>`, revisions in `<name>:rev`."""

    def __init__(self, url: str, name: str, ttl: tuple[str, int] | None = None) -> None:
        import redis
        self.name, self.revisions, self._ttl = name, f"{name}:rev", ttl
        self.client = redis.Redis.from_url(url)
        self._commit = self.client.register_script(OLD_COMMIT)

    def read(self, record: str) -> Read:
        record = _old(record)
        return int(self.client.hget(self.revisions, record) or 0), self.client.hget(self.name, record)

    def records(self, prefix: str) -> list[str]:
        return sorted(field.decode() for field in self.client.hkeys(self.name) if field.decode().startswith(prefix))

    def commit(self, checks: dict[str, Read], writes: Writes) -> bool:
        arguments: list = [len(checks)]
        for name, (revision, _) in checks.items():
            arguments += [_old(name), revision]
        arguments.append(len(writes))
        for name, value in writes.items():
            ttl = self._ttl[1] if self._ttl and value is not None and name.startswith(self._ttl[0]) else 0
            arguments += [_old(name), "d", b"", 0] if value is None else [_old(name), "s", value, ttl]
        return bool(self._commit(keys=[self.name, self.revisions], args=arguments))

    def expire_after(self, prefix: str, seconds: float) -> None:
        self._ttl = (prefix, round(seconds * 1000))

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def server():
    started = require(start_redis)
    yield started
    started.cleanup()


_apps = iter(range(10_000))

CONSUMER = f"redis:cm:stream:orders.>:{safe_name('orders')}"  # a durable consumer of the cell `orders`


def _old_store(server, app: str) -> tuple[OldRedisRecords, dict[tuple[str, str], bytes]]:
    """An app's store written by the old code path: three namespaces, a rotated data key, a deleted record, a
    rewritten one, and an exactly-once inbox record (with its expiry); what each key must read back as."""
    table = OldRedisRecords(server.url, f"{app}:store", (INBOX_NAMESPACE + ".", 3_600_000))
    store = EngineStore(table, StaticKeyProvider(KEK), key_cache_seconds=0.0)  # type: ignore[arg-type]
    expected: dict[tuple[str, str], bytes] = {}
    for namespace in ("notes", "orders", "gateway.tasks"):
        for index in range(5):
            store.put(namespace, f"key/{index}", f"{namespace} {index}".encode())
            expected[(namespace, f"key/{index}")] = f"{namespace} {index}".encode()
    store.rotate_data_keys()
    store.put("notes", "after-rotation", b"under the second data key")
    expected[("notes", "after-rotation")] = b"under the second data key"
    store.put("notes", "key/0", b"rewritten")  # version 2
    expected[("notes", "key/0")] = b"rewritten"
    store.delete("orders", "key/4")
    del expected[("orders", "key/4")]
    transaction = EngineInbox(store).begin(CONSUMER, "command-1")
    transaction.view(store.namespace("orders")).put("from-the-inbox", b"applied once")
    assert transaction.commit('{"ok": true}')
    expected[("orders", "from-the-inbox")] = b"applied once"
    assert table.client.hlen(f"{app}:store") > 20 and table.client.exists(f"{app}:store:rev")
    assert any(field.count(b".") == 1 for field in table.client.hkeys(f"{app}:store") if field.startswith(b"_dek."))
    return table, expected


def _check_all(records: RedisRecords, expected: dict[tuple[str, str], bytes], next_version: int = 3) -> None:
    store = EngineStore(records, StaticKeyProvider(KEK), key_cache_seconds=0.0)
    for (namespace, key), value in expected.items():
        assert store.get(namespace, key) == value, (namespace, key)
    assert store.get("orders", "key/4") is None
    assert store.keys_of("notes") == sorted(key for namespace, key in expected if namespace == "notes")
    assert EngineInbox(store).recorded(CONSUMER, "command-1") == '{"ok": true}'
    assert store.verify_all() == len(expected)
    assert store.put("notes", "key/0", b"third") == next_version  # the version moved with the value


def test_the_app_moves_every_record_of_the_old_layout(server) -> None:
    app = f"m{next(_apps)}"
    old, expected = _old_store(server, app)
    revision = old.read(record_name("notes", "key/0"))[0]
    deleted = old.read(record_name("orders", "key/4"))[0]
    records = RedisRecords(server.url, name=f"{app}:store")
    try:
        assert records.migrated >= len(expected)
        client = old.client
        assert not client.exists(f"{app}:store") and not client.exists(f"{app}:store:rev")  # nothing left behind
        assert client.get(f"{app}:store:layout") == b"2"
        assert records.read(record_name("notes", "key/0"))[0] == revision  # revisions kept
        assert records.read(record_name("orders", "key/4")) == (deleted, None)  # a delete keeps its revision
        assert client.hexists(f"{app}:store:{{orders}}", inbox_record(CONSUMER, "command-1"))  # the cell's hash
        ttl = client.execute_command("HPTTL", f"{app}:store:{{orders}}", "FIELDS", 1, inbox_record(CONSUMER, "command-1"))
        assert 0 < ttl[0] <= 3_600_000  # the inbox record still expires
        assert all(record_namespace(field.decode()) is not None
                   for key in client.scan_iter(match=f"{app}:store:{{*}}") for field in client.hkeys(key))
        _check_all(records, expected)
    finally:
        records.close()
        old.close()


def test_a_crash_halfway_is_finished_by_the_next_start_and_a_rerun_moves_nothing(server) -> None:
    app = f"m{next(_apps)}"
    old, expected = _old_store(server, app)
    move = old.client.register_script(MOVE)
    fields = sorted(field.decode() for field in old.client.hkeys(f"{app}:store") if not field.startswith(b"_dek."))
    for field in fields[: len(fields) // 2]:  # the app died after moving half of the records
        key = f"{app}:store:{{{record_namespace(field)}}}"
        move(keys=[f"{app}:store", f"{app}:store:rev", key, f"{key}:rev"], args=[field, field])
    with pytest.raises(StoreLayoutOld, match="start the app first"):  # no marker yet: a worker still waits
        RedisRecords(server.url, name=f"{app}:store", migrate=False)
    records = RedisRecords(server.url, name=f"{app}:store")
    try:
        _check_all(records, expected)
        assert records.migrate() == 0  # idempotent: nothing left to move
        _check_all(records, {**expected, ("notes", "key/0"): b"third"}, next_version=4)
    finally:
        records.close()
        old.close()


def test_a_worker_that_may_not_migrate_is_refused_with_one_line(server) -> None:
    app = f"m{next(_apps)}"
    old, _ = _old_store(server, app)
    try:
        with pytest.raises(StoreLayoutOld) as refused:
            RedisRecords(server.url, name=f"{app}:store", migrate=False)
        assert "\n" not in str(refused.value) and "start the app first" in str(refused.value)
        assert old.client.hlen(f"{app}:store") > 20  # it moved nothing
        RedisRecords(server.url, name=f"{app}:store").close()  # the app
        RedisRecords(server.url, name=f"{app}:store", migrate=False).close()  # now the worker opens
    finally:
        old.close()
