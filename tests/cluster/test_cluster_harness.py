"""The 3-node JetStream cluster harness itself: it forms a cluster, survives kill -9 / restart and pauses,
elects a new stream leader when the leader is killed, and a partitioned minority cannot accept writes
while the majority can; on heal the majority's log wins (`nbs/34b_cluster.ipynb` says why)."""
from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.js.api import StorageType

from cluster_support import IN_CI, partition_support, require_cluster

from cellmono.core.bus import Bus
from cellmono.transports.nats import NatsTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def cluster():
    started = require_cluster()
    try:
        yield started
    finally:
        started.cleanup()


async def connect(url: str):
    return await nats.connect(servers=[url], connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


async def replicated(cluster, name: str = "T"):
    connection = await connect(cluster.url())
    jetstream = connection.jetstream(timeout=5)
    await jetstream.add_stream(name=name, subjects=[f"{name.lower()}.>"], storage=StorageType.FILE, num_replicas=3)
    return connection, jetstream


async def publish_until_ok(jetstream, subject: str, data: bytes, key: str, seconds: float = 15.0):
    give_up = time.monotonic() + seconds
    last = None
    while time.monotonic() < give_up:
        try:
            return await jetstream.publish(subject, data, headers={"Nats-Msg-Id": key}, timeout=1)
        except Exception as error:  # no leader yet: retry with the same key
            last = error
            await asyncio.sleep(0.1)
    raise AssertionError(f"no acknowledgement within {seconds} s: {last!r}")


async def test_three_nodes_each_with_its_own_store_and_sync_always(cluster) -> None:
    for name in cluster.names:
        text = (cluster.directory / name / "nats.conf").read_text()
        assert "sync_interval: always" in text and f"{name}/js" in text
    connection, jetstream = await replicated(cluster)
    try:
        ack = await publish_until_ok(jetstream, "t.one", b"1", "k1")
        info = await jetstream.stream_info("T")
        assert info.config.num_replicas == 3 and info.cluster.leader in cluster.names
        assert len(info.cluster.replicas) == 2, info.cluster
        assert ack.seq == 1
    finally:
        await connection.close()
    assert len({cluster.pid(name) for name in cluster.names}) == 3


async def test_killing_the_stream_leader_elects_another_and_keeps_every_acknowledged_message(cluster) -> None:
    connection, jetstream = await replicated(cluster)
    try:
        for number in range(20):
            await publish_until_ok(jetstream, "t.x", str(number).encode(), f"k{number}")
        leader = await cluster.stream_leader("T")
        survivor = next(name for name in cluster.names if name != leader)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill, leader)
        other = await connect(cluster.url(survivor))
        try:
            await publish_until_ok(other.jetstream(timeout=5), "t.x", b"after", "k-after")
            recovery = time.monotonic() - killed_at
            new_leader = await cluster.stream_leader("T", cluster.url(survivor))
            assert new_leader and new_leader != leader, (leader, new_leader)
            assert recovery <= 10, f"no write accepted for {recovery:.1f} s after the leader was killed"
        finally:
            await other.close()
        await asyncio.to_thread(cluster.start_node, leader)
        info = await jetstream.stream_info("T")
        assert info.state.messages == 21, info.state  # nothing acknowledged lost, the retry deduplicated
    finally:
        await connection.close()


async def test_a_paused_node_does_not_stop_the_majority_and_catches_up(cluster) -> None:
    connection, jetstream = await replicated(cluster)
    try:
        await publish_until_ok(jetstream, "t.x", b"0", "k0")
        paused = next(name for name in cluster.names if name != cluster.names[0])
        cluster.pause(paused)
        for number in range(1, 11):
            await publish_until_ok(jetstream, "t.x", str(number).encode(), f"k{number}")
        cluster.resume(paused)
        probe = await connect(cluster.url(paused))
        try:
            give_up = time.monotonic() + 15
            while time.monotonic() < give_up:  # the resumed node serves the whole stream again
                try:
                    info = await probe.jetstream(timeout=2).stream_info("T")
                    if info.state.messages == 11:
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.2)
            assert info.state.messages == 11, info.state
        finally:
            await probe.close()
    finally:
        await connection.close()


async def test_partition_heal_the_majority_wins_and_the_minority_never_acknowledged(cluster) -> None:
    supported, how = partition_support()
    if not supported:
        print(f"SKIPPED partition test: {how}")
        if IN_CI:
            pytest.fail(f"partitions are not possible here: {how}")
        pytest.skip(f"partitions are not possible here: {how}")
    print(f"partitions by {how}")
    connection, jetstream = await replicated(cluster)
    try:
        await publish_until_ok(jetstream, "t.x", b"before", "k-before")
        leader = await cluster.stream_leader("T")
        cluster.isolate(leader)  # the leader is the minority: it must step down and refuse writes
        minority = await connect(cluster.url(leader))
        majority_name = next(name for name in cluster.names if name != leader)
        majority = await connect(cluster.url(majority_name))
        try:
            minority_js = minority.jetstream(timeout=1)
            refused = 0
            for number in range(5):  # conflicting writes on the cut-off side
                try:
                    await minority_js.publish("t.x", f"minority-{number}".encode(),
                                              headers={"Nats-Msg-Id": f"m{number}"}, timeout=1)
                except Exception:
                    refused += 1
            await publish_until_ok(majority.jetstream(timeout=5), "t.x", b"majority", "k-majority", seconds=20)
            new_leader = await cluster.stream_leader("T", cluster.url(majority_name))
            assert new_leader != leader
            cluster.heal()
            give_up = time.monotonic() + 20
            contents: list[bytes] = []
            while time.monotonic() < give_up:
                try:
                    info = await minority.jetstream(timeout=2).stream_info("T")
                    if info.state.messages >= 2 and info.cluster.leader:  # the healed stream, read message by message
                        reader = minority.jetstream(timeout=2)
                        contents = [(await reader.get_msg("T", seq)).data
                                    for seq in range(info.state.first_seq, info.state.last_seq + 1)]
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.3)
        finally:
            await minority.close()
            await majority.close()
        acknowledged_minority = 5 - refused
        assert contents[:1] == [b"before"] and b"majority" in contents, contents
        minority_kept = [data for data in contents if data.startswith(b"minority")]
        assert len(minority_kept) <= acknowledged_minority, (refused, contents)
        assert refused == 5, f"the minority acknowledged {5 - refused} writes"  # RAFT: no quorum, no ack
    finally:
        await connection.close()


async def test_a_transport_given_every_node_starts_with_the_first_node_down(cluster) -> None:
    await asyncio.to_thread(cluster.kill, cluster.names[0])
    responder = Bus(NatsTransport(cluster.url(cluster.names[2]), prefix="all"), timeout=5)
    caller = Bus(NatsTransport(cluster.urls, prefix="all", connect_timeout=1), timeout=5)  # n1 (dead) listed first
    await responder.start()
    await caller.start()
    try:
        await responder.handle("echo", lambda envelope: envelope.payload)
        give_up = time.monotonic() + 10
        while True:
            try:
                assert await caller.request("echo", "hi", timeout=1) == "hi"
                break
            except AssertionError:
                raise
            except Exception:  # interest still travelling over the route
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await caller.stop(timeout=1)
        await responder.stop(timeout=1)
