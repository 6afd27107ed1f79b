"""Cancel-on-disconnect on 2025-11-25 sessions (issue 13), against `cellmono serve` on the conformance app: a client
whose connection for a `tools/call` goes away mid-call, or that ends its session with DELETE, has the call cancelled,
and the audit record says so."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from cellmono.security.audit import AuditLog
from gateway_support import serve

SETTINGS = "examples/conformance/settings.ini"
SLOW = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "slow_compute", "arguments": {"seconds": 30, "label": "never"}}}


async def open_session(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    hello = await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "dropper", "version": "1"}}})
    assert hello.status_code == 200, hello.text
    headers = {"mcp-session-id": hello.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    done = await client.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert done.status_code == 202
    return headers


def calls(state: Path) -> list[dict]:
    with AuditLog(state / "audit.sqlite", create=False) as log:
        return [e.fields for e in log.entries() if e.fields["action"] == "gateway.tools/call"]


async def cancelled_record(state: Path, seconds: float = 10.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [r for r in calls(state) if r["resource"] == "tasks.slow_compute"]
        if found:
            return found[-1]
        await asyncio.sleep(0.1)
    raise AssertionError("no audit record of the call")


def test_a_client_that_drops_mid_call_has_the_call_cancelled(tmp_path: Path) -> None:
    with serve(tmp_path / "state", "--settings", SETTINGS) as server:
        async def scenario() -> dict:
            auth = {"Authorization": f"Bearer {server.key}", "Accept": "application/json, text/event-stream"}
            async with httpx.AsyncClient(headers=auth, timeout=10) as client:
                session = await open_session(client, server.url)
                started = time.monotonic()
                with pytest_raises_timeout():
                    async with client.stream("POST", server.url, headers=session, json=SLOW) as response:
                        assert response.status_code == 200
                        async for _ in response.aiter_bytes():  # nothing comes for 30 s: the client gives up
                            pass
                record = await cancelled_record(server.state)
                assert time.monotonic() - started < 10  # cancelled, not finished after 30 s
                return record

        record = asyncio.run(scenario())
    assert (record["outcome"], record["reason"]) == ("cancelled", "the client disconnected; the call was cancelled")


def test_deleting_the_session_cancels_its_call(tmp_path: Path) -> None:
    with serve(tmp_path / "state", "--settings", SETTINGS) as server:
        async def scenario() -> dict:
            auth = {"Authorization": f"Bearer {server.key}", "Accept": "application/json, text/event-stream"}
            async with httpx.AsyncClient(headers=auth, timeout=20) as client:
                session = await open_session(client, server.url)

                async def call() -> None:
                    async with client.stream("POST", server.url, headers=session, json=SLOW) as response:
                        async for _ in response.aiter_bytes():
                            pass

                running = asyncio.ensure_future(call())
                await asyncio.sleep(1.0)
                deleted = await client.delete(server.url, headers=session)
                assert deleted.status_code == 200, deleted.text
                record = await cancelled_record(server.state)
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                return record

        record = asyncio.run(scenario())
    assert record["outcome"] == "cancelled"


class pytest_raises_timeout:
    """Give the stream 1.5 s, then leave (closing the connection), as a client that gives up does."""

    def __enter__(self):
        self.task = asyncio.current_task()
        self.handle = asyncio.get_running_loop().call_later(1.5, self.task.cancel)
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self.handle.cancel()
        if kind is asyncio.CancelledError:
            self.task.uncancel()
            return True
        return False
