"""`TokenVerifier.verify` under mutation: every claim of a signed block is type-checked, every refusal has its own
`TokenInvalid` subclass and a message that says which check failed (naming the token id, never the token), the
time window's edges are where the docs put them, and the verified claims are the issued ones.

Tokens with odd claims are hand-built and correctly signed (`token_forge`), so only the claim check can refuse
them. Survivors left on purpose: tests/security/MUTATION.md ("security/tokens.py")."""

from __future__ import annotations

import re

import pytest

from cellmono.security.capabilities import CapabilitySet
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import (MemoryRevocations, TokenAudienceMismatch, TokenExpired, TokenIssuer,
                                      TokenMalformed, TokenNotYetValid, TokenRevoked, TokenSignatureInvalid,
                                      TokenVerifier, UnknownSigningKey, attenuate)
from tests.security.token_forge import KEYS, NOW, b64, blocks, child, forge, root, unb64

VERIFIER = TokenVerifier(KEYS, audience="app", clock=lambda: NOW)


def refused(token: str, error: type[Exception], message: str, verifier: TokenVerifier = VERIFIER) -> None:
    """`verify` refuses `token` with exactly `error` and exactly `message` (a regular expression)."""
    with pytest.raises(Exception) as caught:
        verifier.verify(token)
    assert type(caught.value) is error, repr(caught.value)
    assert re.fullmatch(message, str(caught.value)), str(caught.value)
    assert token not in str(caught.value)


def test_the_verified_claims_are_the_issued_claims() -> None:
    issuer = TokenIssuer(KEYS, issuer="auth.example", clock=lambda: 1000.0)
    token = issuer.issue("alice", ["tool:call:notes.*"], "app", tenant="acme", ttl=600, not_before=1100.0)
    claims = VERIFIER.verify(token, at=1200.0)
    assert (claims.issuer, claims.subject, claims.tenant, claims.audience) == ("auth.example", "alice", "acme", "app")
    assert (claims.issued_at, claims.not_before, claims.expires) == (1000.0, 1100.0, 1600.0)
    assert claims.key_id == KEYS.active and claims.chain == (claims.token_id,)
    assert claims.capability_sets == (CapabilitySet(["tool:call:notes.*"]),)
    assert claims.token_id == blocks(token)[0]["jti"]


def test_the_default_issuer_is_cellmono_and_the_default_tenant_none() -> None:
    claims = TokenVerifier(KEYS).verify(TokenIssuer(KEYS).issue("alice", ["a:b"], "app"))
    assert (claims.issuer, claims.tenant) == ("cellmono", None)


def test_a_childs_claims_are_its_roots_with_the_chain_and_every_blocks_grants() -> None:
    token = TokenIssuer(KEYS, clock=lambda: 1000.0).issue("alice", ["tool:call:notes.*"], "app", tenant="acme")
    grandchild = attenuate(attenuate(token, ["tool:call:notes.add", "tool:call:notes.list"]), ["tool:call:notes.add"])
    claims = VERIFIER.verify(grandchild)
    assert claims.chain == tuple(block["jti"] for block in blocks(grandchild)) and len(set(claims.chain)) == 3
    assert claims.token_id == claims.chain[-1] and claims.tenant == "acme" and claims.key_id == KEYS.active
    assert [c.texts() for c in claims.capability_sets] == [
        ("tool:call:notes.*",), ("tool:call:notes.add", "tool:call:notes.list"), ("tool:call:notes.add",)]
    assert claims.allows("tool:call:notes.add") and not claims.allows("tool:call:notes.list")


def test_allows_all_needs_every_requirement_in_every_block() -> None:
    claims = VERIFIER.verify(forge(root(caps=["tool:call:notes.*", "a:b"]), child(caps=["tool:call:notes.add", "a:c"])))
    assert claims.allows_all(["tool:call:notes.add"]) and claims.allows_all([])
    assert not claims.allows_all(["tool:call:notes.add", "tool:call:notes.list"])
    assert not claims.allows_all(["a:b"]) and not claims.allows_all(["a:c"])


