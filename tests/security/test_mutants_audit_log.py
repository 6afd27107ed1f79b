"""More tests that kill `.ci/mutation audit` survivors (figures in tests/security/MUTATION.md), through a real
`AuditLog` in a temp folder: export, the background writer, decisions from the guard, anchors kept in the log,
the node a shared log ships as."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest

from cellmono.security.audit import AuditLog
from cellmono.security.chain import AuditError
from cellmono.security.guard import Decision
from cellmono.security.records import AuditRecord


def record(actor: str, **extra) -> AuditRecord:
    return AuditRecord(actor=actor, action="tool.call", time=1.0, **extra)


def test_export_writes_every_entry_from_since_as_verifiable_lines(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite") as log:
        log.append_many([record("ana"), record("bo"), record("zoë", details={"note": "café"})])
        out = io.StringIO()
        assert log.export(out) == 3
        lines = out.getvalue().split("\n")
        assert lines[-1] == "" and len(lines) == 4  # one line per entry, each ended by a newline
        assert [json.loads(line)["actor"] for line in lines[:3]] == ["ana", "bo", "zoë"]
        assert "zoë" in lines[2] and "café" in lines[2]  # UTF-8 kept as is, as hashed
        assert [json.loads(line)["seq"] for line in lines[:3]] == [1, 2, 3]
        later = io.StringIO()
        assert log.export(later, since=2) == 2 and [json.loads(line)["seq"] for line in later.getvalue().split()] == [2, 3]
        assert log.export(io.StringIO(), since=4) == 0


def _written_within(log: AuditLog, count: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while len(log) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(log) >= count


def test_group_commit_writes_at_once_when_woken_or_full(tmp_path: Path) -> None:
    """The writer commits what is queued at once; then it waits for a full batch or `flush_interval` (3 s here)."""
    log = AuditLog(tmp_path / "audit.sqlite", batch_size=3, flush_interval=3.0)
    try:
        log.submit(record("a"))  # starts the writer, which finds it queued: written now
        assert _written_within(log, 1, 1.5)
        log.submit(record("b"))
        time.sleep(0.3)
        assert len(log) == 1  # one record, writer idle: it waits for more (group commit)
        log.submit(record("c"))
        log.submit(record("d"))  # three queued: a full batch wakes the writer
        assert _written_within(log, 4, 1.5)
        writers = [thread for thread in threading.enumerate() if thread.name == "cellmono-audit"]
        assert len(writers) == 1 and writers[0].daemon  # never keeps the process alive
    finally:
        log.close()
    with pytest.raises(AuditError) as closed:
        log.submit(record("late"))
    assert str(closed.value) == "audit log is closed"


def test_a_quiet_writer_sleeps_and_close_stops_it(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite", flush_interval=0.05)
    log.submit(record("a"))
    log.flush()
    writer = log._writer
    assert writer is not None and writer.is_alive()
    busy = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - busy < 0.25  # idle: waits on the condition, no busy loop
    log.close()
    assert not writer.is_alive() and len(AuditLog(tmp_path / "audit.sqlite")) == 1


def test_a_guard_decision_becomes_an_audit_record(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite") as log:
        log.record_decision(Decision(actor="eve", tenant="t", action="tool.call", resource="notes.add", allowed=False,
                                     reason="lacks tool:call:notes.add", correlation_id="c1", latency=0.001,
                                     requires=("tool:call:notes.add",), token_id="j9", error="CapabilityDenied"))
        log.flush()
        (entry,) = list(log.entries())
    assert (entry.fields["actor"], entry.fields["decision"], entry.fields["resource"], entry.fields["error"]) == \
        ("eve", "deny", "notes.add", "CapabilityDenied")
    assert entry.fields["details"] == {"requires": ["tool:call:notes.add"], "token_id": "j9"}


def test_stored_anchors_are_the_signed_heads_in_order(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", anchor_every=2, anchor_interval=None) as log:
        log.append(record("a"))
        log.append(record("b"))
        log.append(record("c"))
        anchors = log.stored_anchors()
        assert [anchor.seq for anchor in anchors] == [0, 2]
        assert all(anchor.log_id == log.log_id for anchor in anchors)
        assert anchors[1].hash == list(log.entries())[1].hash
        assert log.verify().ok


def test_a_shared_log_ships_under_the_first_node_name(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as first, AuditLog(path) as second:
        assert first.claim_node("node-a") == "node-a"
        assert second.claim_node("node-b") == "node-a"
        assert first.claim_node("node-a") == "node-a"
    with AuditLog(path) as again:
        assert again.claim_node("node-c") == "node-a"


def _lone_record_within(log: AuditLog, seconds: float) -> bool:
    log.submit(record("first"))
    log.flush()
    time.sleep(0.1)  # the writer is idle now, waiting
    log.submit(record("lone"))  # not a full batch, nobody flushes: the interval alone writes it
    return _written_within(log, 2, seconds)


def test_a_lone_record_is_written_within_the_flush_interval(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite", flush_interval=0.2)
    try:
        assert _lone_record_within(log, 1.5)
    finally:
        log.close()
    default = AuditLog(tmp_path / "b.sqlite")  # the default interval is 50 ms
    try:
        assert _lone_record_within(default, 0.6)
    finally:
        default.close()


def test_one_handle_writes_one_authenticated_chain(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", anchor_every=None, anchor_interval=None) as log:
        returned = [log.append(record("a")), log.append(record("b")), *log.append_many([record("c")]),
                    *log.append_many([record("d"), record("e")]), *log.append_many([record("f"), record("g"),
                                                                                    record("h")]),
                    log.append(record("i"))]
        stored = list(log.entries())
        assert [entry.seq for entry in returned] == list(range(1, 10)) == [entry.seq for entry in stored]
        assert [entry.hash for entry in returned] == [entry.hash for entry in stored]
        assert [entry.prev for entry in returned] == [entry.prev for entry in stored] == \
            ["0" * 64] + [entry.hash for entry in stored[:-1]]
        assert [entry.fields["actor"] for entry in returned] == [entry.fields["actor"] for entry in stored] == \
            list("abcdefghi")
        assert all("seq" not in entry.fields and "prev" not in entry.fields for entry in stored)
        assert log.head() == (9, stored[-1].hash) and len(log) == 9
        assert [entry.seq for entry in log.tail()] == list(range(1, 10)) and [e.seq for e in log.tail(2)] == [8, 9]
        report = log.verify()
        assert report.ok and report.records == 9, report.problems  # every record's MAC checks out too


def test_twenty_is_the_default_tail(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite") as log:
        log.append_many([record(f"u{n}") for n in range(25)])
        assert [entry.seq for entry in log.tail()] == list(range(6, 26))


def test_two_writers_on_one_file_never_fork_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as first, AuditLog(path) as second:
        assert first.append(record("1")).seq == 1
        assert second.append(record("2")).seq == 2
        assert first.append(record("3")).seq == 3  # its head was stale: it follows the other writer's record
        assert second.append(record("4")).seq == 4
        assert [entry.seq for entry in first.append_many([record("5"), record("6")])] == [5, 6]
        assert [entry.seq for entry in second.append_many([record("7")])] == [7]
        assert [entry.fields["actor"] for entry in first.entries()] == list("1234567")
        assert first.verify().ok and second.verify().ok


def test_anchors_follow_anchor_every_across_single_and_batched_writes(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", anchor_every=2, anchor_interval=None) as log:
        for name in "abc":
            log.append(record(name))
        assert [anchor.seq for anchor in log.stored_anchors()] == [0, 2]
        log.append_many([record("d"), record("e"), record("f")])  # 4..6 crosses 4 and 6: one anchor, at 6
        assert [anchor.seq for anchor in log.stored_anchors()] == [0, 2, 6]
        log.append_many([record("g")])
        assert [anchor.seq for anchor in log.stored_anchors()] == [0, 2, 6]


def test_anchors_follow_anchor_interval(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", anchor_every=None, anchor_interval=0.3) as log:
        log.append(record("a"))
        log.append(record("b"))
        assert [anchor.seq for anchor in log.stored_anchors()] == [0]
        time.sleep(0.4)
        log.append(record("c"))
        assert [anchor.seq for anchor in log.stored_anchors()] == [0, 3]


def test_a_thousand_records_are_anchored_by_default(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", anchor_interval=None) as log:
        log.append_many([record("x")] * 999)
        assert [anchor.seq for anchor in log.stored_anchors()] == [0]
        log.append(record("y"))
        assert [anchor.seq for anchor in log.stored_anchors()] == [0, 1000]


def test_close_anchors_the_head_once(tmp_path: Path) -> None:
    path, anchors = tmp_path / "audit.sqlite", tmp_path / "anchors.jsonl"
    options = {"anchor_file": anchors, "anchor_every": None, "anchor_interval": None}
    with AuditLog(path, **options) as log:
        log.append(record("a"))
        log.append(record("b"))
    assert [json.loads(line)["seq"] for line in anchors.read_text().splitlines()] == [0, 2]
    with AuditLog(path, **options):
        pass  # nothing written: nothing to anchor
    assert [json.loads(line)["seq"] for line in anchors.read_text().splitlines()] == [0, 2]


def test_an_emptied_anchor_table_is_never_refilled_silently(tmp_path: Path) -> None:
    import sqlite3
    path = tmp_path / "audit.sqlite"
    with AuditLog(path) as log:
        log.append(record("a"))
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("DELETE FROM anchors")  # an attacker hides the signed heads
    connection.close()
    for _ in range(2):  # reopened, written to and closed again: still no anchor, still failing
        with AuditLog(path) as log:
            log.append(record("b"))
    with AuditLog(path) as log:
        problems = log.verify().problems
        assert log.stored_anchors() == []
    assert problems == [f"no signed anchor of log {log.log_id!r} (anchors removed, or the log's identity changed)"]


# -- failures an operator meets: locked, damaged, old or keyless files --------------------------------------------

def _hold_write_lock(path: Path):
    import sqlite3
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in a long transaction (a backup, a stuck writer)
    return other


def test_a_locked_log_gives_a_typed_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditLog(path, busy_timeout=0.05) as log:
        log.append(record("a"))
        other = _hold_write_lock(path)
        try:
            for write in (lambda: log.append(record("b")), lambda: log.append_many([record("c"), record("d")])):
                with pytest.raises(AuditError) as caught:
                    write()
                assert str(caught.value) == f"audit append to '{path}' failed: database is locked"
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert log.append(record("e")).seq == 2 and log.verify().ok


def test_a_failed_background_write_is_reported_by_flush(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = AuditLog(path, busy_timeout=0.05)
    log.append(record("a"))
    other = _hold_write_lock(path)
    try:
        log.submit(record("b"))
        with pytest.raises(AuditError) as caught:
            log.flush()
        assert str(caught.value) == (f"background audit write failed: audit append to '{path}' failed: "
                                     "database is locked")
        log.flush()  # reported once
    finally:
        other.execute("ROLLBACK")
        other.close()
        log.close()


def test_flush_gives_up_at_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = AuditLog(path, busy_timeout=2.0)
    log.append(record("a"))
    other = _hold_write_lock(path)
    try:
        log.submit(record("b"))  # the writer takes it and waits for the lock
        time.sleep(0.2)
        log.submit(record("c"))  # queued behind it
        started = time.monotonic()
        with pytest.raises(AuditError) as caught:
            log.flush(timeout=0.3)
        assert str(caught.value) == "audit flush timed out" and time.monotonic() - started < 0.9
    finally:
        other.execute("ROLLBACK")
        other.close()
    log.flush()  # the lock was released within busy_timeout: b and c land
    assert len(log) == 3
    log.close()


def test_damaged_or_foreign_files_are_named(tmp_path: Path) -> None:
    import sqlite3

    from cellmono.security.chain import AuditCorrupted
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"x" * 4096)
    with pytest.raises(AuditCorrupted) as not_a_database:
        AuditLog(junk)
    assert str(not_a_database.value) == f"audit database '{junk}' is unusable: file is not a database"
    other = tmp_path / "other.sqlite"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE notes (x)")
    connection.close()
    with pytest.raises(AuditCorrupted) as not_audit:
        AuditLog(other, create=False)
    assert str(not_audit.value) == f"'{other}' is a SQLite database but not a cellmono audit log"
    path = tmp_path / "audit.sqlite"
    log = AuditLog(path)
    log.append(record("a"))
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE audit")
    connection.close()
    for read in (lambda: len(log), log.verify):
        with pytest.raises(AuditCorrupted) as dropped:
            read()
        assert str(dropped.value) == f"audit database '{path}' is unusable: no such table: audit"


def test_a_log_written_before_records_were_authenticated_opens_and_grows(tmp_path: Path) -> None:
    import sqlite3

    from cellmono.security.audit import KEY_FILE
    from cellmono.security.signing import SigningKeys
    path = tmp_path / "audit.sqlite"
    SigningKeys().save(tmp_path / KEY_FILE)
    connection = sqlite3.connect(path)
    connection.executescript("CREATE TABLE audit (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, hash TEXT NOT NULL);")
    connection.close()
    with AuditLog(path) as log:
        assert log.append(record("a")).seq == 1 and log.verify().ok
    connection = sqlite3.connect(path)
    assert [row[1] for row in connection.execute("PRAGMA table_info(audit)")] == ["seq", "body", "hash", "mac"]
    assert connection.execute("SELECT mac FROM audit").fetchone()[0]
    connection.close()


def test_a_log_without_its_key_ring_cannot_vouch_for_its_records(tmp_path: Path) -> None:
    from cellmono.core.errors import ConfigError
    from cellmono.security.audit import KEY_FILE
    path = tmp_path / "audit.sqlite"
    AuditLog(path).close()
    (tmp_path / KEY_FILE).unlink()
    with AuditLog(path) as log:
        assert log.anchor_keys is None
        log.append_many([record("a"), record("b")])
        log.append(record("c"))
        assert "no audit key to authenticate the records (give the signing key file)" in log.verify().problems
        with pytest.raises(ConfigError) as caught:
            log.anchor()
        assert str(caught.value) == "audit anchoring needs anchor_keys (a SigningKeys ring)"


def test_a_given_ring_signs_and_nothing_is_created_beside_the_log(tmp_path: Path) -> None:
    from cellmono.security.audit import KEY_FILE
    from cellmono.security.signing import SigningKeys
    ring = SigningKeys()
    with AuditLog(tmp_path / "audit.sqlite", anchor_keys=ring) as log:
        assert log.anchor_keys is ring and [a.key_id for a in log.stored_anchors()] == [ring.active]
    assert not (tmp_path / KEY_FILE).exists()


def test_anchors_carry_the_heads_the_witness_saw_and_sign_them(tmp_path: Path) -> None:
    from cellmono.security.chain import verify_chain
    with AuditLog(tmp_path / "audit.sqlite") as log:
        log.witness = lambda: {"node-b": (3, "ab" * 32)}
        anchor = log.anchor()
        assert anchor.heads == {"node-b": (3, "ab" * 32)}
        keys = log.anchor_keys.public_keys()
    forged = anchor.model_copy(update={"heads": {"node-b": (9, "cd" * 32)}})
    assert verify_chain([], [anchor], keys).ok
    assert verify_chain([], [forged], keys).problems == ["anchor at record 0 has an invalid signature"]


def test_verify_uses_the_anchor_file_and_ignores_other_logs_anchors(tmp_path: Path) -> None:
    import sqlite3
    path, anchors = tmp_path / "audit.sqlite", tmp_path / "anchors.jsonl"
    with AuditLog(path, anchor_file=anchors, anchor_every=None, anchor_interval=None) as log:
        log.append_many([record("a"), record("b"), record("c")])
        log.anchor()
        with AuditLog(tmp_path / "other.sqlite", anchor_keys=log.anchor_keys) as other:
            other.append(record("z"))
            foreign = other.anchor()  # another log's head (seq 1), signed by the same ring
        assert log.verify([foreign]).ok
    connection = sqlite3.connect(path)
    with connection:  # truncated, and the stored anchors trimmed to match: only the anchor file remembers
        connection.execute("DELETE FROM audit WHERE seq > 1")
        connection.execute("DELETE FROM anchors WHERE seq > 1")
    connection.close()
    with AuditLog(path, anchor_file=anchors) as log:
        assert "log truncated: anchor at record 3 but the log ends at 1" in log.verify().problems
    log.close()


def test_a_changed_log_identity_is_named_for_every_readable_anchor(tmp_path: Path) -> None:
    import sqlite3
    path = tmp_path / "audit.sqlite"
    with AuditLog(path, anchor_every=None, anchor_interval=None) as log:
        log.append(record("a"))
        log.anchor()
        old = log.log_id
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("UPDATE anchors SET anchor = 'garbage' WHERE seq = 0")
        connection.execute("UPDATE meta SET value = 'forged' WHERE key = 'log_id'")
    connection.close()
    with AuditLog(path) as log:
        problems = log.verify().problems
    assert "a stored anchor is unreadable (modified)" in problems
    assert (f"anchor at record 1 belongs to log {old!r}, but the log says it is 'forged' (its identity was changed)"
            in problems)
    assert all(isinstance(problem, str) for problem in problems)
