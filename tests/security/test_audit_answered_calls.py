"""A record is durable before the answer leaves: kill -9 of a real `cellmono serve` during a burst of
tool calls never loses the audit record of a call whose answer a client received."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from cellmono.security.audit import AuditLog
from gateway_support import modern_request, serve


def test_kill_9_during_a_burst_keeps_the_record_of_every_answered_call(tmp_path: Path) -> None:
    answered = [0] * 4
    stop = threading.Event()
    with serve(tmp_path / "state", timeout=120) as running:
        headers, body = modern_request("tools/call", {"name": "digest.summary", "arguments": {}}, key=running.key)

        def burst(slot: int) -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    try:
                        response = http.post(running.url, headers=headers, content=body)
                    except httpx.HTTPError:
                        return  # the server is gone: this call was never answered
                    if response.status_code == 200 and b'"isError":false' in response.content.replace(b" ", b""):
                        answered[slot] += 1

        threads = [threading.Thread(target=burst, args=(slot,)) for slot in range(len(answered))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while sum(answered) < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        running.process.kill()  # SIGKILL: no shutdown, no flush
        running.process.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    assert sum(answered) >= 150
    with AuditLog(tmp_path / "state" / "audit.sqlite", create=False) as log:
        calls = sum(1 for entry in log.entries()
                    if entry.fields["action"] == "gateway.tools/call" and entry.fields["outcome"] == "ok")
        report = log.verify()
    assert calls >= sum(answered), f"{sum(answered)} answers received, only {calls} audit records"
    assert report.ok, report.problems