def test_a_hand_built_token_verifies() -> None:
    """The control for the refusals below: `forge` builds tokens the verifier accepts."""
    claims = VERIFIER.verify(forge(root(ten="acme"), child(exp=1800.0, aud="app")))
    assert (claims.chain, claims.expires, claims.tenant) == (("root-id", "child-id"), 1800.0, "acme")


@pytest.mark.parametrize("name, value", [
    ("kid", ...), ("kid", 7), ("iss", ...), ("iss", ["x"]), ("sub", ...), ("sub", 1), ("aud", ...), ("aud", None),
    ("iat", ...), ("iat", "1000"), ("iat", True), ("nbf", ...), ("nbf", "0"), ("exp", ...), ("exp", "2000"),
    ("exp", True), ("jti", ...), ("jti", 5), ("caps", ...), ("caps", "tool:call:notes.*"), ("ten", 5), ("ten", True),
    ("next", None), ("next", 5)])
def test_every_root_claim_is_type_checked(name: str, value: object) -> None:
    refused(forge(root(**{name: value})), TokenMalformed, f"token claim '{name}' is missing or has the wrong type")


@pytest.mark.parametrize("name, value", [
    ("jti", ...), ("jti", 1), ("exp", "soon"), ("exp", False), ("aud", 3), ("caps", ...), ("caps", {"a": "b"}),
    ("next", None)])
def test_every_child_claim_is_type_checked(name: str, value: object) -> None:
    token = forge(root(), child(**{name: value}))
    refused(token, TokenMalformed, f"token claim '{name}' is missing or has the wrong type")


def test_grants_must_be_strings_of_the_grammar() -> None:
    refused(forge(root(caps=["a:b", 3])), TokenMalformed, "token claim 'caps' must be a list of strings")
    refused(forge(root(caps=["not a grant"])), TokenMalformed, "token carries a capability outside the grammar: .+")


@pytest.mark.parametrize("version", [..., 0, 2, "1"])
def test_only_version_1_is_read(version: object) -> None:
    refused(forge(root(v=version)), TokenMalformed, f"unsupported token version {version if version is not ... else None!r}")


def test_a_next_key_that_is_not_a_public_key_is_malformed() -> None:
    refused(forge(root(next=b64(b"short"))), TokenMalformed, "token claim 'next' is not an Ed25519 public key")


def test_a_proof_that_is_not_a_private_key_is_malformed() -> None:
    refused(forge(root(), proof=b64(bytes(31))), TokenMalformed, "token proof is not an Ed25519 private key")


def test_a_changed_root_block_breaks_the_issuers_signature() -> None:
    segments = forge(root()).split(".")
    segments[1] = b64(unb64(segments[1]).replace(b"notes.*", b"*.*    "))
    refused(".".join(segments), TokenSignatureInvalid, "token signature does not verify")


def test_a_root_signed_by_another_key_under_a_known_kid_is_refused() -> None:
    refused(forge(root(), keys=SigningKeys()), TokenSignatureInvalid, "token signature does not verify")


@pytest.mark.parametrize("position", [1, 2])
def test_a_changed_child_block_names_its_position(position: int) -> None:
    segments = forge(root(), child(jti="c1"), child(jti="c2")).split(".")
    index = 2 * position + 1
    segments[index] = b64(unb64(segments[index]).replace(b"notes.add", b"notes.del"))
    refused(".".join(segments), TokenSignatureInvalid, f"attenuation block {position} signature does not verify")


def test_a_child_block_moved_onto_another_root_is_refused() -> None:
    """Each child is signed by its parent's `next` key, over its payload and the parent's signature."""
    token = attenuate(TokenIssuer(KEYS).issue("alice", ["a:*"], "app"), ["a:b"])
    other = attenuate(TokenIssuer(KEYS).issue("alice", ["a:*"], "app"), ["a:b"])
    spliced = token.split(".")[:3] + other.split(".")[3:]
    refused(".".join(spliced), TokenSignatureInvalid, "attenuation block 1 signature does not verify")


def test_removing_the_last_block_breaks_the_proof() -> None:
    token = attenuate(TokenIssuer(KEYS).issue("alice", ["a:*"], "app"), ["a:b"])
    segments = token.split(".")
    refused(".".join(segments[:3] + segments[-1:]), TokenSignatureInvalid,
            re.escape("token proof does not match its last block (a block was removed?)"))


