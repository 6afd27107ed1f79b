"""The bank-ledger workload, its nemesis and its checker (a pytest "mini-Jepsen").

- **Workers** (`ledger_worker.py`, each a process in its own folder, no shared disk) serve the `ledger`
  cell over the broker: a durable `ledger.transfer` command moves `amount` from one account to another.
  Each application of a command is one record in the cell's encrypted store (`effect/<worker>-<n>`)
  and one record in the worker's hash-chained audit log. The handler is deliberately *not* idempotent:
  a redelivered command is applied again, so the checker sees what the framework lets through.
- **The client** sends commands with an idempotency key each (`Nats-Msg-Id` / the Redis dedupe key),
  retries a failed send with the same key, and records every command the broker acknowledged.
- **The nemesis** (seeded, time-bounded, one fault at a time so a majority stays up): kill -9 and
  restart a node, SIGSTOP / SIGCONT a node, kill the leader of the ledger stream, partition a node.
- **The checker** reads every worker's folder afterwards: every acknowledged command has exactly one
  effect (`lost`, `double_effects`), balances are conserved, every audit chain verifies.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

from cellmono.core.bus import Bus
from cellmono.security.audit import AuditLog
from cellmono.security.engine_records import engine_records
from cellmono.security.engine_store import EngineStore
from cellmono.security.keys import StaticKeyProvider
from cellmono.security.records import audit_record
from cellmono.security.store import EncryptedStore
from cellmono.transports.brokers import safe_name

HERE = Path(__file__).resolve().parent
ACCOUNTS = 8
INITIAL = 1_000
PREFIX = "led"
DURABLE = ("ledger.>",)
STREAM = "CELLMONO_" + safe_name(f"{PREFIX}.ledger.>")  # the stream JetStream durables use for it
STORE_KEY = bytes(range(32))  # test-only KEK, handed to the workers through their environment


# -- the client ------------------------------------------------------------------------------------
@dataclass
class History:
    """What the client saw: every command sent, which ones the broker acknowledged, the faults and their times."""

    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    failures: list[tuple[float, str]] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)  # monotonic times of acknowledged sends
    faults: list[tuple[float, str]] = field(default_factory=list)


def command(rng: random.Random, key: str) -> dict[str, Any]:
    source, target = rng.sample(range(ACCOUNTS), 2)
    return {"key": key, "source": f"acct-{source}", "target": f"acct-{target}", "amount": rng.randint(1, 50)}


async def client(bus: Bus, history: History, seed: int, stop: asyncio.Event, *, pace: float = 0.005,
                 retries: int = 40) -> None:
    """Send transfers until `stop`; a failed send is retried with the same idempotency key (bounded)."""
    rng = random.Random(seed)
    number = 0
    while not stop.is_set():
        number += 1
        key = f"tx-{seed}-{number}"
        payload = command(rng, key)
        history.sent[key] = payload
        for _ in range(retries):
            try:
                await bus.publish("ledger.transfer", payload, idempotency_key=key)
            except Exception as error:  # the broker did not acknowledge: maybe stored, maybe not; retry
                history.failures.append((time.monotonic(), f"{type(error).__name__}: {error}"[:200]))
                await asyncio.sleep(0.1)
                continue
            history.acknowledged.add(key)
            history.successes.append(time.monotonic())
            break
        await asyncio.sleep(pace)


def apply(ledger: Any, audit: AuditLog, worker: str, transfer: dict[str, Any]) -> None:
    """One application of a transfer: an effect record in the cell's store, a record in the audit chain."""
    key = f"effect/{worker}-{time.time_ns()}"
    ledger.put_json(key, {name: transfer[name] for name in ("key", "source", "target", "amount")} | {"worker": worker})
    audit.append(audit_record(f"worker:{worker}", "ledger.transfer", resource=transfer["key"],
                              details={name: transfer[name] for name in ("source", "target", "amount")}))


