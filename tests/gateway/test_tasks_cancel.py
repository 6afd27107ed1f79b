"""Cancelling a task stops the cell's work: the handler sees the cancellation and never finishes (in-memory bus, real app)."""

from __future__ import annotations

import asyncio

import anyio
import mcp_types as types
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, tool
from cellmono.gateway.auth import Identity
from cellmono.gateway.server import CallContext, Gateway
from cellmono.gateway.task_store import task_support

DECLARED = types.ClientCapabilities(extensions={"io.modelcontextprotocol/tasks": {}})


class Job(BaseModel):
    seconds: float


class Done(BaseModel):
    ok: bool


class Worker(Cell):
    name = "worker"
    seen: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    @tool(requires=())
    @task_support("optional")
    async def grind(self, job: Job) -> Done:
        """Work for a while."""
        self.seen.append("started")
        try:
            await anyio.sleep(job.seconds)
        except anyio.get_cancelled_exc_class():
            self.seen.append("cancelled")
            raise
        self.seen.append("finished")
        return Done(ok=True)


def test_cancel_reaches_the_cells_handler() -> None:
    async def scenario() -> None:
        worker = Worker()
        app = App([worker])
        gateway = Gateway(app)
        await app.start()
        try:
            owner = Identity(principal="alice", roles=("admin",))
            record = gateway.tasks.start(CallContext(owner), gateway.entry("worker.grind"), {"seconds": 30})
            for _ in range(200):
                if worker.seen:
                    break
                await asyncio.sleep(0.01)
            assert worker.seen == ["started"]
            found = gateway.tasks.find(CallContext(owner), "tasks/cancel", DECLARED, record.task_id, "cancel")
            gateway.tasks.cancel(found)
            with anyio.fail_after(5):
                await gateway.tasks.finished[record.task_id].wait()
            assert worker.seen == ["started", "cancelled"]
            assert gateway.tasks.store.load("alice", None, record.task_id).status == "cancelled"
            assert gateway.tasks.running == {}
        finally:
            await app.stop()

    asyncio.run(scenario())


def test_a_short_task_is_not_cancelled_by_a_late_cancel() -> None:
    async def scenario() -> None:
        worker = Worker()
        app = App([worker])
        gateway = Gateway(app)
        await app.start()
        try:
            owner = Identity(principal="alice", roles=("admin",))
            record = gateway.tasks.start(CallContext(owner), gateway.entry("worker.grind"), {"seconds": 0})
            with anyio.fail_after(5):
                await gateway.tasks.finished[record.task_id].wait()
            ended = gateway.tasks.find(CallContext(owner), "tasks/cancel", DECLARED, record.task_id, "cancel")
            gateway.tasks.cancel(ended)  # idempotent on an ended task: it stays completed
            assert gateway.tasks.store.load("alice", None, record.task_id).status == "completed"
            assert worker.seen == ["started", "finished"]
        finally:
            await app.stop()

    asyncio.run(scenario())
