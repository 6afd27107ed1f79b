"""Benchmark the trigger controller: a skeleton that measures the policy today and leaves the move's figures to live promotion.

Measured in one run:
- decide_us: one decision of the pure policy (`decide`) for one cell, with the default windows and
  a full history (the 6 h burn window: 1440 samples);
- baseline_threshold_us: the naive threshold controller (up above enter, down below exit, no counters,
  windows, dwell or cool-down) on the same samples; the ratio is what the anti-flap machinery costs;
- direction_changes / baseline_direction_changes: moves that reverse the previous one, over noisy
  load around the thresholds for the simulated hours (policy vs baseline);
- detect_s: from load start to the promotion decision, through the real async loop
  (`TriggerController.run`) with short windows and a sampler that reports the step.
The issue's other keys (lost_requests, failed_requests, promote_s, p95_before_ms, p95_after_ms,
telemetry_overhead, demote_lost) need per-cell telemetry and live promotion (issue 12, parts 1 and 4):
they are null until a real `Mover` and sampler exist.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import anyio

from cellmono.ops.controller import TriggerController
from cellmono.ops.signals import Sample, TriggerConfig, TriggerSettings
from cellmono.ops.triggers import CellState, Decision, decide, history_ticks


def samples(count: int, seed: int = 7) -> list[Sample]:
    """Noisy CPU across both thresholds: a slowly wandering mean plus tick-to-tick noise, the case anti-flap is for."""
    rng = random.Random(seed)
    mean, out = 0.62, []
    for tick in range(count):
        mean += 0.05 * (0.62 - mean) + rng.uniform(-0.02, 0.02)  # wanders, but comes back
        cpu = max(0.0, mean + rng.uniform(-0.15, 0.15))
        out.append(Sample(cell="c", at=15.0 * tick, cpu_ratio=cpu, p95_ms=10.0, slo_p95_ms=50.0, requests=100))
    return out


def threshold_policy(cpu: float, level: int, settings: TriggerSettings) -> int:
    if cpu > settings.cpu_enter:
        return min(level + 1, settings.max_replicas)
    if cpu < settings.cpu_exit:
        return max(level - 1, 0)
    return level


def direction_changes(levels: list[int]) -> int:
    steps = [1 if after > before else -1 for before, after in zip(levels, levels[1:]) if after != before]
    return sum(1 for before, after in zip(steps, steps[1:]) if before != after)


def measure_policy(ticks: int) -> dict[str, float]:
    settings = TriggerSettings()
    keep = history_ticks(settings)
    series = samples(ticks + keep)
    state, levels = CellState(), []
    started = time.perf_counter()
    for tick in range(keep, keep + ticks):
        decision, state = decide(series[tick - keep + 1:tick + 1], state, tick, settings)
        levels.append(decision.level_after)
    decide_us = (time.perf_counter() - started) / ticks * 1e6
    level, baseline_levels = 0, []
    started = time.perf_counter()
    for tick in range(keep, keep + ticks):
        level = threshold_policy(series[tick].cpu_ratio, level, settings)
        baseline_levels.append(level)
    baseline_us = (time.perf_counter() - started) / ticks * 1e6
    return {"decide_us": decide_us, "baseline_threshold_us": baseline_us, "hours": ticks * settings.interval / 3600,
            "direction_changes": direction_changes(levels),
            "baseline_direction_changes": direction_changes(baseline_levels)}


async def measure_detect(interval: float, up_delay: float) -> float:
    """Seconds from the load step to the controller's promote decision, through its real loop."""
    settings = TriggerSettings(interval=interval, up_delay=up_delay, mode="promote")
    load_start: list[float] = []
    decided: list[float] = []

    def sampler() -> dict[str, Sample]:
        hot = bool(load_start)
        return {"c": Sample(cell="c", at=time.monotonic(), cpu_ratio=0.95 if hot else 0.1)}

    class StampingMover:
        async def move(self, decision: Decision) -> None:
            decided.append(time.monotonic())
            controller.stop()

    controller = TriggerController(sampler, TriggerConfig(default=settings), mover=StampingMover())
    async with anyio.create_task_group() as group:
        group.start_soon(controller.run)
        await anyio.sleep(5 * interval)
        load_start.append(time.monotonic())
        with anyio.move_on_after(up_delay + 20 * interval):
            while not decided:
                await anyio.sleep(interval / 10)
        controller.stop()
    return decided[0] - load_start[0] if decided else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args()
    ticks, rounds = (960, 3) if args.quick else (5760, 7)
    policy = [measure_policy(ticks) for _ in range(rounds)]
    figures: dict[str, float | int | None] = {
        key: statistics.median(run[key] for run in policy) for key in policy[0]}
    detects = [anyio.run(measure_detect, 0.02, 0.2) for _ in range(rounds)]
    figures["detect_s"] = statistics.median(detects)
    figures["detect_goal_s"] = 0.2 + 0.02  # the up delay plus one interval
    for key in ("lost_requests", "failed_requests", "promote_s", "p95_before_ms", "p95_after_ms",
                "telemetry_overhead", "demote_lost"):
        figures[key] = None  # needs telemetry and live promotion
    figures = {key: round(value, 3) if isinstance(value, float) else value for key, value in figures.items()}
    print(f"policy: {figures['decide_us']} us a decision vs {figures['baseline_threshold_us']} us for a bare "
          f"threshold; direction changes over {figures['hours']} h of noisy load: {figures['direction_changes']} "
          f"vs {figures['baseline_direction_changes']}")
    print(f"detect: {figures['detect_s']} s from the load step to the decision (up delay 0.2 s + one 0.02 s interval)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
