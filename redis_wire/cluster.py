"""A Redis Cluster's pipe: each batch split by node, each node's share packed into one write.

A batch's commands are grouped by the node owning their key's slot (redis-py's slot map, which its
cluster client keeps current), every node's group is written as one RESP buffer on a connection of the
pipe's own (a `NodePipe`), and only then are the replies read, parsed by hiredis. So a flush costs one
write and one read per node, as it does on a single server, instead of redis-py's cluster pipeline and
its per-command Python work, which held the service to about half of that pipeline's own rate (issue #14).

Within a node's group the commands keep their batch order, and a session's keys share one slot (their
`{session}` hash tag), so a session's commands keep their order. What the fast path cannot place goes
through redis-py's cluster pipeline, which redirects, refreshes the slot map and retries, once the fast
path's share of the batch has been answered:

- a command without a single key in first place (not in `KEYED`), or a slot not in the map;
- a reply of MOVED or ASK (the slot migrated, or a replica took over), TRYAGAIN or CLUSTERDOWN;
- a node that cannot be reached before anything was sent to it.

A node whose connection fails after its commands went out is not resent to (they may have run): those
commands fail, and the next batch reconnects, through redis-py's path if the node is gone for good.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisClusterException, SlotNotCoveredError

from redis_client import Command
from redis_wire.node import NodePipe

__all__ = ["KEYED", "ClusterPipe"]

# Commands whose one key (or shard channel) is their first argument: the ones the service batches.
# Any other command takes redis-py's path, which knows every command's keys.
KEYED = frozenset(
    {
        b"EXPIRE",
        b"GET",
        b"HDEL",
        b"HGET",
        b"HGETALL",
        b"HINCRBY",
        b"HLEN",
        b"HSET",
        b"HSETNX",
        b"HVALS",
        b"INCR",
        b"INCRBY",
        b"LLEN",
        b"LRANGE",
        b"LTRIM",
        b"PEXPIRE",
        b"PTTL",
        b"RPUSH",
        b"SET",
        b"SPUBLISH",
        b"TTL",
        b"XADD",
        b"XLEN",
        b"XRANGE",
        b"XREVRANGE",
        b"ZADD",
        b"ZCARD",
        b"ZMSCORE",
        b"ZRANGE",
        b"ZRANGEBYSCORE",
        b"ZREM",
        b"ZREMRANGEBYSCORE",
        b"ZSCORE",
    }
)
# Single-key commands that also take several keys: placed only with one.
ONE_KEY_ONLY = frozenset({b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"})
# Error replies that mean "not here, or not now": redis-py's cluster path handles them.
REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")


def single_key(command: Command) -> str | bytes | None:
    """The command's one key, when the fast path can place it by that key."""
    if len(command) < 2:
        return None
    name = command[0]
    name = (name if isinstance(name, bytes) else str(name).encode()).upper()
    if name in KEYED or (name in ONE_KEY_ONLY and len(command) == 2):
        key = command[1]
        return key if isinstance(key, str | bytes) else str(key)
    return None


def is_redirect(reply: Any) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith(REDIRECTS)


class ClusterPipe:
    def __init__(self, redis: RedisCluster) -> None:
        self._redis = redis
        self._pipes: dict[str, NodePipe] = {}
        # Batches that needed redis-py's cluster path (redirects, retries), which tests watch.
        self.fallbacks = 0

    def _pipe_for(self, key: str | bytes) -> NodePipe | None:
        try:
            node = self._redis.get_node_from_key(key)  # type: ignore[arg-type]
        except (SlotNotCoveredError, RedisClusterException):
            return None
        if node is None:
            return None
        pipe = self._pipes.get(node.name)
        if pipe is None:
            pipe = self._pipes[node.name] = NodePipe(_connection_factory(node))
        return pipe

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        replies: list[Any] = [None] * len(commands)
        groups: dict[NodePipe, list[int]] = {}
        redirected: list[int] = []
        # A batch names the same keys many times (an answer's log and channel, chunk after chunk).
        routes: dict[str | bytes, NodePipe | None] = {}
        for index, command in enumerate(commands):
            key = single_key(command)
            if key is None:
                pipe = None
            elif key in routes:
                pipe = routes[key]
            else:
                pipe = routes[key] = self._pipe_for(key)
            if pipe is None:
                redirected.append(index)
            else:
                groups.setdefault(pipe, []).append(index)
        sent: list[tuple[NodePipe, list[int]]] = []
        for pipe, indices in groups.items():
            try:
                await pipe.connect()
            except Exception:
                # Unreachable, nothing sent: redis-py's path refreshes the slot map and retries.
                await self._drop(pipe)
                redirected.extend(indices)
                continue
            pipe.send([commands[index] for index in indices])
            sent.append((pipe, indices))
        for pipe, indices in sent:
            try:
                answers = await pipe.receive(len(indices))
            except Exception as error:
                # Sent, then the connection failed: the commands may have run, so they are not resent.
                await self._drop(pipe)
                answers = [error] * len(indices)
            for index, reply in zip(indices, answers, strict=True):
                replies[index] = reply
        if any(isinstance(reply, Exception) for reply in replies):
            redirected.extend(index for index, reply in enumerate(replies) if is_redirect(reply))
        if redirected:
            redirected.sort()
            self.fallbacks += 1
            fallback = await self._through_redis_py([commands[index] for index in redirected])
            for index, reply in zip(redirected, fallback, strict=True):
                replies[index] = reply
            await self._forget_former_masters()
        return replies

    async def _forget_former_masters(self) -> None:
        """After a failover or a migration, close the connections to nodes that no longer own slots."""
        masters = {node.name for node in self._redis.get_primaries()}
        for name in [name for name in self._pipes if name not in masters]:
            await self._pipes.pop(name).reset()

    async def _through_redis_py(self, commands: Sequence[Command]) -> list[Any]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute(raise_on_error=False)
        except Exception as error:
            return [error] * len(commands)

    async def _drop(self, pipe: NodePipe) -> None:
        for name, known in list(self._pipes.items()):
            if known is pipe:
                del self._pipes[name]
        await pipe.reset()

    async def reset(self) -> None:
        """Drop every node's connection; the cluster client keeps its own slot map up to date."""
        pipes, self._pipes = list(self._pipes.values()), {}
        for pipe in pipes:
            with contextlib.suppress(Exception):
                await pipe.reset()


def _connection_factory(node: ClusterNode) -> functools.partial[Any]:
    """A new connection to the node with the cluster client's settings, as its own pool makes them."""
    return functools.partial(node.connection_class, **node.connection_kwargs)
