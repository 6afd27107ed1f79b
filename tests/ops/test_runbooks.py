"""Every runbook dry-runs on a fresh app through `cellmono runbook run`, archived (0400) and audited, and the
audit log verifies (what .ci/runbooks checks, so the pytest pass of CI covers it); applies change the app with
nothing lost; secrets never reach the archive, the audit log or the output."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from cellmono.ops.runbooks import app_security, find_runbooks
from cellmono.security.guard import SecuritySection
from cellmono.security.store import open_store

from runbooks_support import RUNBOOKS, audit_runs, cellmono, fresh_app

NAMES = sorted(find_runbooks(RUNBOOKS))


def test_at_least_eight_runbooks_are_listed(tmp_path: Path) -> None:
    listed = cellmono("runbook", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) >= 8 and len(NAMES) >= 8


@pytest.mark.parametrize("name", NAMES)
def test_each_runbook_dry_runs_on_a_fresh_app_archived_and_audited(tmp_path: Path, name: str) -> None:
    fresh_app(tmp_path)
    before = (tmp_path / "settings.ini").read_text()
    done = cellmono("runbook", "run", name, "--cwd", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    archives = list((tmp_path / "var" / "runbooks").glob(f"*-{name}-*.ipynb"))
    assert len(archives) == 1 and stat.S_IMODE(archives[0].stat().st_mode) == 0o400
    notebook = json.loads(archives[0].read_text())
    assert notebook["metadata"]["cellmono"]["result"] == "ok"
    assert any("injected-parameters" in cell["metadata"].get("tags", []) for cell in notebook["cells"])
    [run] = audit_runs(tmp_path)
    assert (run["resource"], run["outcome"], run["details"]["mode"]) == (name, "ok", "dry-run")
    assert run["details"]["archive"] == archives[0].name
    import hashlib
    assert run["details"]["archive_hash"] == hashlib.sha256(archives[0].read_bytes()).hexdigest()
    assert (tmp_path / "settings.ini").read_text() == before, "a dry run changed the settings"
    assert not (tmp_path / "var" / "backups").exists() and not (tmp_path / "var" / "restored").exists()
    verified = cellmono("audit", "verify", "--settings", str(tmp_path / "settings.ini"), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _items(settings: Path) -> dict[tuple[str, str], bytes | None]:
    security = app_security(settings)
    with sqlite3.connect(security.store_path) as connection:
        names = connection.execute("SELECT namespace, key FROM items").fetchall()
    with open_store(security) as store:
        return {(namespace, key): store.get(namespace, key) for namespace, key in names}


def test_rotate_backup_restore_apply_lose_nothing(tmp_path: Path) -> None:
    settings = fresh_app(tmp_path)
    security = app_security(settings)
    Path(security.store_path).parent.mkdir(parents=True)
    with open_store(security, create_key_file=True) as store:
        for number in range(40):
            store.put("notes", f"note-{number}", f"value {number}".encode())
    kek_before = json.loads(Path(security.kek_file or "").read_text())
    expected = _items(settings)
    for name, parameters in (("rotate-keys", ["-p", "data_keys=true", "-p", "retire=true"]),
                             ("backup-store", []), ("restore-store", [])):
        for mode in ("--dry-run", "--apply"):
            done = cellmono("runbook", "run", name, *parameters, mode, "--cwd", str(tmp_path), cwd=tmp_path)
            assert done.returncode == 0, (name, mode, done.stderr)
    assert json.loads(Path(security.kek_file or "").read_text()) != kek_before, "the key was not rotated"
    assert _items(settings) == expected
    restored = settings.with_name("restored.ini")
    restored.write_text(settings.read_text().replace("store_path = var/store.sqlite",
                                                     "store_path = var/restored/store.sqlite"))
    restored_security = app_security(settings).model_copy(update={"store_path": str(tmp_path / "var/restored/store.sqlite")})
    with open_store(restored_security) as store:
        assert {key: store.get(*key) for key in expected} == expected
    assert [run["details"]["mode"] for run in audit_runs(tmp_path)] == ["dry-run", "apply"] * 3


def test_a_secret_never_reaches_the_archive_the_audit_log_or_the_output(tmp_path: Path) -> None:
    fresh_app(tmp_path)
    from cellmono.gateway.auth import ApiKeys
    (tmp_path / "var").mkdir()
    key = ApiKeys(tmp_path / "var" / "api-keys.json").create("ops", ["admin"])
    done = cellmono("runbook", "run", "health-check", "-p", "probe_key=env:PROBE_KEY", "--cwd", str(tmp_path),
                    cwd=tmp_path, env={"PROBE_KEY": key})
    assert done.returncode == 0, done.stderr
    [archive] = (tmp_path / "var" / "runbooks").glob("*.ipynb")
    assert "probe key authenticates as 'ops'" in archive.read_text()
    for text in (archive.read_bytes(), (tmp_path / "var" / "audit.sqlite").read_bytes(),
                 done.stdout.encode(), done.stderr.encode()):
        assert key.encode() not in text
    assert audit_runs(tmp_path)[0]["details"]["parameters"] == {"probe_key": "env:PROBE_KEY"}


def backed_up_app(folder: Path) -> SecuritySection:
    """A fresh app in `folder` whose store holds 20 items, backed up (dry run, apply) and its restore rehearsed."""
    security = app_security(fresh_app(folder))
    Path(security.store_path).parent.mkdir(parents=True)
    with open_store(security, create_key_file=True) as store:
        for number in range(20):
            store.put("notes", f"note-{number}", bytes([number]) * 4096)
    for name, mode in (("backup-store", "--dry-run"), ("backup-store", "--apply"), ("restore-store", "--dry-run")):
        done = cellmono("runbook", "run", name, mode, "--cwd", str(folder), cwd=folder)
        assert done.returncode == 0, (name, mode, done.stderr)
    return security


def test_a_backup_changed_after_its_manifest_is_never_restored_as_good(tmp_path: Path) -> None:
    backed_up_app(tmp_path)
    [backup] = (tmp_path / "var" / "backups").glob("*-store.sqlite")
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit of rot in the middle of the file, after the manifest was written
    backup.chmod(0o600)
    backup.write_bytes(bytes(data))
    applied = cellmono("runbook", "run", "restore-store", "--apply", "--cwd", str(tmp_path), cwd=tmp_path)
    assert applied.returncode == 1
    assert any(sign in applied.stderr for sign in ("does not match its manifest", "fails authentication",
                                                   "not a usable database")), applied.stderr  # where the rot lands
    rehearsed = cellmono("runbook", "run", "restore-store", "--cwd", str(tmp_path), cwd=tmp_path)
    assert rehearsed.returncode == 1 and "the backup does not match its manifest" in rehearsed.stderr
    assert [run["details"]["result"] for run in audit_runs(tmp_path)][-2:] == ["failed", "failed"]


def test_a_restore_with_the_wrong_key_is_never_reported_good(tmp_path: Path) -> None:
    """The single-scan verification (`verify_all`) still refuses a backup the app's key cannot read."""
    security = backed_up_app(tmp_path)
    kek_file = Path(security.kek_file or "")
    keys = json.loads(kek_file.read_text())
    other = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    kek_file.write_text(json.dumps({**keys, "keys": {key_id: other for key_id in keys["keys"]}}))  # same id, other key
    applied = cellmono("runbook", "run", "restore-store", "--apply", "--cwd", str(tmp_path), cwd=tmp_path)
    assert applied.returncode == 1 and "does not unwrap" in applied.stderr, applied.stderr
    assert "ok: checksum matches" not in applied.stdout
