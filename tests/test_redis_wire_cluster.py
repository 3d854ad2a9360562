"""A cluster's pipe (redis_wire/cluster.py) on a real three-master Redis Cluster: one packed write per
node per flush, each session's commands in order, and ASK or MOVED during a slot migration or after a
failover answered through redis-py's cluster path, after which the fast path writes to the new owner."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from batcher import CommandBatcher
from redis_client import Command, RedisUnavailable
from redis_wire import open_pipe
from redis_wire.cluster import ClusterPipe
from redis_wire.node import NodePipe
from testkit.ports import cluster_port
from testkit.prerequisites import need
from testkit.redis_server import RedisServer
from testkit.topologies import NOT_YET, ClusterServers
from testkit.waiting import ConditionNotMet, eventually, eventually_sync

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterServers]:
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    servers = ClusterServers()
    try:
        servers.start()
    except (OSError, RuntimeError, subprocess.SubprocessError, ConditionNotMet) as error:
        servers.cleanup()
        need(False, f"cannot start a Redis Cluster: {error}")
    yield servers
    servers.cleanup()


class Writer:
    """A batcher over a cluster pipe, with the pipe at hand."""

    def __init__(self, pipe: ClusterPipe, batcher: CommandBatcher) -> None:
        self.pipe = pipe
        self.batcher = batcher

    async def submit(self, commands: Sequence[Command]) -> list[Any]:
        return await self.batcher.submit(commands)


@pytest.fixture
async def writer(cluster: ClusterServers) -> AsyncIterator[Writer]:
    redis = RedisCluster.from_url(cluster.url)
    await redis.initialize()
    pipe = open_pipe(redis)
    assert isinstance(pipe, ClusterPipe)
    batcher = CommandBatcher(pipe, timeout=10, name="cluster-writer")
    batcher.start()
    try:
        yield Writer(pipe, batcher)
    finally:
        await batcher.close()
        await redis.aclose()


def node_id(node: RedisServer) -> str:
    return node.cli("CLUSTER", "MYID")


def owner(servers: Sequence[RedisServer], key: str) -> RedisServer:
    """The master serving the key's slot, as that master itself says."""
    slot = int(servers[0].cli("CLUSTER", "KEYSLOT", key))
    for node in servers:
        for line in node.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "myself" in fields[2] and "master" in fields[2]:
                for span in fields[8:]:
                    first, _, last = span.partition("-")
                    if first.isdigit() and int(first) <= slot <= int(last or first):
                        return node
    raise AssertionError(f"no master owns slot {slot}")


def lrange(node: RedisServer, key: str) -> list[str]:
    return node.cli("LRANGE", key, "0", "-1").splitlines()


