"""Encrypted store with real processes: two processes on one file, key rotation while a writer runs
(through `cellmono keys rotate`), missing and wrong keys, corrupted files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cellmono.security.audit import AuditLog
from cellmono.security.keys import EnvKeyProvider, FileKeyProvider, KeyUnavailable, StaticKeyProvider, WrongKey, new_key_text
from cellmono.security.keys import StoreBusy, StoreCorrupted
from cellmono.security.store import EncryptedStore

PYTHON = sys.executable
CELLMONO = str(Path(sys.executable).with_name("cellmono"))

WORKER = textwrap.dedent("""
    import sys, time
    from cellmono.security.keys import FileKeyProvider
    from cellmono.security.store import EncryptedStore
    path, kek, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = EncryptedStore(path, FileKeyProvider(kek), key_cache_seconds=0.05)
    shared = store.namespace("shared")
    own = store.namespace(name)
    for index in range(count):
        own.put(f"k{index}", f"{name}-{index}".encode())
        shared.put("counter", f"{name}-{index}".encode())       # both processes write the same key
        assert own.get(f"k{index}") == f"{name}-{index}".encode()
        assert shared.get("counter") is not None
    print("done", flush=True)
""")


def test_two_processes_on_one_store_file(tmp_path):
    kek = tmp_path / "kek.json"
    FileKeyProvider(kek, create=True)
    path = tmp_path / "store.sqlite"
    workers = [subprocess.Popen([PYTHON, "-c", WORKER, str(path), str(kek), name, "400"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for name in ("alpha", "beta")]
    results = [worker.communicate(timeout=120) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [error for _, error in results]
    store = EncryptedStore(path, FileKeyProvider(kek))
    for name in ("alpha", "beta"):
        assert [store.get(name, f"k{index}") for index in range(400)] == [f"{name}-{index}".encode() for index in range(400)]
    assert store.get("shared", "counter") in (b"alpha-399", b"beta-399")
    version = sqlite3.connect(path).execute("SELECT version FROM items WHERE namespace='shared'").fetchone()[0]
    assert version == 800  # no lost update: every put of either process got its own version
    keys = sqlite3.connect(path).execute("SELECT count(*) FROM data_keys WHERE namespace='shared'").fetchone()[0]
    assert keys == 1  # the race to create the namespace's data key produced one key


def test_a_lock_held_too_long_is_a_typed_busy_error(tmp_path):
    store = EncryptedStore(tmp_path / "store.sqlite", StaticKeyProvider(os.urandom(32)), busy_timeout=0.2)
    store.namespace("notes").put("a", b"1")
    blocker = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    started = time.monotonic()
    with pytest.raises(StoreBusy) as caught:
        store.namespace("notes").put("b", b"2")
    assert isinstance(caught.value, TimeoutError) and time.monotonic() - started < 5
    blocker.execute("ROLLBACK")
    assert store.namespace("notes").get("b") is None and store.namespace("notes").put("b", b"2") == 1


ROTATION_WORKER = textwrap.dedent("""
    import sys, time
    from cellmono.security.keys import FileKeyProvider
    from cellmono.security.store import EncryptedStore
    path, kek, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = EncryptedStore(path, FileKeyProvider(kek), key_cache_seconds=0.05)
    notes = store.namespace("notes")
    index, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        notes.put(f"live{index}", str(index).encode())
        assert notes.get(f"live{index}") == str(index).encode()
        assert notes.get("k0") == b"v0"
        index += 1
    print(index, flush=True)
