"""`[store] backend = engine` from the settings: an app and a worker in two folders with no shared disk share
the store's records and its exactly-once inbox through the broker; SQLite stays the default."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace


from brokers import require, start_nats
from cellmono.core.config import load_settings
from cellmono.security.engine_inbox import EngineInbox
from cellmono.security.engine_store import EngineStore
from cellmono.security.inbox import Inbox
from cellmono.security.keys import new_key_text
from cellmono.security.store import EncryptedStore
from cellmono.topology.services import Runtime
from cellmono.topology.workers import _inbox


def _settings(folder: Path, url: str | None) -> Path:
    folder.mkdir()
    engine = f"\n[store]\nbackend = engine\n\n[nats]\nurl = {url}\n" if url else ""
    (folder / "settings.ini").write_text(f"[app]\nname = shop\ncells =\n{engine}")
    return folder / "settings.ini"


def test_app_and_worker_in_two_folders_share_records_and_inbox(tmp_path, monkeypatch) -> None:
    server = require(start_nats)
    monkeypatch.setenv("CELLMONO_KEK", new_key_text())  # the KEK from a provider; never on the engine
    try:
        app = Runtime.from_settings(load_settings(_settings(tmp_path / "app", server.url)))
        worker = Runtime.from_settings(load_settings(_settings(tmp_path / "worker", server.url)))
        assert isinstance(app.store, EngineStore) and isinstance(worker.store, EngineStore)
        app.store.namespace("orders").put_json("o-1", {"total": 17})
        assert worker.store.namespace("orders").get_json("o-1") == {"total": 17}
        inbox = _inbox(SimpleNamespace(services=worker))  # what a worker's durable consumer gets
        assert isinstance(inbox, EngineInbox)
        transaction = inbox.begin("nats:S:orders", "tx-1")
        transaction.view(worker.store.namespace("orders")).put_json("o-2", {"total": 3})
        assert transaction.commit() is True
        assert _inbox(SimpleNamespace(services=app)).recorded("nats:S:orders", "tx-1") == "null"  # seen by the app
        app.store.close()
        worker.store.close()
    finally:
        server.cleanup()


def test_without_store_section_the_sqlite_store_and_inbox_stay(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CELLMONO_KEK", new_key_text())
    runtime = Runtime.from_settings(load_settings(_settings(tmp_path / "app", None)))
    assert isinstance(runtime.store, EncryptedStore)
    assert isinstance(_inbox(SimpleNamespace(services=runtime)), Inbox)
    runtime.store.close()