def test_a_kid_the_ring_does_not_hold_is_unknown() -> None:
    refused(forge(root(kid="nobody")), UnknownSigningKey, "token signed by unknown or retired key id 'nobody'")
    mapping = TokenVerifier(KEYS.public_keys(), audience="app", clock=lambda: NOW)
    assert mapping.verify(forge(root())).key_id == KEYS.active
    refused(forge(root(kid="nobody")), UnknownSigningKey, "token signed by unknown or retired key id 'nobody'", mapping)


def test_expiry_is_the_earliest_of_the_chain_and_its_edge_is_the_leeway() -> None:
    token = forge(root(exp=2000.0), child(jti="c1", exp=1800.0), child(jti="c2"))
    verifier = TokenVerifier(KEYS, audience="app", leeway=5.0)
    assert verifier.verify(token, at=1805.0).expires == 1800.0  # exactly at the edge: still valid
    with pytest.raises(TokenExpired, match=r"^token c2 expired 6 s ago$"):
        verifier.verify(token, at=1806.0)
    exact = TokenVerifier(KEYS, audience="app", leeway=0.0)
    assert exact.verify(token, at=1800.0).expires == 1800.0
    with pytest.raises(TokenExpired):
        exact.verify(token, at=1800.5)


def test_not_before_edge_is_the_leeway() -> None:
    token = forge(root(nbf=1200.0))
    verifier = TokenVerifier(KEYS, audience="app", leeway=5.0)
    assert verifier.verify(token, at=1195.0).not_before == 1200.0  # exactly at the edge: already valid
    with pytest.raises(TokenNotYetValid, match=r"^token root-id is not valid for another 6 s$"):
        verifier.verify(token, at=1194.0)
    exact = TokenVerifier(KEYS, audience="app", leeway=0.0)
    assert exact.verify(token, at=1200.0).subject == "alice"
    with pytest.raises(TokenNotYetValid):
        exact.verify(token, at=1199.5)


def test_at_replaces_the_clock_and_without_it_the_clock_judges() -> None:
    clock = [1500.0]
    verifier = TokenVerifier(KEYS, audience="app", clock=lambda: clock[0])
    token = forge(root())
    assert verifier.verify(token).subject == "alice"
    clock[0] = 2100.0
    with pytest.raises(TokenExpired):
        verifier.verify(token)
    assert verifier.verify(token, at=1999.0).subject == "alice"
    with pytest.raises(TokenExpired):
        verifier.verify(token, at=2006.0)


def test_a_verifier_without_audience_accepts_every_audience() -> None:
    assert TokenVerifier(KEYS, clock=lambda: NOW).verify(forge(root(aud="elsewhere"), child(aud="x"))).audience \
        == "elsewhere"


def test_every_blocks_audience_must_name_the_verifier() -> None:
    assert VERIFIER.verify(forge(root(), child(aud="app"), child())).audience == "app"
    refused(forge(root(aud="other")), TokenAudienceMismatch, "token root-id is for audience 'other', not 'app'")
    refused(forge(root(), child(jti="c1"), child(jti="c2", aud="svc")), TokenAudienceMismatch,
            "token c2 is for audience 'svc', not 'app'")


def test_revoking_any_block_revokes_the_token_but_not_its_parents() -> None:
    revocations = MemoryRevocations()
    verifier = TokenVerifier(KEYS, audience="app", revocations=revocations, clock=lambda: NOW)
    parent = forge(root())
    token = forge(root(), child(jti="c1"), child(jti="c2"))
    revocations.revoke("c1")
    assert verifier.verify(parent).token_id == "root-id"
    refused(token, TokenRevoked, "token c2 is revoked", verifier)
    assert verifier.verify(token, revocation=False).token_id == "c2"  # e.g. judging a past event


def test_revocations_given_at_construction_count() -> None:
    verifier = TokenVerifier(KEYS, audience="app", revocations=MemoryRevocations(["root-id"]), clock=lambda: NOW)
    refused(forge(root()), TokenRevoked, "token root-id is revoked", verifier)
    assert not MemoryRevocations().is_revoked(["root-id"])
