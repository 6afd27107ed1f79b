"""Public verification keys and revocations on a real engine (nats-server JetStream KV, Valkey hashes):
a verifier with no key file verifies, sees a rotation and a revocation within 1 s, drops a retired key after
its grace, and refuses a forged key record."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from brokers import require, start_nats, start_redis
from cellmono.security.engine_keys import EngineUnavailable, PublishedKey
from cellmono.security.engine_kv import KEYS_TABLE, EngineKeys, engine_tables
from cellmono.security.signing import SigningKeys
from cellmono.security.tokens import TokenIssuer, TokenRevoked, TokenSignatureInvalid, TokenVerifier, UnknownSigningKey


@pytest.fixture(params=["nats", "redis"])
def engine(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


async def _until(check, seconds: float = 1.0) -> float:
    """Seconds until `check()` holds; fails after `seconds`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def _verifies(verifier: TokenVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
        return True
    except (UnknownSigningKey, TokenRevoked):
        return False


def test_rotation_retirement_and_revocation_reach_a_verifier_within_a_second(engine) -> None:
    kind, server = engine

    async def scenario() -> None:
        ring = SigningKeys()
        signer = EngineKeys(engine_tables(kind, server.url, namespace="t1"))
        worker = EngineKeys(engine_tables(kind, server.url, namespace="t1"))  # another process: no ring at all
        await signer.start()
        await signer.publish(ring)
        await worker.start()
        try:
            verifier = TokenVerifier(worker.directory, revocations=worker.revocations)
            issuer = TokenIssuer(ring)
            first = issuer.issue("alice", ["notes:read"], "cellmono")
            assert verifier.verify(first).subject == "alice"  # loaded at start, before any change

            old = ring.active
            ring.rotate()
            second = issuer.issue("bob", ["notes:read"], "cellmono")
            assert not _verifies(verifier, second)
            await signer.publish(ring)
            await _until(lambda: _verifies(verifier, second))  # a new key is usable within 1 s

            await signer.retire(old, grace=0.5)
            await _until(lambda: worker.directory.records[old].retired is not None)
            assert _verifies(verifier, first)  # inside its grace
            await asyncio.sleep(0.6)
            with pytest.raises(UnknownSigningKey):
                verifier.verify(first)  # after its grace: refused

            jti = verifier.verify(second).token_id
            await signer.revoke(jti, "stolen")
            await _until(lambda: not _verifies(verifier, second))  # revoked everywhere within 1 s
            with pytest.raises(TokenRevoked):
                verifier.verify(second)
        finally:
            await worker.close()
            await signer.close()

        late = EngineKeys(engine_tables(kind, server.url, namespace="t1"))  # durable: a verifier starting later
        await late.start()
        try:
            assert late.revocations.is_revoked([jti]) and old not in late.directory and ring.active in late.directory
        finally:
            await late.close()

    asyncio.run(scenario())


def test_a_forged_key_record_on_the_engine_is_refused(engine) -> None:
    kind, server = engine

    async def scenario() -> None:
        ring, intruder = SigningKeys(), SigningKeys()
        signer = EngineKeys(engine_tables(kind, server.url, namespace="t2"))
        worker = EngineKeys(engine_tables(kind, server.url, namespace="t2"))
        await signer.start()
        await signer.publish(ring)
        await worker.start()
        try:
            verifier = TokenVerifier(worker.directory)
            forged = json.loads(PublishedKey.of(intruder.public_key(intruder.active), 0.0).to_json())
            forged["kid"] = ring.active  # the intruder's key under the signer's id
            await signer.tables.put(KEYS_TABLE, ring.active, json.dumps(forged).encode())
            await _until(lambda: ring.active in worker.refused)
            with pytest.raises(TokenSignatureInvalid):  # the intruder's token, whatever id it claims
                TokenVerifier(worker.directory).verify(_token_claiming(intruder, ring.active))
            assert verifier.verify(TokenIssuer(ring).issue("alice", [], "cellmono")).subject == "alice"
        finally:
            await worker.close()
            await signer.close()

    asyncio.run(scenario())


def _token_claiming(ring: SigningKeys, kid: str) -> str:
    """A token signed by `ring`'s key but naming `kid` (the forger's hope)."""
    ring.keys[kid] = ring.keys[ring.active]
    ring.active = kid
    return TokenIssuer(ring).issue("mallory", ["notes:read"], "cellmono")


def test_an_unreachable_engine_is_one_clear_error_without_the_password() -> None:
    from brokers import free_port

    async def scenario(kind: str, url: str) -> None:
        with pytest.raises(EngineUnavailable) as caught:
            await EngineKeys(engine_tables(kind, url, connect_timeout=0.5)).start()
        assert "cannot reach the engine at" in str(caught.value) and "s3cret" not in str(caught.value)

    port = free_port()
    asyncio.run(scenario("redis", f"redis://worker:s3cret@127.0.0.1:{port}/0"))
    asyncio.run(scenario("nats", f"nats://worker:s3cret@127.0.0.1:{port}"))


def test_closing_redis_tables_is_bounded_when_a_watch_loses_its_cancellation() -> None:
    """redis-py's `get_message(timeout=)` can turn a cancel that races its timeout into "no message": the watch loop
    must still end, and `close` must return, instead of polling forever (a hang seen in CI)."""
    server = require(start_redis)
    try:
        async def scenario() -> float:
            tables = engine_tables("redis", server.url, namespace="lost-cancel")
            await tables.start()
            await tables.watch("t", lambda key, value: None)
            pubsub = tables._pubsubs[0]
            real = pubsub.get_message

            async def swallowing(*args, **kwargs):  # what the race does: the cancel never reaches the loop
                try:
                    return await real(*args, **kwargs)
                except asyncio.CancelledError:
                    asyncio.current_task().uncancel()
                    return None
            pubsub.get_message = swallowing
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await asyncio.wait_for(tables.close(), 10)
            return time.monotonic() - started
        assert asyncio.run(scenario()) < 3
    finally:
        server.cleanup()
