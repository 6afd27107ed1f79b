"""Benchmark the cost of per-cell telemetry on in-process request/reply, on against off, in one run.

Prints a few human lines, then one JSON object as the last line with:
request_off_us, request_on_us, request_traced_us, telemetry_overhead (on/off - 1),
tracing_overhead (traced/off - 1, where opentelemetry-sdk is installed).
Each figure is the thread CPU time per request (other processes on a shared machine do not
inflate it, as they do wall time). The apps run side by side and rounds alternate between them;
the overheads are medians of per-round ratios: compare those, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from typing import Any

from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, handles
from cellmono.core.config import Settings
from cellmono.ops.telemetry import Telemetry


class Ping(BaseModel):
    number: int


class Pong(Cell):
    name = "pong"

    @handles("pong.ping")
    async def ping(self, message: Ping) -> Ping:
        return message


def build(mode: str) -> App:
    section = {"metrics": "false"} if mode == "off" else {"tracing": "true"} if mode == "traced" else {}
    app = App([Pong()], settings=Settings(cells={"pong": {"class": "x:Pong"}},
                                          extra_sections={"telemetry": section}))
    if mode != "off":
        Telemetry.attach(app)
    if mode == "traced":
        from cellmono.ops.tracing import Tracing  # optional extra: opentelemetry-sdk

        tracing = Tracing.attach(app)
        _clear.append(tracing.exporter.clear)  # type: ignore[union-attr]  # spans kept in memory: drop them per round
    return app


_clear: list[Any] = []


async def request_us(app: App, count: int) -> float:
    """Thread CPU microseconds per request/reply to the app's one cell."""
    message = Ping(number=1)
    request = app.bus.request
    started = time.thread_time()
    for _ in range(count):
        await request("pong.ping", message)
    return (time.thread_time() - started) / count * 1e6


def tracing_available() -> bool:
    try:
        import cellmono.ops.tracing  # noqa: F401  (optional extra)
    except ImportError:
        return False
    return True


async def measure(count: int, rounds: int) -> dict[str, float | None]:
    """All apps run at once; each round times `count` requests on each, in turn; the medians of the
    per-round ratios to `off` are the overheads (pairing rounds cancels the machine's drift)."""
    modes = ["off", "on"] + (["traced"] if tracing_available() else [])
    apps = {mode: build(mode) for mode in modes}
    for app in apps.values():
        await app.start()
    try:
        samples: dict[str, list[float]] = {mode: [] for mode in modes}
        for app in apps.values():
            await request_us(app, count)  # warm up caches and the allocator
        for _ in range(rounds):
            for clear in _clear:
                clear()
            gc.collect()
            for mode in modes:
                samples[mode].append(await request_us(apps[mode], count))
    finally:
        for app in apps.values():
            await app.stop()
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    ratios = {mode: statistics.median(value / off for value, off in zip(samples[mode], samples["off"]))
              for mode in modes}
    return {"request_off_us": round(medians["off"], 3), "request_on_us": round(medians["on"], 3),
            "request_traced_us": round(medians["traced"], 3) if "traced" in medians else None,
            "telemetry_overhead": round(ratios["on"] - 1, 4),
            "tracing_overhead": round(ratios["traced"] - 1, 4) if "traced" in ratios else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args()
    count, rounds = (2_000, 41) if args.quick else (5_000, 201)
    figures = asyncio.run(measure(count, rounds))
    print(f"request/reply: off {figures['request_off_us']} us, telemetry on {figures['request_on_us']} us "
          f"(overhead {figures['telemetry_overhead']:+.1%})")
    if figures["request_traced_us"] is not None:
        print(f"with tracing: {figures['request_traced_us']} us (overhead {figures['tracing_overhead']:+.1%})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
