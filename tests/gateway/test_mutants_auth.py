"""Tests that kill mutants `mutmut` leaves alive in `cellmono.gateway.auth` (`.ci/mutation auth`; figures in
tests/security/MUTATION.md). In-process and fast: real PyJWT tokens signed with real keys, real key files."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cellmono.core.errors import ConfigError
from cellmono.gateway.auth import (API_KEY_PREFIX, ApiKeys, Authenticator, Identity, InsufficientScope, JwtVerifier,
                                   Policy, Unauthenticated, grant_allows, is_capability, metadata_url,
                                   resource_metadata, tool_requirements, www_authenticate)

ED = ed25519.Ed25519PrivateKey.generate()
EC = ec.generate_private_key(ec.SECP256R1())


def jwk(private, kid: str, **extra) -> dict:
    algorithm = "EdDSA" if isinstance(private, ed25519.Ed25519PrivateKey) else "ES256"
    public = jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(private.public_key(), as_dict=True)
    return {**public, "kid": kid, **extra}


JWKS = {"keys": [jwk(ED, "ed"), jwk(EC, "ec", alg="ES256")]}


def token(claims: dict | None = None, *, key=ED, kid: str = "ed", alg: str = "EdDSA", drop: tuple = ()) -> str:
    now = time.time()
    body = {"iss": "https://as", "aud": "mcp", "sub": "alice", "exp": now + 60, "iat": now, **(claims or {})}
    for name in drop:
        body.pop(name)
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def verifier(**options) -> JwtVerifier:
    return JwtVerifier(JWKS, issuer="https://as", audience="mcp", **options)


def test_a_valid_jwt_gives_its_identity() -> None:
    identity = verifier().verify(token({"roles": ["admin", 3], "scope": "notes:read tool:call:x", "tenant": "acme",
                                        "jti": "j1"}))
    assert (identity.principal, identity.tenant, identity.roles, identity.scopes, identity.method, identity.token_id) \
        == ("alice", "acme", ("admin",), ("notes:read", "tool:call:x"), "jwt", "j1")
    assert identity.expires is not None and identity.expires > time.time()
    other = verifier(roles_claim="groups").verify(token({"groups": "ops", "scp": ["a:b", 1], "tid": "t9"}))
    assert (other.roles, other.scopes, other.tenant, other.token_id) == (("ops",), ("a:b",), "t9", None)
    assert verifier().verify(token({"roles": {"x": 1}, "scope": 5, "tenant": 7})).roles == ()
    assert verifier().verify(token(key=EC, kid="ec", alg="ES256")).principal == "alice"


@pytest.mark.parametrize(("claims", "drop", "message"), [
    ({"exp": time.time() - 120}, (), "token expired"),
    ({"aud": "other"}, (), "token audience is not mcp"),
    ({"iss": "https://evil"}, (), "token issuer is not trusted"),
    ({}, ("exp",), "invalid token"),
    ({}, ("aud",), "invalid token"),
    ({}, ("iss",), "invalid token"),
    ({}, ("sub",), "invalid token"),
    ({"sub": ""}, (), "subject is missing"),
    ({"sub": "x" * 257}, (), "subject is missing"),
    ({"nbf": time.time() + 600}, (), "invalid token"),
])
def test_every_claim_is_checked(claims: dict, drop: tuple, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        verifier().verify(token(claims, drop=drop))


def test_the_leeway_is_honoured_both_ways() -> None:
    stale = token({"exp": time.time() - 10})
    assert verifier(leeway=30).verify(stale).principal == "alice"
    with pytest.raises(Unauthenticated, match="expired"):
        verifier(leeway=0).verify(stale)


def test_signature_key_and_algorithm_are_bound() -> None:
    forged = token(key=ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(Unauthenticated, match="invalid token"):
        verifier().verify(forged)
    with pytest.raises(Unauthenticated, match="unknown key 'nope'"):
        verifier().verify(token(kid="nope"))
    with pytest.raises(Unauthenticated, match="algorithm 'HS256' is not accepted"):
        verifier().verify(jwt.encode({"sub": "a"}, "secret-secret-secret-secret-32b!", algorithm="HS256",
                                     headers={"kid": "ed"}))
    with pytest.raises(Unauthenticated, match="does not match its key"):          # EC key, EdDSA header
        verifier().verify(token(key=ED, kid="ec"))
    with pytest.raises(Unauthenticated, match="malformed"):
        verifier().verify("not.a.jwt")
    with pytest.raises(Unauthenticated, match="too large"):
        verifier().verify("a" * 16_385)


def test_a_cached_jwt_still_expires() -> None:
    check = verifier(leeway=0)
    short = token({"exp": time.time() + 1})
    check.verify(short)
    assert short in check._cache
    time.sleep(1.2)
    with pytest.raises(Unauthenticated, match="token expired"):
        check.verify(short)
    assert short not in check._cache
    small = verifier(cache_size=1)
    first, second = token({"sub": "a"}), token({"sub": "b"})
    small.verify(first), small.verify(second)
    assert list(small._cache) == [second]


def test_a_bad_jwks_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the JWKS"):
        JwtVerifier({"nokeys": []}, issuer="i", audience="a")
    with pytest.raises(ConfigError, match="cannot load the JWKS from"):
        JwtVerifier(str(tmp_path / "missing.json"), issuer="i", audience="a")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    assert JwtVerifier(str(path), issuer="https://as", audience="mcp").verify(token()).principal == "alice"


def test_api_keys_identify_only_their_own_secret(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    key = keys.create("ops-bot", ["admin"], tenant="acme")
    assert key.startswith(API_KEY_PREFIX)
    identity = keys.identify(key)
    assert (identity.principal, identity.tenant, identity.roles, identity.method) == ("ops-bot", "acme", ("admin",),
                                                                                     "api_key")
    assert identity.token_id == key[len(API_KEY_PREFIX):].split("_")[0]
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "", "cmk_", "cmk__x", key[4:],
                  "xyz_" + key[4:]):
        with pytest.raises(Unauthenticated, match="unknown API key"):
            keys.identify(wrong)
    stored = json.loads((tmp_path / "keys.json").read_text())
    assert key not in json.dumps(stored) and "sha256" not in json.dumps(keys.entries())
    assert keys.entries()[identity.token_id]["principal"] == "ops-bot"
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_a_revocation_by_another_process_lands_within_recheck(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    server, operator = ApiKeys(path, recheck=0.2), ApiKeys(path)
    key = operator.create("bob", ["admin"])
    other = operator.create("carol", ["admin"])
    assert server.identify(key).principal == "bob"                # an unknown key id forces a reload
    assert operator.revoke("bob") == 1 and operator.revoke("nobody") == 0
    time.sleep(0.3)
    with pytest.raises(Unauthenticated):
        server.identify(key)
    assert server.identify(other).principal == "carol"
    assert len(server) == 1
    path.unlink()
    time.sleep(0.3)
    with pytest.raises(Unauthenticated):
        server.identify(other)                                    # the file removed: every key with it
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a cellmono API key file"):
        ApiKeys(path)


def test_the_authenticator_takes_only_bearer_credentials(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "k.json")
    key = keys.create("bob", ["admin"])
    both = Authenticator(api_keys=keys, jwt=verifier())
    assert both.authenticate(f"Bearer {key}").principal == "bob"
    assert both.authenticate(f"bearer  {token()} ").principal == "alice"
    with pytest.raises(Unauthenticated) as absent:
        both.authenticate(None)
    assert absent.value.error is None
    for header in (f"Basic {key}", "Bearer", "Bearer   ", key):
        with pytest.raises(Unauthenticated) as bad:
            both.authenticate(header)
        assert bad.value.error == "invalid_request"
    with pytest.raises(Unauthenticated, match="API keys are not enabled"):
        Authenticator(jwt=verifier()).authenticate(f"Bearer {key}")
    with pytest.raises(Unauthenticated, match="JWT access tokens are not enabled"):
        Authenticator(api_keys=keys).authenticate(f"Bearer {token()}")


def test_the_policy_grants_exactly_roles_and_capability_scopes() -> None:
    policy = Policy({"reader": ["tool:call:notes.search"], "admin": ["*:*"]})
    reader = Identity(principal="r", roles=("reader", "ghost"), scopes=("openid", "notes:read"), method="jwt")
    assert policy.grants(reader) == ("tool:call:notes.search", "notes:read")
    policy.check(reader, tool_requirements("notes.search", ["notes:read"]))
    with pytest.raises(InsufficientScope, match="lacks 'tool:call:notes.add'.*ghost") as refused:
        policy.check(reader, tool_requirements("notes.add", []))
    assert refused.value.scopes == ("tool:call:notes.add",)
    assert policy.missing(reader, ("tool:call:notes.search", "notes:write")) == "notes:write"
    assert policy.missing(reader, ()) is None
    keyed = Identity(principal="k", roles=("ghost",), method="api_key")
    with pytest.raises(InsufficientScope):
        policy.check(keyed, ("tool:call:x",))                       # an unknown role of an API key: refused
    assert policy.missing(keyed, ()) is None
    for _ in range(2):                                               # the cached decision is the same
        with pytest.raises(InsufficientScope):
            policy.check(keyed, ("tool:call:x",))
    policy.check(Identity(principal="a", roles=("admin",), method="local"), ("anything:goes:here",))
    assert Policy().missing(Identity(principal="a", roles=("admin",), method="local"), ("x:y",)) is None
    with pytest.raises(ConfigError):
        Policy({"bad": ["no grant"]})
    small = Policy({"reader": ["a:b"]}, cache_size=1)
    small.check(reader.model_copy(update={"roles": ("reader",)}), ("a:b",))
    small.missing(keyed, ())
    assert len(small._decisions) == 1


def test_grants_and_capabilities_parse_strictly() -> None:
    assert is_capability("notes:read") and not is_capability("openid") and not is_capability("")
    assert grant_allows("notes:*", "notes:read") and not grant_allows("notes:read", "notes:write")
    assert not grant_allows("garbage", "notes:read") and not grant_allows("notes:*", "bad requirement")
    assert tool_requirements("t", ["a:b"]) == ("tool:call:t", "a:b")


def test_metadata_and_challenges() -> None:
    assert resource_metadata("https://h/mcp") == {"resource": "https://h/mcp", "authorization_servers": [],
                                                  "bearer_methods_supported": ["header"],
                                                  "resource_name": "cellmono MCP gateway"}
    assert resource_metadata("r", ["https://as"], ["a:b"])["scopes_supported"] == ["a:b"]
    assert metadata_url("https://h:1/mcp") == "https://h:1/.well-known/oauth-protected-resource/mcp"
    assert metadata_url("https://h") == "https://h/.well-known/oauth-protected-resource"
    assert metadata_url("https://h/") == "https://h/.well-known/oauth-protected-resource"
    assert www_authenticate("m", Unauthenticated("x", error=None)) == 'Bearer resource_metadata="m"'
    assert www_authenticate("m\"", Unauthenticated('bad "t"')) == \
        'Bearer resource_metadata="m\\"", error="invalid_token", error_description="bad \\"t\\""'
    scope = www_authenticate("m", InsufficientScope("y" * 300, ["a:b", "c:d"]))
    assert scope == f'Bearer resource_metadata="m", error="insufficient_scope", scope="a:b c:d", ' \
                    f'error_description="{"y" * 200}"'


def test_an_api_key_with_an_unknown_role_is_refused_not_trimmed() -> None:
    """A JWT's unknown roles are dropped (the IdP may send many); an API key's are an operator's typo: refused."""
    policy = Policy({"reader": ["tool:call:notes.search"]})
    keyed = Identity(principal="k", roles=("reader", "ghost"), method="api_key")
    with pytest.raises(InsufficientScope, match="'k': .*ghost"):
        policy.check(keyed, ("tool:call:notes.search",))
    jwt_identity = keyed.model_copy(update={"method": "jwt"})
    policy.check(jwt_identity, ("tool:call:notes.search",))
    clean = Identity(principal="c", roles=("reader",), method="jwt")
    with pytest.raises(InsufficientScope) as refused:
        policy.check(clean, ("tool:call:x",))
    assert str(refused.value) == "'c' lacks 'tool:call:x'"              # no note when no role was dropped
    with pytest.raises(InsufficientScope) as noted:
        policy.check(jwt_identity, ("tool:call:x",))
    assert str(noted.value) == ("'k' lacks 'tool:call:x' (roles this app does not define, ignored: ghost; "
                                "known roles: reader)")


