"""A ledger worker: serves the `ledger` cell over the broker from its own folder (the current directory).

Started by `ledger.Worker` with `--name`, `--url` (the broker) and `--kind` (nats or redis). Its effects go
to `./ledger.db` (the cell's encrypted store) and its audit records to `./audit.db` (a hash chain); nothing
else is read or written. It writes `./ready` once it serves and drains on SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from pydantic import BaseModel

from cellmono.core.app import App
from cellmono.core.cell import Cell, handles
from cellmono.security.audit import AuditLog
from cellmono.security.engine_inbox import EngineInbox
from cellmono.security.engine_records import engine_records
from cellmono.security.engine_store import EngineStore
from cellmono.security.inbox import DeliveryInbox, Inbox
from cellmono.security.keys import StaticKeyProvider
from cellmono.security.store import EncryptedStore
from cellmono.topology.placed import PlacedTransport
from cellmono.transports.nats import NatsTransport
from cellmono.transports.redis import RedisTransport
from ledger import apply

PREFIX = "led"
DURABLE = ("ledger.>",)


class Transfer(BaseModel):
    key: str
    source: str
    target: str
    amount: int


class LedgerCell(Cell):
    """Applies transfers; the handler itself is not idempotent: only the framework's inbox stops a redelivery."""

    name = "ledger"
    worker = "w"
    audit: AuditLog | None = None

    @handles("ledger.transfer", queue="ledger")
    async def transfer(self, message: Transfer) -> None:
        """Record the transfer as one effect in the store and one audit record."""
        assert self.audit is not None
        apply(self.store, self.audit, self.worker, message.model_dump())


def transport(kind: str, url: str, inbox: DeliveryInbox | None):
    if kind == "nats":
        inner = NatsTransport(url, prefix=PREFIX, durable=DURABLE, ack_wait=5, reconnect_wait=0.2,
                              client_name=f"ledger-{os.getpid()}", inbox=inbox,
                              stream_replicas=3)
    else:
        inner = RedisTransport(url, prefix=PREFIX, durable=DURABLE, ack_wait=5, reconnect_wait=0.2, inbox=inbox)
    return PlacedTransport(inner, "ledger", DURABLE)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", default="nats", choices=("nats", "redis"))
    parser.add_argument("--at-least-once", action="store_true", help="no exactly-once inbox: redeliveries apply again")
    parser.add_argument("--store", default="sqlite", choices=("sqlite", "engine"),
                        help="engine: the cell's store and the inbox on the broker (shared by every worker)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of the engine store's KV bucket")
    options = parser.parse_args()
    folder = Path.cwd()
    keys = StaticKeyProvider(bytes.fromhex(os.environ["LEDGER_STORE_KEY"]))
    store: EncryptedStore | EngineStore
    inbox: DeliveryInbox
    if options.store == "engine":
        options_nats = {"replicas": options.replicas} if options.kind == "nats" else {}
        store = EngineStore(engine_records(options.kind, options.url, app="ledger", **options_nats), keys)
        inbox = EngineInbox(store)
    else:
        store = EncryptedStore(folder / "ledger.db", keys)
        inbox = Inbox(store)
    cell = LedgerCell()
    cell.worker = options.name
    cell.audit = AuditLog(folder / "audit.db", durability="full")
    app = App([cell], transport=transport(options.kind, options.url, None if options.at_least_once else inbox), store=store)
    await app.bus.start()
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    (folder / "ready").write_text(str(os.getpid()))
    await stop.wait()
    await app.stop()
    cell.audit.close()
    store.close()


if __name__ == "__main__":
    asyncio.run(main())
