"""The exactly-once inbox's window on a real engine (nats-server JetStream KV, Valkey): with `[store] inbox_window`,
an inbox record expires after the window (JetStream per-message TTL; Redis field TTL on the value and its revision),
the cell's own records stay, and the key can be recorded again (a late delivery runs again, as the notebook says)."""
from __future__ import annotations

import time

import pytest

from brokers import require, start_nats, start_redis
from cellmono.core.config import Settings
from cellmono.security.engine_inbox import EngineInbox
from cellmono.security.engine_records import open_engine_store
from cellmono.security.keys import StaticKeyProvider


@pytest.fixture(params=["nats", "redis"])
def engine(request):
    server = require(start_nats if request.param == "nats" else start_redis)
    yield request.param, server
    server.cleanup()


def test_inbox_records_expire_after_the_window_and_store_records_stay(engine) -> None:
    kind, server = engine
    settings = Settings(source="settings.ini", app={"name": "window"}, extra_sections={
        "store": {"backend": "engine", "inbox_window": "1"}, kind: {"url": server.url}})
    store = open_engine_store(settings, StaticKeyProvider(bytes(range(32))))
    try:
        inbox = EngineInbox(store)
        first = inbox.begin("consumer", "key-1")
        first.view(store.namespace("acct")).put("balance", b"10")
        assert first.commit('{"ok": 1}')
        assert inbox.recorded("consumer", "key-1") == '{"ok": 1}'
        written = time.monotonic()
        while inbox.recorded("consumer", "key-1") is not None:  # bounded: the window plus the server's sweep
            assert time.monotonic() - written < 8, "the inbox record outlived its window by 7 s"
            time.sleep(0.2)
        assert time.monotonic() - written >= 0.9  # not before the window
        assert store.get("acct", "balance") == b"10"  # the cell's record has no TTL
        again = inbox.begin("consumer", "key-1")
        again.view(store.namespace("acct")).put("balance", b"11")
        assert again.commit('{"ok": 2}')  # the forgotten key is recorded again (revision 0 once more)
        assert inbox.recorded("consumer", "key-1") == '{"ok": 2}' and store.get("acct", "balance") == b"11"
    finally:
        store.close()