def test_concurrent_creates_by_separate_processes_all_land(tmp_path: Path) -> None:
    """Each writer has its own ApiKeys (as separate processes do): only the file lock keeps every key."""
    path = tmp_path / "keys.json"
    ApiKeys(path).create("seed")
    created: list[str] = []

    def writer() -> None:
        keys = ApiKeys(path)
        for _ in range(5):
            created.append(keys.create("bot"))

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    final = ApiKeys(path)
    assert len(final) == 31 and all(final.identify(key).principal == "bot" for key in created)


def test_jwt_claim_edges_and_messages() -> None:
    assert verifier().verify(token({"sub": "x" * 256})).principal == "x" * 256
    with pytest.raises(Unauthenticated, match="^token subject is missing or invalid$"):
        verifier().verify(token({"sub": "x" * 257}))
    assert verifier().verify(token({"scp": "a:b"})).scopes == ("a:b",) and verifier().verify(token()).scopes == ()
    with pytest.raises(Unauthenticated, match="^this server needs a bearer token$"):
        Authenticator().authenticate("")
    with pytest.raises(Unauthenticated, match="^the Authorization header must be 'Bearer <token>'$"):
        Authenticator().authenticate("Token x")


class _Jwks(BaseHTTPRequestHandler):
    document: dict = JWKS

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        body = json.dumps(type(self).document).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_jwks_url_is_fetched_and_refreshed_for_a_new_key() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks"
        check = JwtVerifier(url, issuer="https://as", audience="mcp", refresh_interval=0.1)
        assert check.verify(token()).principal == "alice"
        rotated = ed25519.Ed25519PrivateKey.generate()
        _Jwks.document = {"keys": [*JWKS["keys"], jwk(rotated, "new")]}
        time.sleep(0.15)
        assert check.verify(token(key=rotated, kid="new")).principal == "alice"   # rotation at the AS
        with pytest.raises(Unauthenticated, match="unknown key"):
            JwtVerifier(url, issuer="https://as", audience="mcp", refresh_interval=60).verify(token(kid="gone"))
    finally:
        _Jwks.document = JWKS
        server.shutdown()
        server.server_close()


def test_challenges_escape_and_truncate() -> None:
    assert www_authenticate("a\\b", Unauthenticated("m" * 300)) == (
        'Bearer resource_metadata="a\\\\b", error="invalid_token", error_description="' + "m" * 200 + '"')
    assert metadata_url("https://h/p://q") == "https://h/.well-known/oauth-protected-resource/p://q"
