"""Fast, in-process tests of the store's rotation paths (`rewrap`, `kek_ids`, `rotate_data_keys`, `reencrypt`,
`retire_data_keys`) and of how SQLite failures reach the caller (`_translate`), for `.ci/mutation store` (figures in
tests/security/MUTATION.md). What an operator sees: after a KEK rotation the old key can be dropped and everything
still reads; after a data-key rotation old values move and the old data keys go; a locked or damaged file gives a
typed error, never a raw `sqlite3` one; a value that fails authentication stops a rotation with nothing changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cellmono.security.keys import KeyUnavailable, StaticKeyProvider, StoreBusy, StoreCorrupted, StoreError, WrongKey
from cellmono.security.store import EncryptedStore

OLD, NEW = b"o" * 32, b"n" * 32
VALUES = {("alpha", "a1"): b"one", ("alpha", "a2"): b"two", ("beta", "b1"): b"three"}


def filled(tmp_path: Path) -> Path:
    path = tmp_path / "store.sqlite"
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        for (namespace, key), value in VALUES.items():
            db.put(namespace, key, value)
    return path


def read_all(db: EncryptedStore) -> dict[tuple[str, str], bytes | None]:
    return {(namespace, key): db.get(namespace, key) for namespace, key in VALUES}


def data_keys(path: Path) -> list[tuple[str, int]]:
    """(namespace, active) of every data key in the file, as a backup auditor would list them."""
    connection = sqlite3.connect(path)
    try:
        return sorted(connection.execute("SELECT namespace, active FROM data_keys").fetchall())
    finally:
        connection.close()


def test_rewrap_moves_every_data_key_so_the_old_kek_can_be_dropped(tmp_path: Path) -> None:
    path = filled(tmp_path)
    both = StaticKeyProvider({"old": OLD, "new": NEW}, current="new")
    with EncryptedStore(path, both) as db:
        assert db.kek_ids() == {"old"}
        assert db.rewrap() == 3  # alpha, beta and the key sealing the generation
        assert db.kek_ids() == {"new"} and db.rewrap() == 0
        assert read_all(db) == VALUES
    with EncryptedStore(path, StaticKeyProvider({"new": NEW})) as db:  # the old KEK is gone: everything reads
        assert read_all(db) == VALUES and db.verify_all() == 3 and db.kek_ids() == {"new"}
        db.put("alpha", "a3", b"four")
    with pytest.raises(KeyUnavailable, match="'new' is not configured"):
        EncryptedStore(path, StaticKeyProvider({"old": OLD}))


def test_rewrap_with_a_damaged_data_key_changes_nothing(tmp_path: Path) -> None:
    path = filled(tmp_path)
    connection = sqlite3.connect(path)
    with connection:  # one wrapped data key damaged on disk: the rewrap must fail before moving any other
        wrapped = bytearray(connection.execute("SELECT wrapped FROM data_keys WHERE namespace = 'beta'").fetchone()[0])
        wrapped[-1] ^= 1
        connection.execute("UPDATE data_keys SET wrapped = ? WHERE namespace = 'beta'", (bytes(wrapped),))
    connection.close()
    with EncryptedStore(path, StaticKeyProvider({"old": OLD, "new": NEW}, current="new")) as db:
        with pytest.raises(WrongKey, match="'old' does not unwrap"):
            db.rewrap()
        assert db.kek_ids() == {"old"} and db.get("alpha", "a1") == b"one"


def test_data_key_rotation_reencrypt_and_retire(tmp_path: Path) -> None:
    path = filled(tmp_path)
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        assert read_all(db) == VALUES  # the active keys are cached now: a rotation must drop that cache
        assert sorted(db.rotate_data_keys()) == ["alpha", "beta"]  # never the generation's own key
        assert data_keys(path) == [("_store", 1), ("alpha", 0), ("alpha", 1), ("beta", 0), ("beta", 1)]
        db.put("alpha", "a2", b"two, rewritten")  # under the new data key: nothing to move
        assert db.retire_data_keys(grace=0) == 0  # the old keys still seal a1 and b1
        assert db.reencrypt(batch=1) == 2 and db.reencrypt() == 0
        expected = {**VALUES, ("alpha", "a2"): b"two, rewritten"}
        assert read_all(db) == expected
        assert db.retire_data_keys() == 0  # deactivated just now: inside the default grace
        assert db.retire_data_keys(grace=3600) == 0
        assert db.retire_data_keys(grace=0) == 2 and db.retire_data_keys(grace=0) == 0
        assert data_keys(path) == [("_store", 1), ("alpha", 1), ("beta", 1)]
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        assert read_all(db) == expected and db.verify_all() == 3


def test_reencrypt_keeps_versions_and_moves_every_batch(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        for index in range(5):
            db.put("alpha", f"k{index}", b"v%d" % index)
        db.put("alpha", "k0", b"v0 again")
        db.rotate_data_keys()
        assert db.reencrypt(batch=2) == 5 and db.reencrypt(batch=2) == 0
        assert db.put("alpha", "k0", b"third") == 3 and db.put("alpha", "k1", b"second") == 2
        assert db.get("alpha", "k4") == b"v4" and db.retire_data_keys(grace=0) == 1


@pytest.mark.parametrize("truncate", [False, True])
def test_a_damaged_value_stops_reencrypt_with_nothing_changed(tmp_path: Path, truncate: bool) -> None:
    """A flipped byte or a truncated value (a bad disk, a partial copy): `keys rotate` says so, no traceback."""
    path = filled(tmp_path)
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        db.rotate_data_keys()
    connection = sqlite3.connect(path)
    with connection:
        value = bytearray(connection.execute("SELECT value FROM items WHERE key = 'a2'").fetchone()[0])
        value[-1] ^= 1
        connection.execute("UPDATE items SET value = ? WHERE key = 'a2'", (bytes(value[:10] if truncate else value),))
    connection.close()
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        with pytest.raises(StoreCorrupted, match="failed authentication during re-encryption; nothing was changed"):
            db.reencrypt()
        assert db.retire_data_keys(grace=0) == 0  # a1 (same batch) was not moved: its old key stays
        assert db.get("alpha", "a1") == b"one" and db.get("beta", "b1") == b"three"


def test_a_locked_store_is_store_busy_naming_the_file(tmp_path: Path) -> None:
    path = filled(tmp_path)
    both = StaticKeyProvider({"old": OLD, "new": NEW}, current="new")
    with EncryptedStore(path, both, busy_timeout=0.05) as db:
        db.rotate_data_keys()  # new data keys are wrapped under "new"; the three old ones still under "old"
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a long transaction, a backup)
        try:
            for operation in (db.rewrap, db.reencrypt, lambda: db.put("alpha", "a1", b"x"),
                              lambda: db.delete("alpha", "a1")):
                with pytest.raises(StoreBusy, match=f"store '{path}' is locked by another process or thread"):
                    operation()
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert db.rewrap() == 3 and db.reencrypt() == 3 and read_all(db) == VALUES


def test_sqlite_failures_are_typed_store_errors(tmp_path: Path) -> None:
    path = filled(tmp_path)
    connection = sqlite3.connect(path)
    with connection:  # a damaged file: writes to items are refused by SQLite itself
        connection.execute("CREATE TRIGGER no_writes BEFORE UPDATE ON items BEGIN SELECT RAISE(ABORT, 'refused'); END")
    connection.close()
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        db.rotate_data_keys()
        with pytest.raises(StoreCorrupted, match=f"store '{path}' is not a usable database: refused"):
            db.reencrypt()
        assert read_all(db) == VALUES
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("DROP TABLE items")
        connection.execute("CREATE VIEW items AS SELECT 1 AS namespace")  # schema damage the store cannot repair
    connection.close()
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        for operation in (db.reencrypt, lambda: db.get("alpha", "a1"), db.verify_all):
            with pytest.raises(StoreError, match=f"store '{path}': no such column") as caught:
                operation()
            assert type(caught.value) is StoreError
