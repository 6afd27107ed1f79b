"""One role resolver: the guard, the gateway and the command line give the same verdict on a role the app
does not define (refused, naming the known roles); a JWT's foreign roles are dropped, never granted."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, tool
from cellmono.core.config import Settings
from cellmono.gateway.auth import Identity, InsufficientScope, Policy
from cellmono.gateway.server import FORBIDDEN, CallContext, Gateway, MemoryAudit
from cellmono.cli import serve
from cellmono.security.capabilities import CapabilityError, Roles
from cellmono.security.guard import Authority, Principal
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import TokenIssuer

DEFINITIONS = {"reader": "tool:call:notes.get, notes:read", "editor": "tool:call:notes.*, notes:read, notes:write"}
VERDICT = "unknown role 'ghost'; known roles: editor, reader"


class Text(BaseModel):
    text: str


class Notes(Cell):
    name = "notes"

    @tool(requires="notes:read")
    async def get(self, request: Text) -> Text:
        """Get a note."""
        return request


def test_the_resolver_states_the_verdict() -> None:
    with pytest.raises(CapabilityError) as caught:
        Roles(DEFINITIONS).check(["reader", "ghost"])
    assert str(caught.value) == VERDICT


def test_the_guard_refuses_to_issue_a_token_for_an_unknown_role() -> None:
    authority = Authority(DEFINITIONS, TokenIssuer(SigningKeys()))
    with pytest.raises(CapabilityError) as caught:
        authority.token_for(Principal(id="gus", roles=("reader", "ghost")))
    assert VERDICT in str(caught.value)


@pytest.mark.anyio
async def test_the_gateway_refuses_an_api_key_with_an_unknown_role() -> None:
    policy = Policy(DEFINITIONS)
    identity = Identity(principal="gus", roles=("reader", "ghost"), method="api_key")
    with pytest.raises(InsufficientScope) as caught:
        policy.check(identity, ("tool:call:notes.get", "notes:read"))
    assert VERDICT in str(caught.value)
    app = App([Notes()], settings=Settings())
    audit = MemoryAudit()
    gateway = Gateway(app, policy=policy, audit=audit)
    assert gateway.visible(identity) == []
    async with app:
        with pytest.raises(MCPError) as refused:
            await gateway.call_tool(CallContext(identity), "notes.get", {"text": "x"})
    assert refused.value.code == FORBIDDEN and VERDICT in refused.value.message
    assert audit.records[-1].outcome == "denied" and VERDICT in (audit.records[-1].reason or "")


def test_the_cli_refuses_an_api_key_for_an_unknown_role(tmp_path: Path) -> None:
    """`cellmono serve --new-key gus --role ghost`: refused with the same words, and no key is written."""
    settings = tmp_path / "settings.ini"
    settings.write_text("[app]\nname = roles\n[security]\n" + "".join(
        f"role.{name} = {grants}\n" for name, grants in DEFINITIONS.items()))
    parser = argparse.ArgumentParser()
    serve.register(parser)
    args = parser.parse_args(["--settings", str(settings), "--new-key", "gus", "--role", "reader", "--role", "ghost"])
    with pytest.raises(CapabilityError) as caught:
        args.handler(args)
    assert VERDICT in str(caught.value)
    keys = [path for path in tmp_path.rglob("api-keys*") if path.stat().st_size > 20]
    assert all("gus" not in path.read_text() for path in keys)
    good = parser.parse_args(["--settings", str(settings), "--new-key", "rita", "--role", "reader"])
    assert good.handler(good) == 0


def test_the_three_verdicts_say_the_same() -> None:
    """The same words from the resolver, the guard's authority and the gateway's policy."""
    messages = []
    for refuse in (lambda: Roles(DEFINITIONS).check(["ghost"]),
                   lambda: Authority(DEFINITIONS, TokenIssuer(SigningKeys())).token_for(Principal(id="g", roles=("ghost",))),
                   lambda: Policy(DEFINITIONS).check(Identity(principal="g", roles=("ghost",), method="local"), ("a:b",))):
        with pytest.raises((CapabilityError, InsufficientScope)) as caught:
            refuse()
        messages.append(str(caught.value))
    assert all(VERDICT in message for message in messages), messages


def test_a_jwt_keeps_the_roles_the_app_defines_and_drops_the_idps_own() -> None:
    """Rule: an identity provider adds roles of its own (offline_access, default-roles-<realm>). They are
    dropped, so they can never grant; the known roles still work; a refusal names what was ignored."""
    policy = Policy(DEFINITIONS)
    mixed = Identity(principal="ida", roles=("offline_access", "default-roles-acme", "reader"), method="jwt")
    assert policy.missing(mixed, ("tool:call:notes.get", "notes:read")) is None
    assert policy.grants(mixed) == ("tool:call:notes.get", "notes:read")
    foreign = Identity(principal="ivo", roles=("offline_access",), method="jwt")
    assert policy.grants(foreign) == ()
    with pytest.raises(InsufficientScope) as caught:
        policy.check(foreign, ("tool:call:notes.get",))
    assert "ignored: offline_access; known roles: editor, reader" in str(caught.value)
    # the same foreign role from an API key (the app's own credential) is refused outright
    with pytest.raises(InsufficientScope, match="unknown role 'offline_access'"):
        policy.check(Identity(principal="ivo", roles=("offline_access",), method="api_key"), ("tool:call:notes.get",))
