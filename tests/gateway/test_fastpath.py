"""The fast path for plain 2026-07-28 tool calls (`cellmono.gateway.fastpath`) answers exactly as the SDK path:
each request below goes through the gateway's HTTP app twice, once with the fast path off and once on, and the two
answers (status, headers, body bytes) and audit records must be the same; the requests it must not take fall back."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from mcp.shared.inbound import classify_inbound_request
from mcp_types import JSONRPCRequest, ReadResourceRequestParams, ReadResourceResult, TextResourceContents
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, prompt, resource, tool
from cellmono.core.config import Settings
from cellmono.core.context import Context, ToolContent
from cellmono.gateway.asgi import Disconnect
from cellmono.gateway.bridge import AuditLogSink
from cellmono.gateway.auth import ApiKeys, Authenticator, Identity
from cellmono.gateway.http import GatewayHTTP
from cellmono.gateway.server import CallContext, Gateway, MemoryAudit
from cellmono.gateway.stateless import StatelessRequest, answer_or_leave
from cellmono.security.audit import AuditLog
from gateway_support import META

pytestmark = pytest.mark.anyio


class Text(BaseModel):
    text: str


class Nothing(BaseModel):
    pass


class NoteId(BaseModel):
    id: int


class Fast(Cell):
    name = "fast"

    @tool(requires="fast:read")
    async def say(self, request: Text) -> Text:
        """Repeat the text."""
        return Text(text=request.text)

    @tool(requires="fast:read")
    async def wait(self, request: Text) -> Text:
        """Wait `text` seconds."""
        await asyncio.sleep(float(request.text))
        return request

    @tool(requires="fast:read")
    async def fail(self, request: Text) -> Text:
        """A bug."""
        raise RuntimeError("a bug")

    @tool(requires="fast:read")
    async def idle(self, request: Nothing) -> Text:
        """Takes nothing."""
        return Text(text="idle")

    @tool(requires="fast:read")
    async def blocks(self, request: Text) -> ToolContent:
        """Content blocks as they are: the SDK's serializer writes them on both paths."""
        return ToolContent(content=[{"type": "text", "text": request.text},
                                    {"type": "image", "data": "aGk=", "mimeType": "image/png"}])

    @tool(requires="fast:admin")
    async def admin(self, request: Text) -> Text:
        """Needs a right the reader lacks."""
        return request

    @resource("fast://notes/{id}", requires="fast:read")
    async def note(self, request: NoteId) -> str:
        return f"note {request.id}"

    @resource("fast://readme", requires="fast:read")
    async def readme(self, request: Nothing) -> str:
        return "read me"

    @resource("fast://secret", requires="fast:admin")
    async def secret(self, request: Nothing) -> str:
        return "secret"

    @prompt(requires="fast:read")
    async def greet(self, request: Text) -> str:
        return f"Hello, {request.text}!"

    @prompt(requires="fast:read")
    async def count(self, request: NoteId) -> str:
        return f"{request.id} notes"

    @prompt(requires="fast:read")
    async def talk(self, request: Text, ctx: Context) -> str:
        return request.text

    @tool(requires="fast:read")
    async def chat(self, request: Text, ctx: Context) -> Text:
        """Has a context: progress and logs are possible, so the SDK path serves it."""
        await ctx.progress(1, 1, "done")
        return request


