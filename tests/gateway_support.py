"""Helpers shared by the gateway tests: start `cellmono serve` as a real process, make clients and tokens; the echo cell."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from cellmono.core.cell import Cell, tool

ROOT = Path(__file__).resolve().parents[1]
CELLMONO = str(Path(sys.executable).with_name("cellmono"))
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Running:
    """A `cellmono serve` process we started: its URL, first admin key, and the process."""

    url: str
    key: str
    process: subprocess.Popen[str]
    state: Path
    output: list[str]


def state_environment(state: Path) -> dict[str, str]:
    """Environment overrides that put every file an app keeps (keys, KEK, audit log, store) under `state`."""
    return {"CELLMONO__GATEWAY__STATE": str(state), "CELLMONO__SECURITY__AUDIT_PATH": str(state / "audit.sqlite"),
            "CELLMONO__SECURITY__SIGNING_KEYS": str(state / "signing-keys.json"),
            "CELLMONO__SECURITY__STORE_PATH": str(state / "store.sqlite"),
            "CELLMONO__SECURITY__KEK_FILE": str(state / "kek.json")}


@contextlib.contextmanager
def serve(state: Path, *extra: str, environment: dict[str, str] | None = None, timeout: float = 30.0
          ) -> Iterator[Running]:
    """Run `cellmono serve --port 0` on the example app with its state in `state`; stop it with SIGTERM."""
    env = {**os.environ, **state_environment(state), **(environment or {})}
    process = subprocess.Popen([CELLMONO, "serve", "--port", "0", *extra], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output: list[str] = []
    url = key = None
    deadline = time.monotonic() + timeout
    try:
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                url = found.group(1)
            if line.strip().startswith("cmk_"):
                key = line.strip()
            if "stop: Ctrl-C" in line:
                break
        if url is None:
            raise AssertionError("cellmono serve did not start:\n" + "".join(output))
        if key is None and (state / "admin-key").is_file():  # stdout is a pipe: the first key went to a 0600 file
            key = (state / "admin-key").read_text().strip()
        yield Running(url, key or "", process, state, output)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def modern_request(method: str, params: dict | None = None, *, key: str | None, request_id: int = 1,
                   name: str | None = None) -> tuple[dict[str, str], bytes]:
    """Headers and body of one 2026-07-28 request."""
    params = {**(params or {}), "_meta": META}
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if "name" in params or name is not None:
        headers["Mcp-Name"] = name if name is not None else params["name"]
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers, json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()


class Text(BaseModel):
    text: str


class Echo(Cell):
    """The smallest gateway-facing cell: one read tool, one write tool."""

    name = "echo"

    @tool(requires="echo:read")
    async def say(self, request: Text) -> Text:
        """Repeat the text."""
        return Text(text=request.text)

    @tool(requires="echo:write")
    async def shout(self, request: Text) -> Text:
        """Repeat the text loudly."""
        return Text(text=request.text.upper())


def mcp_json(response) -> dict:
    """The JSON-RPC message of an MCP HTTP answer: a JSON body, or the last `data:` event of an SSE body
    (2025-11-25 sessions answer on SSE, so progress, logs and requests to the client can ride the stream)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads([event for event in events if event][-1])
    return response.json()
