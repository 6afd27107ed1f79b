"""Tasks in process (real app, in-memory bus): a cancel stops the cell's handler; a handler asking for input parks the
task until `tasks/update` answers, then runs again with the answers and its kept state."""

from __future__ import annotations

import asyncio

import json

import anyio
import mcp_types as types
from pydantic import BaseModel, ConfigDict

from cellmono.core.app import App
from cellmono.core.cell import Cell, tool
from cellmono.core.envelope import Envelope
from cellmono.gateway.auth import Identity
from cellmono.gateway.server import CallContext, Gateway
from cellmono.gateway.task_store import task_support

DECLARED = types.ClientCapabilities(extensions={"io.modelcontextprotocol/tasks": {}})


class Job(BaseModel):
    seconds: float


class Done(BaseModel):
    ok: bool


class Reply(BaseModel):
    model_config = ConfigDict(extra="allow")


class Worker(Cell):
    name = "worker"
    seen: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    @tool(requires=())
    @task_support("required")
    async def confirm(self, job: Job, envelope: Envelope) -> Reply:
        """Ask for a confirmation (the handler context's wire shape), then act on it."""
        context = json.loads(envelope.headers.get("mcp-context", "{}"))
        answer = context.get("answers", {}).get("confirm")
        if answer is None:
            self.seen.append("asked")
            return Reply(resultType="input_required", state="kept-1",
                         inputRequests={"confirm": {"method": "elicitation/create", "params": {"message": "Sure?"}}})
        self.seen.append(f"answered {answer['action']} with state {context.get('state')}")
        return Reply(text=f"done: {answer['action']}")

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


def test_a_task_asking_for_input_parks_then_resumes_with_the_answers() -> None:
    async def scenario() -> None:
        worker = Worker()
        app = App([worker])
        gateway = Gateway(app)
        await app.start()
        try:
            owner = CallContext(Identity(principal="alice", roles=("admin",)))
            record = gateway.tasks.start(owner, gateway.entry("worker.confirm"), {"seconds": 0})
            with anyio.fail_after(5):
                await gateway.tasks.finished[record.task_id].wait()
            parked = gateway.tasks.find(CallContext(owner.identity), "tasks/get", DECLARED, record.task_id, "read")
            shown = parked.detailed()
            assert shown["status"] == "input_required" and list(shown["inputRequests"]) == ["confirm"]
            assert "state" not in shown and "requestState" not in shown and parked.state == "kept-1"
            gateway.tasks.update(CallContext(owner.identity), parked, {"confirm": {"action": "accept"}})
            with anyio.fail_after(5):
                await gateway.tasks.finished[record.task_id].wait()
            done = gateway.tasks.store.load("alice", None, record.task_id)
            assert done.status == "completed" and "done: accept" in done.result["content"][0]["text"]
            assert worker.seen == ["asked", "answered accept with state kept-1"]
        finally:
            await app.stop()

    asyncio.run(scenario())
