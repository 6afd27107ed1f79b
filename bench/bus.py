"""Benchmark the in-memory bus against a bare asyncio hop, in one run.

Prints a few human lines, then one JSON object as the last line with:
direct_call_us, queue_roundtrip_us, inmem_request_us, inmem_request_per_s,
inmem_request_serialized_us, inmem_publish_per_s, ratio_request_vs_queue.
Rounds of the baseline and of cellmono are interleaved and the median kept, because this
machine is noisy: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time

from pydantic import BaseModel

from cellmono.core.bus import Bus
from cellmono.core.transport import MemoryTransport


class Ping(BaseModel):
    number: int


async def handler(message: Ping) -> Ping:
    return message


async def direct_call_us(count: int) -> float:
    message = Ping(number=1)
    started = time.perf_counter()
    for _ in range(count):
        await handler(message)
    return (time.perf_counter() - started) / count * 1e6


async def queue_roundtrip_us(count: int) -> float:
    """A bare asyncio.Queue to a worker task, which answers through a future: one async hop each way."""
    queue: asyncio.Queue[tuple[asyncio.Future[Ping], Ping]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while True:
            future, message = await queue.get()
            future.set_result(await handler(message))

    task = asyncio.create_task(worker())
    message = Ping(number=1)
    started = time.perf_counter()
    for _ in range(count):
        future = loop.create_future()
        queue.put_nowait((future, message))
        await future
    elapsed = time.perf_counter() - started
    task.cancel()
    return elapsed / count * 1e6


async def bus_request_us(count: int, serialize: bool) -> float:
    async with Bus(MemoryTransport(serialize=serialize)) as bus:
        await bus.handle("ping", lambda envelope: handler(envelope.payload))
        message = Ping(number=1)
        started = time.perf_counter()
        for _ in range(count):
            await bus.request("ping", message)
        return (time.perf_counter() - started) / count * 1e6


async def bus_request_per_s(count: int, concurrency: int = 64) -> float:
    """Sustained request/reply throughput with `concurrency` callers at once."""
    async with Bus(MemoryTransport()) as bus:
        await bus.handle("ping", lambda envelope: handler(envelope.payload))
        message = Ping(number=1)
        share = count // concurrency

        async def caller() -> None:
            for _ in range(share):
                await bus.request("ping", message)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return share * concurrency / (time.perf_counter() - started)


async def bus_publish_per_s(count: int) -> float:
    """Publish to one subscriber, sustained, until every message is delivered."""
    async with Bus(MemoryTransport()) as bus:
        delivered = 0
        done = asyncio.Event()

        async def subscriber(envelope: object) -> None:
            nonlocal delivered
            delivered += 1
            if delivered == count:
                done.set()

        await bus.subscribe("events", subscriber)
        message = Ping(number=1)
        started = time.perf_counter()
        for _ in range(count):
            await bus.publish("events", message)
        await done.wait()
        return count / (time.perf_counter() - started)


async def measure(count: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {key: [] for key in (
        "direct_call_us", "queue_roundtrip_us", "inmem_request_us", "inmem_request_per_s",
        "inmem_request_serialized_us", "inmem_publish_per_s")}
    await bus_request_us(count // 10, serialize=False)  # warm up caches and the allocator
    for _ in range(rounds):
        gc.collect()
        samples["direct_call_us"].append(await direct_call_us(count))
        samples["queue_roundtrip_us"].append(await queue_roundtrip_us(count))
        samples["inmem_request_us"].append(await bus_request_us(count, serialize=False))
        samples["inmem_request_per_s"].append(await bus_request_per_s(count))
        samples["inmem_request_serialized_us"].append(await bus_request_us(count // 4, serialize=True))
        samples["inmem_publish_per_s"].append(await bus_publish_per_s(count))
    figures = {key: statistics.median(values) for key, values in samples.items()}
    figures["ratio_request_vs_queue"] = figures["inmem_request_us"] / figures["queue_roundtrip_us"]
    return {key: round(value, 3) for key, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args()
    count, rounds = (20_000, 3) if args.quick else (200_000, 7)
    figures = asyncio.run(measure(count, rounds))
    print(f"request: {figures['inmem_request_us']} us vs a bare queue hop {figures['queue_roundtrip_us']} us "
          f"(ratio {figures['ratio_request_vs_queue']}); serialized {figures['inmem_request_serialized_us']} us")
    print(f"throughput: {figures['inmem_request_per_s']:.0f} requests/s, {figures['inmem_publish_per_s']:.0f} events/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
