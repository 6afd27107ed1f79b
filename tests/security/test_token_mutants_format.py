"""The token format under mutation (`cm1.<block0>.<sig0>[.<blockN>.<sigN>]*.<proof>`, unpadded base64url,
canonical JSON blocks, at most 8 blocks and 8 KiB): what `_split` refuses and why, the encoders' round trip,
and the argument checks of `TokenIssuer.issue` and `attenuate`. Survivors left on purpose: MUTATION.md."""

from __future__ import annotations

import json
import re

import pytest

from cellmono.security.capabilities import AttenuationError, CapabilityError, CapabilitySet
from cellmono.security.tokens import (MAX_BLOCKS, MAX_TOKEN_BYTES, TokenIssuer, TokenMalformed, TokenTooLarge,
                                      TokenVerifier, _b64decode, _b64encode, attenuate)
from tests.security.token_forge import KEYS, NOW, b64, blocks, child, forge, root, unb64

VERIFIER = TokenVerifier(KEYS, audience="app", clock=lambda: NOW)
ISSUER = TokenIssuer(KEYS, clock=lambda: 1000.0)
SHAPE = re.escape("not a cm1 token (expected 'cm1.block.sig[.block.sig]*.proof')")


def refused(call, error: type[Exception], message: str) -> None:
    """`call()` raises exactly `error` with exactly `message` (a regular expression)."""
    with pytest.raises(Exception) as caught:
        call()
    assert type(caught.value) is error, repr(caught.value)
    assert re.fullmatch(message, str(caught.value)), str(caught.value)


def padded(size: int) -> str:
    """A valid two-block token of exactly `size` characters (block 0 carries a filler claim)."""
    estimate = (size - len(forge(root(pad=""), child(jti="c1")))) * 3 // 4
    for fill in range(estimate - 8, estimate + 8):
        token = forge(root(pad="a" * fill), child(jti="c1"))
        if len(token) == size:
            return token
    raise AssertionError(f"no filler gives a token of {size} characters")


def attenuated_to(size: int) -> tuple[str, list[str]]:
    """A parent and the grants whose `attenuate` gives a token of exactly `size` characters (the sealed child's
    length moves with the parent's filler and the child's grant), found by trying."""
    for name in ("add", "addx", "addxx", "addxxx"):
        grants = [f"tool:call:notes.{name}"]
        estimate = (size - len(attenuate(forge(root(pad="")), grants))) * 3 // 4
        for fill in range(estimate - 8, estimate + 8):
            parent = forge(root(pad="a" * fill))
            try:
                if len(attenuate(parent, grants)) == size:
                    return parent, grants
            except TokenTooLarge:
                break
    raise AssertionError(f"no parent attenuates to {size} characters")


@pytest.mark.parametrize("token, kind", [(None, "NoneType"), (b"cm1.a.b.c", "bytes"), (7, "int")])
def test_a_token_must_be_text(token: object, kind: str) -> None:
    refused(lambda: VERIFIER.verify(token), TokenMalformed, f"a token must be a string, got {kind}")  # type: ignore[arg-type]


def test_a_token_of_exactly_the_size_limit_verifies_and_one_more_character_is_too_large() -> None:
    token = padded(MAX_TOKEN_BYTES)
    assert VERIFIER.verify(token).chain == ("root-id", "c1")
    refused(lambda: VERIFIER.verify(token + "A"), TokenTooLarge, f"token is {MAX_TOKEN_BYTES + 1} bytes, over the limit of {MAX_TOKEN_BYTES}")
    junk = "cm1." + "A" * (MAX_TOKEN_BYTES - 4)  # the limit is checked first, then the shape
    refused(lambda: VERIFIER.verify(junk), TokenMalformed, SHAPE)
    refused(lambda: VERIFIER.verify(junk + "A"), TokenTooLarge, ".*over the limit.*")
    refused(lambda: attenuate(token + "A", ["tool:call:notes.add"]), TokenTooLarge, ".*over the limit.*")


