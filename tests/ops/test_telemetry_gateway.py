"""Telemetry through the real gateway (ASGI, API keys, MCP 2026-07-28): the caller's `_meta.traceparent`
reaches the cell's span and the audit record, and `/metrics` carries the per-cell series."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cellmono.core.app import App
from cellmono.core.config import Settings
from cellmono.gateway.auth import ApiKeys, Authenticator
from cellmono.gateway.http import GatewayHTTP
from cellmono.gateway.server import Gateway, MemoryAudit
from cellmono.ops.prometheus import prometheus_text
from cellmono.ops.telemetry import Telemetry
from cellmono.ops.tracing import Tracing
from gateway_support import Echo

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def call(traceparent: str | None) -> tuple[MemoryAudit, Tracing, str, dict[str, Any]]:
    settings = Settings(extra_sections={"security": {"role.reader": "tool:call:echo.say, echo:read",
                                                     "role.operator": "gateway:metrics"},
                                        "telemetry": {"tracing": "true"}})
    app = App([Echo()], settings=settings)
    telemetry, tracing = Telemetry.attach(app), Tracing.attach(app)
    assert tracing is not None
    keys = ApiKeys()
    key = keys.create("rita", ["reader"])
    operator = keys.create("olga", ["operator"])  # /metrics is for operators
    audit = MemoryAudit()
    gateway = Gateway(app, audit=audit)
    gateway.metrics.exporters.append(lambda: prometheus_text(telemetry))
    http_app = GatewayHTTP(gateway, Authenticator(api_keys=keys))
    meta: dict[str, Any] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": {}}
    if traceparent is not None:
        meta["traceparent"] = traceparent
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo.say",
               "Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {key}"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo.say", "arguments": {"text": "hi"}, "_meta": meta}}
    async with app, http_app.running(), httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app),
                                                           base_url="http://127.0.0.1:8765") as client:
        answer = await client.post("/mcp", headers=headers, json=body)
        metrics = (await client.get("/metrics", headers={"Authorization": f"Bearer {operator}"})).text
    return audit, tracing, metrics, answer.json()


async def test_meta_traceparent_reaches_the_cell_and_the_audit() -> None:
    audit, tracing, _, answer = await call(TRACEPARENT)
    assert answer["result"]["structuredContent"] == {"text": "hi"}
    (record,) = [record for record in audit.records if record.method == "tools/call"]
    assert record.trace_id == TRACEPARENT.split("-")[1]
    assert {format(span.context.trace_id, "032x") for span in tracing.spans()} == {TRACEPARENT.split("-")[1]}


async def test_malformed_traceparent_starts_a_fresh_trace() -> None:
    audit, tracing, _, answer = await call("00-not-hex-01")
    assert answer["result"]["structuredContent"] == {"text": "hi"}
    (record,) = [record for record in audit.records if record.method == "tools/call"]
    assert record.trace_id is None
    (process,) = [span for span in tracing.spans() if span.name.startswith("process")]
    assert process.parent is not None  # its own send span, in a fresh trace
    assert format(process.context.trace_id, "032x") != TRACEPARENT.split("-")[1]


async def test_metrics_endpoint_has_per_cell_series_without_principals() -> None:
    _, _, metrics, _ = await call(None)
    assert 'cellmono_cell_requests_total{cell="echo"} 1.0' in metrics
    assert 'cellmono_cell_handler_seconds_count{cell="echo",subject="echo.say"} 1.0' in metrics
    assert 'cellmono_gateway_calls_total{tool="echo.say",outcome="ok"} 1' in metrics
    assert "rita" not in metrics
