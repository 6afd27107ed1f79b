"""Tests that kill mutants `mutmut` left alive in `cellmono.security.tokens` (README, development section).

Each names the change an attacker or a careless edit would make and the behaviour that catches it."""

from __future__ import annotations

import pytest

from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import (MAX_BLOCKS, MemoryRevocations, TokenExpired, TokenIssuer, TokenNotYetValid,
                                      TokenTooLarge, TokenVerifier, attenuate)

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