async def test_a_flush_sends_one_packed_write_per_node_and_keeps_each_sessions_order(
    cluster: ClusterServers, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sends: list[int] = []
    real_send = NodePipe.send

    def counting_send(self: NodePipe, commands: Sequence[Command]) -> None:
        sends.append(len(commands))
        real_send(self, commands)

    monkeypatch.setattr(NodePipe, "send", counting_send)
    round_trips = 0
    real_round_trip = writer.pipe.round_trip

    async def counting_round_trip(commands: Sequence[Command]) -> list[Any]:
        nonlocal round_trips
        round_trips += 1
        return await real_round_trip(commands)

    monkeypatch.setattr(writer.pipe, "round_trip", counting_round_trip)
    sessions = [f"order{n}" for n in range(30)]
    assert len({owner(cluster.nodes, f"{{{session}}}").port for session in sessions}) == 3

    replies = await asyncio.gather(
        *(
            writer.submit(
                [("RPUSH", f"chat:{{{session}}}:list", str(i)), ("SPUBLISH", f"chat:{{{session}}}", "x")]
            )
            for i in range(20)
            for session in sessions
        )
    )

    assert replies == [[i + 1, 0] for i in range(20) for _ in sessions]  # each its own replies, raw RESP
    for session in sessions:
        key = f"chat:{{{session}}}:list"
        assert lrange(owner(cluster.nodes, key), key) == [str(i) for i in range(20)]
    assert sum(sends) == 2 * 20 * len(sessions)
    assert len(sends) <= 3 * round_trips < 20 * len(sessions)  # at most one write per node per flush
    assert writer.pipe.fallbacks == 0  # redis-py's cluster pipeline was not needed


async def test_ask_and_moved_during_a_slot_migration_reach_the_new_owner_in_order(
    cluster: ClusterServers, writer: Writer
) -> None:
    key = "chat:{moving}:list"
    slot = cluster.nodes[0].cli("CLUSTER", "KEYSLOT", key)
    assert await writer.submit([("RPUSH", key, "before")]) == [1]
    source = owner(cluster.nodes, key)
    target = next(node for node in cluster.nodes if node is not source)

    target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
    source.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", key)
    # Mid-migration the key has left: the old owner answers ASK, and redis-py's path asks the new one.
    assert await writer.submit([("RPUSH", key, "during")]) == [2]
    assert writer.pipe.fallbacks == 1
    for node in (target, source, *(node for node in cluster.nodes if node not in (source, target))):
        node.cli("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))

    assert await writer.submit([("RPUSH", key, "after"), ("SPUBLISH", "chat:{moving}", "x")]) == [3, 0]
    assert writer.pipe.fallbacks == 2  # the old owner said MOVED: redis-py's path redirected it
    assert await writer.submit([("RPUSH", key, "later")]) == [4]
    assert writer.pipe.fallbacks == 2  # and the next batch went straight to the new owner
    assert lrange(target, key) == ["before", "during", "after", "later"]


def add_replica(master: RedisServer) -> RedisServer:
    """A new cluster node, joined to the cluster as the master's synced replica (the caller cleans it)."""
    replica = RedisServer("--cluster-enabled", "yes", "--cluster-node-timeout", "2000", port=cluster_port())
    replica.start()
    replica.cli("CLUSTER", "MEET", "127.0.0.1", str(master.port))
    master_id = node_id(master)

    def knows_master() -> bool:
        nodes = replica.cli("CLUSTER", "NODES")
        return master_id in nodes and "handshake" not in nodes

    eventually_sync(knows_master, "the new node knows the master", ignoring=NOT_YET)
    replica.cli("CLUSTER", "REPLICATE", master_id)
    eventually_sync(
        lambda: replica.info("replication", "master_link_status") == "up",
        "the replica has synced",
        ignoring=NOT_YET,
    )
    return replica


def remove(cluster: ClusterServers, node: RedisServer) -> None:
    """Stop a node and have the others forget it (a client asking them must not be sent to it)."""
    known_as = node_id(node)
    node.cleanup()
    for other in cluster.nodes:
        other.cli("CLUSTER", "FORGET", known_as)


def is_master(node: RedisServer) -> bool:
    return node.info("replication", "role") == "master"


async def test_moved_after_a_failover_reaches_the_promoted_replica(
    cluster: ClusterServers, writer: Writer
) -> None:
    key = "chat:{failover}:list"
    assert await writer.submit([("RPUSH", key, "before")]) == [1]
    master = owner(cluster.nodes, key)
    replica = add_replica(master)
    try:
        replica.cli("CLUSTER", "FAILOVER")  # a coordinated manual failover: no write is lost
        eventually_sync(lambda: not is_master(master), "the old master is a replica", ignoring=NOT_YET)

        assert await writer.submit([("RPUSH", key, "after")]) == [2]
        assert writer.pipe.fallbacks == 1  # MOVED from the old master, redirected by redis-py
        assert await writer.submit([("RPUSH", key, "later")]) == [3]
        assert writer.pipe.fallbacks == 1  # then packed straight to the promoted replica
        assert lrange(replica, key) == ["before", "after", "later"]
    finally:
        try:  # back as it was, so that removing the new node leaves every slot covered
            eventually_sync(
                lambda: is_master(master) or master.info("replication", "master_link_status") == "up",
                "the old master has synced as a replica",
                ignoring=NOT_YET,
            )
            if not is_master(master):
                # TAKEOVER: the masters would not vote for this shard again within 2 node timeouts.
                master.cli("CLUSTER", "FAILOVER", "TAKEOVER")
            eventually_sync(lambda: is_master(master), "the old master is master again", ignoring=NOT_YET)
        finally:
            remove(cluster, replica)


async def test_a_killed_master_fails_its_writes_until_its_replica_takes_over(
    cluster: ClusterServers, writer: Writer
) -> None:
    # Last in the module: the killed master stays down.
    key = "chat:{killed}:state"
    assert await writer.submit([("HSET", key, "before", "1")]) == [1]
    master = owner(cluster.nodes, key)
    replica = add_replica(master)
    try:
        master.stop(kill=True)

        async def written() -> bool:
            # Idempotent: a write that failed after it went out may have run, and is not resent.
            return await writer.submit([("HSET", key, "after", "1")]) in ([0], [1])

        # Until the replica is elected, the write fails with RedisUnavailable; then it lands.
        await eventually(written, "a write after the failover", ignoring=(RedisUnavailable,))
        fallbacks = writer.pipe.fallbacks
        assert fallbacks >= 1  # the dead master was reached through redis-py's path, which found the new one
        assert await writer.submit([("HSET", key, "later", "1")]) == [1]
        assert writer.pipe.fallbacks == fallbacks  # then packed straight to the promoted replica
        assert is_master(replica)
        assert sorted(replica.cli("HKEYS", key).splitlines()) == ["after", "before", "later"]
    finally:
        replica.cleanup()
