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


# -- what a cell, an operator and `open_store` see (survivors of `.ci/mutation store`) ----------------------------

def test_refusals_say_exactly_what_happened(tmp_path: Path) -> None:
    path = filled(tmp_path)
    connection = sqlite3.connect(path)
    with connection:
        value = bytearray(connection.execute("SELECT value FROM items WHERE key = 'a1'").fetchone()[0])
        value[-1] ^= 1
        connection.execute("UPDATE items SET value = ? WHERE key = 'a1'", (bytes(value),))
    connection.close()
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        with pytest.raises(StoreCorrupted) as on_get:
            db.get("alpha", "a1")
        assert str(on_get.value) == ("value alpha/a1 (version 1) fails authentication: corrupted, or moved from "
                                     "another key or namespace")
        db.rotate_data_keys()
        with pytest.raises(StoreCorrupted) as on_move:
            db.reencrypt()
        assert str(on_move.value) == ("a value failed authentication during re-encryption; nothing was changed in "
                                      "that batch")


def test_a_namespace_handle_deletes_and_stores_compact_json(tmp_path: Path) -> None:
    with EncryptedStore(tmp_path / "store.sqlite", StaticKeyProvider({"old": OLD})) as db:
        notes, other = db.namespace("notes"), db.namespace("other")
        notes.put("k", b"v")
        other.put("k", b"w")
        assert notes.delete("k") is True and notes.delete("k") is False and notes.get("k") is None
        assert other.get("k") == b"w"  # the same key in another namespace is untouched
        notes.put_json("doc", {"a": 1, "b": [1, 2]})
        assert notes.get("doc") == b'{"a":1,"b":[1,2]}' and notes.get_json("doc") == {"a": 1, "b": [1, 2]}


def test_a_delete_as_the_first_write_of_a_fresh_handle_is_sealed(tmp_path: Path) -> None:
    path = filled(tmp_path)
    for key in ("a1", "a2"):
        with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:  # a new process: delete before any put
            assert db.delete("alpha", key) is True
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        assert db.get("alpha", "a1") is None and db.get("alpha", "a2") is None and db.verify_all() == 1


