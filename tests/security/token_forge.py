"""Hand-built cellmono tokens for the token mutation tests: the claims, signatures and proof are chosen by the test
and assembled here without `cellmono.security.tokens`' own encoder, so a broken encoder cannot hide a broken
verifier (and tokens the issuer would never mint, e.g. a missing claim, still carry valid signatures)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from cellmono.security.signing import SigningKeys

CONTEXT = b"cellmono-token-v1\x00"  # the documented signing context of block 0
KEYS = SigningKeys()
NOW = 1500.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_text(key: Ed25519PrivateKey) -> str:
    return b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def private_text(key: Ed25519PrivateKey) -> str:
    return b64(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))


def root(**changes: Any) -> dict[str, Any]:
    """The claims of a root block as `TokenIssuer` writes them (valid at NOW for audience "app"); `changes`
    replace claims, a change to `...` removes the claim."""
    claims = {"v": 1, "kid": KEYS.active, "iss": "cellmono", "sub": "alice", "ten": None, "aud": "app",
              "iat": 1000.0, "nbf": 1000.0, "exp": 2000.0, "jti": "root-id", "caps": ["tool:call:notes.*"]}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not ...}


def child(**changes: Any) -> dict[str, Any]:
    claims = {"jti": "child-id", "caps": ["tool:call:notes.add"], **changes}
    return {name: value for name, value in claims.items() if value is not ...}


def encode(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims).encode()


def forge(root_claims: dict[str, Any], *children: dict[str, Any], keys: SigningKeys = KEYS,
          proof: str | None = None, raw_blocks: tuple[bytes, ...] = ()) -> str:
    """A token whose every signature verifies: block 0 signed by `keys`' active key, each child by the previous
    block's `next` key, the proof the last `next` key's private half (unless `proof` replaces it). A block given
    without `next` gets a fresh key's. `raw_blocks` are extra children given as payload bytes."""
    next_key = Ed25519PrivateKey.generate()
    claims = {"next": public_text(next_key), **root_claims}
    payload = encode(claims)
    _, signature = keys.sign(CONTEXT + payload)
    segments = ["cm1", b64(payload), b64(signature)]
    payloads = [encode(c) for c in children] + list(raw_blocks)
    for index, payload in enumerate(payloads):
        signer, next_key = next_key, Ed25519PrivateKey.generate()
        if index < len(children) and "next" not in children[index]:
            payload = encode({"next": public_text(next_key), **children[index]})
        signature = signer.sign(payload + signature)
        segments += [b64(payload), b64(signature)]
    segments.append(private_text(next_key) if proof is None else proof)
    return ".".join(segments)


def blocks(token: str) -> list[dict[str, Any]]:
    """The decoded claims of each block of `token`."""
    segments = token.split(".")
    return [json.loads(unb64(segments[index])) for index in range(1, len(segments) - 1, 2)]
