"""Tests that kill mutants `mutmut` leaves alive in `cellmono.security.audit` (`.ci/mutation audit`; figures in
tests/security/MUTATION.md): opening, key lookup and anchoring of a real `AuditLog` in a temp folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellmono.core.errors import ConfigError
from cellmono.security.audit import KEY_FILE, AuditLog
from cellmono.security.records import AuditRecord
from cellmono.security.signing import SigningKeys


def test_opening_a_missing_log_without_create_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with pytest.raises(ConfigError, match=f"audit database '{path}' does not exist"):
        AuditLog(path, create=False)
    assert not path.exists() and not (tmp_path / KEY_FILE).exists()     # nothing created by the refusal
    AuditLog(path).close()
    with AuditLog(path, create=False) as log:                             # an existing log opens
        assert log.anchor_keys is not None


def test_keys_are_found_beside_the_log_or_where_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as log:                                           # a new log: its ring beside it
        created = log.anchor_keys
    assert created is not None and (tmp_path / KEY_FILE).is_file()
    ring = tmp_path / "elsewhere.json"
    SigningKeys().save(ring)
    other = tmp_path / "other.sqlite"
    with AuditLog(other, key_file=ring) as log:
        assert log.anchor_keys is not None
        assert log.anchor_keys.active == SigningKeys.load(ring).active
    (tmp_path / KEY_FILE).unlink()
    with AuditLog(path) as log:                                           # an existing log never gets a new ring
        assert log.anchor_keys is None


def test_anchors_go_to_the_anchor_file_too(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.jsonl"
    with AuditLog(tmp_path / "audit.sqlite", anchor_file=anchors, anchor_every=None, anchor_interval=None) as log:
        log.append(AuditRecord(actor="a", action="x", time=1.0))
        anchor = log.anchor()
        assert log.anchor_file == anchors
    lines = [json.loads(line) for line in anchors.read_text().splitlines()]
    assert lines and lines[-1]["seq"] == anchor.seq == 1


def test_submitted_records_are_written_and_a_closed_log_refuses_more(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite", batch_size=2)
    for n in range(3):
        log.submit(AuditRecord(actor=f"u{n}", action="x", time=1.0))
    log.flush()
    assert len(log) == 3 and [entry.fields["actor"] for entry in log.entries()] == ["u0", "u1", "u2"]
    log.close()
    with pytest.raises(Exception, match="closed"):
        log.submit(AuditRecord(actor="late", action="x", time=1.0))
