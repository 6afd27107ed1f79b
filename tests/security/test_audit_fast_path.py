"""The audit append's fast path (one INSERT on the head this process wrote last) under interleaved writers.

Two handles on one file stand for two processes: each one's cached head goes stale whenever the other
appends, and the primary key on `seq` must send it back to the slow path, never fork or break the chain."""

from __future__ import annotations

from pathlib import Path

from cellmono.security.audit import AuditLog
from cellmono.security.records import AuditRecord
from cellmono.security.signing import SigningKeys


def record(actor: str) -> AuditRecord:
    return AuditRecord(actor=actor, action="tool.call", resource="notes.add")


def test_interleaved_handles_keep_one_verified_chain(tmp_path: Path) -> None:
    keys = SigningKeys()
    first = AuditLog(tmp_path / "audit.sqlite", anchor_keys=keys, anchor_every=None, anchor_interval=None)
    second = AuditLog(tmp_path / "audit.sqlite", anchor_keys=keys, anchor_every=None, anchor_interval=None)
    written = []
    for round_ in range(5):
        written.append(first.append(record(f"a{round_}")).seq)
        written.extend(entry.seq for entry in second.append_many([record(f"b{round_}"), record(f"c{round_}")]))
        written.extend(entry.seq for entry in first.append_many([record(f"d{round_}")] * 3))
        written.append(second.append(record(f"e{round_}")).seq)
    assert written == list(range(1, len(written) + 1))
    report = first.verify()
    assert report.ok, report.problems
    assert report.records == len(written)
    second.close()
    first.close()


def test_returned_entries_match_what_is_stored(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.sqlite", anchor_keys=SigningKeys()) as log:
        returned = [log.append(record("alice")), *log.append_many([record("bob"), record("carol")])]
        stored = list(log.entries())
        assert [(e.seq, e.prev, e.hash) for e in returned] == [(e.seq, e.prev, e.hash) for e in stored]
        assert [e.fields["actor"] for e in returned] == ["alice", "bob", "carol"]
        assert returned[1].prev == returned[0].hash
