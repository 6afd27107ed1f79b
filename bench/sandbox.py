"""Sandbox benchmark: a fresh WASM instance per call vs a bare `python3 -c` of the same snippet, plus
bubblewrap and gVisor, measured in one run. Last stdout line: one JSON object with the keys of issue 5.

    python bench/sandbox.py [--quick]

The WASM guest is compiled once and cached (~10 s on first use); this bench reuses the cache."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import anyio

from cellmono.sandbox.guest import refuse_tools
from cellmono.sandbox.native import BubblewrapBackend, GvisorBackend
from cellmono.sandbox.policy import Policy, RunRequest
from cellmono.sandbox.wasm import WasmBackend
from cellmono.sandbox.wasm_build import ensure_guest

SNIPPET = "sum(i * i for i in range(100))"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def sequential(backend, count: int) -> list[float]:
    request = RunRequest(code=SNIPPET, policy=Policy())
    await backend.run(request, refuse_tools)  # warm: worker started, artifact loaded
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        result = await backend.run(request, refuse_tools)
        samples.append((time.perf_counter() - started) * 1000)
        if result.value != 328350:
            raise SystemExit(f"wrong result from {backend.name}: {result.value}")
    return samples


async def sustained(backend: WasmBackend, seconds: float) -> float:
    request = RunRequest(code=SNIPPET, policy=Policy())
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await backend.run(request, refuse_tools)
            done += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(backend.size * 2):
            group.start_soon(client)
    return done / (time.perf_counter() - started)


def subprocess_samples(count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"print({SNIPPET})"], check=True, capture_output=True)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def main(quick: bool) -> dict:
    ensure_guest()
    calls = 60 if quick else 400
    wasm = WasmBackend()
    try:
        wasm_samples = await sequential(wasm, calls)
        throughput = await sustained(wasm, 1.5 if quick else 5.0)
    finally:
        await wasm.close()
    python_samples = subprocess_samples(20 if quick else 100)
    bwrap_p50 = gvisor_p50 = None
    bubblewrap = BubblewrapBackend()
    if not bubblewrap.unavailable_reason():
        bwrap_p50 = statistics.median(await sequential(bubblewrap, 10 if quick else 50))
    gvisor = GvisorBackend()
    try:
        if not gvisor.unavailable_reason():
            gvisor_p50 = statistics.median(await sequential(gvisor, 3 if quick else 15))
    finally:
        await gvisor.close()
    wasm_p50, python_p50 = percentile(wasm_samples, 0.5), percentile(python_samples, 0.5)
    print(f"wasm fresh instance: p50 {wasm_p50:.2f} ms, p95 {percentile(wasm_samples, 0.95):.2f} ms, "
          f"{throughput:.0f} calls/s with {wasm.size} workers; python3 -c p50 {python_p50:.2f} ms; "
          f"bwrap p50 {bwrap_p50}; gvisor p50 {gvisor_p50}")
    return {"wasm_call_p50_ms": round(wasm_p50, 3), "wasm_call_p95_ms": round(percentile(wasm_samples, 0.95), 3),
            "wasm_calls_per_s": round(throughput, 1), "python_subprocess_p50_ms": round(python_p50, 3),
            "bwrap_call_p50_ms": None if bwrap_p50 is None else round(bwrap_p50, 3),
            "gvisor_call_p50_ms": None if gvisor_p50 is None else round(gvisor_p50, 3),
            "ratio_wasm_vs_subprocess": round(wasm_p50 / python_p50, 4)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    figures = anyio.run(main, parser.parse_args().quick)
    print(json.dumps(figures))
