"""`AuditLog.try_append_many`, the gateway's inline commit of a lone record on its event loop: it never waits,
writes on the head it knows (or reads), and gives up with nothing written (None) when anything else holds or moved
the log, so the waiting path (the writer thread) sorts it out. Kills `.ci/mutation audit` survivors
(tests/security/MUTATION.md)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cellmono.security.audit import AuditLog
from cellmono.security.records import AuditRecord
from cellmono.security.signing import SigningKeys


def record(actor: str) -> AuditRecord:
    return AuditRecord(actor=actor, action="tool.call", time=1.0)


def stored(path: Path) -> list[tuple[int, str]]:
    with AuditLog(path, create=False) as log:
        assert log.verify().ok
        return [(entry.seq, entry.fields["actor"]) for entry in log.entries()]


def test_a_lone_record_is_written_on_a_fresh_log_and_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as log:
        entries = log.try_append_many([record("ana")])
        assert entries is not None and [entry.seq for entry in entries] == [1]
        again = log.try_append_many([record("bo")])  # on the head it wrote
        assert again is not None and again[0].seq == 2 and again[0].prev == entries[0].hash
    assert stored(path) == [(1, "ana"), (2, "bo")]


def test_several_records_go_in_one_transaction_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as log:
        log.append(record("first"))
        entries = log.try_append_many([record("a"), record("b"), record("c")])
        assert entries is not None and [entry.seq for entry in entries] == [2, 3, 4]
    assert stored(path) == [(1, "first"), (2, "a"), (3, "b"), (4, "c")]


def test_nothing_to_write_or_a_closed_log_is_none(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite")
    assert log.try_append_many([]) is None
    log.close()
    assert log.try_append_many([record("late")]) is None
    assert stored(tmp_path / "audit.sqlite") == []


def test_another_writer_holding_the_file_means_none_at_once_and_nothing_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as log:
        log.append(record("before"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process is writing
        try:
            assert log.try_append_many([record("inline")]) is None
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert log.try_append_many([record("after")]) is not None  # free again: inline works
    assert stored(path) == [(1, "before"), (2, "after")]


def test_another_thread_holding_the_log_means_none(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite") as log:
        log._lock.acquire()
        try:
            assert log.try_append_many([record("inline")]) is None
        finally:
            log._lock.release()
        assert len(log) == 0


def test_a_stale_head_after_another_process_appended_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as mine, AuditLog(path) as theirs:
        mine.append(record("mine"))
        theirs.append(record("theirs"))  # mine's head is now stale: its next seq is taken
        assert mine.try_append_many([record("stale")]) is None
        mine.append(record("waited"))  # the waiting path re-reads the head
    assert stored(path) == [(1, "mine"), (2, "theirs"), (3, "waited")]


def test_an_inline_write_that_crosses_anchor_every_signs_an_anchor(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", anchor_keys=SigningKeys(), anchor_every=2, anchor_interval=None) as log:
        assert log.try_append_many([record("one")]) is not None
        assert [anchor.seq for anchor in log.stored_anchors()] == [0]  # the log's genesis anchor only
        assert log.try_append_many([record("two")]) is not None
        assert [anchor.seq for anchor in log.stored_anchors()] == [0, 2]


def test_the_inline_connection_keeps_the_logs_durability(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", durability="full") as log:
        assert log.try_append_many([record("ana")]) is not None
        assert log._inline is not None and log._inline.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
