"""Rollback of the encrypted store: an older copy of the file put back is refused on open.

The attacker (or the operator at 3 a.m. restoring the wrong backup) copies the store file, the app
writes more, and the old copy goes back. Every byte of it is valid and authenticated; only the
generation anchored outside the file (`cellmono.security.generation`) tells it is stale."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from cellmono.security.generation import SEAL_HEADER, StoreRolledBack, anchor_file_of
from cellmono.security.keys import StaticKeyProvider, StoreCorrupted
from cellmono.security.store import EncryptedStore

KEK = StaticKeyProvider(os.urandom(32))


def copy_store(path: Path, to: Path) -> None:
    shutil.copyfile(path, to)


def put_back(copy: Path, path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(copy, path)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "var" / "store.sqlite"
    with EncryptedStore(path, KEK) as store:
        store.put("grants", "alice", b"admin")
    return path


def test_an_older_copy_put_back_is_refused_with_the_way_out(store_path: Path, tmp_path: Path) -> None:
    copy_store(store_path, tmp_path / "old.sqlite")
    with EncryptedStore(store_path, KEK) as store:
        store.put("grants", "alice", b"revoked")
    put_back(tmp_path / "old.sqlite", store_path)
    with pytest.raises(StoreRolledBack) as caught:
        EncryptedStore(store_path, KEK)
    message = str(caught.value)
    assert "is at generation 1" in message and "says generation 2" in message
    assert str(store_path) in message and str(anchor_file_of(store_path)) in message
    assert "cellmono store accept-restore" in message


def test_a_delete_undone_by_an_older_copy_is_refused(store_path: Path, tmp_path: Path) -> None:
    copy_store(store_path, tmp_path / "old.sqlite")
    with EncryptedStore(store_path, KEK) as store:
        assert store.delete("grants", "alice")
        assert not store.delete("grants", "nobody")  # nothing deleted: not a write
    put_back(tmp_path / "old.sqlite", store_path)
    with pytest.raises(StoreRolledBack):
        EncryptedStore(store_path, KEK)


def test_rollback_is_seen_without_a_clean_close(store_path: Path, tmp_path: Path) -> None:
    """A crashed app never closes: the periodic anchor (every `anchor_every` writes) still moves on."""
    copy_store(store_path, tmp_path / "old.sqlite")
    store = EncryptedStore(store_path, KEK)
    for index in range(store.generation.anchor_every + 1):
        store.put("notes", f"n{index}", b"x")
    anchored = json.loads(anchor_file_of(store_path).read_text())["generation"]
    assert anchored > 1  # anchored before any close
    store._connection.close()  # the process dies: no close(), no shutdown anchor
    put_back(tmp_path / "old.sqlite", store_path)
    with pytest.raises(StoreRolledBack):
        EncryptedStore(store_path, KEK)


def test_a_raised_generation_in_the_old_copy_does_not_pass(store_path: Path, tmp_path: Path) -> None:
    copy_store(store_path, tmp_path / "old.sqlite")
    with EncryptedStore(store_path, KEK) as store:
        for index in range(3):
            store.put("grants", "alice", f"v{index}".encode())
    put_back(tmp_path / "old.sqlite", store_path)
    raw = sqlite3.connect(store_path)
    seal = bytearray(raw.execute("SELECT seal FROM store_generation").fetchone()[0])
    seal[:8] = (10**6).to_bytes(8, "big")  # claim a generation far ahead of the anchor
    raw.execute("UPDATE store_generation SET seal = ?", (bytes(seal),))
    raw.commit()
    raw.close()
    with pytest.raises(StoreCorrupted, match="generation file fails authentication"):
        EncryptedStore(store_path, KEK)


def test_an_edited_anchor_is_not_trusted(store_path: Path) -> None:
    anchor = anchor_file_of(store_path)
    data = json.loads(anchor.read_text())
    anchor.write_text(json.dumps(data | {"generation": 0}))
    with pytest.raises(StoreCorrupted, match="its count was edited"):
        EncryptedStore(store_path, KEK)


def test_another_store_file_or_an_empty_one_under_the_anchor_is_refused(store_path: Path, tmp_path: Path) -> None:
    with EncryptedStore(tmp_path / "other" / "store.sqlite", KEK) as other:
        other.put("grants", "alice", b"admin")
    put_back(tmp_path / "other" / "store.sqlite", store_path)
    with pytest.raises(StoreRolledBack, match="another store's file"):
        EncryptedStore(store_path, KEK)
    store_path.unlink()
    with pytest.raises(StoreRolledBack, match="a file without any write"):
        EncryptedStore(store_path, KEK)


def test_a_deliberate_restore_is_accepted_once_then_guarded_again(store_path: Path, tmp_path: Path) -> None:
    copy_store(store_path, tmp_path / "backup.sqlite")
    with EncryptedStore(store_path, KEK) as store:
        store.put("grants", "alice", b"revoked")
        store.put("grants", "bob", b"reader")
    put_back(tmp_path / "backup.sqlite", store_path)
    with EncryptedStore(store_path, KEK, accept_restore=True) as restored:
        assert restored.restore_accepted == (2, 1)
        assert restored.get("grants", "alice") == b"admin"
    copy_store(store_path, tmp_path / "backup2.sqlite")
    with EncryptedStore(store_path, KEK) as reopened:  # the anchor now follows the restored file
        assert reopened.restore_accepted is None
        reopened.put("grants", "carol", b"x")
    put_back(tmp_path / "backup2.sqlite", store_path)
    with pytest.raises(StoreRolledBack):
        EncryptedStore(store_path, KEK)


def test_interleaved_handles_count_every_write_and_never_raise_a_false_alarm(store_path: Path) -> None:
    first, second = EncryptedStore(store_path, KEK), EncryptedStore(store_path, KEK)
    for index in range(20):
        (first if index % 3 else second).put("notes", f"n{index}", b"x")
        if index % 7 == 0:
            second.delete("notes", f"n{index}")
    first.close()
    second.close()
    with EncryptedStore(store_path, KEK) as store:
        assert store.generation.current()[1] >= 2  # moved on at the first write and at each close
        assert store.restore_accepted is None


def test_the_anchor_is_private_and_a_seal_header_change_is_caught(store_path: Path) -> None:
    anchor = anchor_file_of(store_path)
    assert anchor.stat().st_mode & 0o777 == 0o600
    data = json.loads(anchor.read_text())
    seal = bytes.fromhex(data["seal"])
    forged = (data["generation"] + 5).to_bytes(8, "big") + seal[8:]  # the header's count, not the JSON's
    anchor.write_text(json.dumps(data | {"generation": data["generation"] + 5, "seal": forged.hex()}))
    with pytest.raises(StoreCorrupted):
        EncryptedStore(store_path, KEK)
    assert SEAL_HEADER.size == 28


def test_cli_refuses_in_one_line_then_accepts_the_restore_audited(tmp_path: Path) -> None:
    import subprocess
    import sys

    from cellmono.security.audit import AuditLog
    from cellmono.security.guard import SecuritySection
    from cellmono.security.store import open_store

    cellmono = str(Path(sys.executable).with_name("cellmono"))
    (tmp_path / "settings.ini").write_text("[security]\nstore_path = var/store.sqlite\nkek_file = var/kek.json\n"
                                           "audit_path = var/audit.sqlite\n")
    section = SecuritySection(store_path=str(tmp_path / "var/store.sqlite"), kek_file=str(tmp_path / "var/kek.json"))
    with open_store(section, create_key_file=True) as store:
        store.put("grants", "alice", b"admin")
    copy_store(tmp_path / "var/store.sqlite", tmp_path / "backup.sqlite")
    with open_store(section) as store:
        store.put("grants", "alice", b"revoked")
    put_back(tmp_path / "backup.sqlite", tmp_path / "var/store.sqlite")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([cellmono, "store", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    refused = run("check")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "cellmono store accept-restore" in refused.stderr
    accepted = run("accept-restore")
    assert accepted.returncode == 0 and "restore accepted at generation 1" in accepted.stdout, accepted.stderr
    with AuditLog(tmp_path / "var/audit.sqlite") as log:
        assert [entry.fields["action"] for entry in log.tail(1)] == ["store.accept_restore"]
    assert run("check").returncode == 0
