"""Shared by the promotion tests: the example app as a `LiveApp` with private state, a client that keeps calling."""
from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from cellmono.ops.promotion import Promoter
from cellmono.security.audit import AuditLog
from cellmono.security.guard import Principal
from cellmono.topology.switch import LiveApp
from cellmono.topology.workers import build_app

ROOT = Path(__file__).resolve().parents[2]
_prefixes = itertools.count()


def private_state(folder: Path) -> dict[str, str]:
    """Keys, audit log and store in `folder`, out of the work tree (workers inherit it from the environment)."""
    files = {"SIGNING_KEYS": "signing-keys.json", "AUDIT_PATH": "audit.sqlite", "STORE_PATH": "store.sqlite",
             "KEK_FILE": "kek.json"}
    return {f"CELLMONO__SECURITY__{key}": str(folder / name) for key, name in files.items()}


def live_app(monkeypatch, folder: Path, nats_url: str | None) -> LiveApp:
    """The example app on a switch, its state in `folder`, on `nats_url` (None: the embedded server)."""
    environment = {**private_state(folder), "CELLMONO__NATS__PREFIX": f"p{os.getpid()}x{next(_prefixes)}",
                   "CELLMONO__LOG__LEVEL": "WARNING"}
    if nats_url is not None:
        environment["CELLMONO__NATS__URL"] = nats_url
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    app = build_app(ROOT / "settings.ini")
    assert isinstance(app, LiveApp)
    return app


def promoter(app: LiveApp, folder: Path, ready_timeout: float = 30.0) -> Promoter:
    return Promoter(app, audit=app.services.audit, state=folder / "var", ready_timeout=ready_timeout)


@dataclass
class Client:
    """Calls `notes.add` as an editor, one request after another, until stopped; counts every outcome."""

    app: LiveApp
    sent: int = 0
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        from examples.notes.contracts import Note  # importable once the app is built (its folder is on sys.path)
        token = self.app.services.token_for(Principal(id="load", roles=("editor",)))
        while not self.stop.is_set():
            self.sent += 1
            try:
                note = await self.app.bus.request("notes.add", {"title": f"note {self.sent}"}, capability=token, principal="load",
                                                  timeout=10.0, response=Note)
                if note.title == f"note {self.sent}":
                    self.answered += 1
                else:
                    self.failures.append(f"wrong answer {note}")
            except Exception as error:  # every failure counts, whatever its type
                self.failures.append(f"{type(error).__name__}: {error}")
            await asyncio.sleep(0.002)


def actions(folder: Path, cell: str = "notes") -> list[str]:
    """The audit actions recorded about `cell`, in order, read from the (closed) app's audit log in `folder`."""
    with AuditLog(folder / "audit.sqlite") as audit:
        return [entry.fields["action"] for entry in audit.entries() if entry.fields.get("resource") == f"cell:{cell}"]