@dataclass
class Door:
    client: httpx.AsyncClient
    http: GatewayHTTP
    audit: MemoryAudit
    key: str

    async def post(self, params: dict[str, Any], *, meta: dict[str, Any] | None = None, method: str = "tools/call",
                   headers: dict[str, str] | None = None, request_id: Any = 1) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": request_id, "method": method,
                "params": {**params, "_meta": {**META, **(meta or {})}}}
        sent = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, "Authorization": f"Bearer {self.key}",
                "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        named = params.get("uri" if method == "resources/read" else "name")
        if isinstance(named, str):
            sent["Mcp-Name"] = named
        return await self.client.post("/mcp", json=body, headers={**sent, **(headers or {})})

    async def both(self, params: dict[str, Any], **options: Any) -> tuple[Any, Any, int]:
        """The answer and audit record of the SDK path, then of the fast path; how many the fast path served."""
        answers, before = [], self.http.fast.calls
        for fast in (False, True):
            self.http.fast.enabled = fast
            count = len(self.audit.records)
            response = await self.post(params, **options)
            records = [record.model_dump(exclude={"time", "latency", "correlation_id"})
                       for record in list(self.audit.records)[count:]]
            answers.append((response.status_code, response.headers.get("content-type"),
                            _same_ids(response.content), records))
        self.http.fast.enabled = True
        return answers[0], answers[1], self.http.fast.calls - before


def _same_ids(body: bytes) -> bytes:
    """Correlation ids differ from call to call: one placeholder for both paths."""
    return re.sub(rb"correlation id [0-9a-f-]+", b"correlation id X", body)


@pytest.fixture
async def door() -> AsyncIterator[Door]:
    reader = "tool:call:fast.*, resource:read:fast.*, prompt:get:fast.*, fast:read"
    settings = Settings(extra_sections={"security": {"role.reader": reader},
                                        "gateway": {"rate": "1000", "burst": "1000"}})
    app = App([Fast()], settings=settings)
    keys = ApiKeys()
    key = keys.create("rita", ["reader"])
    audit = MemoryAudit()
    http_app = GatewayHTTP(Gateway(app, audit=audit), Authenticator(api_keys=keys))
    async with app, http_app.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app),
                                                           base_url="http://127.0.0.1:8765") as client:
        yield Door(client, http_app, audit, key)


