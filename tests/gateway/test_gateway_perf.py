"""The gateway's per-call cost savers keep every check: the heap frozen while serving (`asgi.steady_gc`)."""

from __future__ import annotations

import gc
import weakref

import httpx
import pytest

from cellmono.core.app import App
from cellmono.core.config import Settings
from cellmono.gateway.auth import ApiKeys, Authenticator
from cellmono.gateway.http import GatewayHTTP
from cellmono.gateway.server import Gateway, MemoryAudit
from gateway_support import Echo, modern_request

pytestmark = pytest.mark.anyio


def door() -> tuple[App, GatewayHTTP, str]:
    settings = Settings(extra_sections={"security": {"role.reader": "tool:call:echo.say, echo:read"}})
    app = App([Echo()], settings=settings)
    keys = ApiKeys()
    return app, GatewayHTTP(Gateway(app, audit=MemoryAudit()), Authenticator(api_keys=keys)), \
        keys.create("rita", ["reader"])


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


async def test_serving_freezes_the_startup_heap_and_still_collects_cycles() -> None:
    app, http_app, key = door()
    assert gc.get_freeze_count() == 0
    async with app, http_app.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app),
                                                           base_url="http://127.0.0.1:8765") as client:
        assert gc.get_freeze_count() > 0  # the app, the SDK's schemas: out of every collection while serving
        headers, body = modern_request("tools/call", {"name": "echo.say", "arguments": {"text": "hi"}}, key=key)
        answer = await client.post("/mcp", headers=headers, content=body)
        assert answer.json()["result"]["structuredContent"] == {"text": "hi"}
        cycle = weakref.ref(Node())
        gc.collect()
        assert cycle() is None  # a cycle made while serving is still collected
    assert gc.get_freeze_count() == 0  # the process's collector is as it was
