"""Capability enforcement on a real bus and app: deny by default, typed denials, audited decisions,
no confused deputy, store namespaces injected per cell."""

from __future__ import annotations

import os

import pytest
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.security.audit import AuditLog
from cellmono.security.capabilities import AttenuationError
from cellmono.core.cell import Cell, handles, tool
from cellmono.security.guard import Authority, CapabilityDenied, CapabilityGuard, Principal
from cellmono.security.keys import StaticKeyProvider
from cellmono.security.signing import SigningKeys
from cellmono.security.store import EncryptedStore
from cellmono.security.tokens import TokenExpired, TokenIssuer, TokenMissing, TokenVerifier, attenuate


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Ref(BaseModel):
    name: str


class Secret(BaseModel):
    name: str
    value: str


class VaultCell(Cell):
    """Holds secrets in its encrypted store namespace."""

    name = "vault"

    async def on_start(self) -> None:
        self.store.put("launch-code", b"0000")

    @tool(requires="vault:read")
    async def read(self, request: Ref) -> Secret:
        """Return a secret."""
        value = self.store.get(request.name)
        return Secret(name=request.name, value=value.decode() if value else "")


class HelperCell(Cell):
    """A deputy: users may call it; it asks the vault on their behalf."""

    name = "helper"

    @tool(requires="helper:use")
    async def fetch(self, request: Ref) -> Secret:
        """Fetch a secret from the vault, as the caller."""
        return await self.bus.request("vault.read", request, response=Secret)

    @tool(requires="helper:use")
    async def fetch_as_admin(self, request: Ref) -> Secret:
        """Try to relabel the request as coming from the admin."""
        return await self.bus.request("vault.read", request, response=Secret, principal="admin")

    @tool(requires="helper:use")
    async def peek(self, request: Ref) -> Secret:
        """Try to read the vault's namespace through its own store handle."""
        value = self.store.get(request.name)
        return Secret(name=request.name, value=value.decode() if value else "<nothing>")

    @handles("helper.ping", requires=())
    async def ping(self, request: Ref) -> Ref:
        return request


@pytest.fixture
def world(tmp_path):
    ring = SigningKeys()
    authority = Authority({"user": ["tool:call:helper.*", "helper:use"],
                           "admin": ["helper:use", "vault:read"]}, TokenIssuer(ring), audience="test-app")
    audit = AuditLog(tmp_path / "audit.sqlite")
    guard = CapabilityGuard(TokenVerifier(ring, audience="test-app"), audit)
    store = EncryptedStore(tmp_path / "store.sqlite", StaticKeyProvider(os.urandom(32)))
    app = App([VaultCell(), HelperCell()], guard=guard, store=store)
    alice = Principal(id="alice", roles=("user",))
    admin = Principal(id="admin", roles=("admin",))
    yield app, authority, audit, alice, admin
    audit.close()
    store.close()


@pytest.mark.anyio
async def test_admin_reads_through_the_deputy_and_decisions_are_audited(world):
    app, authority, audit, _, admin = world
    async with app:
        secret = await app.bus.request("helper.fetch", Ref(name="launch-code"), response=Secret,
                                       capability=authority.token_for(admin), principal="admin")
    assert secret.value == "0000"
    audit.flush()
    allowed = [entry.fields for entry in audit.entries() if entry.fields["decision"] == "allow"]
    assert {record["resource"] for record in allowed} == {"helper.fetch", "vault.read"}
    assert all(record["actor"] == "admin" for record in allowed)
    assert audit.verify().ok


@pytest.mark.anyio
async def test_confused_deputy_cannot_exceed_the_callers_rights(world):
    app, authority, audit, alice, _ = world
    token = authority.token_for(alice)
    async with app:
        # alice may use the helper, but the helper acts with alice's token: the vault refuses
        with pytest.raises(CapabilityDenied, match="'alice' lacks capability 'vault:read'") as caught:
            await app.bus.request("helper.fetch", Ref(name="launch-code"), capability=token, principal="alice")
        assert isinstance(caught.value, PermissionError) and caught.value.remote
        # relabelling the request as the admin does not help: the token is alice's
        with pytest.raises(CapabilityDenied, match="claims principal 'admin'"):
            await app.bus.request("helper.fetch_as_admin", Ref(name="launch-code"), capability=token,
                                  principal="alice")
        # nor does minting a wider child token
        with pytest.raises(AttenuationError):
            attenuate(token, ["vault:read"])
        # and the helper's own store namespace does not reach the vault's data
        peeked = await app.bus.request("helper.peek", Ref(name="launch-code"), response=Secret, capability=token,
                                       principal="alice")
        assert peeked.value == "<nothing>"
    audit.flush()
    denials = [entry.fields for entry in audit.entries() if entry.fields["decision"] == "deny"]
    assert any(d["resource"] == "vault.read" and "vault:read" in d["reason"] and d["actor"] == "alice"
               for d in denials)


@pytest.mark.anyio
async def test_deny_by_default(world, tmp_path):
    app, authority, audit, alice, _ = world
    async with app:
        with pytest.raises(TokenMissing):
            await app.bus.request("helper.fetch", Ref(name="x"))
        with pytest.raises(TokenMissing):  # a handler that declares nothing still needs a valid token
            await app.bus.request("helper.ping", Ref(name="x"))
        assert (await app.bus.request("helper.ping", Ref(name="x"), response=Ref, capability=authority.token_for(alice),
                                      principal="alice")).name == "x"
        expired = TokenIssuer(authority.issuer.keys, clock=lambda: 1000.0).issue(
            "alice", ["helper:use"], "test-app", ttl=1)
        with pytest.raises(TokenExpired):
            await app.bus.request("helper.fetch", Ref(name="x"), capability=expired)
        wrong_audience = authority.token_for(alice, audience="other-app")
        with pytest.raises(PermissionError, match="audience"):
            await app.bus.request("helper.fetch", Ref(name="x"), capability=wrong_audience)
    assert app.running is False
