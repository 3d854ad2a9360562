"""Readiness that tells the truth: Redis answers, takes a write, *and* this process's own PubSub
subscription works.

A PING can succeed while the stream hub's subscriber is dead (its connection killed, its task gone),
and then no SSE client of this process would hear of new events until a poll. So `/health` also sends
a probe through the control channel that the hub is subscribed to and waits for the hub to hand it back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from redis.asyncio import RedisCluster

from redis_client import KeySpace, RedisUnavailable, bounded

if TYPE_CHECKING:
    from redis_client import RedisClient

__all__ = ["PubSubProbe", "Readiness"]

logger = logging.getLogger(__name__)

# How long the write probe's key lives: it is rewritten at most once a second per instance.
WRITE_PROBE_TTL_MS = 5000
# Bytes a Redis that evicts nothing must have free below `maxmemory` to be ready: room for some turns.
MEMORY_HEADROOM = 1024 * 1024


class PubSubProbe:
    """Round trips through the hub's control-channel subscription."""

    def __init__(self, redis: RedisClient, keys: KeySpace, *, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._timeout = timeout
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def wrap(self, on_control: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """The hub's control-message callback: probes are answered here, the rest passed on."""

        def handle(data: bytes) -> None:
            if data.startswith(b'{"probe":'):
                try:
                    token = orjson.loads(data)["probe"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return
                future = self._waiting.get(token) if isinstance(token, str) else None
                if future is not None and not future.done():
                    future.set_result(None)
                return  # another instance's probe: not ours to answer, and not a command
            on_control(data)

        return handle

    async def round_trip(self) -> None:
        """Publish a probe and wait for the hub to see it; `RedisUnavailable` if it does not in time."""
        token = secrets.token_hex(8)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            async with bounded(self._timeout):
                # PUBLISH, or SPUBLISH on a cluster: the way the hub's control subscription hears.
                await self._redis.execute_command(
                    self._keys.publish, self._keys.control, orjson.dumps({"probe": token})
                )
                await future
        except RedisUnavailable as error:
            raise RedisUnavailable(f"PubSub round trip failed: {error.reason}") from None
        finally:
            self._waiting.pop(token, None)


class Readiness:
    """What `/health` checks beyond a PING, at most once per `cache_seconds` (issue #13, item 2).

    Redis must take a write (a PING and a PUBLISH both pass on an out-of-memory or read-only Redis, which
    then refuses every chat): a `SET` of one tiny key with a short TTL. Then the PubSub round trip. Both
    write and publish, and `/health` needs no key, so the outcome (good or bad) is kept for
    `cache_seconds` and concurrent callers share one check: polling `/health` in a loop cannot make the
    instances write and publish in a loop.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        round_trip: Callable[[], Awaitable[None]],
        *,
        timeout: float,
        cache_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        memory: bool = True,
    ) -> None:
        """`memory`: also read `INFO memory` (not on the embedded Redis, which has none, or a cluster,
        whose nodes each have their own)."""
        self._redis = redis
        self._memory = memory and not isinstance(redis, RedisCluster)
        self._key = keys.health
        self._round_trip = round_trip
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._failure: RedisUnavailable | None = None

    async def check(self) -> None:
        """Raise `RedisUnavailable` (with the reason) unless Redis took a write and PubSub works."""
        async with self._lock:
            if self._checked_at is None or self._clock() - self._checked_at >= self._cache_seconds:
                self._failure = await self._probe()
                self._checked_at = self._clock()
            if self._failure is not None:
                raise self._failure

    async def _probe(self) -> RedisUnavailable | None:
        try:
            async with bounded(self._timeout):
                # A few bytes that expire on their own; SET is refused by an out-of-memory Redis
                # (noeviction) and by a read-only replica, as the chats' writes would be.
                await self._redis.set(self._key, b"1", px=WRITE_PROBE_TTL_MS)
                full = await self._memory_full()
        except RedisUnavailable as error:
            return RedisUnavailable(f"Redis refuses writes: {error.reason}")
        if full:
            return RedisUnavailable(f"Redis refuses writes: Redis is out of memory ({full})")
        try:
            await self._round_trip()
        except RedisUnavailable as error:
            return error
        return None

    async def _memory_full(self) -> str | None:
        """How full a Redis that evicts nothing is, if it is within `MEMORY_HEADROOM` of `maxmemory`: a
        tiny SET may still fit where a turn or an event does not."""
        if not self._memory:
            return None
        memory = await self._redis.info("memory")
        limit = int(memory.get("maxmemory", 0))
        used = int(memory.get("used_memory", 0))
        if not limit or memory.get("maxmemory_policy") != "noeviction" or used < limit - MEMORY_HEADROOM:
            return None
        return f"{used} of {limit} bytes used"
