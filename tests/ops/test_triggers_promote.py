"""The trigger loop of a running app (`runtime.autopilot.AppTriggers`, what `cellmono serve` runs) in `promote` mode:
it promotes the example app's `notes` cell to real worker processes over a real nats-server while a client keeps
calling, with no failed or lost request; the decision and the promoter's steps are audited with actor `triggers`;
an operator's demotion is followed (level 0, cool-down); the other cells, in `recommend` mode, never move.
The thresholds are tiny for `notes` alone, so the example's light calls are load enough."""
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

SHORT = dict(interval=0.2, up_delay=0.4, burn_windows="10/2@14.4", users_enter=1, users_exit=0, cooldown=2.0)


@pytest.fixture(scope="module")
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


def test_loop_promotes_notes_under_load_and_follows_a_demotion(nats_server, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CELLMONO__TELEMETRY__WINDOW", "1")
    monkeypatch.setenv("CELLMONO__TELEMETRY__CPU_SAMPLE_EVERY", "1")  # the client's light calls: any CPU counts
    monkeypatch.setenv("CELLMONO__CELL_NOTES__MAX_NOTES", "10000000")  # the client adds notes for a while
    app = live_app(monkeypatch, tmp_path, nats_server.url)
    telemetry = Telemetry.attach(app)
    mover = promoter(app, tmp_path)
    config = TriggerConfig(default=TriggerSettings(**SHORT),
                           cells={"notes": TriggerSettings(**SHORT, mode="promote", cpu_enter=1e-4, cpu_exit=5e-5)})
    triggers = AppTriggers(app, telemetry, mover, audit=app.services.audit, config=config)

    async def scenario() -> tuple[Client, int, int]:
        await app.start()
        client = Client(app)
        load = asyncio.create_task(client.run())
        loop = asyncio.create_task(triggers.run())
        try:
            for _ in range(300):  # bounded: 60 s
                if "notes" in mover.groups:
                    break
                await asyncio.sleep(0.2)
            assert "notes" in mover.groups, triggers.last.get("notes")
            assert app.switch.route("notes.add") == "notes" and app.where["notes"].startswith("1 worker")
            assert "triggers: promote" in app.to_mermaid(), app.to_mermaid()
            served = client.answered
            await asyncio.sleep(1.0)
            assert client.answered > served, "the workers answer"
            assert triggers.states["notes"].level == 1
            await mover.demote("notes", actor="operator")
            await asyncio.sleep(0.5)
            state = triggers.states["notes"]
            assert (state.level, state.last_direction) == (0, -1), state
            assert {name for name in ("search", "digest", "importer") if app.where[name] != "inprocess"} == set()
        finally:
            triggers.stop()
            await loop
            client.stop.set()
            await load
            await mover.close()
            await app.stop()
        return client, client.sent, client.answered

    client, sent, answered = asyncio.run(scenario())
    assert client.failures == [], client.failures[:5]
    assert sent == answered, "every request sent was answered"
    with AuditLog(tmp_path / "audit.sqlite") as audit:
        records = [entry.fields for entry in audit.entries()]
    decided = [r for r in records if r["action"] == "triggers.decision" and r["resource"] == "notes"
               and r["details"]["action"] == "promote"]
    assert decided and decided[0]["details"]["acted"] is True and decided[0]["details"]["mode"] == "promote"
    assert any(r["action"] == "promote.done" and r["actor"] == "triggers" for r in records)
    others = [r for r in records if r["action"] == "triggers.decision" and r["resource"] != "notes"]
    assert all(r["details"]["mode"] == "recommend" and not r["details"]["acted"] for r in others)
