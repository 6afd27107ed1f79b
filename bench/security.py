"""Benchmark of the security core: capability checks, token verification, audit log, encrypted store.

Measures cellmono and the plain-sqlite3 baseline in the same run, same data, same durability
(WAL, synchronous=NORMAL, one commit per put). Last stdout line: one JSON object.
Usage: python bench/security.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from cellmono.security.audit import AuditLog
from cellmono.security.audit_ship import AuditShipper
from cellmono.security.audit_streams import MemoryAuditStream
from cellmono.core.envelope import Envelope
from cellmono.security.guard import CapabilityGuard
from cellmono.security.keys import StaticKeyProvider
from cellmono.security.records import AuditRecord
from cellmono.security.signing import SigningKeys
from cellmono.security.store import EncryptedStore
from cellmono.security.tokens import TokenIssuer, TokenVerifier

TARGETS = {"capability_check_us": ("<=", 5), "token_verify_us": ("<=", 150), "audit_append_per_s": (">=", 10000),
           "ratio_store_put_vs_sqlite": (">=", 0.5), "ratio_store_get_vs_sqlite": (">=", 0.5)}


def best_rate(function, count: int, rounds: int) -> float:
    """Operations per second: the median of `rounds` timed runs of `count` calls."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        function(count)
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts for CI (a few seconds)")
    quick = parser.parse_args().quick
    scale = 1 if quick else 5
    rounds = 3 if quick else 5
    directory = Path(tempfile.mkdtemp(prefix="cellmono-bench-"))

    # capabilities: the guard's decision for a token it has verified before (the steady state)
    ring = SigningKeys()
    issuer = TokenIssuer(ring)
    grants = ["tool:call:notes.*", "store:write:notes", "fs:read:/data/reports/**", "net:fetch:*.example.com"]
    token = issuer.issue("alice", grants, "bench", tenant="acme")
    verifier = TokenVerifier(ring, audience="bench")
    guard = CapabilityGuard(verifier)
    envelope = Envelope(subject="notes.add", kind="request", capability=token, principal="alice", tenant="acme")
    requires = ("tool:call:notes.add", "store:write:notes")
    guard.authorize(envelope, requires)

    def checks(count: int) -> None:
        for _ in range(count):
            guard.authorize(envelope, requires)
    capability_check_us = 1e6 / best_rate(checks, 20000 * scale, rounds)

    # tokens: full Ed25519 verification, no cache (signature, proof, claims, capabilities)
    def verifications(count: int) -> None:
        for _ in range(count):
            verifier.verify(token)
    token_verify_us = 1e6 / best_rate(verifications, 400 * scale, rounds)

    # audit: synchronous appends (durable when `append` returns: what the gateway does before it answers),
    # one commit each, at the default durability (WAL, synchronous=NORMAL), with the defaults on: every
    # record authenticated (HMAC), a signed anchor every 1000 records and every 60 s
    record = AuditRecord(actor="alice", tenant="acme", action="tool.call", resource="notes.add", decision="allow",
                         outcome="ok", latency=0.0012, correlation_id="c0ffee", reason="granted")
    log = AuditLog(directory / "audit.sqlite", anchor_keys=ring)
    if log.anchor_every != 1000 or not log.stored_anchors():
        raise SystemExit("audit anchors are not on")

    plain = AuditLog(directory / "plain-audit.sqlite", anchor_keys=ring)
    plain.anchor_keys = None  # the baseline: the same log without MACs and anchors

    def appends(count: int) -> None:
        for _ in range(count):
            log.append(record)

    def plain_appends(count: int) -> None:
        for _ in range(count):
            plain.append(record)
    secured, baseline_rates, cpu_us = [], [], []
    for _ in range(rounds):  # interleaved, so machine noise hits both sides alike
        cpu_started = time.process_time()
        secured.append(best_rate(appends, 3000 * scale, 1))
        cpu_us.append((time.process_time() - cpu_started) / (3000 * scale) * 1e6)
        baseline_rates.append(best_rate(plain_appends, 3000 * scale, 1))
    audit_append_per_s = statistics.median(secured)
    audit_plain_per_s = statistics.median(baseline_rates)
    audit_append_cpu_us = statistics.median(cpu_us)  # this process's CPU per append: what a busy machine cannot hide
    plain.close()

    # the same appends while an AuditShipper ships them (to an in-process stream, in its own thread and event
    # loop, reading the file on its own connection): the cost shipping puts on the append path
    shipped_log = AuditLog(directory / "shipped-audit.sqlite", anchor_keys=ring)
    stream = MemoryAuditStream()
    shipper = AuditShipper(shipped_log, stream, "bench", interval=0.05)
    loop = asyncio.new_event_loop()
    def ship_in_background() -> None:
        try:
            loop.run_until_complete(shipper.run())
        except asyncio.CancelledError:  # stopped below, once the appends are measured
            pass
    runner = threading.Thread(target=ship_in_background, daemon=True)
    runner.start()

    def shipped_appends(count: int) -> None:
        for _ in range(count):
            shipped_log.append(record)
    with_shipper, without_shipper = [], []
    for _ in range(rounds):
        with_shipper.append(best_rate(shipped_appends, 3000 * scale, 1))
        without_shipper.append(best_rate(appends, 3000 * scale, 1))
    loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
    runner.join(10)
    loop.run_until_complete(shipper.stop())  # ships the rest
    loop.close()
    behind = shipped_log.head()[0] - (shipper.shipped or 0)
    if behind:
        raise SystemExit(f"the shipper left {behind} records unshipped")
    shipped_log.close()
    started = time.perf_counter()
    report = log.verify()
    audit_verify_per_s = report.records / (time.perf_counter() - started)
    if not report.ok or report.anchors_checked < 2:
        raise SystemExit(f"audit log did not verify with anchors: {report.problems[:3]}")
    log.close()

    # store vs plain sqlite3: same keys, same 256-byte values, same pragmas, one commit per put
    count = 3000 * scale
    keys = [f"note-{index}" for index in range(count)]
    value = os.urandom(256)
    store = EncryptedStore(directory / "store.sqlite", StaticKeyProvider(os.urandom(32)))
    store.put("notes", "warm-up", value)
    baseline = sqlite3.connect(directory / "plain.sqlite", isolation_level=None, check_same_thread=False)
    baseline.execute("PRAGMA journal_mode=WAL")
    baseline.execute("PRAGMA synchronous=NORMAL")
    baseline.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")

    def store_puts(n: int) -> None:
        for key in keys[:n]:
            store.put("notes", key, value)

    def sqlite_puts(n: int) -> None:
        for key in keys[:n]:
            baseline.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def store_gets(n: int) -> None:
        for key in keys[:n]:
            store.get("notes", key)

    def sqlite_gets(n: int) -> None:
        for key in keys[:n]:
            baseline.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()

    store_put, sqlite_put, store_get, sqlite_get = [], [], [], []
    for _ in range(rounds):  # interleaved, so machine noise hits both sides alike
        store_put.append(best_rate(store_puts, count, 1))
        sqlite_put.append(best_rate(sqlite_puts, count, 1))
        store_get.append(best_rate(store_gets, count, 1))
        sqlite_get.append(best_rate(sqlite_gets, count, 1))
    if store.get("notes", keys[-1]) != value:
        raise SystemExit("store returned a wrong value")
    store.close()
    baseline.close()

    result = {
        "capability_check_us": round(capability_check_us, 3),
        "token_verify_us": round(token_verify_us, 1),
        "audit_append_per_s": round(audit_append_per_s),
        "audit_verify_per_s": round(audit_verify_per_s),
        "audit_anchors": report.anchors_checked,
        "audit_append_unauthenticated_per_s": round(audit_plain_per_s),
        "ratio_audit_authenticated_vs_plain": round(audit_append_per_s / audit_plain_per_s, 3),
        "audit_durable_before_return": True,
        "audit_append_cpu_us": round(audit_append_cpu_us, 1),
        "audit_append_per_cpu_s": round(1e6 / audit_append_cpu_us) if audit_append_cpu_us else None,
        "audit_append_with_shipper_per_s": round(statistics.median(with_shipper)),
        "ratio_append_with_shipper_vs_without": round(statistics.median(with_shipper) / statistics.median(without_shipper), 3),
        "store_put_per_s": round(statistics.median(store_put)),
        "store_get_per_s": round(statistics.median(store_get)),
        "sqlite_put_per_s": round(statistics.median(sqlite_put)),
        "sqlite_get_per_s": round(statistics.median(sqlite_get)),
        "ratio_store_put_vs_sqlite": round(statistics.median(store_put) / statistics.median(sqlite_put), 3),
        "ratio_store_get_vs_sqlite": round(statistics.median(store_get) / statistics.median(sqlite_get), 3),
    }
    for name, (direction, target) in TARGETS.items():
        if result[name] is None:
            print(f"{name}: - (not measured)")
            continue
        met = result[name] <= target if direction == "<=" else result[name] >= target
        print(f"{name}: {result[name]} (target {direction} {target}: {'met' if met else 'MISSED'})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