""")


def test_keys_rotate_while_a_writer_runs(tmp_path):
    kek = tmp_path / "kek.json"
    (tmp_path / "settings.ini").write_text(
        "[security]\nstore_path = store.sqlite\nkek_file = kek.json\naudit_path = audit.sqlite\n")
    keys = FileKeyProvider(kek, create=True)
    store = EncryptedStore(tmp_path / "store.sqlite", keys)
    for index in range(200):
        store.put("notes", f"k{index}", f"v{index}".encode())
    first_kek = keys.current_key_id()
    writer = subprocess.Popen([PYTHON, "-c", ROTATION_WORKER, str(tmp_path / "store.sqlite"), str(kek), "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    rotated = subprocess.run([CELLMONO, "keys", "rotate", "--data-keys"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    # two data keys: the namespace's and the one that seals the store's generation (security.generation)
    assert "re-wrapped 2 data keys" in rotated.stdout and "re-encrypted" in rotated.stdout
    retired = subprocess.run([CELLMONO, "keys", "rotate", "--retire"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert retired.returncode == 0 and first_kek in retired.stdout, retired.stdout + retired.stderr
    output, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors
    written = int(output)
    assert written > 50
    fresh = EncryptedStore(tmp_path / "store.sqlite", FileKeyProvider(kek))
    assert first_kek not in FileKeyProvider(kek).keys and fresh.kek_ids() == {FileKeyProvider(kek).current_key_id()}
    assert [fresh.get("notes", f"k{index}") for index in range(200)] == [f"v{index}".encode() for index in range(200)]
    assert [fresh.get("notes", f"live{index}") for index in range(written)] == [str(i).encode() for i in range(written)]
    audit = AuditLog(tmp_path / "audit.sqlite")
    assert [entry.fields["action"] for entry in audit.entries()] == ["key.rotate", "key.rotate"] and audit.verify().ok


def test_missing_and_wrong_keys_are_clear_and_write_nothing(tmp_path):
    secret = new_key_text()
    store = EncryptedStore(tmp_path / "store.sqlite", EnvKeyProvider(environ={"CELLMONO_KEK": secret}))
    store.namespace("notes").put("a", b"1")
    store.close()
    with pytest.raises(KeyUnavailable, match="CELLMONO_KEK is not set"):
        EnvKeyProvider(environ={})
    wrong_id = EnvKeyProvider(environ={"CELLMONO_KEK": new_key_text()})
    with pytest.raises(KeyUnavailable, match="is not configured"):
        EncryptedStore(tmp_path / "store.sqlite", wrong_id).namespace("notes").put("b", b"2")
    original_id = EnvKeyProvider(environ={"CELLMONO_KEK": secret}).current_key_id()
    impostor = EnvKeyProvider(environ={"CELLMONO_KEK": f"{original_id}:{new_key_text()}"})  # same id, other key
    with pytest.raises(WrongKey, match="does not unwrap"):
        EncryptedStore(tmp_path / "store.sqlite", impostor).namespace("notes").put("b", b"2")
    raw = sqlite3.connect(tmp_path / "store.sqlite")
    assert raw.execute("SELECT count(*) FROM items").fetchone()[0] == 1
    assert raw.execute("SELECT count(*) FROM data_keys").fetchone()[0] == 2  # the namespace's and the generation's
    (tmp_path / "settings.ini").write_text("[security]\nstore_path = store.sqlite\nkek_env = NO_SUCH_VARIABLE\n")
    result = subprocess.run([CELLMONO, "keys", "rotate"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "NO_SUCH_VARIABLE"})
    assert result.returncode == 2 and "NO_SUCH_VARIABLE is not set" in result.stdout + result.stderr
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1


def test_corrupted_store_file(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"not a database at all" * 500)
    with pytest.raises(StoreCorrupted, match="not a usable database"):
        EncryptedStore(tmp_path / "store.sqlite", StaticKeyProvider(os.urandom(32)))


def test_keys_new_prints_a_usable_key(tmp_path):
    result = subprocess.run([CELLMONO, "keys", "new"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    provider = EnvKeyProvider(environ={"CELLMONO_KEK": result.stdout.strip()})
    store = EncryptedStore(tmp_path / "store.sqlite", provider)
    store.namespace("x").put("k", b"v")
    assert store.namespace("x").get("k") == b"v"
