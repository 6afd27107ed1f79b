"""Promoted cells are still measured: the example app's `notes` cell runs in two real worker processes over a real
nats-server; each worker publishes its telemetry, the app aggregates it per cell, and the trigger loop
(`runtime.autopilot.AppTriggers`, in `promote` mode) sees the cell's load from the workers, holds while a client
calls, and demotes it by itself once the load stops: after the down delay and the cool-down, audited as actor
`triggers` like a promotion, with every request answered."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from brokers import require, start_nats
from promotion_support import Client, live_app, promoter

from cellmono.ops.signals import TriggerConfig, TriggerSettings
from cellmono.ops.telemetry import Telemetry
from cellmono.runtime.autopilot import AppTriggers
from cellmono.security.audit import AuditLog

# the client is one principal (it names itself on each request, as the gateway does): users 1 is not below exit 1,
# so its calls alone keep the cell where it is
NOTES = dict(mode="promote", interval=0.2, up_delay=0.4, down_delay=0.6, down_window=0.6, dwell=0.0, cooldown=1.0,
             burn_windows="10/2@14.4", users_enter=5, users_exit=1, cpu_enter=0.9, cpu_exit=0.5,
             min_replicas=2, max_replicas=2)


@pytest.fixture(scope="module")
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


def test_workers_report_and_the_loop_demotes_when_the_load_stops(nats_server, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CELLMONO__TELEMETRY__WINDOW", "1")
    monkeypatch.setenv("CELLMONO__TELEMETRY__PUBLISH_EVERY", "0.2")  # the workers inherit it from the environment
    monkeypatch.setenv("CELLMONO__CELL_NOTES__MAX_NOTES", "10000000")
    app = live_app(monkeypatch, tmp_path, nats_server.url)
    telemetry = Telemetry.attach(app)
    mover = promoter(app, tmp_path)
    config = TriggerConfig(default=TriggerSettings(interval=0.2, mode="off"), cells={"notes": TriggerSettings(**NOTES)})
    triggers = AppTriggers(app, telemetry, mover, audit=app.services.audit, config=config)

    async def scenario() -> tuple[Client, dict[str, int], list[str]]:
        await app.start()
        client = Client(app)
        load = asyncio.create_task(client.run())
        loop = asyncio.create_task(triggers.run())
        seen: dict[str, int] = {}
        held: list[str] = []
        try:
            await mover.promote("notes", replicas=2, actor="operator")
            promoted_at = triggers.tick
            record = None
            for _ in range(150):  # bounded: 30 s until the loop samples the workers' calls
                record = next((r for r in reversed(triggers.records) if r.sample.cell == "notes"
                               and r.tick > promoted_at and r.sample.requests > 0), None)
                if record is not None:
                    break
                await asyncio.sleep(0.2)
            assert record is not None, "the loop samples the promoted cell from its workers"
            assert {replica for cell, replica in mover.metrics.reports if cell == "notes"} == {1, 2}
            seen = {"requests": record.sample.requests, "level": triggers.states["notes"].level}
            await asyncio.sleep(2.0)  # longer than cool-down + down delay: under load the loop holds
            assert "notes" in mover.groups, triggers.last.get("notes")
            held = [d.action for d in [triggers.last["notes"]]]
            client.stop.set()
            await load
            for _ in range(150):  # bounded: 30 s for the window to empty and the loop to demote
                if "notes" not in mover.groups:
                    break
                await asyncio.sleep(0.2)
            assert "notes" not in mover.groups, triggers.last.get("notes")
            assert app.where["notes"] == "inprocess" and app.switch.route("notes.add") == "memory"
        finally:
            triggers.stop()
            await loop
            client.stop.set()
            await load
            await mover.close()
            await app.stop()
        return client, seen, held

    client, seen, held = asyncio.run(scenario())
    assert client.failures == [], client.failures[:5]
    assert client.sent == client.answered, "every request sent was answered"
    assert seen["level"] == 2 and held == ["hold"], (seen, held)
    with AuditLog(tmp_path / "audit.sqlite") as audit:
        records = [entry.fields for entry in audit.entries()]
    demoted = [r for r in records if r["action"] == "triggers.decision" and r["resource"] == "notes"
               and r["details"]["action"] == "demote"]
    assert demoted and demoted[0]["details"]["acted"] is True, demoted
    assert demoted[0]["details"]["inputs"]["level"] == 2
    assert any(r["action"] == "demote.done" and r["actor"] == "triggers" for r in records)
