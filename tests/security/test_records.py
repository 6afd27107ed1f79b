"""One audit-record model: the guard, the gateway and the command line (and the sandboxes, through the
runtime) produce the same record shape for the same facts, with the same `outcome` / `error` / `reason`
meaning."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from cellmono.cli import keys as keys_cli
from cellmono.core.app import App
from cellmono.core.cell import Cell, tool
from cellmono.core.config import Settings
from cellmono.core.envelope import Envelope
from cellmono.gateway.auth import Identity, Policy
from cellmono.gateway.bridge import AuditLogSink
from cellmono.gateway.server import CallContext, Gateway
from cellmono.security.audit import AuditLog
from cellmono.security.guard import CapabilityDenied, CapabilityGuard, Decision, SecuritySection
from cellmono.security.keys import KeyUnavailable
from cellmono.security.records import AuditRecord, GatewayRecord, audit_record, from_decision, from_gateway
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import TokenIssuer, TokenVerifier
from cellmono.topology.services import Runtime

FIELDS = set(AuditRecord.model_fields)
TYPE_PREFIX = re.compile(r"^[A-Z][A-Za-z0-9_]*: ")


def assert_coherent(fields: dict[str, Any]) -> None:
    """The one meaning of the fields, whoever wrote the record."""
    assert set(fields) == FIELDS, set(fields) ^ FIELDS
    assert (fields["outcome"] == "ok") == (fields["error"] is None), fields
    if fields["decision"] == "deny":
        assert fields["outcome"] != "ok", fields
    if fields["error"] is not None:
        assert fields["reason"] and not TYPE_PREFIX.match(fields["reason"]), fields  # the message, never its type
        assert fields["error"].isidentifier(), fields                                 # a type name or an outcome code


def test_the_same_denial_makes_the_same_record_from_each_producer() -> None:
    """Facts: ada of acme was refused `notes:write` after 2 ms, request c1. Only action and details differ."""
    message = "'ada' lacks capability 'notes:write'"
    guard = from_decision(Decision(actor="ada", tenant="acme", action="deliver", resource="notes.add", allowed=False,
                                   reason=message, correlation_id="c1", latency=0.002, requires=("notes:write",),
                                   error="CapabilityDenied", time=10.0))
    gateway = from_gateway(GatewayRecord(time=10.0, principal="ada", tenant="acme", method="tools/call",
                                         tool="notes.add", decision="deny", outcome="denied", status=403,
                                         latency=0.002, correlation_id="c1", reason=message, error="CapabilityDenied"))
    cli = audit_record("ada", "key.rotate", resource="notes.add", tenant="acme", decision="deny",
                       error=CapabilityDenied(message), latency=0.002, correlation_id="c1", at=10.0)
    shared = {"action", "details"}
    for record in (guard, gateway, cli):
        assert_coherent(record.model_dump())
    assert guard.model_dump(exclude=shared) == gateway.model_dump(exclude=shared) == cli.model_dump(exclude=shared)
    assert (guard.outcome, guard.error, guard.reason) == ("denied", "CapabilityDenied", message)


def test_the_same_success_makes_the_same_record_from_each_producer() -> None:
    guard = from_decision(Decision(actor="ada", tenant=None, action="deliver", resource="r", allowed=True,
                                   reason="granted", correlation_id=None, latency=0.001, time=3.0))
    gateway = from_gateway(GatewayRecord(time=3.0, principal="ada", method="tools/call", tool="r", decision="allow",
                                         outcome="ok", latency=0.001, reason="granted"))
    cli = audit_record("ada", "key.rotate", resource="r", decision="allow", reason="granted", latency=0.001, at=3.0)
    shared = {"action", "details"}
    assert guard.model_dump(exclude=shared) == gateway.model_dump(exclude=shared) == cli.model_dump(exclude=shared)
    assert (guard.outcome, guard.error) == ("ok", None)


class Text(BaseModel):
    text: str


class Notes(Cell):
    name = "notes"

    @tool(requires="notes:write")
    async def add(self, request: Text) -> Text:
        """Add a note."""
        return request


@pytest.mark.anyio
async def test_guard_gateway_and_cli_write_one_shape_into_one_log(tmp_path: Path) -> None:
    """End to end: each real producer writes into one log; every record has the same fields and meaning."""
    log = AuditLog(tmp_path / "audit.sqlite")
    keys = SigningKeys()
    # the guard: one refusal, one grant
    guard = CapabilityGuard(TokenVerifier(keys, audience="app"), log)
    token = TokenIssuer(keys).issue("ada", ["notes:read"], "app", tenant="acme")
    with pytest.raises(CapabilityDenied):
        guard.authorize(Envelope(subject="notes.add", capability=token, principal="ada", tenant="acme"),
                        ("notes:write",))
    guard.authorize(Envelope(subject="notes.get", capability=token, principal="ada"), ("notes:read",))
    # the gateway: one refusal by its policy, one call that succeeds
    policy = Policy({"reader": ["notes:read"], "writer": ["tool:call:notes.*", "notes:write"]})
    app = App([Notes()], settings=Settings())
    gateway = Gateway(app, policy=policy, audit=AuditLogSink(log))
    async with app:
        with pytest.raises(MCPError):
            await gateway.call_tool(CallContext(Identity(principal="ada", tenant="acme", roles=("reader",))),
                                    "notes.add", {"text": "x"})
        await gateway.call_tool(CallContext(Identity(principal="wes", roles=("writer",))), "notes.add", {"text": "x"})
    log.flush()
    # the command line: one rotation that fails, one that succeeds
    (tmp_path / "settings.ini").write_text(f"[security]\naudit_path = {tmp_path / 'audit.sqlite'}\n"
                                           f"store_path = {tmp_path / 'store.sqlite'}\nkek_file = kek.json\n")
    parser = argparse.ArgumentParser()
    keys_cli.register(parser)
    failing = parser.parse_args(["rotate", "--settings", str(tmp_path / "settings.ini")])
    with pytest.raises(KeyUnavailable):
        failing.handler(failing)
    rotating = parser.parse_args(["rotate", "--settings", str(tmp_path / "settings.ini"), "--create"])
    assert rotating.handler(rotating) == 0
    entries = [entry.fields for entry in log.entries()]
    by_action = {(fields["action"], fields["outcome"]) for fields in entries}
    assert by_action >= {("deliver", "denied"), ("deliver", "ok"), ("gateway.tools/call", "denied"),
                         ("gateway.tools/call", "ok"), ("key.rotate", "error"), ("key.rotate", "ok")}, by_action
    for fields in entries:
        assert_coherent(fields)
    denials = {fields["action"]: fields for fields in entries if fields["decision"] == "deny"}
    assert denials["deliver"]["error"] == "CapabilityDenied" and denials["deliver"]["tenant"] == "acme"
    assert denials["gateway.tools/call"]["error"] in ("InsufficientScope", "denied")
    assert denials["gateway.tools/call"]["tenant"] == "acme"
    failed = next(fields for fields in entries if fields["action"] == "key.rotate" and fields["outcome"] == "error")
    assert failed["error"] == "KeyUnavailable" and "does not exist" in failed["reason"]
    assert log.verify().ok
    log.close()


def test_sandbox_events_become_the_same_shape(tmp_path: Path) -> None:
    """The runtime turns the sandbox's run and host-tool events into the one record."""
    section = SecuritySection(signing_keys=str(tmp_path / "keys.json"), audit_path=str(tmp_path / "audit.sqlite"),
                              store_path=str(tmp_path / "store.sqlite"), kek_file=str(tmp_path / "kek.json"))
    runtime = Runtime(section)
    events = [
        {"event": "sandbox.run", "principal": "ada", "backend": "wasm", "outcome": "ok", "wall_ms": 12.0},
        {"event": "sandbox.run", "principal": "ada", "backend": "wasm", "outcome": "DeadlineExceeded",
         "detail": "wall clock limit of 1 s", "wall_ms": 1000.0},
        {"event": "sandbox.tool", "principal": "ada", "tool": "fetch", "target": "https://x", "decision": "allow"},
        {"event": "sandbox.tool", "principal": "ada", "tool": "fetch", "target": "https://y", "decision": "deny",
         "reason": "host y is not granted"},
        {"event": "sandbox.tool", "principal": "ada", "tool": "read_file", "decision": "error",
         "reason": "file vanished"},
        {"event": "sandbox.native", "principal": "ada", "backend": "bubblewrap", "outcome": "SandboxDenied",
         "detail": "path not granted"},
    ]
    for event in events:
        runtime._audit_sandbox(event)
    runtime.audit.flush()
    entries = [entry.fields for entry in runtime.audit.entries()]
    runtime.store.close()
    runtime.audit.close()
    for fields in entries:
        assert_coherent(fields)
    summary = [(f["action"], f["resource"], f["decision"], f["outcome"], f["error"], f["reason"]) for f in entries]
    assert summary == [
        ("sandbox.run", "wasm", None, "ok", None, None),
        ("sandbox.run", "wasm", None, "timeout", "DeadlineExceeded", "wall clock limit of 1 s"),
        ("sandbox.tool", "https://x", "allow", "ok", None, None),
        ("sandbox.tool", "https://y", "deny", "denied", "denied", "host y is not granted"),
        ("sandbox.tool", "read_file", None, "error", "error", "file vanished"),
        ("sandbox.native", "bubblewrap", "deny", "denied", "SandboxDenied", "path not granted"),
    ]
    assert entries[1]["latency"] == 1.0 and entries[0]["details"] == {"backend": "wasm", "wall_ms": 12.0}
