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


# -- what a client is told: the exact text of each refusal (it reaches the client as the challenge's
#    error_description; a `match=` on a substring lets a garbled message pass) ------------------------------------

def _refusal(call) -> str:
    with pytest.raises(Unauthenticated) as refused:
        call()
    return str(refused.value)


def _raw_token(header: dict) -> str:
    import base64

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part(header)}.{part({'sub': 'a'})}.c2ln"


def test_each_jwt_refusal_says_exactly_why() -> None:
    check = verifier()
    assert _refusal(lambda: check.verify(token({"exp": time.time() - 120}))) == "token expired"
    assert _refusal(lambda: check.verify(token({"iss": "https://evil"}))) == "token issuer is not trusted"
    assert _refusal(lambda: check.verify("not.a.jwt")) == "malformed token"
    assert _refusal(lambda: check.verify("a" * 16_385)) == "token too large"
    assert _refusal(lambda: check.verify("a" * 16_384)) == "malformed token"  # the limit itself is allowed
    assert _refusal(lambda: check.verify(token(key=ED, kid="ec"))) == "token algorithm does not match its key"
    assert _refusal(lambda: check.verify(_raw_token({"alg": "A" * 30, "kid": "ed"}))) == \
        f"token algorithm {'A' * 20!r} is not accepted"
    assert _refusal(lambda: check.verify(token(kid="k" * 100))) == f"token signed with unknown key {'k' * 64!r}"


def test_a_cached_token_is_accepted_again_until_exp_plus_leeway() -> None:
    check = verifier(leeway=30)
    fresh, stale = token(), token({"exp": time.time() - 10})  # stale: past exp, inside the leeway
    for _ in range(3):  # the second and third answers come from the cache
        assert check.verify(fresh).principal == "alice" and check.verify(stale).principal == "alice"
    short = verifier(leeway=0)
    soon = token({"exp": time.time() + 1})
    short.verify(soon)
    time.sleep(1.1)
    assert _refusal(lambda: short.verify(soon)) == "token expired"


def test_the_default_leeway_is_thirty_seconds() -> None:
    check = JwtVerifier(JWKS, issuer="https://as", audience="mcp")
    now = int(time.time())  # PyJWT compares whole seconds: `exp <= int(now) - leeway` is expired
    assert check.verify(token({"exp": now - 29})).principal == "alice"
    assert _refusal(lambda: check.verify(token({"exp": now - 30}))) == "token expired"


def test_a_jwks_key_without_kid_serves_tokens_without_kid() -> None:
    public = jwt.algorithms.get_default_algorithms()["EdDSA"].to_jwk(ED.public_key(), as_dict=True)
    check = JwtVerifier({"keys": [public]}, issuer="https://as", audience="mcp")
    now = time.time()
    bare = jwt.encode({"iss": "https://as", "aud": "mcp", "sub": "alice", "exp": now + 60}, ED, algorithm="EdDSA")
    assert "kid" not in jwt.get_unverified_header(bare)
    assert check.verify(bare).principal == "alice"
    assert _refusal(lambda: check.verify(token(kid="other"))) == "token signed with unknown key 'other'"


def test_a_jwks_key_is_bound_to_its_declared_algorithm() -> None:
    """A key declared for one algorithm is never used with another, even of the same key type."""
    es384 = JwtVerifier({"keys": [jwk(EC, "ec", alg="ES384")]}, issuer="https://as", audience="mcp")
    assert _refusal(lambda: es384.verify(token(key=EC, kid="ec", alg="ES256"))) == \
        "token algorithm does not match its key"
    no_alg = JwtVerifier({"keys": [jwk(ED, "ed")]}, issuer="https://as", audience="mcp")  # kty OKP, no alg
    assert _refusal(lambda: no_alg.verify(token(key=EC, kid="ed", alg="ES256"))) == \
        "token algorithm does not match its key"


def test_a_bad_jwks_names_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as inline:
        JwtVerifier({"nokeys": []}, issuer="i", audience="a")
    assert str(inline.value) == "cannot load the JWKS from settings: 'keys'"
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError) as from_file:
        JwtVerifier(str(missing), issuer="i", audience="a")
    assert str(from_file.value).startswith(f"cannot load the JWKS from {missing}: ")


class _CountingJwks(BaseHTTPRequestHandler):
    """A JWKS endpoint that counts its fetches; `body` may be replaced (e.g. by an oversized document)."""
    fetches = 0
    body = json.dumps(JWKS).encode()

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).fetches += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(type(self).body)))
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def jwks_url():
    _CountingJwks.fetches, _CountingJwks.body = 0, json.dumps(JWKS).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingJwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks"
    server.shutdown()
    server.server_close()


