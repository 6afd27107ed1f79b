"""Resource subscriptions end to end: `cellmono serve` on the conformance app as a real process and the official MCP
SDK client over real HTTP. A cell announces a change on the bus (`test_update_resource`); a 2025-11-25 session that
subscribed gets `notifications/resources/updated` on its stream, a 2026-07-28 `subscriptions/listen` stream gets it
in its answer; a caller who may not read the resource is refused and never hears of it; the caps answer -32004/429."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated

from cellmono.security.audit import AuditLog
from gateway_support import CELLMONO, META, ROOT, serve, state_environment

pytestmark = pytest.mark.anyio
SETTINGS = "examples/conformance/settings.ini"
WATCHED, STATIC = "test://watched-resource", "test://static-text"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with serve(tmp_path_factory.mktemp("state"), "--settings", SETTINGS) as running:
        running.reader = new_key(running.state, "reader")  # may read test://static-text, not the watched resource
        yield running


def new_key(state: Path, role: str, name: str | None = None) -> str:
    result = subprocess.run([CELLMONO, "serve", "--settings", SETTINGS, "--new-key", name or role, "--role", role],
                            cwd=ROOT, env={**os.environ, **state_environment(state)}, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip().splitlines()[-1]


def client(url: str, key: str, mode: str, **callbacks) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30.0))
    return Client(streamable_http_client(url, http_client=http), mode=mode, cache=None, **callbacks)


def updates_into(found: list[str]):
    async def on_message(message) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, types.ResourceUpdatedNotification):
            found.append(root.params.uri)
    return on_message


async def settle(found: list, count: int, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if len(found) >= count:
            return
        await asyncio.sleep(0.02)


async def test_a_2025_session_hears_updates_of_what_it_may_read_only(server) -> None:
    admin_heard: list[str] = []
    reader_heard: list[str] = []
    async with client(server.url, server.key, "legacy", message_handler=updates_into(admin_heard)) as admin, \
            client(server.url, server.reader, "legacy", message_handler=updates_into(reader_heard)) as reader:
        await admin.subscribe_resource(WATCHED)
        with pytest.raises(MCPError) as refused:
            await reader.subscribe_resource(WATCHED)
        assert refused.value.error.code == -32003
        await reader.subscribe_resource(STATIC)
        await asyncio.sleep(0.3)  # the clients' GET streams open
        await admin.call_tool("test_update_resource", {"resourceUri": WATCHED})
        await settle(admin_heard, 1)
        await admin.call_tool("test_update_resource", {"resourceUri": STATIC})
        await settle(reader_heard, 1)
        await asyncio.sleep(0.2)
        assert admin_heard == [WATCHED]  # subscribed to the watched resource only
        assert reader_heard == [STATIC]  # never told of the resource it may not read
        await admin.unsubscribe_resource(WATCHED)
        await admin.call_tool("test_update_resource", {"resourceUri": WATCHED})
        await asyncio.sleep(0.3)
        assert admin_heard == [WATCHED]
    with AuditLog(server.state / "audit.sqlite", create=False) as log:  # flushed as each request is recorded
        rows = [(e.fields["resource"], e.fields["outcome"]) for e in log.entries()
                if e.fields["action"] == "gateway.resources/subscribe"]
    assert ("conformance.watched_resource", "denied") in rows and ("conformance.static_text", "ok") in rows


async def test_a_2026_listen_stream_gets_its_acknowledged_resources_only(server) -> None:
    async with client(server.url, server.key, "2026-07-28") as admin, \
            client(server.url, server.reader, "2026-07-28") as reader:
        async with admin.listen(resource_subscriptions=[WATCHED, "test://no-such"], tools_list_changed=True) as mine, \
                reader.listen(resource_subscriptions=[WATCHED, STATIC]) as theirs:
            assert mine.honored.resource_subscriptions == [WATCHED]  # unknown: not honoured
            assert not mine.honored.tools_list_changed  # the app's lists are fixed while it runs
            assert theirs.honored.resource_subscriptions == [STATIC]  # not readable: not honoured
            await admin.call_tool("test_update_resource", {"resourceUri": WATCHED})
            await admin.call_tool("test_update_resource", {"resourceUri": STATIC})
            with anyio_timeout(10):
                assert await anext(aiter(mine)) == ResourceUpdated(uri=WATCHED)
                assert await anext(aiter(theirs)) == ResourceUpdated(uri=STATIC)  # the watched one never reached it


def anyio_timeout(seconds: float):
    import anyio
    return anyio.fail_after(seconds)


def listen(url: str, key: str, uris: list[str], accept: str = "application/json, text/event-stream") -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen",
            "params": {"_meta": META, "notifications": {"resourceSubscriptions": uris}}}
    return httpx.post(url, json=body, timeout=10, headers={
        "Authorization": f"Bearer {key}", "Accept": accept, "Mcp-Protocol-Version": "2026-07-28",
        "Mcp-Method": "subscriptions/listen"})


def test_the_caps_refuse_more_subscriptions_with_a_clear_error(tmp_path: Path) -> None:
    environment = {"CELLMONO__GATEWAY__MAX_SUBSCRIPTIONS_PER_SESSION": "1"}
    with serve(tmp_path / "state", "--settings", SETTINGS, environment=environment) as running:
        over = listen(running.url, running.key, [WATCHED, STATIC])
        assert over.status_code == 429 and over.json()["error"]["code"] == -32004, over.text
        assert "at most 1 resource subscriptions per listen stream" in over.json()["error"]["message"]
        assert listen(running.url, running.key, [WATCHED], accept="application/json").status_code == 406

        async def two_on_one_session() -> MCPError:
            async with client(running.url, running.key, "legacy") as admin:
                await admin.subscribe_resource(WATCHED)
                with pytest.raises(MCPError) as refused:
                    await admin.subscribe_resource(STATIC)
                return refused.value

        refused = asyncio.run(two_on_one_session())
        assert refused.error.code == -32004 and "per session" in refused.error.message


def test_an_announcement_from_a_worker_on_nats_reaches_the_gateways_subscribers() -> None:
    from brokers import require, start_nats
    from cellmono.core.app import App
    from cellmono.core.bus import Bus
    from cellmono.gateway.auth import Identity
    from cellmono.gateway.server import Gateway
    from cellmono.gateway.subscriptions import announce_update
    from cellmono.transports.nats import NatsTransport
    from examples.conformance.conformance_cells import ConformanceCell

    broker = require(start_nats)
    url = f"nats://127.0.0.1:{broker.port}"

    async def scenario() -> list[str]:
        app = App([ConformanceCell()], transport=NatsTransport(url))
        gateway = Gateway(app)
        worker = Bus(NatsTransport(url))  # another process's bus, as a promoted cell's worker has
        heard: list[str] = []

        async def notify(uri: str) -> None:
            heard.append(uri)

        await app.start()
        await worker.start()
        try:
            subscriber = await gateway.subscriptions.add("session", Identity(principal="ada", roles=("admin",)),
                                                          [WATCHED], notify, "session")
            pump = asyncio.ensure_future(subscriber.pump())
            await announce_update(worker, STATIC)  # nobody subscribed to it
            await announce_update(worker, WATCHED)
            await settle(heard, 1)
            gateway.subscriptions.forget("session")
            await pump
            return heard
        finally:
            await worker.stop()
            await app.stop()

    try:
        assert asyncio.run(scenario()) == [WATCHED]
    finally:
        broker.cleanup()
