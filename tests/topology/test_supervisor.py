"""The supervisor against real worker processes and a real nats-server: bad luck is restarted every
time, a crash loop and a replica that never becomes ready are given up on, loudly (ERROR log, audit
record, unhealthy cell, status file, `cellmono status`).

Intervals are shortened through `[supervision]` with the default shape kept: the default window is
10 s and the issue's replica is killed 5 s after it became ready; here the window is 2 s and the
replica is killed 1 s after it became ready (half a window, as before)."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokers import require, start_nats

from cellmono.security.audit import AuditLog
from cellmono.topology.supervisor import read_status
from cellmono.topology.workers import PromotedApp, build_app

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "supervised"
ROOT = Path(__file__).resolve().parents[2]
CELLMONO = str(Path(sys.executable).parent / "cellmono")
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


def write_app(folder: Path, url: str, ready_timeout: float = 60.0) -> Path:
    shutil.copy(FIXTURE / "flaky_cell.py", folder / "flaky_cell.py")
    settings = folder / "settings.ini"
    settings.write_text(f"""
[app]
name = supervised
cells = flaky
[bus]
drain_timeout = 1
[supervision]
initial_backoff = 0.1
max_backoff = 1
max_restarts = 5
restart_window = 2
healthy_after = 1
ready_timeout = {ready_timeout}
[security]
allow_public = true
[cell.flaky]
class = flaky_cell:FlakyCell
placement = process
transport = nats
crash_marker = {folder / 'crash'}
hang_marker = {folder / 'hang'}
[nats]
url = {url}
prefix = sup
""")
    return settings


@pytest.fixture
def app_folder(tmp_path: Path, monkeypatch, nats_server) -> Path:
    write_app(tmp_path, nats_server.url)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))  # the workers import the cell too
    return tmp_path


async def wait_for(predicate, seconds: float, what: str) -> None:
    give_up = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_replica_killed_every_half_window_after_ready_is_restarted_every_time(app_folder: Path) -> None:
    app = build_app(app_folder / "settings.ini")
    assert isinstance(app, PromotedApp)
    await app.start()
    try:
        status = app.replicas[("flaky", 1)]
        for kill in range(8):
            await wait_for(lambda: status.state == "ready", 60, f"the replica to be ready before kill {kill + 1}")
            pid = status.pid
            await asyncio.sleep(1.0)  # half the window of service, as 5 s is half of the default 10 s
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: status.pid != pid or status.state == "gave_up", 30, "a restart")
            assert status.state != "gave_up", status.snapshot()
        await wait_for(lambda: status.state == "ready", 60, "the replica after the eighth kill")
        assert status.restarts == 8, status.snapshot()
        assert status.backoff == 0.1, status.snapshot()  # ready for healthy_after: the backoff was reset each time
        assert app.everything.cells["flaky"].health().status != "unhealthy"
        assert await app.bus.request("flaky.echo", "still here", timeout=5) == "still here"
        assert read_status(app.status_file)["replicas"][0]["state"] == "ready"
    finally:
        await app.stop()


async def test_crash_loop_is_given_up_on_and_said_everywhere(app_folder: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    app = build_app(app_folder / "settings.ini")
    await app.start()
    try:
        status = app.replicas[("flaky", 1)]
        await wait_for(lambda: status.state == "ready", 60, "the first start")
        (app_folder / "crash").touch()  # from now on every start crashes
        os.kill(status.pid, signal.SIGKILL)
        await wait_for(lambda: status.state == "gave_up", 90, "the supervisor to give up")
        assert status.restarts == 5 and status.reason.startswith("crash loop: 6 crashes"), status.snapshot()
        assert status.last_exit == 3
        errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
        assert any("gave up on worker flaky #1: crash loop" in message for message in errors), errors
        assert app.everything.cells["flaky"].health().status == "unhealthy"
        on_file = read_status(app.status_file)
        assert on_file["replicas"][0]["state"] == "gave_up" and on_file["broker"]["state"] == "connected", on_file
        result = await asyncio.to_thread(  # off the loop: the app keeps answering its broker meanwhile
            subprocess.run, [CELLMONO, "status", "--settings", str(app_folder / "settings.ini")],
            capture_output=True, text=True, timeout=60, cwd=app_folder)
        assert result.returncode == 1, result
        assert "flaky #1" in result.stdout and "gave_up" in result.stdout and "crash loop" in result.stdout, result.stdout
    finally:
        await app.stop()
    audit = AuditLog(str(app_folder / "var" / "audit.sqlite"))
    try:
        records = [entry.fields for entry in audit.entries() if entry.fields.get("action") == "worker.give_up"]
    finally:
        audit.close()
    assert records and records[0]["resource"] == "cell:flaky#1" and records[0]["error"] == "CrashLoop", records


async def test_replica_that_never_becomes_ready_is_given_up_on(tmp_path: Path, monkeypatch, nats_server) -> None:
    write_app(tmp_path, nats_server.url, ready_timeout=8)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    app = build_app(tmp_path / "settings.ini")
    await app.start()
    try:
        status = app.replicas[("flaky", 1)]
        await wait_for(lambda: status.state == "ready", 60, "the first start")
        (tmp_path / "hang").touch()  # the next start never finishes
        pid = status.pid
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: status.state == "gave_up", 60, "the supervisor to give up")
        assert status.reason == "not ready within 8 s of its start", status.snapshot()
        assert status.restarts == 1
        hung = status.pid
        await wait_for(lambda: not os.path.exists(f"/proc/{hung}") or
                       open(f"/proc/{hung}/stat").read().split()[2] == "Z", 10, "the hung replica to be killed")
    finally:
        await app.stop()
