"""Events are authorized at publish time (the rule is in nbs/14_guard.ipynb, "Events"): the publisher's token is
checked when the event is published; delivery judges the token the event carries as of its publish time, never
another principal's; a refusal is typed and audited, not a silent drop."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.bus import current_envelope
from cellmono.core.cell import Cell, handles
from cellmono.core.envelope import Envelope
from cellmono.security.guard import (PUBLISHED_HEADER, Authority, CapabilityGuard, MemoryDecisions, Principal)
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import MemoryRevocations, TokenExpired, TokenIssuer, TokenRevoked, TokenVerifier

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    id: int = 0


class Watcher(Cell):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str | None, str | None]] = []

    @handles("orders.placed", requires="orders:watch")
    async def placed(self, order: Order) -> None:
        context = current_envelope.get()
        self.seen.append((context.principal, context.capability))

    @handles("watcher.ping", requires="orders:watch")
    async def ping(self, order: Order) -> Order:
        return order


@pytest.fixture
def world():
    ring, revocations, decisions = SigningKeys(), MemoryRevocations(), MemoryDecisions()
    authority = Authority({"clerk": ["orders:watch"]}, TokenIssuer(ring), audience="shop")
    guard = CapabilityGuard(TokenVerifier(ring, audience="shop", revocations=revocations, leeway=0.0), decisions)
    watcher = Watcher()
    return App([watcher], guard=guard), authority, revocations, decisions, guard, watcher


async def _captured(app: App) -> list[Envelope]:
    """Every envelope the transport carries on orders.placed, as a broker would hold it."""
    held: list[Envelope] = []

    async def keep(envelope: Envelope) -> None:
        held.append(envelope)

    await app.bus.transport.subscribe("orders.placed", keep)
    return held


async def _settle(condition, seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_revoking_after_publish_neither_drops_nor_reauthorizes_the_event(world):
    app, authority, revocations, decisions, guard, watcher = world
    alice = authority.token_for(Principal(id="alice", roles=("clerk",)))
    async with app:
        held = await _captured(app)
        await app.bus.publish("orders.placed", {"id": 1}, principal="alice", capability=alice,
                              headers={PUBLISHED_HEADER: "1.0"})  # a caller's own stamp is replaced
        await _settle(lambda: held and watcher.seen)
        stamped = held[0]
        assert time.time() - 5 < float(stamped.headers[PUBLISHED_HEADER]) <= time.time()
        revocations.revoke(guard.verified(alice).token_id)
        guard.forget()
        # published before the revocation: delivered later (a broker's redelivery), still as alice, with her token
        await app.bus.transport.publish(stamped)
        await _settle(lambda: len(watcher.seen) >= 2)
        assert watcher.seen == [("alice", alice), ("alice", alice)]
        # after the revocation alice can publish nothing more: refused at the publisher, typed and audited
        with pytest.raises(TokenRevoked):
            await app.bus.publish("orders.placed", {"id": 2}, principal="alice", capability=alice)
        assert decisions.decisions[-1].action == "publish" and decisions.decisions[-1].error == "TokenRevoked"
        # nor make a request with it
        with pytest.raises(TokenRevoked):
            await app.bus.request("watcher.ping", principal="alice", capability=alice)
        # a copy without the publish stamp (or a request dressed as it) is judged now: refused and audited
        unstamped = stamped.model_copy(update={"headers": {}})
        await app.bus.transport.publish(unstamped)
        await _settle(lambda: any(d.error == "TokenRevoked" and d.action == "deliver" and d.resource == "orders.placed"
                                  for d in decisions.decisions))
        assert any(d.error == "TokenRevoked" and d.action == "deliver" and d.resource == "orders.placed"
                   for d in decisions.decisions)
        assert len(watcher.seen) == 2


async def test_expiry_is_judged_at_publish_time_within_the_grace(world):
    app, authority, revocations, decisions, guard, watcher = world
    alice = authority.token_for(Principal(id="alice", roles=("clerk",)), ttl=0.3)
    async with app:
        held = await _captured(app)
        await app.bus.publish("orders.placed", {"id": 1}, principal="alice", capability=alice)
        await _settle(lambda: held and watcher.seen)
        await asyncio.sleep(0.5)  # the token has expired since
        guard.forget()
        await app.bus.transport.publish(held[0])  # valid when published: delivered
        await _settle(lambda: len(watcher.seen) >= 2)
        assert watcher.seen == [("alice", alice)] * 2
        # a publish now, even with a forged old stamp, is judged now: refused at the publisher
        with pytest.raises(TokenExpired):
            await app.bus.publish("orders.placed", {"id": 2}, principal="alice", capability=alice,
                                  headers={PUBLISHED_HEADER: held[0].headers[PUBLISHED_HEADER]})
        # past the grace, the stamp no longer counts: refused at delivery, audited
        guard.event_grace = 0.2
        await app.bus.transport.publish(held[0])
        await _settle(lambda: any(d.error == "TokenExpired" and d.action == "deliver" for d in decisions.decisions))
        assert any(d.error == "TokenExpired" and d.action == "deliver" for d in decisions.decisions)
        assert len(watcher.seen) == 2


async def test_delivery_never_uses_another_principals_authority(world):
    """A listener that runs while the cell acts as itself still judges the event by the publisher's token."""
    app, authority, revocations, decisions, guard, watcher = world
    bob = authority.token_for(Principal(id="bob", roles=()))  # a valid token that grants nothing
    admin = authority.token_for(Principal(id="admin", roles=("clerk",)))
    async with app:
        scope = current_envelope.set(Envelope(subject="x.self", principal="admin", capability=admin))
        try:
            await app.bus.publish("orders.placed", {"id": 3}, principal="bob", capability=bob)
        finally:
            current_envelope.reset(scope)
        await _settle(lambda: any(d.resource == "orders.placed" for d in decisions.decisions))
    assert watcher.seen == []
    assert [d.actor for d in decisions.decisions if d.resource == "orders.placed"] == ["bob"]
