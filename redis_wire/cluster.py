"""A Redis Cluster's pipe: redis-py's cluster pipeline, which sends each command to its slot's node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster

from redis_client import Command

__all__ = ["ClusterPipe"]


class ClusterPipe:
    def __init__(self, redis: RedisCluster) -> None:
        self._redis = redis

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)

    async def reset(self) -> None:
        """The cluster client keeps its own connections and slot map up to date."""
