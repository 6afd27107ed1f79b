"""`cellmono serve` runs the trigger loop: the real server on the example app, defaults except short trigger windows,
two real MCP clients (the official SDK over streamable HTTP) calling `notes.add`; the `users` rule fires in `recommend`
mode, the decision is in the log and in `cellmono audit` output, `triggers explain` / `status` / `record` see it, and a
recorded trace replays to the same decision. Bad input: nonsense thresholds, a key without `ops:promote`, bad
`record` arguments."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway_support import CELLMONO, ROOT, serve, state_environment

# short windows for the run; everything else is the defaults (mode recommend, telemetry on, tracing off)
WINDOWS = {"CELLMONO__TRIGGERS__INTERVAL": "0.2", "CELLMONO__TRIGGERS__UP_DELAY": "0.4",
           "CELLMONO__TRIGGERS__BURN_WINDOWS": "10/2@14.4", "CELLMONO__TRIGGERS__USERS_ENTER": "1",
           "CELLMONO__TRIGGERS__USERS_EXIT": "0", "CELLMONO__TELEMETRY__WINDOW": "2"}


def cellmono(state: Path, *arguments: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **state_environment(state), **WINDOWS, "CELLMONO__LOG__LEVEL": "WARNING"}
    env.pop("CELLMONO_API_KEY", None)
    if key is not None:
        env["CELLMONO_API_KEY"] = key
    return subprocess.run([CELLMONO, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


async def load(url: str, keys: list[str], seconds: float) -> tuple[int, list[str]]:
    """Each key's MCP client calls `notes.add` in turn for `seconds`: distinct principals at once."""
    answered, failures = 0, []

    async def one(key: str) -> None:
        nonlocal answered
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30.0))
        async with Client(streamable_http_client(url, http_client=http), mode="2026-07-28", cache=None) as mcp:
            await mcp.list_tools()  # the first call can take seconds on a busy machine: the load starts after it
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                result = await mcp.call_tool("notes.add", {"title": "under load"})
                if result.is_error:
                    failures.append(str(result.content))
                else:
                    answered += 1
                await asyncio.sleep(0.02)  # under the per-caller rate limit

    await asyncio.gather(*(one(key) for key in keys))
    return answered, failures


def decisions(state: Path) -> list[dict]:
    exported = cellmono(state, "audit", "export", "--db", str(state / "audit.sqlite"))
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    return [record for record in records if record.get("action") == "triggers.decision"]


def test_serve_recommends_under_load_and_audits_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with serve(state, environment=WINDOWS) as running:
        second = cellmono(state, "serve", "--new-key", "bob", "--role", "editor")
        assert second.returncode == 0, second.stderr
        editor = second.stdout.strip()
        time.sleep(3.0)  # startup's own calls (the importer) leave the 2 s window
        assert decisions(state) == [], "no decision before the load"
        started = time.time()
        answered, failures = asyncio.run(load(running.url, [running.key, editor], 4.0))
        assert failures == [] and answered > 20, (answered, failures[:3])
        time.sleep(0.5)

        found = [record for record in decisions(state) if record["resource"] == "notes"
                 and record["details"]["action"] == "promote"]
        assert found, decisions(state)
        decision = found[0]
        assert decision["time"] >= started, "decided under the load, not before it"
        details = decision["details"]
        assert (details["mode"], details["acted"], details["rule"]) == ("recommend", False, "users"), details
        assert details["inputs"]["users"] >= 2 and details["inputs"]["users_enter"] == 1, details["inputs"]
        assert details["counterfactual"] == "if not acted on: stays in process"

        explained = cellmono(state, "triggers", "explain", "notes", "--db", str(state / "audit.sqlite"))
        assert explained.returncode == 0, explained.stderr
        assert "(recommend mode, not acted on)" in explained.stdout and "rule: users:" in explained.stdout

        status = cellmono(state, "triggers", "status", key=running.key)
        assert status.returncode == 0, status.stderr
        line = next(line for line in status.stdout.splitlines() if line.startswith("notes:"))
        assert line.startswith("notes: in process; recommend mode, level 0,") and "users " in line, status.stdout

        refused = cellmono(state, "triggers", "status", key=editor)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "bob (roles editor) lacks ops:promote" in refused.stderr and "Traceback" not in refused.stderr
        refused = cellmono(state, "triggers", "record", str(tmp_path / "no.jsonl"), key=editor)
        assert refused.returncode == 2 and "lacks ops:promote" in refused.stderr and not (tmp_path / "no.jsonl").exists()

        trace = tmp_path / "trace.jsonl"
        recorded = cellmono(state, "triggers", "record", str(trace), "--seconds", "0.5", key=running.key)
        assert recorded.returncode == 0, recorded.stderr
        again = cellmono(state, "triggers", "record", str(trace), key=running.key)
        assert again.returncode == 2 and "exists" in again.stderr, again.stderr
        bad = cellmono(state, "triggers", "record", str(tmp_path / "x.jsonl"), "--seconds", "-3", key=running.key)
        assert bad.returncode == 2 and "--seconds -3" in bad.stderr, bad.stderr
    output = "".join(running.output) + (running.process.stdout.read() if running.process.stdout else "")
    assert "cell notes: would promote [rule users:" in output, output[-3000:]
    assert "(recommend mode, not acted on; if not acted on: stays in process)" in output

    settings = tmp_path / "settings.ini"  # the same thresholds, from a file, for the replay
    settings.write_text("[triggers]\nup_delay = 0.4\nburn_windows = 10/2@14.4\nusers_enter = 1\nusers_exit = 0\n")
    replayed = cellmono(state, "triggers", "simulate", str(trace), "--settings", str(settings), "--mode", "recommend")
    assert replayed.returncode == 0, replayed.stderr
    assert any(" notes promote [users] level 0->1" in line for line in replayed.stdout.splitlines()), replayed.stdout


def test_nonsense_thresholds_stop_serve_before_it_starts(tmp_path: Path) -> None:
    env = {**os.environ, **state_environment(tmp_path / "state"), "CELLMONO__TRIGGERS__USERS_ENTER": "2",
           "CELLMONO__TRIGGERS__USERS_EXIT": "5"}
    done = subprocess.run([CELLMONO, "serve", "--port", "0", "--seconds", "5"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "users_exit (5) must be below users_enter (2)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "control.sock").exists()
