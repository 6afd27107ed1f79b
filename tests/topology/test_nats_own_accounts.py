"""A careless-operator case: the nats-server config already declares accounts of its own, and the operator includes
the authorization file `cellmono workers provision` writes. nats-server keeps one `accounts` block, so the
include's (`$SYS`, the app's listener of refused logins) replaces the operator's and its users are locked out:
the include's header says so, and `[workers] nats_system_user = false` writes an include that declares no account,
with which the operator's users, the app and the worker all log in. And an upgrade: the app rewrites an include an
older version wrote, at its start, and reloads the server. Real nats-server, real `cellmono` CLI."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from brokers import Server, free_port, nats_binary, require
from worker_support import ECHO_CELL, cellmono

APP_PASSWORD = "app-password-for-tests"


def logs_in(port: int, user: str | None = None, password: str | None = None, seed: str | None = None) -> bool:
    """True when nats-server at `port` accepts the login (user and password, or an nkey seed)."""
    import nats

    async def quiet(error: Exception) -> None:
        pass

    async def attempt() -> bool:
        options = {"nkeys_seed_str": seed} if seed else {"user": user, "password": password}
        try:
            connection = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2, allow_reconnect=False,
                                            max_reconnect_attempts=0, error_cb=quiet, **options)
        except Exception:
            return False
        await connection.close()
        return True
    return asyncio.run(attempt())


@pytest.mark.parametrize("system_user", [True, False])
def test_a_server_with_accounts_of_its_own_keeps_them_with_nats_system_user_false(tmp_path: Path,
                                                                                  system_user: bool) -> None:
    app, broker = tmp_path / "app", tmp_path / "broker"
    app.mkdir()
    broker.mkdir()
    port = free_port()
    (app / "settings.ini").write_text(f"""
[app]
name = ownacc
cells = echo
[cell.echo]
class = own_cells:EchoCell
placement = process
[nats]
url = nats://app:{APP_PASSWORD}@127.0.0.1:{port}
[workers]
nats_system_user = {str(system_user).lower()}
""")
    (tmp_path / "own_cells.py").write_text(ECHO_CELL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    made = cellmono("workers", "provision", "w1", "--cells", "echo", "--settings", str(app / "settings.ini"),
                    "--credential", str(tmp_path / "w1.credential"), cwd=app, env=env)
    assert made.returncode == 0, made.stderr
    include = (app / "var" / "nats-auth.conf").read_text()
    assert ("nats_system_user = false" in include) and (("accounts {" in include) == system_user), include
    config = broker / "nats.conf"  # the operator's own config: an account with a user of its own
    config.write_text(f'listen: "127.0.0.1:{port}"\naccounts {{ TEAM: {{ users: [ {{user: bob, password: bobs}} ] }} }}\n'
                      f'include "{os.path.relpath(app / "var" / "nats-auth.conf", broker)}"\n')
    server = require(lambda: Server("nats", [nats_binary(), "-c", str(config)], port, str(broker)).start())
    try:
        seed = json.loads((tmp_path / "w1.credential").read_text())["nkey_seed"]
        assert logs_in(port, "app", APP_PASSWORD) and logs_in(port, seed=seed)  # cellmono's users, either way
        assert logs_in(port, "bob", "bobs") is not system_user  # the operator's user: replaced by the include's block
    finally:
        server.stop()


def test_the_app_brings_an_include_an_older_version_wrote_up_to_date_at_its_start(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """Upgrading cellmono can change what a worker's user may do (here: its own reply inbox): the app rewrites the
    include at its start when it grants something else, and reloads the server through `[workers] nats_pid_file`."""
    import sys

    from cellmono.core.config import load_settings
    from cellmono.topology.broker_users import nats_authorization
    from cellmono.topology.provision import Registry, workers_section
    from cellmono.topology.workers import build_app

    app, broker = tmp_path / "app", tmp_path / "broker"
    app.mkdir()
    broker.mkdir()
    port = free_port()
    (tmp_path / "upgrade_cells.py").write_text(ECHO_CELL)
    (app / "settings.ini").write_text(f"""
[app]
name = upgrade
cells = echo
[log]
level = WARNING
[cell.echo]
class = upgrade_cells:EchoCell
placement = process
[nats]
url = nats://app:{APP_PASSWORD}@127.0.0.1:{port}
[workers]
nats_pid_file = {broker / "nats.pid"}
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    made = cellmono("workers", "provision", "w1", "--cells", "echo", "--settings", str(app / "settings.ini"),
                    "--credential", str(tmp_path / "w1.credential"), cwd=app, env=env)
    assert made.returncode == 0, made.stderr
    include = app / "var" / "nats-auth.conf"
    current = include.read_text()
    older = current.replace('"allow_responses": true', '"allow_responses": false')  # as an older version wrote it
    assert older != current
    include.write_text(older)
    (broker / "nats.conf").write_text(f'listen: "127.0.0.1:{port}"\npid_file: "{broker / "nats.pid"}"\n'
                                      f'jetstream {{ store_dir: "{broker / "js"}" }}\n'
                                      f'include "{os.path.relpath(include, broker)}"\n')
    server = require(lambda: Server("nats", [nats_binary(), "-c", str(broker / "nats.conf")], port,
                                    str(broker)).start())
    sys.path.insert(0, str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])  # the app's own worker process imports the cell too

    async def start_and_stop() -> None:
        started = build_app(app / "settings.ini")
        await started.start()
        await started.stop()
    try:
        asyncio.run(start_and_stop())
        settings = load_settings(app / "settings.ini")
        workers = Registry(workers_section(settings).registry).load()
        assert include.read_text() == nats_authorization(settings, workers) == current
        assert "Reloaded server configuration" in server.log_path.read_text(errors="replace")
    finally:
        sys.path.remove(str(tmp_path))
        server.stop()
