"""The gateway's audit under load and attack, against a real server on 127.0.0.1: group commit never lets an answer
leave before its record is on disk (kill -9 during a burst of many concurrent clients), and refusals at the
connection edge (408, 431, 429) are audited with their reason and peer, never a secret, and bounded under a flood.
Each test names the defence it guards."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from cellmono.security.audit import AuditLog
from test_hardening_edge import FRONT, answer, start, stop

BURST = {**FRONT, "max_in_flight": "512", "max_in_flight_per_ip": "512", "max_connections_per_ip": "512"}


def entries(folder: Path) -> list[dict]:
    with AuditLog(folder / "var" / "audit.sqlite", create=False) as log:
        found = [entry.fields for entry in log.entries()]
        assert log.verify().ok
    return found


async def burst(port: int, payload: bytes, clients: int, answered: list[int], stop_at: float) -> None:
    """`clients` keep-alive connections calling until `stop_at` or until the server is gone; count whole answers."""
    async def client() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            while time.monotonic() < stop_at:
                writer.write(payload)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                body = await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200") and json.loads(body)["result"]["isError"] is False:
                    answered[0] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
            return  # the server is gone: a call without a whole answer was never answered
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))


def test_kill_9_during_a_burst_of_64_clients_keeps_the_record_of_every_answered_call(tmp_path: Path) -> None:
    # defence: group commit holds each answer until the batch holding its record is committed (kill -9 safe), even
    # while another process (a replica, the command line) holds the log's write lock and commits must wait
    server = start(tmp_path, BURST)
    answered, holding, done = [0], threading.Event(), threading.Event()

    def other_writer() -> None:  # takes the audit database's write lock 0.3 s at a time, as a concurrent writer would
        database = sqlite3.connect(tmp_path / "var" / "audit.sqlite", timeout=30, isolation_level=None)
        while not done.is_set():
            database.execute("BEGIN IMMEDIATE")
            holding.set()
            done.wait(0.3)
            holding.clear()
            database.execute("COMMIT")
            done.wait(0.05)
        database.close()

    async def run() -> None:
        stop_at = time.monotonic() + 30
        load = asyncio.ensure_future(burst(server.port, server.request(), 64, answered, stop_at))
        while answered[0] < 400 and time.monotonic() < stop_at:
            await asyncio.sleep(0.01)
        writer = threading.Thread(target=other_writer)
        writer.start()
        await asyncio.sleep(1.0)
        while not holding.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.15)  # inside a lock hold: commits wait, so must the answers
        os.kill(server.process.pid, signal.SIGKILL)  # no shutdown, no flush: answers in flight are cut
        done.set()
        writer.join()
        await load

    try:
        asyncio.run(run())
    finally:
        done.set()
        server.process.kill()
        server.process.communicate()
    assert answered[0] >= 400, answered
    calls = [record for record in entries(tmp_path)
             if record["action"] == "gateway.tools/call" and record["outcome"] == "ok"]
    assert len(calls) >= answered[0], f"{answered[0]} answers received, only {len(calls)} audit records on disk"


def test_connection_refusals_at_the_edge_are_audited_with_reason_and_peer_never_the_secret(tmp_path: Path) -> None:
    # defence: a 431, a 408 and a 429 refused in the HTTP server itself each leave an audit record
    server = start(tmp_path, {**FRONT, "max_connections_per_ip": "3"})
    secret = "cmk_this-is-not-logged-" + "x" * 20
    try:
        with server.raw("127.0.0.5") as sock:  # 431: headers over 8192 bytes, with a credential among them
            sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {secret}\r\n"
                         f"X-Pad: {'a' * 9000}\r\n\r\n".encode())
            assert answer(sock)[0] == 431
        with server.raw("127.0.0.6") as sock:  # 408: headers that never finish
            sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {secret}\r\n".encode())
            assert answer(sock, timeout=10)[0] == 408
        held = [server.raw("127.0.0.7") for _ in range(3)]
        with server.raw("127.0.0.7") as sock:  # 429: one connection too many from this address
            assert answer(sock)[0] == 429
        for sock in held:
            sock.close()
    finally:
        stop(server)
    refusals = {(record["details"]["status"], record["reason"]) for record in entries(tmp_path)
                if record["action"] == "gateway.http" and "connection refused" in (record["reason"] or "")}
    statuses = {status: reason for status, reason in refusals}
    assert set(statuses) == {408, 429, 431}, refusals
    assert "(peer 127.0.0.5)" in statuses[431] and "headers over the limit" in statuses[431]
    assert "(peer 127.0.0.6)" in statuses[408] and "(peer 127.0.0.7)" in statuses[429]
    database = b"".join(path.read_bytes() for path in (tmp_path / "var").glob("audit.sqlite*"))
    assert secret.encode() not in database and b"aaaaaaaaaa" not in database


def test_an_edge_refusal_flood_from_many_addresses_leaves_a_bounded_count_of_records(tmp_path: Path) -> None:
    # defence: refusals are throttled per address (`audit_refusals`) and overall (`audit_refusals_total`)
    server = start(tmp_path, {**FRONT, "audit_refusals": "2", "audit_refusals_total": "10"})
    oversize = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Pad: {'a' * 9000}\r\n\r\n".encode()
    try:
        for index in range(60):  # 60 addresses, 3 refusals each
            for _ in range(3):
                with server.raw(f"127.0.{index // 200 + 10}.{index % 200 + 1}") as sock:
                    sock.sendall(oversize)
                    assert answer(sock)[0] == 431
    finally:
        stop(server)
    refusals = [record for record in entries(tmp_path)
                if record["action"] == "gateway.http" and "refused" in (record["reason"] or "")]
    assert 1 <= len(refusals) <= 10 + 1, len(refusals)  # own records and aggregates, bounded; one more for the rest
    own = [record for record in refusals if "connection refused" in record["reason"]]
    counted = len(own) + sum(int(record["reason"].split(" ", 1)[0]) for record in refusals if record not in own)
    assert counted == 180, [record["reason"] for record in refusals]  # nothing goes uncounted