# -- the workers -----------------------------------------------------------------------------------
class Worker:
    """A ledger worker process in its own folder, started and stopped by PID."""

    def __init__(self, name: str, root: Path, url: str, kind: str, exactly_once: bool = True, *,
                 store: str = "sqlite", replicas: int = 1) -> None:
        self.name, self.url, self.kind, self.exactly_once = name, url, kind, exactly_once
        self.store, self.replicas = store, replicas  # "engine": effects and inbox on the broker, not in the folder
        self.folder = root / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)  # its own private state folder, as a worker machine would have
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, seconds: float = 30.0) -> None:
        ready = self.folder / "ready"
        ready.unlink(missing_ok=True)
        environment = dict(os.environ, LEDGER_STORE_KEY=STORE_KEY.hex(), PYTHONPATH=os.pathsep.join(
            [str(HERE.parent.parent), str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
        log = open(self.folder / "worker.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "ledger_worker.py"), "--name", self.name, "--url", self.url,
             "--kind", self.kind, "--store", self.store, "--replicas", str(self.replicas)]
            + ([] if self.exactly_once else ["--at-least-once"]), cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment)
        log.close()
        give_up = time.monotonic() + seconds
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > give_up:
                tail = (self.folder / "worker.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"worker {self.name} did not start: {tail}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the worker drains and acks what it handled), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


# -- the checker -----------------------------------------------------------------------------------
@dataclass
class Verdict:
    """What the checker found; `ok` when nothing acknowledged was lost or applied twice and everything verifies."""

    acknowledged: int
    effects: int
    lost: list[str]
    double_effects: list[str]
    double_across_workers: list[str]  # doubles applied by two different workers (their inboxes are on two disks)
    unknown_effects: list[str]  # effects of commands never sent: must not exist
    mismatched: list[str]  # effects whose content differs from the command sent
    balance_total: int
    audit_problems: list[str]
    dead_letters: list[str] = field(default_factory=list)  # the workers' "dead-lettered ..." log lines: why a
                                                            # command was given up on (a lost one's likely story)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.double_effects or self.unknown_effects or self.mismatched
                    or self.audit_problems) and self.balance_total == ACCOUNTS * INITIAL

    def summary(self) -> str:
        return (f"acknowledged={self.acknowledged} effects={self.effects} lost={len(self.lost)} "
                f"double_effects={len(self.double_effects)} (across workers {len(self.double_across_workers)}) unknown={len(self.unknown_effects)} "
                f"mismatched={len(self.mismatched)} balance_total={self.balance_total} "
                f"audit_problems={self.audit_problems[:3]} examples lost={self.lost[:3]} "
                f"double={self.double_effects[:3]} dead_lettered={len(self.dead_letters)} {self.dead_letters[:2]}")


def read_effects(folder: Path) -> list[dict[str, Any]]:
    """The effects one worker applied, from its own encrypted store."""
    path = folder / "ledger.db"
    if not path.exists():
        return []
    with EncryptedStore(path, StaticKeyProvider(STORE_KEY)) as store:
        ledger = store.namespace("ledger")
        return [ledger.get_json(key) for key in ledger.keys("effect/")]


@dataclass(frozen=True)
class Engine:
    """Where the workers' engine store is (`--store engine`): the broker kind and a URL."""

    kind: str
    url: str


def read_engine_effects(engine: Engine) -> list[dict[str, Any]]:
    """Every worker's effects, from the one engine store they share."""
    store = EngineStore(engine_records(engine.kind, engine.url, app="ledger"), StaticKeyProvider(STORE_KEY))
    try:
        ledger = store.namespace("ledger")
        return [ledger.get_json(key) for key in ledger.keys("effect/")]
    finally:
        store.close()


def verify_audit(folder: Path, effects: list[dict[str, Any]] | None = None) -> list[str]:
    """The problems of one worker's audit chain (empty when it verifies) and its count against the effects.

    With `effects` (the engine store's, this worker's share), the audit may hold more transfers than effects:
    a handler that lost the commit race to another worker audited a run whose effects were never applied
    (the audit log is outside the store: at least once). An effect without its audit record is a problem."""
    path = folder / "audit.db"
    if not path.exists():
        return []
    with AuditLog(path, create=False) as log:
        report = log.verify()
        problems = [] if report.ok else [f"{folder.name}: {report.summary()}"]
        transfers = sum(1 for entry in log.entries() if entry.fields.get("action") == "ledger.transfer")
    if effects is not None:
        mine = sum(1 for effect in effects if effect["worker"] == folder.name)
        return problems + ([f"{folder.name}: {transfers} audited transfers for {mine} effects"] if transfers < mine else [])
    effects_count = len(read_effects(folder))
    if transfers != effects_count:
        problems.append(f"{folder.name}: {transfers} audited transfers for {effects_count} effects")
    return problems


def _read_engine_settled(engine: Engine, expected: int, tries: int = 20) -> list[dict[str, Any]]:
    """The engine's effects, read again (bounded) while fewer than `expected` come back: right after a node's
    restart a key listing can come back empty or short (an ordered consumer on a replica catching up)."""
    effects: list[dict[str, Any]] = []
    for _ in range(tries):
        try:
            effects = read_engine_effects(engine)
        except Exception:  # the engine is settling too: look again
            effects = []
        if len(effects) >= expected:
            break
        time.sleep(0.5)
    return effects


def check(history: History, folders: list[Path], engine: Engine | None = None) -> Verdict:
    """Read every worker's effects (from their folders, or the `engine` store) and audit log and judge them
    against the client's history."""
    effects = _read_engine_settled(engine, len(history.acknowledged)) if engine is not None else [
        effect for folder in folders for effect in read_effects(folder)]
    counts = Counter(effect["key"] for effect in effects)
    balances = {f"acct-{number}": INITIAL for number in range(ACCOUNTS)}
    mismatched = []
    for effect in effects:
        balances[effect["source"]] -= effect["amount"]
        balances[effect["target"]] += effect["amount"]
        sent = history.sent.get(effect["key"])
        if sent is not None and any(sent[name] != effect[name] for name in ("source", "target", "amount")):
            mismatched.append(effect["key"])
    return Verdict(
        acknowledged=len(history.acknowledged), effects=len(effects),
        lost=sorted(key for key in history.acknowledged if counts[key] == 0),
        double_effects=sorted(key for key, count in counts.items() if count > 1),
        double_across_workers=sorted({effect["key"] for effect in effects if counts[effect["key"]] > 1
                                      and len({other["worker"] for other in effects if other["key"] == effect["key"]}) > 1}),
        unknown_effects=sorted(key for key in counts if key not in history.sent),
        mismatched=mismatched, balance_total=sum(balances.values()),
        audit_problems=[problem for folder in folders for problem in verify_audit(
            folder, effects if engine is not None else None)],
        dead_letters=[line.strip()[-300:] for folder in folders if (folder / "worker.log").exists()
                      for line in (folder / "worker.log").read_text(errors="replace").splitlines()
                      if "dead-lettered" in line])


async def settle(history: History, folders: list[Path], seconds: float = 60.0, engine: Engine | None = None) -> None:
    """Wait (bounded) until every acknowledged command has an effect somewhere."""
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        if engine is not None:
            try:
                seen = {effect["key"] for effect in await asyncio.to_thread(read_engine_effects, engine)}
            except Exception:  # the engine is settling too (a node restarting): look again
                seen = set()
        else:
            seen = {effect["key"] for folder in folders for effect in await asyncio.to_thread(read_effects, folder)}
        if history.acknowledged <= seen:
            return
        await asyncio.sleep(0.5)


# -- the nemesis -----------------------------------------------------------------------------------
FAULTS = ("kill", "pause", "leader", "partition")


async def nemesis(cluster: Any, history: History, seed: int, seconds: float, *, faults: tuple[str, ...] = FAULTS,
                  stream: str = "", settle_for: tuple[float, float] = (1.0, 2.0)) -> list[str]:
    """Inject seeded faults one at a time for `seconds`; each is healed before the next. Returns what it did."""
    rng = random.Random(seed)
    done: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fault = rng.choice(faults)
        victim = rng.choice(cluster.names)
        hold = rng.uniform(0.5, 2.0)
        if fault == "leader" and stream:
            try:
                victim = await cluster.stream_leader(stream, cluster.url(next(
                    name for name in cluster.alive() if name not in cluster.paused)))
            except Exception as error:  # no leader right now: kill a random node instead
                history.faults.append((time.monotonic(), f"leader lookup failed: {error}"))
            victim = victim or rng.choice(cluster.names)
        history.faults.append((time.monotonic(), f"{fault} {victim} for {hold:.2f} s"))
        done.append(f"{fault} {victim}")
        if fault in ("kill", "leader"):
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(hold)
            await asyncio.to_thread(cluster.start_node, victim)
        elif fault == "pause":
            cluster.pause(victim)
            await asyncio.sleep(hold)
            cluster.resume(victim)
        elif fault == "partition":
            cluster.isolate(victim)
            await asyncio.sleep(hold)
            cluster.heal()
        history.faults.append((time.monotonic(), f"healed {victim}"))
        await asyncio.sleep(rng.uniform(*settle_for))
    return done


def dump(history: History, verdict: Verdict, path: Path) -> None:
    """The history and verdict as JSON, for a human after a failure."""
    path.write_text(json.dumps({"faults": history.faults, "failures": history.failures[-50:],
                                "verdict": verdict.summary()}, indent=1))


def assert_applied_once(verdict: Any, *, engine: bool = False) -> None:
    """No command applied twice by one worker (the inbox's promise). With the `engine` store, strict: the inbox
    is shared, so any double fails. With per-worker SQLite stores a double across workers is an expected failure
    (each worker's inbox is on its own disk)."""
    import pytest  # only the tests call this; the worker process imports this module too
    if engine:
        assert not verdict.double_effects, f"a command was applied twice with the engine inbox: {verdict.summary()}"
        return

    within_one_worker = sorted(set(verdict.double_effects) - set(verdict.double_across_workers))
    assert not within_one_worker, f"the inbox let a redelivery apply twice on one worker: {verdict.summary()}"
    if verdict.double_across_workers:
        pytest.xfail(f"a redelivery to another worker was applied again (the inbox is per worker disk until the store "
                     f"moves to the engine): {verdict.summary()}")
    assert not verdict.double_effects, verdict.summary()


# -- the scenario the ledger tests share --------------------------------------------------------------------------
async def run_workload(bus: Bus, workers: list[Worker], history: History, seed: int,
                       faults: Callable[[], Awaitable[Any]], *, engine: Engine | None = None,
                       started: Callable[[], Awaitable[None]] | None = None) -> tuple[Verdict, Any]:
    """Start the workers and the client's bus, send transfers while `faults()` runs (its result is returned with
    the verdict), settle, stop everything, then check the history against the workers' folders (or the engine)."""
    folders = [worker.folder for worker in workers]
    try:
        for worker in workers:
            await asyncio.to_thread(worker.start)
        await bus.start()
        if started is not None:
            await started()
        stop = asyncio.Event()
        sender = asyncio.create_task(client(bus, history, seed, stop))
        done = await faults()
        stop.set()
        await asyncio.wait_for(sender, 60)
        await settle(history, [] if engine is not None else folders, seconds=60, engine=engine)
    finally:
        await asyncio.wait_for(bus.stop(timeout=1), 15)
        for worker in workers:
            await asyncio.to_thread(worker.stop)
    return check(history, folders, engine), done


async def primary_kills(server: Any, history: History, seed: int, seconds: float) -> int:
    """kill -9 the Redis primary and restart it, at seeded moments for `seconds`; how many kills."""
    rng = random.Random(seed)
    end, kills = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        down = rng.uniform(0.2, 1.5)
        history.faults.append((time.monotonic(), f"kill -9 the primary for {down:.2f} s"))
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)
        kills += 1
    await asyncio.sleep(1.0)
    return kills


def judge(history: History, verdict: Verdict, root: Path, *, engine: bool = False) -> None:
    """The ledger's promises: enough acknowledged, nothing lost, no unknown effect, balances conserved, each command
    applied once (strict with the engine inbox), every audit chain verifies."""
    dump(history, verdict, root / "history.json")
    print(verdict.summary())
    assert len(history.acknowledged) >= 100, f"too few commands acknowledged: {verdict.summary()}"
    assert not verdict.lost, verdict.summary()
    assert not verdict.unknown_effects and not verdict.mismatched, verdict.summary()
    assert verdict.balance_total == 8 * 1000, verdict.summary()
    assert not verdict.audit_problems, verdict.audit_problems
    assert_applied_once(verdict, engine=engine)
