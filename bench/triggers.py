"""Benchmark measure -> decide -> move: constant load on a CPU-heavy cell through the bus, the trigger loop in promote mode promotes it to workers over the embedded nats-server, then it is demoted under load.

One run, real components: the cell runs in a `LiveApp` with telemetry attached, `AppTriggers` (the loop `cellmono
serve` runs) samples it every interval with short windows, and its `PromoterMover` promotes through the `Promoter`
that `cellmono promote` uses: worker processes (`cellmono.cli.worker`) over the embedded nats-server. The load is
closed-loop through `app.bus.request`: `CALLERS` (8) callers back to back, so in process the cell
is saturated and requests queue on the app's loop (each waits behind the others'), while two workers serve them two
at a time, four queued on each: the app sends each request to the replica with the fewest in flight (`ops.balancer`).
A broker's queue group alone picks a replica at random, and then the p95 of 8 callers on 2 replicas is 8 service
times, as in process (a request often waits behind three on one worker while the other idles): the gain was thin. The trigger settings are short for the run (0.2 s ticks, 0.4 s up delay, a 4 s / 1 s burn
window, CPU enter 0.25 and the cell's `slo_p95_ms = 10`: on a shared machine a saturated event loop gets well under a
core, so thread CPU alone reads low); two replicas.

Every figure may be null (the reason is printed above the JSON line): the run never crashes on a missing window.

Keys of the last line:
- lost_requests: requests sent and never answered (timed out or cut) over the whole run; failed_requests: answered
  with an error;
- detect_s: from load start to the promotion decision; promote_s: from the decision until the promotion returned,
  i.e. the cell's subjects route to the broker and the in-process copy is drained: all traffic served by workers;
- p95_before_ms / p95_after_ms: latency from when each request was due, under the same load, in process (from 0.5 s
  after load start to the decision) vs in workers (from `WARM_UP` s after the promotion to the demotion);
- telemetry_overhead: in-process bus request/reply with the default telemetry on vs off, minus 1 (thread CPU,
  paired rounds, from `bench/telemetry.py`); tracing is off by default and not part of it;
- demote_lost: requests lost while `Promoter.demote` brings the cell back under the same load;
- replicas: the workers the decision asked for; decide_us: one pure policy decision with the default windows;
- requests, callers, service_ms: the requests sent, by how many callers, and the in-process time of one request with
  nothing queued (measured first: p95_before_ms is about callers x service_ms when the cell is saturated).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from telemetry import measure as measure_telemetry  # bench/telemetry.py: the same figure, the same method

from cellmono.core.errors import RequestTimeout
from cellmono.ops.promotion import Promoter
from cellmono.ops.signals import Sample, TriggerConfig, TriggerSettings
from cellmono.ops.telemetry import Telemetry
from cellmono.ops.triggers import CellState, Decision, decide, history_ticks
from cellmono.runtime.autopilot import AppTriggers
from cellmono.security.audit import AuditLog
from cellmono.security.guard import Principal
from cellmono.topology.switch import LiveApp
from cellmono.topology.workers import build_app

CELL = '''
    import hashlib

    from pydantic import BaseModel

    from cellmono.core.cell import Cell, handles


    class Work(BaseModel):
        rounds: int


    class Done(BaseModel):
        digest: str


    class HotCell(Cell):
        """CPU-heavy: a chain of SHA-256 rounds, on the event loop's thread (as a naive handler would)."""

        name = "hot"

        @handles("hot.work")
        async def work(self, message: Work) -> Done:
            digest = b"cellmono"
            for _ in range(message.rounds):
                digest = hashlib.sha256(digest).digest()
            return Done(digest=digest.hex())
