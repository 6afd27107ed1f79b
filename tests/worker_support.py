"""Real `cellmono worker` processes for tests: spawn one replica, wait until replicas answer their
ping, read their logs for failure messages, and stop them (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from cellmono.core.bus import Bus
from cellmono.topology.workers import PING_SUBJECT


def spawn_worker(settings: Path, cell: str, replica: int) -> subprocess.Popen:
    """A worker replica, as a promoted app spawns it; its output goes to a log file beside the settings
    (a pipe nobody reads could fill)."""
    log = open(settings.parent / f"worker-{replica}-{time.monotonic_ns()}.log", "wb")
    with log:
        return subprocess.Popen([sys.executable, "-m", "cellmono.cli.worker", "--settings", str(settings),
                                 "--cell", cell, "--replica", str(replica)], cwd=settings.parent,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def worker_logs(folder: Path, tail: int = 3000) -> str:
    """The end of every worker's output, for failure messages."""
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
                     for path in sorted(folder.glob("worker-*.log")))


async def wait_ready(bus: Bus, cell: str, replicas: Iterable[int], folder: Path, seconds: float = 60) -> None:
    """Until each replica answers its ping (worker processes start slowly on a loaded 2-core machine)."""
    give_up = time.monotonic() + seconds
    for replica in replicas:
        while True:
            try:
                await bus.request(PING_SUBJECT.format(cell=cell, replica=replica), timeout=1)
                break
            except Exception as error:
                if time.monotonic() > give_up:
                    raise AssertionError(f"replica {replica} not ready: {error}\n{worker_logs(folder)}") from None
                await asyncio.sleep(0.05)


def stop(processes: Iterable[subprocess.Popen]) -> None:
    """SIGTERM each live process, then SIGKILL one that has not exited within 10 s."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
