"""Runbooks as MCP tools (issue 15 §6) through a real `cellmono serve` and the official `mcp` client: listed only
when the app exposes them, refused without `runbook:run:NAME`, a dry run by default, applied only with
`runbook:apply:NAME` after a dry run and once the human confirmed through elicitation (on 2026-07-28 and on a
2025-11-25 session), nothing applied on decline or for a client that cannot ask, audited under the caller, and no
secret in a question, a tool result, an archive or the audit log."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from runbooks_support import audit_runs, mcp_client, runbook_tool_app, serve_app, tool_keys

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Human:
    """An elicitation callback standing for the person behind the client: answers `action`, remembers each question."""

    def __init__(self, action: str = "accept", tick: bool = True) -> None:
        self.action, self.tick, self.asked = action, tick, []

    async def __call__(self, context, params) -> types.ElicitResult:
        self.asked.append(params.message)
        content = {"confirm": self.tick} if self.action == "accept" else None
        return types.ElicitResult(action=self.action, content=content)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """One app exposing health-check and promote-cell, served for the module: (folder, settings, keys, url, probe)."""
    folder = tmp_path_factory.mktemp("app")
    settings = runbook_tool_app(folder, "health-check, promote-cell")
    keys = tool_keys(folder)
    with serve_app(folder, {"PROBE_KEY": keys["probe"]}) as url:
        yield folder, settings, keys, url


def runs_of(folder: Path, name: str) -> list[tuple[str, str, str]]:
    return [(run["actor"], run["details"]["mode"], run["details"]["result"]) for run in audit_runs(folder)
            if run["resource"] == name]


async def test_only_exposed_runbooks_are_tools_each_gated_and_an_apply_is_confirmed(served) -> None:
    folder, settings, keys, url = served
    async with mcp_client(url, keys["admin"]) as mcp:
        tools = {tool.name: tool for tool in (await mcp.list_tools()).tools}
    assert sorted(name for name in tools if name.startswith("runbooks.")) == [
        "runbooks.health-check", "runbooks.health-check-apply", "runbooks.promote-cell", "runbooks.promote-cell-apply"]
    schema = tools["runbooks.promote-cell"].input_schema
    assert sorted(schema["properties"]) == ["cell", "key", "replicas", "transport"]
    assert schema["additionalProperties"] is False
    async with mcp_client(url, keys["reader"]) as mcp:
        assert not [tool for tool in (await mcp.list_tools()).tools if tool.name.startswith("runbooks.")]
        with pytest.raises(MCPError) as denied:
            await mcp.call_tool("runbooks.health-check", {})
        assert "403" in str(denied.value) or "runbook" in str(denied.value)
    before = settings.read_text()
    async with mcp_client(url, keys["operator"], elicitation_callback=Human()) as mcp:
        dry = await mcp.call_tool("runbooks.promote-cell", {})
        assert not dry.is_error, dry.content
        assert (dry.structured_content["mode"], dry.structured_content["ok"]) == ("dry-run", True)
        with pytest.raises(MCPError):  # no runbook:apply:promote-cell, even with a human ready to say yes
            await mcp.call_tool("runbooks.promote-cell-apply", {})
        bad = await mcp.call_tool("runbooks.promote-cell", {"replicas": "many"})
        assert bad.is_error
    assert settings.read_text() == before, "a dry run or a refused apply changed the settings"
    human = Human()
    async with mcp_client(url, keys["applier"], elicitation_callback=human) as mcp:
        unrehearsed = await mcp.call_tool("runbooks.promote-cell-apply", {"replicas": 2})
        assert unrehearsed.is_error and "needs a successful dry run" in unrehearsed.content[0].text
        assert human.asked == [], "the human was asked to confirm an apply the gate refuses"
        applied = await mcp.call_tool("runbooks.promote-cell-apply", {})
        assert not applied.is_error, applied.content
        assert (applied.structured_content["mode"], applied.structured_content["ok"]) == ("apply", True)
    (question,) = human.asked
    assert "Apply runbook 'promote-cell'" in question and "as applier-user" in question
    assert f"content hash {dry.structured_content['content_hash']}" in question
    assert "placement = process" in settings.read_text()
    assert runs_of(folder, "promote-cell") == [("operator-user", "dry-run", "ok"), ("applier-user", "apply", "ok")]


async def test_decline_applies_nothing_a_client_that_cannot_ask_is_refused_and_a_2025_session_confirms(served) -> None:
    folder, _, keys, url = served
    arguments = {"probe_key": "env:PROBE_KEY"}
    async with mcp_client(url, keys["operator"]) as mcp:
        dry = await mcp.call_tool("runbooks.health-check", arguments)
        assert not dry.is_error and dry.structured_content["ok"], dry.content
        refused = await mcp.call_tool("runbooks.health-check", {"probe_key": keys["probe"]})
        assert refused.is_error and "never the secret itself" in refused.content[0].text
    no = Human("decline")
    async with mcp_client(url, keys["applier"], elicitation_callback=no) as mcp:
        declined = await mcp.call_tool("runbooks.health-check-apply", arguments)
    assert not declined.is_error and declined.structured_content["ok"] is False
    assert declined.structured_content["error"] == "not applied: the human answered decline"
    (question,) = no.asked
    assert "probe_key=<secret from env:PROBE_KEY>" in question
    async with mcp_client(url, keys["applier"]) as mcp:  # declares no elicitation
        with pytest.raises(MCPError) as cannot:
            await mcp.call_tool("runbooks.health-check-apply", arguments)
    assert cannot.value.error.code == -32021
    assert "apply from the CLI: cellmono runbook run health-check --apply" in str(cannot.value)
    yes = Human()
    async with mcp_client(url, keys["applier"], mode="legacy", elicitation_callback=yes) as mcp:
        applied = await mcp.call_tool("runbooks.health-check-apply", arguments)
    assert not applied.is_error and applied.structured_content["ok"], applied.content
    assert len(yes.asked) == 1
    assert runs_of(folder, "health-check") == [("operator-user", "dry-run", "ok"), ("applier-user", "apply", "declined"),
                                               ("applier-user", "apply", "ok")]
    texts = [repr(result.content) + repr(result.structured_content) for result in (dry, refused, declined, applied)]
    texts += no.asked + yes.asked + [str(cannot.value)]
    texts += [path.read_text() for path in (folder / "var" / "runbooks").glob("*.ipynb")]
    texts.append((folder / "var" / "audit.sqlite").read_bytes().decode("latin-1"))
    assert "probe key authenticates as 'probe'" in "".join(texts)  # the secret was resolved, in the kernel only
    assert not [text for text in texts if keys["probe"] in text]