'''


def write_app(folder: Path) -> Path:
    (folder / "hotcell.py").write_text(textwrap.dedent(CELL))
    settings = folder / "settings.ini"
    settings.write_text(textwrap.dedent(f"""
        [app]
        name = triggers-bench
        cells = hot
        [log]
        level = WARNING
        [security]
        signing_keys = {folder}/keys.json
        audit_path = {folder}/audit.sqlite
        store_path = {folder}/store.sqlite
        kek_file = {folder}/kek.json
        role.caller = *:*
        [telemetry]
        window = 1.0
        cpu_sample_every = 4
        [cell.hot]
        class = hotcell:HotCell
        slo_p95_ms = 10
        """))
    return settings


# The load: CALLERS callers, each sending `hot.work` and waiting for the answer before the next, with no pause (as
# many agents calling one tool). In process they saturate the cell: it runs one request at a time on the app's
# loop, so each request waits behind the other callers' (a queue CALLERS - 1 deep). Two workers run two at a time.
# The bench had two callers before: in process that queued at most one request, while the broker's queue group sent
# both to the same worker half the time, so it measured those collisions rather than the scenario. An open-loop rate
# above the in-process capacity queues too, but without bound: on this shared machine (2 cores, 8 rooms) the capacity
# changes 2x within a minute and a promotion under contention takes 10 s, so the backlog, not the move, set the figures.
CALLERS = 8
REPLICAS = 2
WARM_UP = 2.0  # seconds after the promotion before the 'after' latencies count
TIMEOUT = 10.0  # seconds before a request counts as lost (never answered): far above any queue of this run


class Load:
    """Closed-loop callers: each sends `hot.work`, waits for the answer, sends the next; every outcome counted."""

    def __init__(self, app: LiveApp, callers: int, rounds: int) -> None:
        from hotcell import Done, Work  # importable once the app is built (its folder is on sys.path)

        self.app, self.callers, self.work, self.done = app, callers, Work(rounds=rounds), Done
        self.token = app.services.token_for(Principal(id="load", roles=("caller",)))
        self.sent = self.answered = self.lost = self.failed = 0
        self.latencies: list[tuple[float, float]] = []  # (sent at, seconds)
        self.errors: list[str] = []
        self.lost_at: list[float] = []  # when each lost request was sent
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.caller()) for _ in range(self.callers)]

    async def stop(self) -> None:
        """Stop sending; every request in the air ends (answered or timed out) before this returns."""
        self.stopping.set()
        await asyncio.gather(*self.tasks)

    async def caller(self) -> None:
        while not self.stopping.is_set():
            self.sent += 1
            started = time.monotonic()
            try:
                await self.app.bus.request("hot.work", self.work, capability=self.token, timeout=TIMEOUT,
                                           response=self.done)
            except (RequestTimeout, asyncio.TimeoutError) as error:
                self.lost += 1
                self.lost_at.append(started)
                self.errors.append(f"lost: {type(error).__name__}: {error}")
            except Exception as error:  # every other outcome is an answer with an error
                self.failed += 1
                self.errors.append(f"failed: {type(error).__name__}: {error}")
            else:
                self.answered += 1
                self.latencies.append((started, time.monotonic() - started))

    def p95_ms(self, start: float, end: float) -> float | None:
        return self.quantile_ms(start, end, 0.95)

    def quantile_ms(self, start: float, end: float, quantile: float) -> float | None:
        values = sorted(seconds for at, seconds in self.latencies if start <= at < end)
        return values[int(quantile * (len(values) - 1))] * 1000 if values else None


async def service_ms(app: LiveApp, rounds: int, calls: int = 9) -> float:
    """The in-process cell's time for one request with nothing queued (median of `calls`), in ms."""
    from hotcell import Done, Work

    token = app.services.token_for(Principal(id="load", roles=("caller",)))
    times = []
    for _ in range(calls):
        started = time.monotonic()
        await app.bus.request("hot.work", Work(rounds=rounds), capability=token, timeout=TIMEOUT, response=Done)
        times.append(time.monotonic() - started)
    return statistics.median(times) * 1000


def ms(value: float | None) -> str:
    """A latency for the report, or a dash when its window held no sample."""
    return "-" if value is None else f"{value:.1f} ms"


class StampedMover:
    """The loop's real mover, with the time of the decision and of the end of the move noted."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.decided: float | None = None
        self.moved: float | None = None
        self.decision: Decision | None = None
        self.error: BaseException | None = None

    async def move(self, decision: Decision) -> None:
        self.decided, self.decision = time.monotonic(), decision
        try:
            await self.inner.move(decision)  # type: ignore[attr-defined]
        except BaseException as error:
            self.error = error
            raise
        self.moved = time.monotonic()


def why_null(figures: dict[str, float | int | None], reasons: dict[str, str], key: str, reason: str) -> None:
    """Set `key` to null, with the reason printed at the end: a figure may be missing, the run still ends with JSON."""
    figures[key] = None
    reasons.setdefault(key, reason)


async def measure_move(folder: Path, quick: bool, reasons: dict[str, str]) -> dict[str, float | int | None]:
    """The move's figures; any that could not be measured is null, with its reason in `reasons`."""
    keys = ("lost_requests", "failed_requests", "detect_s", "promote_s", "p95_before_ms", "p95_after_ms",
            "demote_lost", "replicas", "requests", "callers", "service_ms")
    figures: dict[str, float | int | None] = dict.fromkeys(keys)
    settings = write_app(folder)
    os.environ["CELLMONO__NATS__PREFIX"] = f"bench{os.getpid()}"
    app = build_app(settings)
    assert isinstance(app, LiveApp)
    telemetry = Telemetry.attach(app)
    promoter = Promoter(app, audit=app.services.audit, state=folder / "var")
    short = TriggerSettings(mode="promote", interval=0.2, up_delay=0.4, cpu_enter=0.25, cpu_exit=0.1,
                            burn_windows="4/1@14.4", cooldown=5.0, min_replicas=REPLICAS,
                            max_replicas=REPLICAS)  # type: ignore[arg-type]
    triggers = AppTriggers(app, telemetry, promoter, audit=app.services.audit, config=TriggerConfig(default=short))
    mover = StampedMover(triggers.mover)
    triggers.mover = mover
    await app.start()
    rounds = 8000
    load: Load | None = None
    after_s = 4.0 if quick else 10.0
    loop = None
    try:
        service = await service_ms(app, rounds)
        figures["service_ms"] = round(service, 3)
        load = Load(app, callers=CALLERS, rounds=rounds)
        figures["callers"] = CALLERS
        print(f"in-process service time {service:.1f} ms with nothing queued; {CALLERS} callers")
        started = time.monotonic()
        load.start()
        loop = asyncio.create_task(triggers.run())
        deadline = started + (30 if quick else 60)
        while mover.moved is None and mover.error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        triggers.stop()
        await loop
        if mover.decided is not None:
            figures["detect_s"] = round(mover.decided - started, 3)
            figures["replicas"] = mover.decision.level_after if mover.decision else None
            before = started + min(0.5, (mover.decided - started) / 2)  # skip the cold first half second
            figures["p95_before_ms"] = load.p95_ms(before, mover.decided)
            if figures["p95_before_ms"] is None:
                reasons["p95_before_ms"] = "no answer in the in-process window"
        else:
            for key in ("detect_s", "p95_before_ms", "replicas"):
                why_null(figures, reasons, key, f"no decision within {deadline - started:.0f} s")
        if mover.moved is None or mover.decided is None:
            reason = f"no promotion: {mover.error!r}" if mover.error else "no promotion before the deadline"
            for key in ("promote_s", "p95_after_ms", "demote_lost"):
                why_null(figures, reasons, key, reason)
        else:
            figures["promote_s"] = round(mover.moved - mover.decided, 3)
            settled = mover.moved + WARM_UP  # fresh workers' first calls are slow (lazy imports, cold caches)
            await asyncio.sleep(WARM_UP + after_s)
            lost_before_demote = load.lost
            demote_started = time.monotonic()
            figures["p95_after_ms"] = load.p95_ms(settled, demote_started)
            if figures["p95_after_ms"] is None:
                reasons["p95_after_ms"] = "no answer in the workers' window"
            print(f"p50 {ms(load.quantile_ms(before, mover.decided, 0.5))} in process -> "
                  f"{ms(load.quantile_ms(settled, demote_started, 0.5))} in workers")
            try:
                await promoter.demote("hot", actor="bench")
            except Exception as error:
                why_null(figures, reasons, "demote_lost", f"demotion failed: {type(error).__name__}: {error}")
            else:
                await asyncio.sleep(1.0)  # the load runs on the local copy for a moment, then every request ends
                await load.stop()
                figures["demote_lost"] = load.lost - lost_before_demote
        await load.stop()
        figures["lost_requests"], figures["failed_requests"] = load.lost, load.failed
        figures["requests"] = load.sent
        for at in load.lost_at[:5]:
            print(f"lost a request sent {at - started:.3f} s after load start", file=sys.stderr)
    except Exception as error:  # a figure that could not be measured is null, never a crash
        print(f"the move could not be measured: {type(error).__name__}: {error}", file=sys.stderr)
        for key, value in figures.items():
            if value is None:
                why_null(figures, reasons, key, f"{type(error).__name__}: {error}")
    finally:
        if load is not None and not load.stopping.is_set():
            await load.stop()
        if loop is not None and not loop.done():
            triggers.stop()
            await loop
        for group in list(promoter.groups.values()):  # the workers, then the app, then the embedded broker
            await group.stop()
        promoter.groups.clear()
        await app.stop()
        await promoter.close()
    for line in (load.errors if load is not None else [])[:5]:
        print(line, file=sys.stderr)
    with AuditLog(folder / "audit.sqlite") as log:  # where the promotion's time went, from its audit steps
        steps = [(entry.fields["action"], entry.fields["time"]) for entry in log.entries()
                 if str(entry.fields.get("action", "")).startswith("promote.")]
    if steps:
        print("promotion steps: " + ", ".join(f"{action} +{at - steps[0][1]:.2f} s" for action, at in steps))
    return figures


def decide_us(ticks: int) -> float:
    """Microseconds for one decision of the pure policy with the default windows and a full history."""
    settings = TriggerSettings()
    history = [Sample(cell="c", at=15.0 * tick, cpu_ratio=0.6, p95_ms=10.0, slo_p95_ms=50.0, requests=100)
               for tick in range(history_ticks(settings))]
    state = CellState()
    started = time.perf_counter()
    for tick in range(ticks):
        _, state = decide(history, state, tick, settings)
    return (time.perf_counter() - started) / ticks * 1e6


def show(value: float | int | None, unit: str = "") -> str:
    """A figure for the human lines: a dash when it is null."""
    return "-" if value is None else f"{value}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute, for CI")
    args = parser.parse_args()
    reasons: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cellmono-triggers-bench-") as folder:
        try:
            figures = asyncio.run(measure_move(Path(folder), args.quick, reasons))
        except Exception as error:  # the app did not even start: every move figure is null
            figures = {}
            reasons["move"] = f"{type(error).__name__}: {error}"
    count, rounds = (2_000, 21) if args.quick else (2_000, 61)  # paired rounds; 5000 x 101 ran over 5 min here
    try:
        figures["telemetry_overhead"] = asyncio.run(measure_telemetry(count, rounds))["telemetry_overhead"]
    except Exception as error:
        why_null(figures, reasons, "telemetry_overhead", f"{type(error).__name__}: {error}")
    figures["decide_us"] = round(decide_us(200 if args.quick else 1000), 1)
    figures = {key: round(value, 3) if isinstance(value, float) else value for key, value in figures.items()}
    get = figures.get
    print(f"load: {show(get('requests'))} requests from {show(get('callers'))} callers, {show(get('lost_requests'))} "
          f"lost, {show(get('failed_requests'))} failed")
    print(f"detect {show(get('detect_s'), ' s')}, promote {show(get('promote_s'), ' s')} to {show(get('replicas'))} "
          f"worker(s); p95 {show(get('p95_before_ms'), ' ms')} in process -> {show(get('p95_after_ms'), ' ms')} in "
          f"workers; demote lost {show(get('demote_lost'))}")
    overhead = get("telemetry_overhead")
    print(f"telemetry overhead on bus request/reply: {'-' if overhead is None else f'{overhead:+.1%}'}")
    for key, reason in reasons.items():
        print(f"{key}: null ({reason})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
