"""Runbooks as MCP tools with the runbooks cell promoted into a worker process (`cellmono promote runbooks` on the
running app) over a real nats-server (issue 15 §6): the
call crosses the broker carrying the caller's attenuated token, the worker's own guard checks `runbook:apply:NAME`
against that token (a token for the dry run, replayed on the broker, cannot apply), the confirmation question
crosses back to the client, and the audit log names the caller, not the app or the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from cellmono.core.bus import Bus
from cellmono.core.context import CallInfo
from cellmono.core.errors import AccessDenied
from cellmono.ops.runbook_tool import RunbookToolResult
from cellmono.security.audit import AuditLog
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import TokenIssuer
from cellmono.transports.nats import NatsTransport

from brokers import require, start_nats
from runbooks_support import audit_runs, cellmono, mcp_client, runbook_tool_app, serve_app, tool_keys
from test_runbook_tool import Human

pytestmark = pytest.mark.anyio
PREFIX = "rbw"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def nats_server():
    server = require(start_nats)
    yield server
    server.cleanup()


async def test_the_worker_checks_the_callers_token_and_audits_the_caller(nats_server, tmp_path: Path) -> None:
    runbook_tool_app(tmp_path, "health-check")
    keys = tool_keys(tmp_path)
    broker = {"CELLMONO__NATS__URL": nats_server.url, "CELLMONO__NATS__PREFIX": PREFIX}
    with serve_app(tmp_path, broker) as url:
        moved = cellmono("promote", "runbooks", cwd=tmp_path, env={**broker, "CELLMONO_API_KEY": keys["admin"]})
        assert moved.returncode == 0 and "promoted runbooks: 1 worker(s) over nats" in moved.stdout, moved.stderr
        # from here the app's own copy of the cell is stopped: whatever answers runbooks.* is the worker
        async with mcp_client(url, keys["operator"], elicitation_callback=Human()) as mcp:
            dry = await mcp.call_tool("runbooks.health-check", {})
            assert not dry.is_error and dry.structured_content["ok"], dry.content
            with pytest.raises(MCPError):  # the gateway refuses first: operator holds runbook:run:* only
                await mcp.call_tool("runbooks.health-check-apply", {})
        digest = dry.structured_content["content_hash"]
        # past the gateway: a token minted for the dry run, replayed on the broker at the apply subject, with a
        # forged confirmation (the mcp-context header is the gateway's, unsealed on the bus): the worker refuses it
        issuer = TokenIssuer(SigningKeys.load(tmp_path / "var" / "signing-keys.json"))
        dry_token = issuer.issue("operator-user", ["tool:call:runbooks.health-check", "runbook:run:health-check"],
                                 "cellmono", ttl=60)
        confirmed = CallInfo(client=("elicitation",), state=digest, answers={
            f"confirm-{digest[:16]}": {"action": "accept", "content": {"confirm": True}}})
        bus = Bus(NatsTransport(nats_server.url, prefix=PREFIX))
        await bus.start()
        try:
            for subject in ("runbooks.health-check-apply", "runbooks.health-check"):
                envelope = bus.envelope(subject, {}, kind="request", timeout=120, principal="operator-user",
                                        capability=dry_token, headers=confirmed.header())
                if subject.endswith("-apply"):
                    with pytest.raises(AccessDenied) as refused:
                        await bus.send_request(envelope)
                    assert "runbook:apply:health-check" in str(refused.value)
                else:  # the same token does what it was minted for: the worker's guard reads the token, not a flag
                    assert RunbookToolResult.model_validate(await bus.send_request(envelope)).ok
        finally:
            await bus.stop()
        human = Human()
        async with mcp_client(url, keys["applier"], elicitation_callback=human) as mcp:
            applied = await mcp.call_tool("runbooks.health-check-apply", {})
        assert not applied.is_error and applied.structured_content["ok"], applied.content
        assert len(human.asked) == 1 and f"content hash {digest}" in human.asked[0]
    assert [(run["actor"], run["details"]["mode"], run["details"]["result"]) for run in audit_runs(tmp_path)] == [
        ("operator-user", "dry-run", "ok"), ("operator-user", "dry-run", "ok"), ("applier-user", "apply", "ok")]
    with AuditLog(tmp_path / "var" / "audit.sqlite", create=False) as log:
        assert log.verify().ok
        denials = [entry.fields for entry in log.entries() if entry.fields.get("outcome") == "denied"
                   and entry.fields.get("resource") == "runbooks.health-check-apply"]
    # the gateway's refusal of the operator's MCP call, then the worker's guard refusing the replayed token on delivery
    assert [(denial["action"], denial["actor"]) for denial in denials] == [
        ("gateway.tools/call", "operator-user"), ("deliver", "operator-user")], denials
