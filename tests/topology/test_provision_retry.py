"""The engine unreachable at start: a worker started before its broker prints one clear line, retries with capped
backoff, and serves once the broker comes up; the command queued on a durable subject meanwhile is applied once.
Real nats-server (started late, on a port chosen first), real worker process."""
from __future__ import annotations

import asyncio
import sys
import time

from brokers import Server, free_port, nats_binary, require
from cellmono.core.bus import Bus
from cellmono.core.config import load_settings
from cellmono.core.errors import NoResponders
from cellmono.topology.placement import build_transport
from cellmono.topology.workers import CONTRACT_SUBJECT, PING_SUBJECT, answer_control, contract_fingerprint
from test_ha_replicas import counts, write_app
from worker_support import spawn_worker, worker_logs


def test_a_worker_started_before_its_broker_waits_and_applies_the_queued_command_once(tmp_path) -> None:
    port = free_port()
    settings_path = write_app(tmp_path, "nats", f"nats://127.0.0.1:{port}", replicas=1)
    with settings_path.open("a") as settings:
        settings.write("[workers]\nretry_initial = 0.2\nretry_max = 1\nretry_give_up = 60\n")
    worker = spawn_worker(settings_path, "jobs", 1)  # no broker yet
    server: Server | None = None
    try:
        give_up = time.monotonic() + 30  # a worker process starts slowly on a loaded machine
        while "retrying with backoff" not in worker_logs(tmp_path):
            assert worker.poll() is None and time.monotonic() < give_up, worker_logs(tmp_path)
            time.sleep(0.1)
        time.sleep(2.0)  # the broker comes up ~2 s later
        assert worker.poll() is None, f"the worker gave up instead of retrying:\n{worker_logs(tmp_path)}"
        server = require(lambda: Server("nats", [nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                                                 str(tmp_path / "js")], port, str(tmp_path)).start())

        async def scenario() -> None:
            settings = load_settings(settings_path, environ={})
            sys.path.insert(0, str(tmp_path))
            from ha_jobs import JobsCell
            bus = Bus(build_transport(settings, "nats"), timeout=5)
            await bus.start()  # creates the durable stream: the command is kept until a worker takes it
            await answer_control(bus, CONTRACT_SUBJECT.format(cell="jobs"), contract_fingerprint(JobsCell))
            await bus.publish("jobs.run", {"key": "queued"}, idempotency_key="queued")
            give_up = time.monotonic() + 30
            while counts(tmp_path / "jobs.sqlite")[0] < 1:
                assert worker.poll() is None and time.monotonic() < give_up, worker_logs(tmp_path)
                await asyncio.sleep(0.1)
            while True:  # the worker answers pings once started; it may apply the command a moment before
                try:
                    await bus.request(PING_SUBJECT.format(cell="jobs", replica=1), timeout=2)
                    break
                except NoResponders:
                    assert time.monotonic() < give_up, worker_logs(tmp_path)
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a second delivery would land here (ack_wait = 1)
            await bus.stop()
        asyncio.run(scenario())
        assert counts(tmp_path / "jobs.sqlite")[0] == 1, worker_logs(tmp_path)
        logs = worker_logs(tmp_path)
        assert logs.count("retrying with backoff") == 1, logs  # one clear line, not one per try
        assert "Traceback" not in logs
    finally:
        worker.terminate()
        worker.wait(10)
        if server is not None:
            server.stop()
