"""Live promotion and demotion of the example app's `notes` cell with a real nats-server and real worker
processes, while a client keeps calling: no failed or lost request; and every way a move can fail."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from brokers import free_port, require, start_nats
from promotion_support import Client, actions, live_app, promoter

from cellmono.ops.promotion import PromotionRefused, PromotionRolledBack
from cellmono.security.guard import Principal


@pytest.fixture(scope="module")
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


def test_promote_and_demote_notes_under_load(nats_server, monkeypatch, tmp_path: Path) -> None:
    app = live_app(monkeypatch, tmp_path, nats_server.url)

    async def scenario() -> tuple[Client, int, int, list[str]]:
        await app.start()
        mover = promoter(app, tmp_path)
        client = Client(app)
        load = asyncio.create_task(client.run())
        try:
            await asyncio.sleep(0.3)
            local = app.cells["notes"]
            placement = await mover.promote("notes", replicas=2, transport="nats")
            assert placement.where == "process" and placement.replicas == 2
            assert app.switch.route("notes.add") == "notes"
            kept = len(local.notes)
            answered_before = client.answered
            await asyncio.sleep(1.0)
            assert client.answered > answered_before + 20, "the workers answer"
            assert len(local.notes) == kept, "the local copy is stopped: it stores nothing more"
            diagram = app.to_mermaid()
            assert "2 workers over nats" in diagram
            await mover.demote("notes")
            assert app.switch.route("notes.add") == "memory"
            after = client.answered
            await asyncio.sleep(0.3)
            assert len(app.cells["notes"].notes) > 0 and client.answered > after
        finally:
            client.stop.set()
            await load
            await mover.close()
            await app.stop()
        return client, client.sent, client.answered, actions(tmp_path)

    client, sent, answered, recorded = asyncio.run(scenario())
    assert client.failures == [], client.failures[:5]
    assert sent == answered, "every request sent was answered"
    for action in ("promote.start", "promote.broker", "promote.workers_ready", "promote.done",
                   "demote.start", "demote.switched", "demote.done"):
        assert action in recorded, (action, recorded)


def test_broker_down_moves_nothing(monkeypatch, tmp_path: Path) -> None:
    app = live_app(monkeypatch, tmp_path, f"nats://127.0.0.1:{free_port()}")

    async def scenario() -> None:
        await app.start()
        mover = promoter(app, tmp_path)
        try:
            with pytest.raises(PromotionRolledBack, match="rolled back, it still runs in process.*NATS"):
                await mover.promote("notes")
            assert app.switch.route("notes.add") == "memory" and not mover.groups
            reader = app.services.token_for(Principal(id="r", roles=("reader",)))
            assert (await app.bus.request("search.query", {"text": "bus"}, capability=reader)).query == "bus"
        finally:
            await mover.close()
            await app.stop()

    asyncio.run(scenario())
    assert actions(tmp_path)[-1] == "promote.rollback"


def test_workers_crashing_on_start_roll_back(nats_server, monkeypatch, tmp_path: Path) -> None:
    app = live_app(monkeypatch, tmp_path, nats_server.url)

    async def scenario() -> list[int]:
        await app.start()
        monkeypatch.setenv("CELLMONO__CELL_NOTES__MAX_NOTES", "0")  # invalid: the workers exit at start
        mover = promoter(app, tmp_path)
        try:
            with pytest.raises(PromotionRolledBack, match="exited with code"):
                await mover.promote("notes", replicas=2)
            assert app.switch.route("notes.add") == "memory" and not mover.groups
            assert app.cells["notes"].health().status == "healthy"
            return []
        finally:
            await mover.close()
            await app.stop()

    asyncio.run(scenario())
    assert actions(tmp_path)[-2:] == ["promote.broker", "promote.rollback"]


def test_two_promotions_at_once_one_wins(nats_server, monkeypatch, tmp_path: Path) -> None:
    app = live_app(monkeypatch, tmp_path, nats_server.url)

    async def scenario() -> list[object]:
        await app.start()
        mover = promoter(app, tmp_path)
        try:
            results = await asyncio.gather(mover.promote("notes"), mover.promote("notes"), return_exceptions=True)
            assert list(mover.groups) == ["notes"]
            return results
        finally:
            await mover.close()
            await app.stop()

    results = asyncio.run(scenario())
    refused = [result for result in results if isinstance(result, PromotionRefused)]
    assert len(refused) == 1 and "being moved already" in str(refused[0])
    assert sum(1 for result in results if not isinstance(result, BaseException)) == 1


def test_unknown_cell_and_double_demotion_are_refused(monkeypatch, tmp_path: Path) -> None:
    app = live_app(monkeypatch, tmp_path, None)

    async def scenario() -> None:
        await app.start()
        mover = promoter(app, tmp_path)
        try:
            with pytest.raises(PromotionRefused, match="no cell 'nope'"):
                await mover.promote("nope")
            with pytest.raises(PromotionRefused, match="runs in process already"):
                await mover.demote("notes")
            assert app.switch.broker is None, "nothing started"
        finally:
            await mover.close()
            await app.stop()

    asyncio.run(scenario())
    assert actions(tmp_path, "nope") == ["promote.refused"]


def test_promoted_listener_hears_events_and_answers(nats_server, monkeypatch, tmp_path: Path) -> None:
    """`search` listens to `notes.added` from the in-process `notes` cell: after promotion its workers hear the
    events the app publishes (once each) and answer its queries; the app's own events do not come back twice."""
    app = live_app(monkeypatch, tmp_path, nats_server.url)

    async def scenario() -> tuple[list[int], int]:
        await app.start()
        mover = promoter(app, tmp_path)
        editor = app.services.token_for(Principal(id="e", roles=("editor",)))
        try:
            await mover.promote("search", replicas=1)
            await app.bus.request("notes.add", {"title": "zebra crossing", "body": "striped"}, capability=editor)
            hits: list[int] = []
            for _ in range(100):  # the event crosses the broker: poll briefly
                results = await app.bus.request("search.query", {"text": "zebra"}, capability=editor)
                hits = [hit["id"] for hit in results["hits"]]
                if hits:
                    break
                await asyncio.sleep(0.05)
            digest = await app.bus.request("digest.summary", {}, capability=editor)
            return hits, digest.notes
        finally:
            await mover.close()
            await app.stop()

    hits, notes = asyncio.run(scenario())
    assert len(hits) == 1, hits
    assert notes >= 1


def test_promote_and_demote_over_redis_under_load(monkeypatch, tmp_path: Path) -> None:
    """The same live move over a real Valkey/Redis server: no failed or lost request either way."""
    from brokers import start_redis
    server = require(start_redis)
    try:
        monkeypatch.setenv("CELLMONO__REDIS__URL", server.url)
        monkeypatch.setenv("CELLMONO__REDIS__PREFIX", "live")
        app = live_app(monkeypatch, tmp_path, None)

        async def scenario() -> Client:
            await app.start()
            mover = promoter(app, tmp_path)
            client = Client(app)
            load = asyncio.create_task(client.run())
            try:
                await asyncio.sleep(0.3)
                await mover.promote("notes", replicas=2, transport="redis")
                served = client.answered
                await asyncio.sleep(1.0)
                assert client.answered > served + 20 and app.switch.route("notes.add") == "notes"
                await mover.demote("notes")
                await asyncio.sleep(0.3)
            finally:
                client.stop.set()
                await load
                await mover.close()
                await app.stop()
            return client

        client = asyncio.run(scenario())
        assert client.failures == [] and client.sent == client.answered, client.failures[:5]
    finally:
        server.cleanup()
