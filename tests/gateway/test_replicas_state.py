"""The engine state gateway replicas share (`cellmono.gateway.state`), against a real nats-server and a real Valkey:
two clients (two replicas) counting one key at once lose no count (JetStream's compare-and-set, Redis's script);
a claim is taken once; values expire with their time to live; a deleted value is gone for the other client."""

from __future__ import annotations

import os
import threading
import time

import pytest

from brokers import require, start_nats, start_redis
from cellmono.gateway.state import NatsState, RedisState


@pytest.fixture(scope="module", params=["nats", "redis"])
def pair(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    bucket = f"st{os.getpid()}{request.param}"
    make = (lambda: NatsState(server.url, bucket, timeout=10)) if request.param == "nats" else \
        (lambda: RedisState(server.url, bucket, timeout=10))
    first, second = make(), make()
    yield first, second
    first.close()
    second.close()
    server.cleanup()


def test_two_replicas_counting_at_once_lose_no_count(pair) -> None:
    seen: list[int] = []

    def count(state) -> None:
        for _ in range(60):
            seen.append(state.count("principal.shared.1", 60))

    threads = [threading.Thread(target=count, args=(state,)) for state in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(seen) == list(range(1, 121))  # every value once: no update lost, none counted twice


def test_a_claim_is_taken_once_across_replicas(pair) -> None:
    first, second = pair
    assert first.claim("mrtr.once", 60) is True
    assert second.claim("mrtr.once", 60) is False
    assert first.claim("mrtr.once", 60) is False


def test_values_expire_and_deletes_reach_the_other_replica(pair) -> None:
    first, second = pair
    first.put("session.kept", b"record", 60)
    assert second.get("session.kept", 60) == b"record"
    second.delete("session.kept", 60)
    assert first.get("session.kept", 60) is None
    first.put("session.short", b"record", 1)
    deadline = time.monotonic() + 10
    while second.get("session.short", 1) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert second.get("session.short", 1) is None
