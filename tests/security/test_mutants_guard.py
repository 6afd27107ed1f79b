"""Tests that kill mutants `mutmut` leaves alive in `cellmono.security.guard` (`.ci/mutation guard`;
figures in tests/security/MUTATION.md). Each names the check a careless edit could drop or flip."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellmono.core.config import load_settings
from cellmono.core.envelope import Envelope
from cellmono.core.errors import AccessDenied
from cellmono.security.guard import (PUBLISHED_HEADER, Authority, CapabilityDenied, CapabilityGuard, MemoryDecisions,
                                     Principal, SecuritySection, security_section)
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import (MemoryRevocations, TokenExpired, TokenIssuer, TokenMissing, TokenRevoked,
                                      TokenVerifier)

KEYS = SigningKeys()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def world(leeway: float = 5.0, **options):
    clock, revocations, decisions = Clock(), MemoryRevocations(), MemoryDecisions()
    issuer = TokenIssuer(KEYS, clock=clock)
    verifier = TokenVerifier(KEYS, audience="app", revocations=revocations, leeway=leeway, clock=clock)
    return clock, revocations, decisions, issuer, CapabilityGuard(verifier, decisions, **options)


def env(token: str | None, subject: str = "notes.add", **fields) -> Envelope:
    return Envelope(subject=subject, kind=fields.pop("kind", "request"), capability=token, **fields)


def test_a_cached_token_still_expires_at_expiry_plus_leeway() -> None:
    """The cache must not keep an expired token alive (dropping the expiry check, or `>` flipped to `<`)."""
    clock, _, _, issuer, guard = world(leeway=5.0)
    token = issuer.issue("alice", ["tool:call"], "app", ttl=60)
    guard.check(token, ("tool:call:notes.add",))              # now cached
    clock.now += 60 + 5                                        # exactly at the edge: still valid
    guard.check(token, ("tool:call:notes.add",))
    clock.now += 1
    with pytest.raises(TokenExpired):
        guard.check(token, ("tool:call:notes.add",))
    with pytest.raises(TokenExpired):                          # and stays refused (the cache entry went)
        guard.check(token, ())


def test_a_cached_token_is_refused_once_revoked() -> None:
    _, revocations, _, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call"], "app")
    claims = guard.check(token, ("tool:call:notes.add",))
    revocations.revoke(claims.token_id)
    with pytest.raises(TokenRevoked):
        guard.check(token, ("tool:call:notes.add",))


def test_the_cache_is_bounded_and_a_full_cache_still_judges_correctly() -> None:
    _, revocations, _, issuer, guard = world(cache_size=2)
    tokens = [issuer.issue(f"u{i}", ["tool:call:a"], "app") for i in range(3)]
    for token in tokens:
        guard.check(token, ("tool:call:a",))
    assert len(guard._tokens) <= 2
    with pytest.raises(CapabilityDenied, match="lacks capability 'tool:call:b'"):
        guard.check(tokens[0], ("tool:call:b",))
    guard.check(tokens[2], ("tool:call:a",))                   # the newest entry is kept


def test_no_token_is_missing_not_anonymous() -> None:
    *_, guard = world()
    for token in (None, ""):
        with pytest.raises(TokenMissing, match="no capability token"):
            guard.check(token, ())
        with pytest.raises(TokenMissing):
            guard.verified(token)


def test_identity_binding_refuses_another_principal_or_tenant() -> None:
    _, _, _, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call"], "app", tenant="acme")
    guard.check(token, ("tool:call:x",), principal="alice", tenant="acme")
    guard.check(token, ("tool:call:x",), principal=None, tenant=None)
    with pytest.raises(CapabilityDenied, match="claims principal 'mallory' but its token is for 'alice'"):
        guard.check(token, ("tool:call:x",), principal="mallory")
    with pytest.raises(CapabilityDenied, match="claims tenant 'evil' but its token is for tenant 'acme'"):
        guard.check(token, ("tool:call:x",), tenant="evil")
    untenanted = issuer.issue("bob", ["tool:call"], "app")
    guard.check(untenanted, ("tool:call:x",), principal="bob", tenant="any")   # a token with no tenant: no label
    _, _, _, issuer, loose = world(bind_identity=False)
    loose.check(issuer.issue("alice", ["tool:call"], "app", tenant="acme"), ("tool:call:x",), principal="m",
                tenant="evil")


def test_every_requirement_is_needed_and_a_cached_refusal_stays_a_refusal() -> None:
    _, _, _, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call:a"], "app")
    for _ in range(2):                                         # second time from the decision cache
        with pytest.raises(CapabilityDenied, match="'alice' lacks capability 'tool:call:b'"):
            guard.check(token, ("tool:call:a", "tool:call:b"))
    for _ in range(2):
        assert guard.check(token, ("tool:call:a",)).subject == "alice"


def test_public_handlers_need_all_three_conditions() -> None:
    """Public means: no requirement, allow_public set, and no token (a token present is still verified)."""
    _, _, decisions, issuer, guard = world(allow_public=True)
    guard.authorize(env(None), ())
    assert decisions.decisions[-1].reason == "public handler" and decisions.decisions[-1].allowed
    assert decisions.decisions[-1].actor == "anonymous" and decisions.decisions[-1].error is None
    with pytest.raises(TokenMissing):
        guard.authorize(env(None), ("tool:call:x",))
    with pytest.raises(AccessDenied):
        guard.authorize(env("garbage"), ())
    _, _, _, _, strict = world(allow_public=False)
    with pytest.raises(TokenMissing):
        strict.authorize(env(None), ())


def test_authorize_records_the_decision_it_takes() -> None:
    _, _, decisions, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call:a"], "app", tenant="acme")
    guard.authorize(env(token, correlation_id="c1", principal="alice"), ("tool:call:a",))
    allowed = decisions.decisions[-1]
    assert (allowed.actor, allowed.tenant, allowed.action, allowed.resource, allowed.allowed, allowed.reason,
            allowed.correlation_id, allowed.requires, allowed.error) == (
        "alice", "acme", "deliver", "notes.add", True, "granted", "c1", ("tool:call:a",), None)
    assert allowed.token_id and allowed.latency >= 0
    with pytest.raises(CapabilityDenied):
        guard.authorize(env(token, principal="alice", tenant="t2"), ("tool:call:b",))
    refused = decisions.decisions[-1]
    assert (refused.allowed, refused.error, refused.actor, refused.tenant, refused.token_id) == (
        False, "CapabilityDenied", "alice", "t2", None)
    assert "claims tenant" in refused.reason
    msg = env(None)
    with pytest.raises(TokenMissing):
        guard.authorize(msg, ())
    assert decisions.decisions[-1].correlation_id == msg.id


def test_admit_refuses_an_invalid_publisher_and_stamps_the_time() -> None:
    clock, revocations, decisions, issuer, guard = world()
    token = issuer.issue("alice", ["orders:watch"], "app")
    event = env(token, "orders.placed", kind="event", headers={PUBLISHED_HEADER: "1.0", "x": "y"})
    stamped = guard.admit(event)
    assert stamped.headers == {PUBLISHED_HEADER: repr(clock.now), "x": "y"}   # a caller's stamp is overridden
    assert guard.admit(env(None, "orders.placed", kind="event")).headers[PUBLISHED_HEADER] == repr(clock.now)
    revocations.revoke(guard.check(token, ()).token_id)
    with pytest.raises(TokenRevoked):
        guard.admit(event)
    refusal = decisions.decisions[-1]
    assert (refusal.action, refusal.allowed, refusal.error) == ("publish", False, "TokenRevoked")
    with pytest.raises(CapabilityDenied):
        guard.admit(env(issuer.issue("bob", ["orders:watch"], "app"), "orders.placed", kind="event", principal="eve"))


def test_an_event_is_judged_at_its_publish_time_only_inside_the_grace_window() -> None:
    clock, _, decisions, issuer, guard = world(leeway=5.0, event_grace=100.0)
    token = issuer.issue("alice", ["orders:watch"], "app", ttl=10)
    event = guard.admit(env(token, "orders.placed", kind="event"))
    clock.now += 50                                            # token expired since, but valid when published
    guard.forget()
    guard.authorize(event, ("orders:watch",))
    assert decisions.decisions[-1].reason == "granted as published"
    guard.authorize(event, ("orders:watch",))                  # from the cache as well
    clock.now += 51                                            # beyond the grace window: judged now
    with pytest.raises(TokenExpired):
        guard.authorize(event, ("orders:watch",))
    published = clock.now
    for stamp, judged_now in ((published - 100.0, False), (published - 100.5, True), (published + 5.0, False),
                              (published + 6.0, True), ("soon", True)):
        stamped = event.model_copy(update={"headers": {PUBLISHED_HEADER: str(stamp)}})
        assert (guard._published(stamped) is None) is judged_now, stamp
    request = event.model_copy(update={"kind": "request"})
    assert guard._published(request) is None                   # only events carry a publish time
    with pytest.raises(TokenMissing):
        guard._as_published(None, published)


def test_a_cached_token_expired_at_publish_time_is_refused() -> None:
    clock, _, _, issuer, guard = world(leeway=5.0, event_grace=1000.0)
    token = issuer.issue("alice", ["orders:watch"], "app", ttl=10)
    guard.check(token, ())                                     # cached
    assert guard._as_published(token, clock.now + 15).subject == "alice"   # expiry + leeway: still valid
    with pytest.raises(TokenExpired, match="had expired when the event was published"):
        guard._as_published(token, clock.now + 16)


def test_the_authority_issues_exactly_the_role_grants() -> None:
    clock = Clock()
    verifier = TokenVerifier(KEYS, audience="shop", clock=clock)
    authority = Authority({"clerk": ["orders:watch"], "admin": ["ops:admin"]}, TokenIssuer(KEYS, clock=clock), audience="shop",
                          ttl=120)
    clerk = Principal(id="carol", roles=("clerk",), tenant="acme")
    claims = verifier.verify(authority.token_for(clerk))
    assert (claims.subject, claims.tenant, claims.expires - clock.now) == ("carol", "acme", 120)
    assert claims.allows("orders:watch") and not claims.allows("orders:delete")
    assert verifier.verify(authority.token_for(clerk, ttl=30)).expires - clock.now == 30
    other = TokenVerifier(KEYS, audience="other", clock=clock)
    other.verify(authority.token_for(clerk, audience="other"))
    assert Principal(id="x").kind == "user" and Principal(id="x").roles == ()


def test_security_defaults_are_the_safe_ones() -> None:
    section = SecuritySection()
    assert (section.allow_public, section.audience, section.token_ttl, section.audit_durability,
            section.anchor_every, section.kek_env, section.roles) == (False, "cellmono", 3600.0, "normal", 1000,
                                                                    "CELLMONO_KEK", {})
    roles = SecuritySection.model_validate({"role.clerk": " orders:watch , ,notes:* ", "role.ops": ["ops:*"],
                                            "roles": {"admin": ["ops:admin"]}}).roles
    assert roles == {"admin": ("ops:admin",), "clerk": ("orders:watch", "notes:*"), "ops": ("ops:*",)}
    with pytest.raises(ValueError):
        SecuritySection.model_validate({"role.bad": "not a grant!!"})


def test_security_paths_resolve_beside_the_settings_file(tmp_path: Path) -> None:
    ini = tmp_path / "conf" / "settings.ini"
    ini.parent.mkdir()
    ini.write_text("[security]\naudit_path = logs/audit.sqlite\nstore_path = /abs/store.sqlite\n")
    section = security_section(ini)
    assert section.audit_path == str(ini.parent.resolve() / "logs/audit.sqlite")
    assert section.store_path == "/abs/store.sqlite"
    assert section.signing_keys == str(ini.parent.resolve() / "var/signing-keys.json")
    assert section.anchor_file is None and section.kek_file is None


def test_security_section_reads_the_working_folders_settings_or_defaults(tmp_path: Path, monkeypatch) -> None:
    """No argument: ./settings.ini when present (else safe defaults); defaults resolve paths in the working folder."""
    monkeypatch.chdir(tmp_path)
    assert security_section().audit_path == "var/audit.sqlite"           # no file: plain defaults
    (tmp_path / "settings.ini").write_text("[security]\nallow_public = false\naudience = shop\n")
    section = security_section()
    assert section.audience == "shop"
    assert section.store_path == str(tmp_path.resolve() / "var/store.sqlite")
    defaults = security_section(load_settings(None))
    assert defaults.audience == "cellmono" and defaults.audit_path == str(Path.cwd() / "var/audit.sqlite")


def test_a_cached_decision_belongs_to_its_token_only() -> None:
    """The decision cache is keyed by token and requirements: one token's grant never answers for another's."""
    _, _, _, issuer, guard = world()
    rich, poor = issuer.issue("alice", ["tool:call:a"], "app"), issuer.issue("bob", ["tool:call:b"], "app")
    guard.check(rich, ("tool:call:a",))
    with pytest.raises(CapabilityDenied, match="'bob' lacks"):
        guard.check(poor, ("tool:call:a",))
    event = guard.admit(env(rich, "orders.placed", kind="event"))
    guard.authorize(event, ("tool:call:a",))
    poor_event = guard.admit(env(poor, "orders.placed", kind="event"))
    with pytest.raises(CapabilityDenied, match="'bob' lacks"):
        guard.authorize(poor_event, ("tool:call:a",))


def test_authorize_and_admit_bind_the_envelopes_labels() -> None:
    _, _, decisions, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call:a"], "app", tenant="acme")
    with pytest.raises(CapabilityDenied, match="claims principal 'mallory'"):
        guard.authorize(env(token, principal="mallory"), ("tool:call:a",))
    refusal = decisions.decisions[-1]
    assert refusal.requires == ("tool:call:a",) and refusal.actor == "mallory" and "mallory" in refusal.reason
    event = guard.admit(env(token, "orders.placed", kind="event"))
    with pytest.raises(CapabilityDenied, match="claims principal 'mallory'"):
        guard.authorize(event.model_copy(update={"principal": "mallory"}), ("tool:call:a",))
    with pytest.raises(CapabilityDenied, match="claims tenant 'evil'"):
        guard.admit(env(token, "orders.placed", kind="event", tenant="evil"))
    assert "claims tenant 'evil'" in decisions.decisions[-1].reason and decisions.decisions[-1].requires == ()
    with pytest.raises(CapabilityDenied, match="claims tenant 'evil'"):     # a delivered event's labels too
        guard.authorize(event.model_copy(update={"tenant": "evil"}), ("tool:call:a",))
    guard.authorize(env(token), ("tool:call:a",))
    allowed = decisions.decisions[-1]
    assert allowed.actor == "alice" and 0 <= allowed.latency < 5.0       # the token's subject, a duration


def test_the_guard_and_authority_defaults() -> None:
    guard = CapabilityGuard(TokenVerifier(KEYS))
    assert (guard.cache_size, guard.event_grace, guard.allow_public, guard.bind_identity, guard.sink) == (
        4096, 3600.0, False, True, None)
    authority = Authority({}, TokenIssuer(KEYS))
    assert (authority.audience, authority.ttl) == ("cellmono", 3600.0)


# -- HeldDecision: the gateway's claim on the guard's decision about its own call (one audit record per call) --------
from cellmono.security.guard import HeldDecision, held_decision  # noqa: E402


def _held_call(guard: CapabilityGuard, envelope: Envelope, claim: HeldDecision, requires: tuple[str, ...]) -> None:
    reset = held_decision.set(claim)
    try:
        guard.authorize(envelope, requires)
    finally:
        held_decision.reset(reset)


def test_a_held_decision_about_the_awaited_envelope_leaves_the_sink_and_goes_to_the_caller() -> None:
    _, _, decisions, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call"], "app")
    envelope = env(token)
    claim = HeldDecision(envelope.id)
    assert (claim.envelope_id, claim.decision, claim.open) == (envelope.id, None, True)
    _held_call(guard, envelope, claim, ("tool:call:notes.add",))
    assert decisions.decisions == []  # held: the caller's own record carries it
    facts = claim.take()
    assert facts is not None and facts["requires"] == ["tool:call:notes.add"] and facts["check"] == "granted"
    assert isinstance(facts["token_id"], str) and facts["token_id"]
    assert claim.open is False  # closed once taken: later decisions go to the sink


def test_after_take_every_decision_goes_to_the_sink_again() -> None:
    _, _, decisions, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call"], "app")
    envelope = env(token)
    claim = HeldDecision(envelope.id)
    assert claim.take() is None and claim.open is False  # nothing held yet: None, and the claim is closed
    _held_call(guard, envelope, claim, ("tool:call:notes.add",))
    assert [decision.resource for decision in decisions.decisions] == ["notes.add"]  # a late decision is never lost


def test_only_the_first_decision_about_only_the_awaited_envelope_is_held() -> None:
    _, _, decisions, issuer, guard = world()
    token = issuer.issue("alice", ["tool:call"], "app")
    awaited, other = env(token), env(token, subject="notes.get")
    claim = HeldDecision(awaited.id)
    _held_call(guard, other, claim, ("tool:call:notes.get",))  # another envelope (a downstream request): recorded
    assert [decision.resource for decision in decisions.decisions] == ["notes.get"] and claim.decision is None
    _held_call(guard, awaited, claim, ("tool:call:notes.add",))
    _held_call(guard, awaited, claim, ("tool:call:notes.add",))  # a second decision about it: not held twice
    assert [decision.resource for decision in decisions.decisions] == ["notes.get", "notes.add"]
    assert claim.decision is not None and claim.decision.resource == "notes.add"


def test_a_held_refusal_carries_its_reason_and_error() -> None:
    _, _, decisions, issuer, guard = world()
    token = issuer.issue("alice", ["notes:read"], "app")
    envelope = env(token)
    claim = HeldDecision(envelope.id)
    with pytest.raises(CapabilityDenied):
        _held_call(guard, envelope, claim, ("notes:write",))
    assert decisions.decisions == [] and claim.decision is not None
    assert (claim.decision.allowed, claim.decision.error) == (False, "CapabilityDenied")
    assert "notes:write" in claim.take()["check"]


def test_a_publish_decision_is_never_held() -> None:
    _, _, decisions, issuer, guard = world()
    forged = issuer.issue("alice", ["tool:call"], "elsewhere")  # another audience: refused at publish (`publish`)
    envelope = env(forged, kind="event")
    claim = HeldDecision(envelope.id)
    reset = held_decision.set(claim)
    try:
        with pytest.raises(AccessDenied):
            guard.admit(envelope)
    finally:
        held_decision.reset(reset)
    assert claim.decision is None and [decision.action for decision in decisions.decisions] == ["publish"]


def test_without_a_sink_a_held_decision_is_still_kept() -> None:
    clock, revocations = Clock(), MemoryRevocations()
    issuer = TokenIssuer(KEYS, clock=clock)
    guard = CapabilityGuard(TokenVerifier(KEYS, audience="app", revocations=revocations, clock=clock), None)
    token = issuer.issue("alice", ["tool:call"], "app")
    envelope = env(token)
    claim = HeldDecision(envelope.id)
    _held_call(guard, envelope, claim, ("tool:call:notes.add",))
    assert claim.take()["requires"] == ["tool:call:notes.add"]
