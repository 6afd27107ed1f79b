"""Real `cellmono worker` processes for tests: spawn one replica, wait until replicas answer their
ping, read their logs for failure messages, and stop them (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from brokers import Server, nats_binary
from cellmono.core.bus import Bus
from cellmono.core.errors import NoResponders, RequestTimeout
from cellmono.topology.workers import PING_SUBJECT


def spawn_worker(settings: Path, cell: str, replica: int) -> subprocess.Popen:
    """A worker replica, as a promoted app spawns it; its output goes to a log file beside the settings
    (a pipe nobody reads could fill)."""
    log = open(settings.parent / f"worker-{replica}-{time.monotonic_ns()}.log", "wb")
    with log:
        return subprocess.Popen([sys.executable, "-m", "cellmono.cli.worker", "--settings", str(settings),
                                 "--cell", cell, "--replica", str(replica)], cwd=settings.parent,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def worker_logs(folder: Path, tail: int = 3000) -> str:
    """The end of every worker's output, for failure messages."""
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
                     for path in sorted(folder.glob("worker-*.log")))


async def wait_ready(bus: Bus, cell: str, replicas: Iterable[int], folder: Path, seconds: float = 60) -> None:
    """Until each replica answers its ping (worker processes start slowly on a loaded 2-core machine)."""
    give_up = time.monotonic() + seconds
    for replica in replicas:
        while True:
            try:
                await bus.request(PING_SUBJECT.format(cell=cell, replica=replica), timeout=1)
                break
            except Exception as error:
                if time.monotonic() > give_up:
                    raise AssertionError(f"replica {replica} not ready: {error}\n{worker_logs(folder)}") from None
                await asyncio.sleep(0.05)


def stop(processes: Iterable[subprocess.Popen]) -> None:
    """SIGTERM each live process, then SIGKILL one that has not exited within 10 s."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


# -- apps and workers in their own folders (no shared disk) ------------------------------------------------------
CELLMONO = str(Path(sys.executable).parent / "cellmono")


def cellmono(*arguments: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real `cellmono` command, run in `cwd`."""
    return subprocess.run([CELLMONO, *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start_nats_with_auth(folder: Path, auth: Path, port: int) -> Server:
    """A nats-server whose config includes the authorization file the app writes, with a pid file for reloads."""
    config = folder / "nats.conf"
    config.write_text(f'listen: "127.0.0.1:{port}"\npid_file: "{folder / "nats.pid"}"\n'
                      f'jetstream {{ store_dir: "{folder / "js"}" }}\ninclude "{os.path.relpath(auth, folder)}"\n')
    return Server("nats", [nats_binary(), "-c", str(config)], port, str(folder)).start()


def load_cell_module(path: Path, name: str):
    """The module at `path` (a cell's code, as the app folder holds it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def wait_pinged(bus: Bus, cell: str, worker: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    """Until replica 1 of `cell` answers its ping; fails at once with the worker's log when the process died."""
    give_up = time.monotonic() + seconds
    while True:
        try:
            await bus.request(PING_SUBJECT.format(cell=cell, replica=1), timeout=1)
            return
        except (NoResponders, RequestTimeout):
            assert worker.poll() is None and time.monotonic() < give_up, log.read_text(errors="replace")
            await asyncio.sleep(0.1)


def folder_files(folder: Path) -> list[str]:
    """Every file under `folder`, relative, sorted."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


ECHO_CELL = '''
from pydantic import BaseModel
from cellmono.core.cell import Cell, handles

class Say(BaseModel):
    text: str

class EchoCell(Cell):
    name = "echo"

    @handles("echo.say", requires="echo:use")
    async def say(self, request: Say) -> str:
        return request.text
'''


def write_echo_folder(folder: Path, kind: str, url: str, app: str, prefix: str) -> Path:
    """An app (or worker) folder: settings placing the echo cell in a process on broker `kind`, and the cell's
    module; nothing else (each folder makes its own var/). Returns the settings file."""
    folder.mkdir()
    (folder / "echo_cell.py").write_text(ECHO_CELL)
    settings = folder / "settings.ini"
    settings.write_text(f"""
[app]
name = {app}
cells = echo
[log]
level = WARNING
[roles]
caller = echo:use
[cell.echo]
class = echo_cell:EchoCell
placement = process
transport = {kind}
[{kind}]
url = {url}
prefix = {prefix}
""")
    return settings


def spawn_cell_worker(settings: Path, cell: str, log: Path) -> subprocess.Popen:
    """`python -m cellmono.cli.worker --settings SETTINGS --cell CELL` in the settings' folder, output to `log`."""
    with open(log, "wb") as output:
        return subprocess.Popen([sys.executable, "-m", "cellmono.cli.worker", "--settings", str(settings),
                                 "--cell", cell], cwd=settings.parent, stdin=subprocess.DEVNULL,
                                stdout=output, stderr=subprocess.STDOUT)


async def connect_refusals(audit, actor: str, at_least: int, seconds: float = 5.0) -> list[dict]:
    """The `worker.connect` records of `actor` in `audit`, once there are `at_least` of them or `seconds` passed."""
    give_up = time.monotonic() + seconds
    while True:
        audit.flush()
        found = [entry.fields for entry in audit.entries()
                 if entry.fields.get("action") == "worker.connect" and entry.fields.get("actor") == actor]
        if len(found) >= at_least or time.monotonic() > give_up:
            return found
        await asyncio.sleep(0.1)


async def make_app_audit_home(url: str, app_name: str) -> None:
    """What the app's start makes on NATS for the audit (a provisioned worker makes none): the `AUDIT` stream and
    the anchor keys table. For tests whose app side is assembled by hand, not started with `cellmono serve`."""
    from cellmono.security.audit_ship import AUDIT_KEYS_TABLE
    from cellmono.security.audit_streams import audit_stream
    from cellmono.topology.engine_link import broker_tables
    stream = audit_stream("nats", url)
    await stream.start()
    await stream.close()
    tables = broker_tables("nats", url, app_name)
    await tables.start()
    try:
        await tables.watch(AUDIT_KEYS_TABLE, lambda key, value: None)  # opening it makes it
    finally:
        await tables.close()
