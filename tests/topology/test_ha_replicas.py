"""HA: three worker replicas on a durable subject, one killed with SIGKILL while 2,000 jobs flow;
a worker that crashes in a loop on a poison message; all against real brokers and real processes."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from brokers import require, start_nats, start_redis
from worker_support import spawn_worker, stop, wait_ready

from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.topology.placement import build_transport
from cellmono.topology.workers import CONTRACT_SUBJECT, answer_control, contract_fingerprint

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ha"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(params=["nats", "redis"])
def broker(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


def write_app(folder: Path, kind: str, url: str, replicas: int = 3) -> Path:
    shutil.copy(FIXTURE / "ha_jobs.py", folder / "ha_jobs.py")
    settings = folder / "settings.ini"
    settings.write_text(f"""
[app]
name = ha
cells = jobs
[bus]
drain_timeout = 2
[log]
level = WARNING
[security]
# the jobs handler requires no capability: deliveries without a token are allowed for it
allow_public = true
[cell.jobs]
class = ha_jobs:JobsCell
placement = process
transport = {kind}
replicas = {replicas}
database = {folder / 'jobs.sqlite'}
[{kind}]
url = {url}
prefix = ha
durable = jobs.>
ack_wait = 1
max_deliver = 3
""")
    return settings


async def app_side(settings_path: Path, kind: str) -> Bus:
    """The app's side of the bus: answers the contract query, publishes jobs, pings replicas."""
    settings = load_settings(settings_path, environ={})
    sys.path.insert(0, str(settings_path.parent))
    from ha_jobs import JobsCell
    bus = Bus(build_transport(settings, kind), timeout=5)
    await bus.start()
    await answer_control(bus, CONTRACT_SUBJECT.format(cell="jobs"), contract_fingerprint(JobsCell))
    return bus


def counts(database: Path) -> tuple[int, int, int]:
    if not database.exists():
        return 0, 0, 0
    db = sqlite3.connect(database, timeout=30)
    try:
        effects = db.execute("SELECT COUNT(*) FROM effects").fetchone()[0]
        attempts = db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
        distinct = db.execute("SELECT COUNT(DISTINCT key) FROM attempts").fetchone()[0]
    except sqlite3.OperationalError:
        return 0, 0, 0
    finally:
        db.close()
    return effects, attempts, distinct


async def test_kill_one_of_three_replicas_while_2000_jobs_flow(broker, tmp_path: Path) -> None:
    kind, server = broker
    settings = write_app(tmp_path, kind, server.url)
    bus = await app_side(settings, kind)
    workers = [spawn_worker(settings, "jobs", replica) for replica in (1, 2, 3)]
    try:
        await wait_ready(bus, "jobs", (1, 2, 3), tmp_path)
        victim = workers[1]
        for number in range(2000):
            await bus.publish("jobs.run", {"key": f"job-{number}"}, idempotency_key=f"job-{number}")
            if number == 700:
                os.kill(victim.pid, signal.SIGKILL)  # mid-flow, holding unacknowledged jobs
        database = tmp_path / "jobs.sqlite"
        give_up = time.monotonic() + 60
        while counts(database)[0] < 2000 and time.monotonic() < give_up:
            await asyncio.sleep(0.2)
        effects, attempts, distinct = counts(database)
        assert victim.wait(5) == -signal.SIGKILL
        assert effects == 2000, (effects, attempts, distinct)  # every job handled...
        assert distinct == 2000 and attempts >= 2000  # ...redeliveries allowed, effects once (idempotent)
        db = sqlite3.connect(database)
        by_pid = dict(db.execute("SELECT pid, COUNT(*) FROM effects GROUP BY pid").fetchall())
        db.close()
        assert len(by_pid) == 3, by_pid  # all three replicas worked, the victim before it died
    finally:
        stop(workers)
        await bus.stop()


async def test_worker_crashing_in_a_loop_dead_letters_the_poison(broker, tmp_path: Path) -> None:
    kind, server = broker
    settings = write_app(tmp_path, kind, server.url, replicas=1)
    bus = await app_side(settings, kind)
    dead: list[dict] = []
    await bus.subscribe("dead.>", lambda envelope: dead.append(envelope.payload), durable=True, queue="ops")
    workers = [spawn_worker(settings, "jobs", 1)]
    try:
        await wait_ready(bus, "jobs", (1,), tmp_path)
        await bus.publish("jobs.run", {"key": "before"})
        await bus.publish("jobs.run", {"key": "poison", "poison": True})
        for number in range(5):
            await bus.publish("jobs.run", {"key": f"after-{number}"})
        give_up = time.monotonic() + 60
        restarts = 0
        while not dead and time.monotonic() < give_up:  # the test supervises: restart with backoff
            if workers[-1].poll() is not None:
                restarts += 1
                await asyncio.sleep(min(0.1 * 2 ** restarts, 1.0))
                workers.append(spawn_worker(settings, "jobs", 1))
            await asyncio.sleep(0.05)
        assert dead and dead[0]["envelope"]["payload"] == {"key": "poison", "poison": True}, dead
        assert "crash" in dead[0]["reason"] and restarts >= 2
        give_up = time.monotonic() + 30
        while counts(tmp_path / "jobs.sqlite")[0] < 6 and time.monotonic() < give_up:
            if workers[-1].poll() is not None:
                workers.append(spawn_worker(settings, "jobs", 1))
            await asyncio.sleep(0.1)
        assert counts(tmp_path / "jobs.sqlite")[0] == 6  # before + 5 after: nothing lost
    finally:
        stop(workers)
        await bus.stop()