def test_open_store_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No section: `[security]` defaults (var/store.sqlite, key from CELLMONO_KEK); no key file is created and a
    restored older copy is refused unless `accept_restore`."""
    import base64
    import shutil

    from cellmono.security.generation import StoreRolledBack
    from cellmono.security.guard import SecuritySection
    from cellmono.security.store import open_store
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CELLMONO_KEK", base64.b64encode(OLD).decode())
    with open_store() as db:
        db.put("ns", "k", b"v1")
    assert (tmp_path / "var" / "store.sqlite").is_file()
    section = SecuritySection(store_path=str(tmp_path / "s.sqlite"), kek_file=str(tmp_path / "kek.json"))
    with pytest.raises(KeyUnavailable):
        open_store(section)  # create_key_file defaults to False
    assert not (tmp_path / "kek.json").exists()
    shutil.copyfile(tmp_path / "var" / "store.sqlite", tmp_path / "old.sqlite")
    with open_store() as db:
        db.put("ns", "k", b"v2")
    for suffix in ("-wal", "-shm"):
        (tmp_path / "var" / f"store.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "old.sqlite", tmp_path / "var" / "store.sqlite")
    with pytest.raises(StoreRolledBack) as rolled_back:
        open_store()
    assert str(rolled_back.value).startswith(f"store {str(Path('var/store.sqlite'))!r} is at generation")
    with open_store(accept_restore=True) as db:
        assert db.get("ns", "k") == b"v1"


def test_a_missing_key_file_message_and_an_empty_store_file(tmp_path: Path) -> None:
    from cellmono.security.guard import SecuritySection
    from cellmono.security.store import open_store
    store_file, kek = tmp_path / "s.sqlite", tmp_path / "kek.json"
    section = SecuritySection(store_path=str(store_file), kek_file=str(kek))
    with open_store(section, create_key_file=True) as db:
        db.put("ns", "k", b"v")
    kek.unlink()
    with pytest.raises(KeyUnavailable) as caught:
        open_store(section, create_key_file=True)
    assert str(caught.value) == (
        f"store {str(store_file)!r} holds encrypted data but its key file {str(kek)!r} is missing: restore the key "
        "file (or set [security] kek_file / CELLMONO_KEK to it); a new key would not read that data, so none is "
        "created")
    # a store opened once but never written (no data key yet) and no key file: a new key may be made for it
    fresh = SecuritySection(store_path=str(tmp_path / "fresh.sqlite"), kek_file=str(tmp_path / "k2.json"))
    EncryptedStore(fresh.store_path, StaticKeyProvider({"lost": OLD})).close()
    with open_store(fresh, create_key_file=True) as db:
        db.put("ns", "k", b"v")
    assert (tmp_path / "k2.json").is_file()


def test_a_file_that_is_not_a_store_is_named(tmp_path: Path) -> None:
    junk, folder = tmp_path / "junk.sqlite", tmp_path / "folder.sqlite"
    junk.write_bytes(b"x" * 5000)  # a config file or a log put where the store should be
    folder.mkdir()
    with pytest.raises(StoreCorrupted) as not_a_database:
        EncryptedStore(junk, StaticKeyProvider({"old": OLD}))
    assert str(not_a_database.value) == f"store '{junk}' is not a usable database: file is not a database"
    with pytest.raises(StoreError) as cannot_open:
        EncryptedStore(folder, StaticKeyProvider({"old": OLD}))
    assert str(cannot_open.value) == f"store '{folder}': unable to open database file"
    assert type(cannot_open.value) is StoreError


def test_an_unreadable_store_file_never_gets_a_new_key(tmp_path: Path) -> None:
    """`_holds_data` cannot read it: it may hold data, so no key is created that could never read it."""
    from cellmono.security.guard import SecuritySection
    from cellmono.security.store import open_store
    junk = tmp_path / "store.sqlite"
    junk.write_bytes(b"x" * 5000)
    section = SecuritySection(store_path=str(junk), kek_file=str(tmp_path / "kek.json"))
    with pytest.raises(KeyUnavailable, match="holds encrypted data but its key file"):
        open_store(section, create_key_file=True)
    assert not (tmp_path / "kek.json").exists()


def test_a_value_whose_data_key_was_deleted_is_named(tmp_path: Path) -> None:
    path = filled(tmp_path)
    connection = sqlite3.connect(path)
    with connection:  # a bad manual retire, or damage: the key sealing alpha's values is gone
        dek_id = connection.execute("SELECT id FROM data_keys WHERE namespace = 'alpha'").fetchone()[0]
        connection.execute("DELETE FROM data_keys WHERE id = ?", (dek_id,))
    connection.close()
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        with pytest.raises(StoreCorrupted) as caught:
            db.get("alpha", "a1")
        assert str(caught.value) == f"store '{path}' has no data key {dek_id!r}"
        assert db.get("beta", "b1") == b"three"


def test_a_bad_namespace_is_refused_with_the_rule(tmp_path: Path) -> None:
    from cellmono.security.keys import NamespaceError
    with EncryptedStore(tmp_path / "store.sqlite", StaticKeyProvider({"old": OLD})) as db:
        for bad in ("Upper", "a/b"):
            with pytest.raises(NamespaceError) as caught:
                db.namespace(bad)
            assert str(caught.value) == f"namespace {bad!r} must match [a-z][a-z0-9_.-]{{0,63}}"


def test_a_wrong_key_never_wraps_a_new_data_key(tmp_path: Path) -> None:
    """The store moved without its generation anchor (accepted as a restore) and opened with the wrong key file:
    the first write fails before any data key is wrapped under a KEK the store does not use."""
    path = filled(tmp_path)
    Path(f"{path}.generation").unlink()
    with EncryptedStore(path, StaticKeyProvider({"new": NEW}), accept_restore=True) as db:
        with pytest.raises(KeyUnavailable, match="'old' is not configured"):
            db.put("gamma", "k", b"v")
        assert db.kek_ids() == {"old"}


def test_a_cleanup_of_many_deletes_keeps_the_generation_sealed(tmp_path: Path) -> None:
    """Over a thousand writes, some of them deletes: each move of the generation is sealed (and anchored)."""
    path = tmp_path / "store.sqlite"
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        for index in range(600):
            db.put("jobs", f"j{index}", b"done")
        for index in range(600):
            assert db.delete("jobs", f"j{index}") is True
    with EncryptedStore(path, StaticKeyProvider({"old": OLD})) as db:
        assert db.keys_of("jobs") == [] and db.verify_all() == 0
