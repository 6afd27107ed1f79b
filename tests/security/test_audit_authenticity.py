"""The audit log's identity and authenticity, attacked by someone with write access to the log file.

Anchors are on by default (a genesis anchor at creation, one every `anchor_every` records or
`anchor_interval` seconds, one at close); every record carries an HMAC keyed from the signing ring,
which is not in the log file. `cellmono audit verify` fails on each attack below.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cellmono.security.audit import AuditLog
from cellmono.security.chain import link_hash, record_body, record_mac
from cellmono.security.guard import SecuritySection
from cellmono.security.records import AuditRecord
from cellmono.security.signing import SigningKeys

CELLMONO = str(Path(sys.executable).with_name("cellmono"))


def verify_cli(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CELLMONO, "audit", "verify", "--db", "audit.sqlite", *extra], cwd=folder,
                          capture_output=True, text=True, timeout=60)


def raw_sql(path: Path, sql: str, *parameters: object) -> None:
    connection = sqlite3.connect(path)
    connection.execute(sql, parameters)
    connection.commit()
    connection.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A log of 12 records written the default way (keys found beside it), closed."""
    with AuditLog(tmp_path / "audit.sqlite") as log:
        for index in range(12):
            log.append(AuditRecord(actor="alice", action="tool.call", resource=f"notes.{index}"))
    assert (tmp_path / "signing-keys.json").is_file()
    result = verify_cli(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp_path


def test_anchors_are_on_by_default_at_creation_periodically_and_at_close(tmp_path: Path) -> None:
    assert SecuritySection().anchor_every == 1000
    log = AuditLog(tmp_path / "audit.sqlite")
    assert [anchor.seq for anchor in log.stored_anchors()] == [0]  # genesis
    log.append_many(AuditRecord(actor="a", action="x") for _ in range(1500))
    assert [anchor.seq for anchor in log.stored_anchors()] == [0, 1500]  # crossed 1000
    log.append(AuditRecord(actor="a", action="x"))
    log.close()
    assert [anchor.seq for anchor in AuditLog(tmp_path / "audit.sqlite").stored_anchors()] == [0, 1500, 1501]
    timed = AuditLog(tmp_path / "timed.sqlite", anchor_every=None, anchor_interval=0.0)
    timed.append(AuditRecord(actor="a", action="x"))
    assert [anchor.seq for anchor in timed.stored_anchors()] == [0, 1]
    report = timed.verify()
    assert report.ok and report.anchors_checked == 2


def test_a_forged_row_with_a_correct_hash_after_the_last_anchor_is_detected(folder: Path) -> None:
    path = folder / "audit.sqlite"
    with AuditLog(path) as log:
        seq, head = log.head()
    body = record_body(AuditRecord(actor="mallory", action="grant", resource="admin"), seq + 1, head)
    raw_sql(path, "INSERT INTO audit(seq, body, hash) VALUES (?, ?, ?)", seq + 1, body.decode(),
            link_hash(head, body))
    result = verify_cli(folder)
    assert result.returncode == 1 and f"record {seq + 1} is not authenticated" in result.stdout
    # a MAC made with a key of the attacker's own does not pass either
    mallory = SigningKeys()
    kid = mallory.active
    raw_sql(path, "UPDATE audit SET mac = ? WHERE seq = ?",
            f"{kid}:{record_mac(mallory.mac_key(kid) or b'', 'x', seq + 1, link_hash(head, body))}", seq + 1)
    result = verify_cli(folder)
    assert result.returncode == 1 and "authenticated with unknown key" in result.stdout
    # reusing the real key id with a guessed MAC fails authentication
    real = SigningKeys.load(folder / "signing-keys.json").active
    raw_sql(path, "UPDATE audit SET mac = ? WHERE seq = ?", f"{real}:{'0' * 64}", seq + 1)
    result = verify_cli(folder)
    assert result.returncode == 1 and f"record {seq + 1} fails authentication" in result.stdout


def test_an_altered_log_id_is_detected(folder: Path) -> None:
    raw_sql(folder / "audit.sqlite", "UPDATE meta SET value = 'feedfacefeedface' WHERE key = 'log_id'")
    result = verify_cli(folder)
    assert result.returncode == 1
    assert "its identity was changed" in result.stdout and "fails authentication" in result.stdout


def test_an_emptied_anchors_table_is_detected(folder: Path) -> None:
    raw_sql(folder / "audit.sqlite", "DELETE FROM anchors")
    result = verify_cli(folder)
    assert result.returncode == 1 and "no signed anchor of log" in result.stdout
    # the app restarting and writing more does not quietly heal it with fresh anchors
    with AuditLog(folder / "audit.sqlite", anchor_interval=0.0) as log:
        log.append_many(AuditRecord(actor="a", action="x") for _ in range(1000))
        assert log.stored_anchors() == []
    assert verify_cli(folder).returncode == 1


def test_without_the_key_the_log_cannot_pass_verification(folder: Path) -> None:
    (folder / "signing-keys.json").rename(folder / "elsewhere.json")
    result = verify_cli(folder)
    assert result.returncode == 1 and "no audit key to authenticate the records" in result.stdout
    assert verify_cli(folder, "--keys", "elsewhere.json").returncode == 0


def test_a_log_written_with_a_configured_ring_verifies_with_it(tmp_path: Path) -> None:
    keys = SigningKeys()
    keys.save(tmp_path / "ring.json")
    with AuditLog(tmp_path / "audit.sqlite", anchor_keys=keys) as log:
        log.append(AuditRecord(actor="a", action="x"))
    assert not (tmp_path / "signing-keys.json").exists()
    assert verify_cli(tmp_path, "--keys", "ring.json").returncode == 0
    assert verify_cli(tmp_path).returncode == 1
