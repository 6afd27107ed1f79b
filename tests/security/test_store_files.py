"""The encrypted store's and the audit log's files are private from their first byte, a loose folder is
tightened (or refused), and a missing KEK beside encrypted data is an error naming the file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cellmono.core.errors import ConfigError
from cellmono.security.audit import AuditLog
from cellmono.security.files import open_shared_database, private_folder
from cellmono.security.guard import SecuritySection
from cellmono.security.keys import KeyUnavailable
from cellmono.security.records import AuditRecord
from cellmono.security.store import open_store
from cellmono.topology.services import Runtime


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def section(folder: Path, **extra: str) -> SecuritySection:
    return SecuritySection(store_path=str(folder / "store.sqlite"), kek_file=str(folder / "kek.json"),
                           audit_path=str(folder / "audit.sqlite"), signing_keys=str(folder / "signing-keys.json"),
                           **extra)


def test_files_are_0600_and_folders_0700_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # the careless operator's shell: everything would be world-writable
    try:
        folder = tmp_path / "var"
        store = open_store(section(folder), create_key_file=True)
        store.put("notes", "a", b"secret")
        store.close()
        with AuditLog(folder / "audit.sqlite") as log:
            log.append(AuditRecord(actor="a", action="x"))
    finally:
        os.umask(old)
    assert mode(folder) == 0o700
    for name in ("store.sqlite", "kek.json", "audit.sqlite", "signing-keys.json"):
        assert mode(folder / name) == 0o600, name
    for wal in folder.glob("*.sqlite-*"):
        assert mode(wal) == 0o600, wal.name


def test_no_window_the_database_file_is_never_created_loose(tmp_path: Path) -> None:
    """The file exists with mode 0600 before SQLite writes a byte into it (os.open with the mode)."""
    folder = tmp_path / "var"
    old = os.umask(0)
    try:
        connection = open_shared_database(folder / "x.sqlite")
    finally:
        os.umask(old)
    assert mode(folder / "x.sqlite") == 0o600
    connection.close()


def test_a_loose_folder_or_file_is_tightened_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "var"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    (folder / "store.sqlite").touch()
    os.chmod(folder / "store.sqlite", 0o666)
    open_store(section(folder), create_key_file=True).close()
    assert mode(folder) == 0o700 and mode(folder / "store.sqlite") == 0o600


def test_the_home_or_working_folder_is_refused_not_tightened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loose = tmp_path / "project"
    loose.mkdir()
    os.chmod(loose, 0o755)
    monkeypatch.chdir(loose)
    with pytest.raises(ConfigError, match="readable by others and is not cellmono's own"):
        private_folder(loose)
    assert mode(loose) == 0o755
    assert mode(private_folder(loose / "var")) == 0o700


def test_a_missing_kek_beside_encrypted_data_is_an_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "var"
    store = open_store(section(folder), create_key_file=True)
    store.put("notes", "a", b"secret")
    store.close()
    (folder / "kek.json").rename(tmp_path / "kek.json.lost")
    with pytest.raises(KeyUnavailable) as caught:
        open_store(section(folder), create_key_file=True)
    assert str(folder / "kek.json") in str(caught.value) and "holds encrypted data" in str(caught.value)
    assert not (folder / "kek.json").exists()  # no fresh key beside data it cannot read
    # the app's runtime (which would create a development key) refuses to start the same way
    with pytest.raises(KeyUnavailable, match="kek.json"):
        Runtime(section(folder).model_copy(update={"kek_file": None}))
    assert not (folder / "kek.json").exists()
    (tmp_path / "kek.json.lost").rename(folder / "kek.json")
    with open_store(section(folder), create_key_file=True) as restored:
        assert restored.get("notes", "a") == b"secret"


def test_serve_refuses_to_start_without_the_kek_and_says_which_file(tmp_path: Path) -> None:
    from gateway_support import ROOT, state_environment
    state = tmp_path / "state"
    store = open_store(section(state), create_key_file=True)
    store.put("notes", "a", b"secret")
    store.close()
    (state / "kek.json").unlink()
    env = {**os.environ, **state_environment(state)}
    result = subprocess.run([str(Path(sys.executable).with_name("cellmono")), "run", "--seconds", "1"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert str(state / "kek.json") in result.stderr and "holds encrypted data" in result.stderr
    assert not (state / "kek.json").exists()