CASES = {
    "a call": ({"name": "fast.say", "arguments": {"text": "hi"}}, {}),
    "a string id": ({"name": "fast.say", "arguments": {"text": "hi"}}, {"request_id": "abc"}),
    "unicode and escapes": ({"name": "fast.say", "arguments": {"text": "é \"q\" \n ☃"}}, {}),
    "no arguments": ({"name": "fast.idle"}, {}),
    "null arguments": ({"name": "fast.idle", "arguments": None}, {}),
    "arguments to a tool taking none": ({"name": "fast.idle", "arguments": {"x": 1}}, {}),
    "arguments the cell refuses": ({"name": "fast.say", "arguments": {"text": 3}}, {}),
    "missing argument": ({"name": "fast.say", "arguments": {}}, {}),
    "content blocks": ({"name": "fast.blocks", "arguments": {"text": "hi"}}, {}),
    "a failing tool": ({"name": "fast.fail", "arguments": {"text": "x"}}, {}),
    "client info and trace": ({"name": "fast.say", "arguments": {"text": "hi"}}, {"meta": {
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}),
    "JSON only": ({"name": "fast.say", "arguments": {"text": "hi"}}, {"headers": {"Accept": "application/json"}}),
    "malformed client capabilities": ({"name": "fast.say", "arguments": {"text": "hi"}},
                                      {"meta": {"io.modelcontextprotocol/clientCapabilities": {"sampling": 5}}}),
    "a resource": ({"uri": "fast://readme"}, {"method": "resources/read"}),
    "a resource template": ({"uri": "fast://notes/7"}, {"method": "resources/read"}),
    "a template variable the cell refuses": ({"uri": "fast://notes/seven"}, {"method": "resources/read"}),
    "an unknown resource": ({"uri": "fast://nothing"}, {"method": "resources/read"}),
    "a resource the caller may not read": ({"uri": "fast://secret"}, {"method": "resources/read"}),
    "a prompt": ({"name": "fast.greet", "arguments": {"text": "you"}}, {"method": "prompts/get"}),
    "prompt arguments the cell refuses": ({"name": "fast.count", "arguments": {"id": "many"}},
                                          {"method": "prompts/get"}),
    "prompt arguments of the wrong type": ({"name": "fast.greet", "arguments": {"text": 5}}, {"method": "prompts/get"}),
    "a prompt without its arguments": ({"name": "fast.greet"}, {"method": "prompts/get"}),
    "malformed client info": ({"name": "fast.say", "arguments": {"text": "hi"}},
                              {"meta": {"io.modelcontextprotocol/clientInfo": {"name": 5}}}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_same_answer_and_audit_on_both_paths(door: Door, case: str) -> None:
    params, options = CASES[case]
    sdk, fast, served = await door.both(params, **options)
    assert served == 1, "the fast path did not take this request"
    assert fast == sdk


async def test_a_caller_without_the_right_is_refused_before_either_path(door: Door) -> None:
    sdk, fast, served = await door.both({"name": "fast.admin", "arguments": {"text": "x"}})
    assert served == 0 and fast == sdk and fast[0] == 403


FALLBACKS = {
    "unknown tool": ({"name": "fast.nope", "arguments": {}}, {}),
    "arguments not an object": ({"name": "fast.say", "arguments": "hi"}, {}),
    "a tool with a context": ({"name": "fast.chat", "arguments": {"text": "hi"}}, {}),
    "a progress token": ({"name": "fast.say", "arguments": {"text": "hi"}}, {"meta": {"progressToken": 5}}),
    "a log level": ({"name": "fast.say", "arguments": {"text": "hi"}},
                    {"meta": {"io.modelcontextprotocol/logLevel": "debug"}}),
    "a task": ({"name": "fast.say", "arguments": {"text": "hi"}, "task": {"ttl": 1000}}, {}),
    "a requestState": ({"name": "fast.say", "arguments": {"text": "hi"}, "requestState": "forged"}, {}),
    "inputResponses": ({"name": "fast.say", "arguments": {"text": "hi"}, "inputResponses": {}}, {}),
    "an unknown prompt": ({"name": "fast.nope"}, {"method": "prompts/get"}),
    "a prompt with a context": ({"name": "fast.talk", "arguments": {"text": "hi"}}, {"method": "prompts/get"}),
    "a resource with a cursor": ({"uri": "fast://readme", "cursor": "x"}, {"method": "resources/read"}),
    "a list": ({}, {"method": "tools/list"}),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
async def test_unusual_requests_fall_back_to_the_sdk(door: Door, case: str) -> None:
    params, options = FALLBACKS[case]
    sdk, fast, served = await door.both(params, **options)
    assert served == 0, "the fast path took a request it must leave to the SDK"
    assert fast[0] == sdk[0] and fast[3] == sdk[3]


async def test_someone_elses_handler_is_never_bypassed(door: Door) -> None:
    async def mine(ctx: Any, params: Any) -> Any:
        return ReadResourceResult(contents=[TextResourceContents(uri=str(params.uri), text="theirs")])

    door.http.server.add_request_handler("resources/read", ReadResourceRequestParams, mine)
    door.http.fast._served = None  # decided again, as on a server built with it
    response = await door.post({"uri": "fast://readme"}, method="resources/read")
    assert response.json()["result"]["contents"][0]["text"] == "theirs" and door.http.fast.calls == 0
    assert (await door.post({"name": "fast.say", "arguments": {"text": "hi"}})).status_code == 200
    assert door.http.fast.calls == 1


async def test_an_operators_middleware_turns_the_fast_path_off(door: Door) -> None:
    async def observe(ctx: Any, call_next: Any) -> Any:  # whatever it does, only the SDK path runs it
        return await call_next(ctx)

    door.http.server.middleware.append(observe)
    door.http.fast._served = None  # decided again, as on a server built with it
    assert (await door.post({"name": "fast.say", "arguments": {"text": "hi"}})).status_code == 200
    assert door.http.fast.calls == 0


async def test_one_audit_record_a_call_with_decision_and_outcome(door: Door) -> None:
    response = await door.post({"name": "fast.say", "arguments": {"text": "hi"}})
    assert response.status_code == 200 and door.http.fast.calls == 1
    (record,) = door.audit.records
    assert (record.principal, record.method, record.tool, record.decision, record.outcome, record.transport) == \
        ("rita", "tools/call", "fast.say", "allow", "ok", "http")
    assert record.correlation_id


async def test_the_fast_path_itself_refuses_a_caller_without_the_right(door: Door) -> None:
    """Behind the HTTP layer's own check, `Gateway.call_tool` authorizes again on the fast path."""
    message = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "fast.say", "arguments": {"text": "x"}, "_meta": META}}
    read = StatelessRequest(message, JSONRPCRequest.model_validate(message))
    route = classify_inbound_request(message)
    answer = door.http.fast.route(read, route, CallContext(Identity(principal="eve")))
    assert answer is not None
    status, document = await answer()
    assert status == 403 and document["error"]["code"] == -32003
    assert door.audit.records[-1].outcome == "denied" and door.http.fast.calls == 1


async def test_a_client_that_leaves_cancels_its_fast_call(door: Door) -> None:
    message = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
               "params": {"name": "fast.wait", "arguments": {"text": "30"}, "_meta": META}}
    read = StatelessRequest(message, JSONRPCRequest.model_validate(message))
    route = classify_inbound_request(message)
    context = CallContext(Identity(principal="rita", roles=("reader",)))
    fast = door.http.fast.route(read, route, context)
    assert fast is not None
    signal, started = Disconnect(), time.perf_counter()
    asyncio.get_running_loop().call_later(0.05, signal.fire)  # the edge protocol's connection_lost
    assert await answer_or_leave(door.http.server, read.request, route, context, None, disconnect=signal,
                                 fast=fast) is None
    assert time.perf_counter() - started < 5 and door.http.fast.calls == 1
    assert door.audit.records[-1].outcome == "cancelled"


async def test_no_answer_before_its_audit_record_is_committed(tmp_path: Any) -> None:
    """With the gateway's group-commit sink: an answer waits for its record; a lost record withholds it, on both
    paths alike (the fast path settles the records of a read or a prompt itself, as the SDK's middleware does)."""
    log = AuditLog(tmp_path / "audit.sqlite")
    sink = AuditLogSink(log)
    keys = ApiKeys()
    settings = Settings(extra_sections={"security": {"role.reader": "resource:read:fast.*, prompt:get:fast.*, "
                                                                     "tool:call:fast.*, fast:read"}})
    app = App([Fast()], settings=settings)
    http_app = GatewayHTTP(Gateway(app, audit=sink), Authenticator(api_keys=keys))
    async with app, httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app),
                                                           base_url="http://127.0.0.1:8765") as client:
        door = Door(client, http_app, MemoryAudit(), keys.create("rita", ["reader"]))
        cases = [({"uri": "fast://readme"}, "resources/read"), ({"name": "fast.greet", "arguments": {"text": "x"}},
                 "prompts/get"), ({"name": "fast.say", "arguments": {"text": "x"}}, "tools/call")]
        for params, method in cases:
            response = await door.post(params, method=method)
            assert "result" in response.json() and sink.mark() == sink._committed  # committed before the answer
        log.close()  # the next records cannot be committed
        for params, method in cases:
            sdk, fast, served = await door.both(params, method=method)
            assert served == 1 and fast == sdk and b"audit record was not committed" in fast[2]
    sink.close()


class Talkative(Cell):
    name = "talk"

    @resource("talk://status", requires="fast:read")
    async def status(self, request: Nothing, ctx: Context) -> str:
        """A resource with a context: it may log, so every resource read takes the SDK path."""
        return "ok"

    @tool(requires="fast:read")
    async def say(self, request: Text) -> Text:
        return request


def test_a_resource_with_a_context_sends_every_read_to_the_sdk() -> None:
    http_app = GatewayHTTP(Gateway(App([Talkative(), Fast()])), Authenticator(api_keys=ApiKeys()))
    served = http_app.fast.served()
    assert served["resources/read"] == frozenset() and "talk.say" in served["tools/call"]