def test_unknown_kids_cannot_make_the_gateway_hammer_the_jwks_url(jwks_url: str) -> None:
    """An attacker sending random `kid`s gets at most one refetch per refresh interval; known keys never refetch."""
    check = JwtVerifier(jwks_url, issuer="https://as", audience="mcp", refresh_interval=0.2)
    assert _CountingJwks.fetches == 1
    for index in range(5):
        with pytest.raises(Unauthenticated, match="unknown key"):
            check.verify(token(kid=f"random-{index}"))
    assert _CountingJwks.fetches == 1  # inside the interval: no refetch at all
    time.sleep(0.3)
    for index in range(3):
        check.verify(token({"jti": str(index)}))  # a known key (new tokens: not from the cache)
    assert _CountingJwks.fetches == 1
    with pytest.raises(Unauthenticated, match="unknown key"):
        check.verify(token(kid="random-x"))
    assert _CountingJwks.fetches == 2


def test_an_oversized_jwks_document_is_refused(jwks_url: str) -> None:
    _CountingJwks.body = json.dumps({**JWKS, "padding": "x" * 1_100_000}).encode()
    with pytest.raises(ConfigError, match=f"cannot load the JWKS from {jwks_url}"):
        JwtVerifier(jwks_url, issuer="https://as", audience="mcp")


def test_policy_takes_a_roles_object_and_names_a_bad_role() -> None:
    from cellmono.security.capabilities import Roles
    policy = Policy(Roles({"reader": ["a:b"]}))
    policy.check(Identity(principal="r", roles=("reader",), method="api_key"), ("a:b",))
    with pytest.raises(ConfigError) as bad:
        Policy({"ops": ["no grant"]})
    assert str(bad.value).startswith("role 'ops': ") and "no grant" in str(bad.value)
    many = Policy({"reader": ["a:b"], "writer": ["a:c"]})
    ghost = Identity(principal="g", roles=("ghost", "spook"), method="jwt")
    assert _refusal_scope(lambda: many.check(ghost, ("a:b",))) == (
        "'g' lacks 'a:b' (roles this app does not define, ignored: ghost, spook; known roles: reader, writer)")


def _refusal_scope(call) -> str:
    with pytest.raises(InsufficientScope) as refused:
        call()
    return str(refused.value)


def test_in_memory_api_keys_work_without_a_file() -> None:
    keys = ApiKeys()
    key = keys.create("bot", ["admin"], tenant="t")
    assert keys.identify(key).principal == "bot" and len(keys) == 1
    assert keys.revoke("bot") == 1 and _refusal(lambda: keys.identify(key)) == "unknown API key"


def test_an_api_key_has_256_bits_of_secret_and_a_listed_creation_time(tmp_path: Path) -> None:
    import re
    keys = ApiKeys(tmp_path / "keys.json")
    before = time.time()
    key = keys.create("bot")
    assert re.fullmatch(r"cmk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key), key
    (entry,) = keys.entries().values()
    assert before <= entry["created"] <= time.time()


def test_a_key_that_is_not_valid_text_is_just_unknown(tmp_path: Path) -> None:
    keys = ApiKeys(tmp_path / "keys.json")
    key = keys.create("bot")
    for odd in (key + "\udcff", "cmk_\ud800_x", key[:-1] + "\udcff"):
        assert _refusal(lambda: keys.identify(odd)) == "unknown API key"
        assert _refusal(lambda: Authenticator(api_keys=keys).authenticate(f"Bearer {odd}")) == "unknown API key"


def test_a_revocation_lands_within_one_second_by_default(tmp_path: Path) -> None:
    """Issue 13: a revoke takes effect in the running server within 1 s (the default `recheck`)."""
    path = tmp_path / "keys.json"
    server, operator = ApiKeys(path), ApiKeys(path)
    key = operator.create("bob", ["admin"])
    assert server.identify(key).principal == "bob"
    operator.revoke("bob")
    time.sleep(0.9)
    assert _refusal(lambda: server.identify(key)) == "unknown API key"


def test_a_server_without_a_credential_kind_says_so(tmp_path: Path) -> None:
    key = ApiKeys().create("bob")
    assert _refusal(lambda: Authenticator(jwt=verifier()).authenticate(f"Bearer {key}")) == \
        "API keys are not enabled on this server"
    assert _refusal(lambda: Authenticator(api_keys=ApiKeys()).authenticate(f"Bearer {token()}")) == \
        "JWT access tokens are not enabled on this server (no JWKS configured)"


def test_an_https_jwks_url_is_fetched_not_read_as_a_file() -> None:
    """Nothing listens on the port: the error is the connection's, not a missing file named 'https:/…'."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and closed again before the fetch
    for scheme in ("https", "http"):
        with pytest.raises(ConfigError) as caught:
            JwtVerifier(f"{scheme}://127.0.0.1:{port}/jwks", issuer="i", audience="a")
        assert "urlopen error" in str(caught.value) and "No such file" not in str(caught.value)
