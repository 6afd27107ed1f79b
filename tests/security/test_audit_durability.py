"""Audit log under real processes: kill -9 during a write burst, concurrent writers, byte-level tampering, CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellmono.security.audit import AuditLog
from cellmono.security.records import AuditRecord
from cellmono.security.signing import SigningKeys

PYTHON = sys.executable
CELLMONO = str(Path(sys.executable).with_name("cellmono"))

WRITER = textwrap.dedent("""
    import sys
    from cellmono.security.audit import AuditLog
    from cellmono.security.records import AuditRecord
    log = AuditLog(sys.argv[1])
    name, count = sys.argv[2], int(sys.argv[3])
    for index in range(count):
        entry = log.append(AuditRecord(actor=name, action="burst", resource=f"{name}.{index}"))
        print(entry.seq, flush=True)   # acknowledged: printed only after COMMIT returned
""")


def test_kill_9_during_a_write_burst_keeps_every_acknowledged_record(tmp_path):
    path = tmp_path / "audit.sqlite"
    AuditLog(path).close()
    process = subprocess.Popen([PYTHON, "-c", WRITER, str(path), "victim", "1000000"], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 3000 and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        acknowledged.append(int(line))
    os.kill(process.pid, signal.SIGKILL)  # mid-burst: the writer is appending as fast as it can
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL and len(acknowledged) >= 3000
    log = AuditLog(path)
    report = log.verify()
    assert report.ok, report.problems
    stored = {entry.seq: entry.fields["resource"] for entry in log.entries()}
    assert all(seq in stored for seq in acknowledged)
    assert [stored[seq] for seq in acknowledged] == [f"victim.{index}" for index in range(len(acknowledged))]
    assert report.head_seq >= acknowledged[-1]
    log.append(AuditRecord(actor="after", action="restart"))  # the log continues after the crash
    assert log.verify().ok


def test_concurrent_writers_in_several_processes_keep_one_chain(tmp_path):
    path = tmp_path / "audit.sqlite"  # not created beforehand: the writers race to create it
    writers = [subprocess.Popen([PYTHON, "-c", WRITER, str(path), f"w{number}", "400"], stdout=subprocess.PIPE,
                                text=True) for number in range(4)]
    outputs = [writer.communicate(timeout=120)[0] for writer in writers]
    assert all(writer.returncode == 0 for writer in writers)
    log = AuditLog(path)
    report = log.verify()
    assert report.ok and report.records == 1600
    acknowledged = sorted(int(seq) for output in outputs for seq in output.split())
    assert acknowledged == list(range(1, 1601))  # every append got its own sequence number
    per_writer = {}
    for entry in log.entries():
        per_writer.setdefault(entry.fields["actor"], []).append(entry.fields["resource"])
    assert all(resources == [f"{actor}.{index}" for index in range(400)] for actor, resources in per_writer.items())


def test_threads_sharing_one_log_and_the_batched_writer(tmp_path):
    import threading
    log = AuditLog(tmp_path / "audit.sqlite", batch_size=64)
    def work(name: str) -> None:
        for index in range(300):
            (log.submit if index % 2 else log.append)(AuditRecord(actor=name, action="t", resource=str(index)))
    threads = [threading.Thread(target=work, args=(f"t{number}",)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.flush()
    assert len(log) == 1200 and log.verify().ok
    log.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("audit") / "pristine.sqlite"
    with AuditLog(path) as log:
        for index in range(12):
            log.append(AuditRecord(actor=f"user{index}", action="tool.call", resource=f"notes.{index}",
                                   decision="allow", outcome="ok", latency=index / 1000, correlation_id=f"c{index}",
                                   details={"n": index, "text": "héllo"}))
    rows = sqlite3.connect(path).execute("SELECT seq, body, hash FROM audit ORDER BY seq").fetchall()
    return path, rows


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_single_byte_change_is_caught(pristine, tmp_path_factory, data):
    path, rows = pristine
    seq, body, digest = rows[data.draw(st.integers(0, len(rows) - 1))]
    column = data.draw(st.sampled_from(["body", "hash"]))
    raw = (body if column == "body" else digest).encode()
    position = data.draw(st.integers(0, len(raw) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda byte: byte != raw[position]))
    changed = raw[:position] + bytes([value]) + raw[position + 1:]
    copy = tmp_path_factory.mktemp("tamper") / "copy.sqlite"
    source = sqlite3.connect(path)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    try:
        stored = changed.decode()  # keep TEXT when the change is still valid UTF-8, as an editor would
    except UnicodeDecodeError:
        stored = changed
    target.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (stored, seq))
    target.commit()
    target.close()
    log = AuditLog(copy)
    problems = log.verify().problems
    log.close()
    assert problems and any(f"record {seq} " in problem for problem in problems), (column, position, problems)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CELLMONO, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_verify_tail_export(tmp_path):
    keys = SigningKeys()
    keys.save(tmp_path / "signing.json")
    (tmp_path / "settings.ini").write_text(
        "[security]\naudit_path = audit.sqlite\nanchor_file = anchors.jsonl\nsigning_keys = signing.json\n")
    with AuditLog(tmp_path / "audit.sqlite", anchor_keys=keys, anchor_file=tmp_path / "anchors.jsonl") as log:
        for index in range(5):
            log.append(AuditRecord(actor="alice", action="tool.call", resource=f"notes.{index}"))
        log.anchor()
    result = run_cli("audit", "verify", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("ok: 5 records") and "anchors checked" in result.stdout
    tail = run_cli("audit", "tail", "-n", "2", cwd=tmp_path)
    assert tail.returncode == 0 and [json.loads(line)["seq"] for line in tail.stdout.splitlines()] == [4, 5]
    export = run_cli("audit", "export", "-o", "out.jsonl", cwd=tmp_path)
    assert export.returncode == 0 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 5
    raw = sqlite3.connect(tmp_path / "audit.sqlite")
    raw.execute("DELETE FROM audit WHERE seq >= 4")
    raw.execute("DELETE FROM anchors")  # the attacker also cleans the in-database anchors
    raw.commit()
    raw.close()
    result = run_cli("audit", "verify", cwd=tmp_path)
    assert result.returncode == 1 and "log truncated: anchor at record 5 but the log ends at 3" in result.stdout
    missing = run_cli("audit", "verify", "--db", "nope.sqlite", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr + missing.stdout
    (tmp_path / "garbage.sqlite").write_bytes(b"garbage" * 1000)
    corrupted = run_cli("audit", "verify", "--db", "garbage.sqlite", cwd=tmp_path)
    assert corrupted.returncode == 2 and "unusable" in corrupted.stderr + corrupted.stdout
