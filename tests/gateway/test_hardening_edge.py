"""The gateway's HTTP front under attack, against a real server on 127.0.0.1 driven with raw sockets: header
deadlines and size, slow bodies on both protocol paths, connections and calls per client address, a client that
goes away mid-call, Ctrl-C with streams open. Each test names the defence it guards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway_support import modern_request, state_environment

TESTS = Path(__file__).resolve().parents[1]
FRONT = {"port": "0", "header_timeout": "1", "body_timeout": "1", "max_header_bytes": "8192", "max_connections_per_ip": "24",
         "max_in_flight": "6", "max_in_flight_per_ip": "4", "rate": "1e6", "burst": "1e6", "tool_rate": "1e6",
         "tool_burst": "1e6"}
SERVER = r'''
import asyncio, json, sys
from pathlib import Path
from pydantic import BaseModel
from cellmono.core.app import App
from cellmono.core.cell import Cell, tool
from cellmono.core.config import Settings
from cellmono.runtime.serve import build, serve_http

class Text(BaseModel):
    text: str

class Seconds(BaseModel):
    seconds: float

class Echo(Cell):
    name = "echo"

    @tool(requires="echo:read")
    async def say(self, request: Text) -> Text:
        """Repeat the text."""
        return request

class Slow(Cell):
    name = "slow"

    @tool(requires="echo:read")
    async def wait(self, request: Seconds) -> Seconds:
        """Wait, noting the start and a cancellation."""
        marks = Path(sys.argv[2]) / "marks"
        with marks.open("a") as file:
            file.write("started\n")
        try:
            await asyncio.sleep(request.seconds)
        except asyncio.CancelledError:
            with marks.open("a") as file:
                file.write("cancelled\n")
            raise
        return request

folder = Path(sys.argv[2])
settings = Settings(source=str(folder / "settings.ini"), extra_sections={
    "gateway": {**json.loads(sys.argv[1]), "state": str(folder / "state")},
    "security": {"role.reader": "tool:call:echo.say, tool:call:slow.wait, echo:read", "role.admin": "*:*"}})
served = build(App([Echo(), Slow()], settings=settings))
reader = served.api_keys.create("rita", ["reader"])
asyncio.run(serve_http(served, on_ready=lambda url: print(json.dumps({"url": url, "reader": reader}), flush=True)))
'''


@dataclass
class Server:
    """A gateway process we started: where it listens, a reader's key, its folder."""

    url: str
    port: int
    key: str
    folder: Path
    process: subprocess.Popen[str]

    def raw(self, source: str = "127.0.0.1") -> socket.socket:
        """A fresh connection from `source` (any 127.0.0.0/8 address: a client of its own)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10, source_address=(source, 0))
        return sock

    def request(self, method: str = "tools/call", params: dict | None = None, *, key: str | None = "reader",
                body: bytes | None = None, extra: str = "") -> bytes:
        """The bytes of one 2026-07-28 request (`body` overrides the JSON-RPC body)."""
        params = params if params is not None else {"name": "echo.say", "arguments": {"text": "hi"}}
        headers, encoded = modern_request(method, params, key=self.key if key == "reader" else key)
        encoded = body if body is not None else encoded
        head = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + extra + f"Content-Length: {len(encoded)}\r\n\r\n"
        return head.encode() + encoded


def start(folder: Path, gateway: dict[str, str]) -> Server:
    script = folder / "server.py"
    script.write_text(SERVER)
    process = subprocess.Popen([sys.executable, str(script), json.dumps(gateway), str(folder), str(TESTS)],
                               env={**os.environ, **state_environment(folder / "state")}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    while line and not line.startswith("{"):
        line = process.stdout.readline()
    if not line.startswith("{"):
        process.kill()
        raise AssertionError(f"server did not start: {line}{process.stderr.read() if process.stderr else ''}")
    ready = json.loads(line)
    return Server(ready["url"], int(ready["url"].rsplit(":", 1)[1].split("/")[0]), ready["reader"], folder, process)


def stop(server: Server) -> str:
    """SIGINT the server; its stderr."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
    try:
        _, err = server.process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        _, err = server.process.communicate()
    return err


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start(tmp_path_factory.mktemp("edge"), FRONT)
    yield running
    stop(running)


def answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes]:
    """Status and body of the next response on `sock` (0 when the server closed it without one)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return 0, b""
        if not chunk:
            return 0, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split(b" ")[1]), rest[:length]


def call(server: Server, source: str = "127.0.0.2", **options) -> tuple[int, float]:
    """One echo call on a fresh connection from `source`: status and seconds taken."""
    started = time.perf_counter()
    with server.raw(source) as sock:
        sock.sendall(server.request(**options))
        status, _ = answer(sock)
    return status, time.perf_counter() - started


def test_headers_over_the_limit_are_431_with_a_clear_body(server: Server) -> None:
    # defence: total header size capped, 431 with a clear body
    with server.raw() as sock:
        sock.sendall(server.request(extra="X-Padding: " + "a" * 9000 + "\r\n"))
        status, body = answer(sock)
    assert status == 431, (status, body)
    assert json.loads(body)["message"] == "request headers over the limit of 8192 bytes"
    assert call(server)[0] == 200


def test_a_64_mib_header_is_refused_without_slowing_anyone(server: Server) -> None:
    # defence: a 64 MiB header value is cut off at the limit, while everyone else is answered at normal latency
    outcome: list[object] = []

    def flood() -> None:
        sent = 0
        with server.raw() as sock:
            try:
                sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Huge: ")
                chunk = b"a" * (1024 * 1024)
                for _ in range(64):
                    sock.sendall(chunk)
                    sent += len(chunk)
                outcome.append(answer(sock)[0])
            except OSError:
                outcome.append(("cut", sent))

    thread = threading.Thread(target=flood)
    thread.start()
    latencies = [call(server)[1] for _ in range(20)]
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert outcome and (outcome[0] == 431 or outcome[0][0] == "cut"), outcome
    assert max(latencies) < 1.0, latencies


def test_slowloris_headers_are_cut_at_their_deadline(server: Server) -> None:
    # defence: read deadline for request headers; slow clients hold no slot meanwhile
    socks = [server.raw() for _ in range(8)]
    try:
        for sock in socks:
            sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.perf_counter()
        for _ in range(4):  # drip a header line now and then: never finishing
            for sock in socks:
                sock.sendall(b"X-Drip: 1\r\n")
            status, latency = call(server)
            assert status == 200 and latency < 1.0
            time.sleep(0.2)
        statuses = [answer(sock, timeout=5)[0] for sock in socks]
        assert statuses == [408] * 8, statuses
        assert time.perf_counter() - started < 4
    finally:
        for sock in socks:
            sock.close()


def test_a_kept_alive_connection_gets_the_header_deadline_again_after_each_answer(server: Server) -> None:
    # defence: the header deadline restarts at each answer (one timer per connection, moved on lazily, not one per
    # request): slowloris on a later request of a kept-alive connection is cut like on a first one; an idle kept-alive
    # connection is closed without an answer; an answer's head and body arrive together
    with server.raw() as sock:
        for _ in range(4):  # answered requests, each well inside the deadline, spanning more than one deadline
            sock.sendall(server.request())
            sock.settimeout(5)
            first = sock.recv(65536)  # one write per answer: the first read holds the head and the whole body
            head, _, body = first.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["result"], first
            time.sleep(0.4)
        answered = time.perf_counter()
        sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(3):
            time.sleep(0.2)
            sock.sendall(b"X-Drip: 1\r\n")
        assert answer(sock, timeout=5)[0] == 408
        assert 0.5 < time.perf_counter() - answered < 2.5
    with server.raw() as sock:
        sock.sendall(server.request())
        assert answer(sock, timeout=5)[0] == 200
        answered = time.perf_counter()
        assert answer(sock, timeout=5) == (0, b"")  # idle past the deadline: closed, nothing sent
        assert 0.5 < time.perf_counter() - answered < 2.5


@pytest.mark.parametrize("path", ["stateless", "sessions"])
@pytest.mark.parametrize("who", ["authenticated", "unauthenticated"])
def test_slow_bodies_hold_no_slot_and_hit_their_deadline(server: Server, path: str, who: str) -> None:
    # defences: authenticate before a slot; body read deadline; the slow-body attack on both paths leaves others served
    key = server.key if who == "authenticated" else None
    if path == "stateless":
        prefix = server.request(key=key or None, body=b"{" + b" " * 999)[:-1000]
    else:  # 2025-11-25: the SDK's session path
        head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
                f"Accept: application/json, text/event-stream\r\n" +
                (f"Authorization: Bearer {key}\r\n" if key else "") + "Content-Length: 1000\r\n\r\n")
        prefix = head.encode()
    socks = [server.raw() for _ in range(10)]  # more than the 6 slots
    try:
        for sock in socks:
            sock.sendall(prefix + b"{")
        for _ in range(3):
            for sock in socks:
                sock.sendall(b" ")
            status, latency = call(server)
            assert status == 200 and latency < 1.0, (status, latency)
        statuses = [answer(sock, timeout=5)[0] for sock in socks]
        assert set(statuses) <= {408, 401, 0} and 408 in statuses or (key is None and 401 in statuses), statuses
    finally:
        for sock in socks:
            sock.close()


def test_connections_per_address_are_capped(server: Server) -> None:
    # defence: per-client-IP connection cap; other addresses are unaffected
    socks = [server.raw("127.0.0.3") for _ in range(24)]
    try:
        with server.raw("127.0.0.3") as extra:
            status, body = answer(extra, timeout=5)
        assert status == 429 and json.loads(body)["error"] == "too_many_connections"
        assert call(server, "127.0.0.4")[0] == 200
    finally:
        for sock in socks:
            sock.close()


def test_calls_in_flight_per_address_are_capped(server: Server) -> None:
    # defence: per-client-IP in-flight cap
    slow = {"name": "slow.wait", "arguments": {"seconds": 2}}
    socks = [server.raw("127.0.0.5") for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(server.request(params=slow))
        time.sleep(0.5)
        assert call(server, "127.0.0.5")[0] == 429
        assert call(server, "127.0.0.6")[0] == 200
        assert [answer(sock)[0] for sock in socks] == [200] * 4
    finally:
        for sock in socks:
            sock.close()


def test_a_client_that_disconnects_cancels_its_call(tmp_path: Path) -> None:
    # defence: a disconnect cancels the running call; the cell sees it; the audit record says `cancelled`
    running = start(tmp_path, FRONT)
    try:
        with running.raw() as sock:
            sock.sendall(running.request(params={"name": "slow.wait", "arguments": {"seconds": 30}}))
            deadline = time.monotonic() + 10
            while "started" not in (running.folder / "marks").read_text() if (running.folder / "marks").exists() else True:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        deadline = time.monotonic() + 5
        while "cancelled" not in (running.folder / "marks").read_text():
            assert time.monotonic() < deadline, "the cell never saw the cancellation"
            time.sleep(0.05)
    finally:
        stop(running)
    from cellmono.security.audit import AuditLog
    with AuditLog(tmp_path / "var" / "audit.sqlite", create=False) as log:
        calls = [entry.fields for entry in log.entries() if entry.fields["action"] == "gateway.tools/call"]
    assert [(record["resource"], record["outcome"]) for record in calls] == [("slow.wait", "cancelled")]


def test_ctrl_c_with_streams_open_stops_at_once_without_a_traceback(tmp_path: Path) -> None:
    # defence: Ctrl-C with SSE streams open stops at once, no traceback
    running = start(tmp_path, FRONT)
    headers = {"Authorization": f"Bearer {running.key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    with httpx.Client(timeout=10) as client:
        opened = client.post(running.url, headers=headers, json=initialize)
        assert opened.status_code == 200, opened.text
        session = opened.headers["mcp-session-id"]
        streams = []
        for _ in range(3):
            sock = running.raw()
            sock.sendall(f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\nAccept: text/event-stream\r\n"
                         f"Authorization: Bearer {running.key}\r\nMcp-Session-Id: {session}\r\n"
                         f"MCP-Protocol-Version: 2025-11-25\r\n\r\n".encode())
            streams.append(sock)
        time.sleep(0.5)
        started = time.perf_counter()
        err = stop(running)
        took = time.perf_counter() - started
        for sock in streams:
            sock.close()
    assert running.process.returncode == 0, err
    assert "Traceback" not in err, err
    assert took < 3.0, took
