"""The gateway's inline audit commit (issue 14), against a real server on 127.0.0.1: a lone call's record is committed
on the event loop through a second connection that never waits; when the log is busy it falls back to the writer
thread, and either way no answer leaves before its record is on disk (kill -9 while another process holds the log).
Each test names the defence it guards."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from test_gateway_durable_audit import BURST, burst, entries
from test_hardening_edge import start, stop


def test_kill_9_of_a_lone_client_s_calls_keeps_the_record_of_every_answered_call(tmp_path: Path) -> None:
    # defence: one client's calls commit inline; while another process holds the log's write lock the inline attempt
    # gives way (busy timeout 0) and the answer waits for the writer thread's commit: kill -9 then loses no record
    server = start(tmp_path, BURST)
    answered, holding, done = [0], threading.Event(), threading.Event()

    def other_writer() -> None:  # takes the audit database's write lock 0.2 s at a time
        database = sqlite3.connect(tmp_path / "var" / "audit.sqlite", timeout=30, isolation_level=None)
        while not done.is_set():
            database.execute("BEGIN IMMEDIATE")
            holding.set()
            done.wait(0.2)
            holding.clear()
            database.execute("COMMIT")
            done.wait(0.1)
        database.close()

    async def run() -> None:
        stop_at = time.monotonic() + 30
        load = asyncio.ensure_future(burst(server.port, server.request(), 1, answered, stop_at))
        while answered[0] < 200 and time.monotonic() < stop_at:
            await asyncio.sleep(0.01)
        writer = threading.Thread(target=other_writer)
        writer.start()
        await asyncio.sleep(0.8)  # a few holds and releases: inline commits, fallbacks, inline again
        while not holding.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)  # inside a hold: the call in flight waits for its record
        os.kill(server.process.pid, signal.SIGKILL)
        done.set()
        writer.join()
        await load

    try:
        asyncio.run(run())
    finally:
        done.set()
        server.process.kill()
        server.process.communicate()
    assert answered[0] >= 200, answered
    calls = [record for record in entries(tmp_path)
             if record["action"] == "gateway.tools/call" and record["outcome"] == "ok"]
    assert len(calls) >= answered[0], f"{answered[0]} answers received, only {len(calls)} audit records on disk"


def test_a_lone_client_s_records_are_committed_without_the_writer_thread(tmp_path: Path) -> None:
    # defence (cost): sequential calls of one client never wake the group-commit thread; each record, committed
    # inline, carries the guard's check (one record per call) and the chain verifies
    server = start(tmp_path, BURST)
    answered = [0]
    try:
        asyncio.run(burst(server.port, server.request(), 1, answered, time.monotonic() + 1.0))
        tasks = Path(f"/proc/{server.process.pid}/task")
        busy = sum(int((task / "stat").read_text().rsplit(")", 1)[1].split()[11])  # utime, in clock ticks
                   for task in tasks.iterdir() if task.name != str(server.process.pid))  # threads beside the loop's
    finally:
        stop(server)
    assert answered[0] >= 100, answered
    assert busy <= 2, f"threads beside the event loop used {busy} ticks of CPU for one client's calls"
    calls = [record for record in entries(tmp_path) if record["action"] == "gateway.tools/call"]
    assert len(calls) >= answered[0] and all(call["details"]["check"] == "granted" for call in calls)
