"""Tasks on JetStream KV against a real nats-server (`tests/brokers.py`): two gateway replicas (each its own app and
SQLite store, one KEK, one NATS) chosen by settings (`[nats]` configured, `[tasks] store = auto`); a task created
through one is read through the other, never by another principal; its record on the broker is sealed; an oversize
result is bounded; a replica starting beside a running task does not fail it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from brokers import require, start_nats
from cellmono.core.app import App
from cellmono.core.cell import Cell, tool
from cellmono.core.config import Settings
from cellmono.gateway.auth import Identity
from cellmono.gateway.server import CallContext, Gateway
from cellmono.gateway.task_kv import KvTasks
from cellmono.gateway.task_store import task_support
from cellmono.security.keys import StaticKeyProvider
from cellmono.security.store import EncryptedStore

DECLARED = types.ClientCapabilities(extensions={"io.modelcontextprotocol/tasks": {}})
OWNER = Identity(principal="alice", roles=("admin",))


class Job(BaseModel):
    seconds: float = 0.0
    size: int = 10


class Output(BaseModel):
    text: str


class Jobs(Cell):
    name = "jobs"

    @tool(requires=())
    @task_support("required")
    async def grind(self, job: Job) -> Output:
        """Work for a while, then answer `size` characters."""
        await asyncio.sleep(job.seconds)
        return Output(text="secret-result-" + "x" * job.size)


@pytest.fixture(scope="module")
def nats_url():
    server = require(start_nats)
    yield f"nats://127.0.0.1:{server.port}"
    server.cleanup()


def replica(tmp_path: Path, name: str, url: str, kek: bytes, **tasks: str) -> Gateway:
    settings = Settings(extra_sections={"nats": {"url": url}, "tasks": {"bucket": tmp_path.name[-40:], **tasks}})
    store = EncryptedStore(tmp_path / f"{name}.sqlite", StaticKeyProvider(kek))  # each replica its own file
    return Gateway(App([Jobs()], settings=settings, store=store))


async def finish(gateway: Gateway, task_id: str) -> None:
    event = gateway.tasks.finished.get(task_id)
    if event is not None:
        with anyio.fail_after(10):
            await event.wait()


def test_a_task_created_on_one_replica_is_read_on_another(tmp_path: Path, nats_url: str) -> None:
    async def scenario() -> None:
        kek = os.urandom(32)
        first = replica(tmp_path, "a", nats_url, kek)
        assert isinstance(first.tasks.store, KvTasks)  # chosen by settings: [nats] configured, store = auto
        await first.app.start()
        try:
            record = first.tasks.start(CallContext(OWNER), first.entry("jobs.grind"), {"seconds": 0.5})
            second = replica(tmp_path, "b", nats_url, kek)  # starts while the task runs on the first
            assert second.tasks.recovered == 0  # another replica's working task is not failed
            seen = second.tasks.find(CallContext(OWNER), "tasks/get", DECLARED, record.task_id, "read")
            assert seen.status == "working"
            await finish(first, record.task_id)
            done = second.tasks.find(CallContext(OWNER), "tasks/get", DECLARED, record.task_id, "read")
            assert done.status == "completed"
            assert done.result["structuredContent"]["text"].startswith("secret-result-")
            assert [r.task_id for r in second.tasks.store.owned("alice", None)] == [record.task_id]
            mallory = CallContext(Identity(principal="mallory", roles=("admin",)))
            with pytest.raises(MCPError) as refused:
                second.tasks.find(mallory, "tasks/get", DECLARED, record.task_id, "read")
            assert refused.value.error.message == "Unknown task id"

            raw = await raw_values(nats_url, tmp_path.name[-40:])
            assert raw and all(b"secret-result" not in value and b"alice" not in value for value in raw)
            stranger = replica(tmp_path, "c", nats_url, os.urandom(32))  # another KEK cannot open the records
            with pytest.raises(Exception) as unreadable:
                stranger.tasks.store.load("alice", None, record.task_id)
            assert type(unreadable.value).__name__ in ("WrongKey", "KeyUnavailable")
            for gateway in (second, stranger):
                gateway.tasks.store.close()
        finally:
            await first.app.stop()
            first.tasks.store.close()

    asyncio.run(scenario())


async def raw_values(url: str, bucket: str) -> list[bytes]:
    import nats
    connection = await nats.connect(url)
    try:
        kv = await connection.jetstream().key_value(bucket)
        return [(await kv.get(key)).value for key in await kv.keys()]
    finally:
        await connection.close()


def test_an_oversize_result_fails_its_task_with_the_limit_named(tmp_path: Path, nats_url: str) -> None:
    async def scenario() -> None:
        gateway = replica(tmp_path, "a", nats_url, os.urandom(32), max_record_bytes="4000")
        await gateway.app.start()
        try:
            record = gateway.tasks.start(CallContext(OWNER), gateway.entry("jobs.grind"), {"size": 100_000})
            await finish(gateway, record.task_id)
            ended = gateway.tasks.store.load("alice", None, record.task_id)
            assert ended.status == "failed" and ended.result is None
            assert "over the task store's limit of 4000 bytes ([tasks] max_record_bytes)" in ended.error["message"]
        finally:
            await gateway.app.stop()
            gateway.tasks.store.close()

    asyncio.run(scenario())
