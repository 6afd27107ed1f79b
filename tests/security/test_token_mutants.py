"""Tests that kill mutants `mutmut` left alive in `cellmono.security.tokens` (README, development section).

Each names the change an attacker or a careless edit would make and the behaviour that catches it.

The equivalent mutants left alive, and the score, are in MUTATION.md ("security/tokens.py"); the
rest of the token tests under mutation are `test_token_mutants_verify.py` and `test_token_mutants_format.py`."""

from __future__ import annotations

import pytest

from cellmono.security.signing import SigningKeys
from cellmono.security.capabilities import AttenuationError
from cellmono.security.tokens import (MAX_BLOCKS, MemoryRevocations, TokenAudienceMismatch, TokenExpired, TokenIssuer,
                                      TokenNotYetValid, TokenRevoked, TokenTooLarge, TokenVerifier, attenuate)

KEYS = SigningKeys()
ISSUER = TokenIssuer(KEYS)


def test_the_default_leeway_is_five_seconds_each_way() -> None:
    """A wider default would accept expired tokens for longer; a narrower one refuses honest clock skew."""
    verifier = TokenVerifier(KEYS, audience="app")
    token = ISSUER.issue("alice", ["tool:call:notes.add"], "app", ttl=60)
    claims = verifier.verify(token)
    assert verifier.verify(token, at=claims.expires + 4.9).subject == "alice"
    with pytest.raises(TokenExpired):
        verifier.verify(token, at=claims.expires + 5.1)
    assert verifier.verify(token, at=claims.not_before - 4.9).subject == "alice"
    with pytest.raises(TokenNotYetValid):
        verifier.verify(token, at=claims.not_before - 5.1)


def test_attenuation_stops_at_max_blocks_when_narrowing_not_when_verifying() -> None:
    """`>` for `>=` would mint a token of MAX_BLOCKS + 1 blocks that no verifier accepts."""
    verifier = TokenVerifier(KEYS, audience="app")
    token = ISSUER.issue("alice", ["tool:call:notes.add"], "app")
    for _ in range(MAX_BLOCKS - 1):
        token = attenuate(token, ["tool:call:notes.add"])
    assert len(verifier.verify(token).chain) == MAX_BLOCKS
    with pytest.raises(TokenTooLarge, match="cannot attenuate further"):
        attenuate(token, ["tool:call:notes.add"])


def test_every_revoke_moves_the_version_forward() -> None:
    """`version` tells a cache that the set changed: each revoke must give a new, larger value."""
    revocations = MemoryRevocations()
    seen = [revocations.version]
    for token_id in ("a", "b", "c"):
        revocations.revoke(token_id)
        seen.append(revocations.version)
    assert seen == sorted(set(seen)) and len(seen) == 4
    assert revocations.is_revoked(["x", "b"]) and not revocations.is_revoked(["x"])


def test_attenuate_refuses_to_widen_and_names_the_block() -> None:
    """The verifier would still refuse a widened child, but attenuate must not mint it (defence in depth)."""
    token = ISSUER.issue("alice", ["tool:call:notes.add"], "app")
    with pytest.raises(AttenuationError, match=r"cannot attenuate to .*tool:call:\*.*not covered by block 0"):
        attenuate(token, ["tool:call:*"])


def test_a_child_ttl_shortens_the_token() -> None:
    verifier = TokenVerifier(KEYS, audience="app")
    token = ISSUER.issue("alice", ["tool:call:notes.add"], "app", ttl=3600)
    child = attenuate(token, ["tool:call:notes.add"], ttl=10)
    claims = verifier.verify(child)
    assert claims.expires < claims.issued_at + 60
    with pytest.raises(TokenExpired):
        verifier.verify(child, at=claims.issued_at + 10 + verifier.leeway + 1)


def test_the_verifier_keeps_its_audience_and_revocations() -> None:
    revocations = MemoryRevocations()
    verifier = TokenVerifier(KEYS, audience="app", revocations=revocations)
    with pytest.raises(TokenAudienceMismatch):
        verifier.verify(ISSUER.issue("alice", ["tool:call:notes.add"], "other-app"))
    token = ISSUER.issue("alice", ["tool:call:notes.add"], "app")
    revocations.revoke(verifier.verify(token).token_id)
    with pytest.raises(TokenRevoked):
        verifier.verify(token)


def test_an_attenuated_audience_binds_the_child() -> None:
    """A child narrowed to another audience is refused where the parent is accepted (audience dropped or misspelt)."""
    token = ISSUER.issue("alice", ["tool:call:notes.add"], "app")
    child = attenuate(token, ["tool:call:notes.add"], audience="svc-a")
    assert TokenVerifier(KEYS, audience="app").verify(token).subject == "alice"
    with pytest.raises(TokenAudienceMismatch):
        TokenVerifier(KEYS, audience="app").verify(child)


def test_tokens_carry_no_base64_padding() -> None:
    """Tokens travel in headers and URLs: unpadded base64url, so no `=` anywhere, at any length."""
    for subject in ("a", "ab", "abc", "abcd"):
        token = attenuate(ISSUER.issue(subject, ["tool:call:notes.add"], "app"), ["tool:call:notes.add"])
        assert "=" not in token
