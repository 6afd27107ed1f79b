"""Tests that kill mutants `mutmut` leaves alive in `cellmono.security.store` (`.ci/mutation store`; figures in
tests/security/MUTATION.md): names and keys are checked, every value is bound to its place, damage is typed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cellmono.security.guard import SecuritySection
from cellmono.security.keys import KeyUnavailable, NamespaceError, StaticKeyProvider, StoreCorrupted, WrongKey
from cellmono.security.store import MAX_KEY_LENGTH, EncryptedStore, open_store

KEK = StaticKeyProvider({"k1": b"k" * 32})


def store(tmp_path: Path, keys=KEK) -> EncryptedStore:
    return EncryptedStore(tmp_path / "store.sqlite", keys)


def test_namespaces_keys_and_values_are_checked(tmp_path: Path) -> None:
    with store(tmp_path) as db:
        for namespace in ("", "Upper", "1abc", "a b", "a/b", "a" * 65, "ns\n"):
            with pytest.raises(NamespaceError, match="namespace"):
                db.put(namespace, "k", b"v")
        db.put("a" * 64, "k", b"v")
        db.put("a0_.-", "k", b"v")
        for key in ("", "x" * (MAX_KEY_LENGTH + 1), "a\x00b", 5):
            with pytest.raises(NamespaceError, match="store key"):
                db.put("ns", key, b"v")  # type: ignore[arg-type]
        db.put("ns", "x" * MAX_KEY_LENGTH, b"v")
        with pytest.raises(NamespaceError, match="store values are bytes, got str"):
            db.put("ns", "k", "text")  # type: ignore[arg-type]
        assert db.put("ns", "m", memoryview(b"mv")) == 1 and db.get("ns", "m") == b"mv"


def test_versions_deletes_and_listing(tmp_path: Path) -> None:
    with store(tmp_path) as db:
        assert [db.put("ns", "k", b"v1"), db.put("ns", "k", b"v2"), db.put("ns", "j", b"x")] == [1, 2, 1]
        assert db.get("ns", "k") == b"v2" and db.get("ns", "missing") is None and db.get("other", "k") is None
        db.put("ns", "ka", b"y")
        assert db.keys_of("ns") == ["j", "k", "ka"] and db.keys_of("ns", "k") == ["k", "ka"]
        assert db.keys_of("ns", "ka") == ["ka"] and db.keys_of("nope") == []
        assert db.delete("ns", "k") is True and db.delete("ns", "k") is False and db.get("ns", "k") is None
        assert db.put("ns", "k", b"again") == 1
        ns = db.namespace("docs")
        ns.put_json("d", {"a": 1})
        assert ns.get_json("d") == {"a": 1} and ns.get_json("none", 7) == 7 and ns.keys() == ["d"]
        assert db.verify_all() == 4


def _swap(path: Path, a: tuple[str, str], b: tuple[str, str]) -> None:
    connection = sqlite3.connect(path)
    with connection:
        value_a = connection.execute("SELECT value FROM items WHERE namespace=? AND key=?", a).fetchone()[0]
        value_b = connection.execute("SELECT value FROM items WHERE namespace=? AND key=?", b).fetchone()[0]
        connection.execute("UPDATE items SET value=? WHERE namespace=? AND key=?", (value_b, *a))
        connection.execute("UPDATE items SET value=? WHERE namespace=? AND key=?", (value_a, *b))
    connection.close()


def test_a_value_moved_to_another_key_or_namespace_fails_authentication(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with EncryptedStore(path, KEK) as db:
        db.put("ns", "alice", b"secret-a")
        db.put("ns", "bob", b"secret-b")
        db.put("other", "alice", b"secret-o")
    _swap(path, ("ns", "alice"), ("ns", "bob"))
    with EncryptedStore(path, KEK, accept_restore=True) as db:
        with pytest.raises(StoreCorrupted, match="ns/alice \\(version 1\\) fails authentication"):
            db.get("ns", "alice")
        with pytest.raises(StoreCorrupted, match="fails authentication"):
            db.verify_all()
    _swap(path, ("ns", "alice"), ("ns", "bob"))
    _swap(path, ("ns", "alice"), ("other", "alice"))
    with EncryptedStore(path, KEK, accept_restore=True) as db:
        with pytest.raises(StoreCorrupted):
            db.get("other", "alice")


@pytest.mark.parametrize("damage", [b"", b"short", None])
def test_a_truncated_value_is_typed(tmp_path: Path, damage: bytes | None) -> None:
    path = tmp_path / "store.sqlite"
    with EncryptedStore(path, KEK) as db:
        db.put("ns", "k", b"value")
    connection = sqlite3.connect(path)
    with connection:
        if damage is None:   # a flipped ciphertext byte
            value = bytearray(connection.execute("SELECT value FROM items").fetchone()[0])
            value[-1] ^= 1
            damage = bytes(value)
        connection.execute("UPDATE items SET value=?", (damage,))
    connection.close()
    with EncryptedStore(path, KEK, accept_restore=True) as db:
        with pytest.raises(StoreCorrupted, match="ns/k"):
            db.get("ns", "k")
        with pytest.raises(StoreCorrupted, match="ns/k"):
            db.verify_all()


def test_a_wrong_kek_is_refused_before_any_write(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    with EncryptedStore(path, KEK) as db:
        db.put("ns", "k", b"v")
    wrong = StaticKeyProvider({"k1": b"w" * 32})
    with pytest.raises(WrongKey):
        with EncryptedStore(path, wrong) as db:
            db.put("ns2", "k", b"v")
    with EncryptedStore(path, KEK) as db:
        assert db.keys_of("ns2") == [] and db.get("ns", "k") == b"v"


def test_open_store_never_creates_a_key_for_existing_data(tmp_path: Path) -> None:
    section = SecuritySection(store_path=str(tmp_path / "s.sqlite"), kek_file=str(tmp_path / "kek.json"))
    with open_store(section, create_key_file=True) as db:
        db.put("ns", "k", b"v")
    (tmp_path / "kek.json").unlink()
    with pytest.raises(KeyUnavailable, match="holds encrypted data but its key file"):
        open_store(section, create_key_file=True)
    assert not (tmp_path / "kek.json").exists()
    with pytest.raises(KeyUnavailable, match="CELLMONO_TEST_NO_KEK is not set"):
        open_store(SecuritySection(store_path=str(tmp_path / "t.sqlite"), kek_env="CELLMONO_TEST_NO_KEK"))


def test_verify_all_on_a_fresh_open_unwraps_every_data_key(tmp_path: Path) -> None:
    """verify_all must work before any get has cached a data key (a fresh process checking a backup)."""
    path = tmp_path / "store.sqlite"
    with EncryptedStore(path, KEK) as db:
        db.put("ns", "k", b"v")
        db.put("other", "k", b"w")
        db.namespace("docs").put("report-1", b"x")
        db.namespace("docs").put("note", b"y")
        assert db.namespace("docs").keys("rep") == ["report-1"]
    with EncryptedStore(path, KEK) as db:
        assert db.verify_all() == 4
    with pytest.raises(WrongKey):
        with EncryptedStore(path, StaticKeyProvider({"k1": b"w" * 32})) as db:
            db.verify_all()
