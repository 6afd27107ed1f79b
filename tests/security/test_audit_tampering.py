"""Tampering done straight in the audit database, behind the log's back: each kind is found and named
by `AuditLog.verify` (the chain's rules themselves are shown on plain rows in nbs/16_chain.ipynb)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cellmono.security.audit import AuditLog
from cellmono.security.chain import AuditTampered, link_hash, record_body, record_mac
from cellmono.security.records import AuditRecord


def fresh_log(path: Path, count: int = 10) -> AuditLog:
    log = AuditLog(path)
    log.append_many(AuditRecord(actor=f"user{i}", action="tool.call", resource=f"notes.{i}", decision="allow")
                    for i in range(count))
    return log


def tamper(log: AuditLog, sql: str, *parameters: Any) -> list[str]:
    raw = sqlite3.connect(log.path)
    raw.execute(sql, parameters)
    raw.commit()
    raw.close()
    return log.verify().problems


@pytest.fixture
def log(tmp_path: Path):
    log = fresh_log(tmp_path / "audit.sqlite")
    yield log
    log.close()


def test_a_modified_body_is_named(log: AuditLog) -> None:
    problems = tamper(log, "UPDATE audit SET body = replace(body, 'user3', 'user9') WHERE seq = 4")
    assert "record 4 was modified" in problems[0]


def test_a_deleted_record_is_a_gap(log: AuditLog) -> None:
    assert "records 5..5 are missing" in tamper(log, "DELETE FROM audit WHERE seq = 5")[0]


def test_a_deleted_head_is_found(log: AuditLog) -> None:
    assert "records 1..2 are missing" in tamper(log, "DELETE FROM audit WHERE seq <= 2")[0]


def test_reordered_records_are_found(log: AuditLog) -> None:
    tamper(log, "UPDATE audit SET seq = CASE seq WHEN 3 THEN 4 ELSE 3 END + 100 WHERE seq IN (3, 4)")
    problems = tamper(log, "UPDATE audit SET seq = seq - 100 WHERE seq > 100")
    assert any("holds the body of record 4" in problem for problem in problems), problems


def test_an_inserted_record_with_a_valid_hash_is_found(log: AuditLog) -> None:
    after = log.tail(6)[0].hash  # hash of record 5
    body = record_body(AuditRecord(actor="mallory", action="x"), 6, after).decode()
    tamper(log, "UPDATE audit SET seq = seq + 100 WHERE seq >= 6")
    tamper(log, "UPDATE audit SET seq = seq - 99 WHERE seq > 100")
    problems = tamper(log, "INSERT INTO audit(seq, body, hash) VALUES (6, ?, ?)", body, link_hash(after, body.encode()))
    moved = [f"record {seq} holds the body of record {seq - 1} (moved, inserted or reordered)" for seq in range(7, 12)]
    assert problems[:5] == moved
    assert "record 6 is not authenticated (no MAC: written without the audit key, or forged)" in problems


def test_a_changed_hash_breaks_two_links_and_raises_on_request(log: AuditLog) -> None:
    problems = tamper(log, "UPDATE audit SET hash = '00' || substr(hash, 3) WHERE seq = 7")
    assert "record 7 was modified" in problems[0] and "record 8 does not follow" in problems[1]
    with pytest.raises(AuditTampered) as caught:
        log.verify(raise_on_failure=True)
    assert caught.value.problems == problems


def test_old_bodies_without_the_error_field_still_verify(tmp_path: Path) -> None:
    """Logs written before records had `error` keep verifying: the stored body is what is hashed."""
    log = fresh_log(tmp_path / "old.sqlite", 0)
    prev = "0" * 64
    raw = sqlite3.connect(log.path)
    for seq in (1, 2):
        body = ('{"action":"x","actor":"a","correlation_id":null,"decision":null,"details":{},"latency":null,'
                f'"outcome":"ok","prev":"{prev}","reason":null,"resource":"","seq":{seq},"tenant":null,"time":1.0}}')
        prev = link_hash(prev, body.encode())
        kid = log.anchor_keys.active
        mac = f"{kid}:{record_mac(log.anchor_keys.mac_key(kid), log.log_id, seq, prev)}"
        raw.execute("INSERT INTO audit(seq, body, hash, mac) VALUES (?, ?, ?, ?)", (seq, body, prev, mac))
    raw.commit()
    raw.close()
    log.append(AuditRecord(actor="b", action="y"))
    assert log.verify().ok and log.verify().records == 3
    log.close()
