"""Live promotion balances a cell's requests over its replicas (`ops.balancer`), on real worker processes over a
real nats-server: 8 concurrent requests to a cell promoted to 2 workers land 4 and 4, round after round (a queue
group's random pick splits them 4/4 only 27% of the time); with one worker killed, every request is still answered
by the other one (the dead replica's direct subject has no responder: the queue group takes the request)."""
from __future__ import annotations

import asyncio
import collections
import os
import signal
import textwrap
from pathlib import Path

import pytest

from brokers import require, start_nats

from cellmono.ops.balancer import Balancer
from cellmono.ops.promotion import Promoter
from cellmono.security.guard import Principal
from cellmono.topology.switch import LiveApp
from cellmono.topology.workers import build_app

CELL = '''
    import asyncio
    import os

    from pydantic import BaseModel

    from cellmono.core.cell import Cell, handles


    class Ask(BaseModel):
        hold: float


    class Where(BaseModel):
        pid: int


    class SlowCell(Cell):
        """Holds each request a moment (many in flight at once) and says which process answered."""

        name = "slow"

        @handles("slow.ask")
        async def ask(self, message: Ask) -> Where:
            await asyncio.sleep(message.hold)
            return Where(pid=os.getpid())
'''


@pytest.fixture(scope="module")
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


def slow_app(folder: Path, monkeypatch, url: str) -> LiveApp:
    (folder / "slowcell.py").write_text(textwrap.dedent(CELL))
    (folder / "settings.ini").write_text(textwrap.dedent(f"""
        [app]
        name = balance-test
        cells = slow
        [log]
        level = WARNING
        [security]
        signing_keys = {folder}/keys.json
        audit_path = {folder}/audit.sqlite
        store_path = {folder}/store.sqlite
        kek_file = {folder}/kek.json
        role.caller = *:*
        [cell.slow]
        class = slowcell:SlowCell
        """))
    monkeypatch.setenv("CELLMONO__NATS__URL", url)
    monkeypatch.setenv("CELLMONO__NATS__PREFIX", f"balance{os.getpid()}")
    app = build_app(folder / "settings.ini")
    assert isinstance(app, LiveApp)
    return app


def test_requests_spread_evenly_and_survive_a_dead_replica(nats_server, monkeypatch, tmp_path: Path) -> None:
    app = slow_app(tmp_path, monkeypatch, nats_server.url)
    promoter = Promoter(app, audit=app.services.audit, state=tmp_path / "var")

    async def scenario() -> tuple[list[collections.Counter[int]], list[int], list[int]]:
        from slowcell import Ask, Where  # importable once the app is built (its folder is on sys.path)

        token = app.services.token_for(Principal(id="load", roles=("caller",)))

        async def ask(hold: float) -> int:
            answer = await app.bus.request("slow.ask", Ask(hold=hold), capability=token, timeout=10, response=Where)
            return answer.pid

        await app.start()
        try:
            await promoter.promote("slow", replicas=2, actor="test")
            assert isinstance(app.switch.broker, Balancer)
            pids = promoter.groups["slow"].pids()
            rounds = [collections.Counter(await asyncio.gather(*(ask(0.3) for _ in range(8)))) for _ in range(3)]
            os.kill(pids[1], signal.SIGKILL)  # replica 2 dies; its supervisor restarts it after a backoff
            await asyncio.to_thread(promoter.groups["slow"].processes[2].wait, 5)
            survivors = await asyncio.gather(*(ask(0.05) for _ in range(8)))
            return rounds, survivors, pids
        finally:
            await promoter.close()
            await app.stop()

    rounds, survivors, pids = asyncio.run(scenario())
    assert all(sorted(counts.values()) == [4, 4] and set(counts) == set(pids) for counts in rounds), rounds
    assert survivors == [pids[0]] * 8, (survivors, pids)