def test_attenuating_up_to_exactly_the_size_limit_is_allowed_and_one_more_character_is_not() -> None:
    parent, grants = attenuated_to(MAX_TOKEN_BYTES)
    token = attenuate(parent, grants)
    assert len(token) == MAX_TOKEN_BYTES and VERIFIER.verify(token).allows(grants[0])
    longer = forge(root(pad="a" * (len(blocks(parent)[0]["pad"]) + 3)))  # 4 more base64 characters
    refused(lambda: attenuate(longer, grants), TokenTooLarge,
            f"token would be {MAX_TOKEN_BYTES + 4} bytes, over the limit of {MAX_TOKEN_BYTES}")


def test_issuing_over_the_size_limit_is_refused() -> None:
    refused(lambda: ISSUER.issue("a" * MAX_TOKEN_BYTES, ["a:b"], "app"), TokenTooLarge,
            rf"token would be \d+ bytes, over the limit of {MAX_TOKEN_BYTES}")


def test_a_valid_token_under_another_prefix_is_refused() -> None:
    token = ISSUER.issue("alice", ["a:b"], "app")
    assert VERIFIER.verify(token).subject == "alice"
    refused(lambda: VERIFIER.verify("cm2" + token[3:]), TokenMalformed, SHAPE)
    refused(lambda: attenuate("cm2" + token[3:], ["a:b"]), TokenMalformed, SHAPE)


def test_a_token_needs_a_block_a_signature_and_a_proof() -> None:
    segments = ISSUER.issue("alice", ["a:b"], "app").split(".")
    for shape in (segments[:1], [segments[0], segments[-1]], segments[:3], segments[:2] + segments[-1:]):
        refused(lambda shape=shape: VERIFIER.verify(".".join(shape)), TokenMalformed, SHAPE)


def test_an_odd_number_of_segments_is_refused_before_any_signature() -> None:
    """`cm1.<block>.<sig>.<{}>.<proof>` would otherwise read `{}` as a child signed by the proof."""
    segments = forge(root()).split(".")
    odd = ".".join(segments[:3] + [b64(b"{}"), segments[-1]])
    refused(lambda: VERIFIER.verify(odd), TokenMalformed, SHAPE)
    two = attenuate(ISSUER.issue("alice", ["a:b"], "app"), ["a:b"]).split(".")
    refused(lambda: VERIFIER.verify(".".join(two[:-1])), TokenMalformed, SHAPE)  # the proof dropped


def test_the_block_limit_is_eight_for_verifying() -> None:
    eight = forge(root(), *[child(jti=f"c{n}") for n in range(1, MAX_BLOCKS)])
    assert len(VERIFIER.verify(eight).chain) == MAX_BLOCKS
    nine = forge(root(), *[child(jti=f"c{n}") for n in range(1, MAX_BLOCKS + 1)])
    refused(lambda: VERIFIER.verify(nine), TokenTooLarge, f"token has more than {MAX_BLOCKS} blocks")
    refused(lambda: attenuate(eight, ["tool:call:notes.add"]), TokenTooLarge,
            f"token already has {MAX_BLOCKS} blocks; cannot attenuate further")


@pytest.mark.parametrize("payload, message", [
    (b"not json", "token block is not JSON"), (b"\xff\xfe{}", "token block is not JSON"),
    (b"[1]", "token block is not a JSON object"), (b'"text"', "token block is not a JSON object")])
def test_a_block_must_be_a_json_object(payload: bytes, message: str) -> None:
    segments = forge(root()).split(".")
    refused(lambda: VERIFIER.verify(".".join([segments[0], b64(payload)] + segments[2:])), TokenMalformed, message)
    child_block = forge(root(), raw_blocks=(payload,))
    refused(lambda: VERIFIER.verify(child_block), TokenMalformed, message)
    refused(lambda: attenuate(child_block, ["a:b"]), TokenMalformed, message)


@pytest.mark.parametrize("position", [1, 2, 3])
def test_an_empty_segment_is_malformed(position: int) -> None:
    segments = forge(root()).split(".")
    segments[position] = ""
    refused(lambda: VERIFIER.verify(".".join(segments)), TokenMalformed, "token has an empty segment")


