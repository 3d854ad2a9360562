"""The Redis write path's connections: one small interface, one implementation per connection kind.

`CommandBatcher` sends its batches through a `RedisPipe`: a connection of its own that takes a list of
commands and returns their replies as Redis sends them (RESP: an XRANGE entry is `[id, [field, value,
...]]`, an error reply is an exception in its place), with no redis-py per-command machinery. As httpx's
`_transports/` do for HTTP, each connection kind has its own module:

- `node`: a single server (or a sentinel's master): RESP packed into one buffer and the replies parsed
  with hiredis straight off the connection's stream. The only module here that touches redis-py's
  private connection internals.
- `cluster`: a cluster's nodes, each a `node` pipe: a batch split by slot owner, one packed write per
  node, and redis-py's cluster pipeline for what must be redirected or retried.
- `embedded`: the in-process fakeredis server, which has no socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import fakeredis
from redis.asyncio import RedisCluster

from redis_client import Command, RedisClient
from redis_wire.cluster import ClusterPipe
from redis_wire.embedded import EmbeddedPipe
from redis_wire.node import NodePipe

__all__ = ["RedisPipe", "open_pipe"]


class RedisPipe(Protocol):
    """One connection's round trips. Not safe for concurrent use: its owner sends one batch at a time."""

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands and return their replies, in order; an error reply is an exception in its
        place. Raises when the connection fails; the next call then opens a new one."""
        ...

    async def reset(self) -> None:
        """Drop the connection (its state is unknown, or it reached a replica): the next round trip
        opens a new one, asking a sentinel for the master again where there is one."""
        ...


def open_pipe(redis: RedisClient) -> RedisPipe:
    """The pipe for this client's kind of connection, with the client's settings."""
    if isinstance(redis, RedisCluster):
        return ClusterPipe(redis)
    if isinstance(redis, fakeredis.FakeAsyncRedis):
        return EmbeddedPipe(redis)
    return NodePipe(redis.connection_pool.make_connection)