@pytest.mark.parametrize("position", [1, 2, 3])
@pytest.mark.parametrize("text", ["A", "AAAAA", "AAé"])
def test_a_segment_that_is_not_base64url_is_malformed(position: int, text: str) -> None:
    segments = forge(root()).split(".")
    segments[position] = text
    refused(lambda: VERIFIER.verify(".".join(segments)), TokenMalformed, "token segment is not base64url")


def test_the_encoders_round_trip_every_length_without_padding() -> None:
    for data in [bytes(range(n)) for n in range(1, 8)] + [b"\x00\x00\x17", b"\xff\xff\xff", b"\x00\x05\xd7", b"\xfb\xff"]:
        text = _b64encode(data)
        assert "=" not in text and text == b64(data) and _b64decode(text) == data, (data, text)
    assert _b64encode(b"\x00\x00\x17") == "AAAX"  # a trailing base64 letter is not padding


def test_blocks_are_canonical_json() -> None:
    """Sorted keys, no spaces, UTF-8 (not \\u escapes): one byte string per set of claims, in every block."""
    token = TokenIssuer(KEYS, clock=lambda: 1000.0).issue("zoë", ["tool:call:notes.*"], "app", tenant="アクメ")
    token = attenuate(token, ["tool:call:notes.add"], audience="app", ttl=60, clock=lambda: 1000.0)
    segments = token.split(".")
    for index in (1, 3):
        payload = unb64(segments[index])
        claims = json.loads(payload)
        assert payload == json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert "zoë".encode() in unb64(segments[1]) and "アクメ".encode() in unb64(segments[1])
    assert list(json.loads(unb64(segments[3]))) == ["aud", "caps", "exp", "jti", "next"]


@pytest.mark.parametrize("subject, audience", [("", "app"), ("alice", ""), ("", "")])
def test_a_token_needs_a_subject_and_an_audience(subject: str, audience: str) -> None:
    refused(lambda: ISSUER.issue(subject, ["a:b"], audience), CapabilityError,
            "a token needs a non-empty subject and audience")


@pytest.mark.parametrize("ttl", [0, 0.0, -1.0])
def test_a_ttl_must_be_positive(ttl: float) -> None:
    refused(lambda: ISSUER.issue("alice", ["a:b"], "app", ttl=ttl), CapabilityError,
            re.escape(f"a token's ttl must be positive, got {ttl}"))


def test_a_short_ttl_and_a_capability_set_are_accepted() -> None:
    claims = VERIFIER.verify(ISSUER.issue("alice", CapabilitySet(["a:b"]), "app", ttl=0.5), at=1000.0)
    assert (claims.issued_at, claims.expires) == (1000.0, 1000.5) and claims.allows("a:b")
    assert blocks(ISSUER.issue("alice", ["a:b"], "app"))[0]["exp"] == 4600.0  # an hour by default


def test_attenuate_names_the_block_that_does_not_cover() -> None:
    token = attenuate(ISSUER.issue("alice", ["tool:call:notes.*"], "app"), ["tool:call:notes.add"])
    refused(lambda: attenuate(token, ["tool:call:notes.list"]), AttenuationError,
            re.escape("cannot attenuate to ['tool:call:notes.list']: not covered by block 1 of the parent"))
    assert VERIFIER.verify(attenuate(token, CapabilitySet(["tool:call:notes.add"]))).allows("tool:call:notes.add")


def test_attenuate_needs_the_proof_key() -> None:
    refused(lambda: attenuate(forge(root(), proof=b64(bytes(16))), ["tool:call:notes.add"]), TokenMalformed,
            "token proof is not an Ed25519 private key")


def test_attenuate_uses_its_clock_and_only_the_claims_it_is_given() -> None:
    token = ISSUER.issue("alice", ["a:*"], "app")
    assert blocks(attenuate(token, ["a:b"], ttl=10, clock=lambda: 1234.0))[1]["exp"] == 1244.0
    assert set(blocks(attenuate(token, ["a:b"]))[1]) == {"jti", "caps", "next"}
