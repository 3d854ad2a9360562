"""The limits that keep one client from exhausting the service (OWASP API4, unrestricted resource
consumption): `RATE_LIMIT` and `MAX_STREAMS_PER_USER` per key and user, `RATE_LIMIT_PER_KEY` and
`MAX_STREAMS_PER_KEY` per key in total, shared by every instance through Redis, and this process's
`MAX_ACTIVE_STREAMS`."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from admission.errors import Overloaded, RateLimited
from redis_client import RedisUnavailable, bounded

if TYPE_CHECKING:
    from admission.keys import Principal
    from config import Settings
    from redis_client import KeySpace, RedisClient

__all__ = ["Capacity", "Clock", "RateLimiter", "StreamSlots"]

logger = logging.getLogger(__name__)

# Seconds since the epoch; `time.time` outside tests.
Clock = Callable[[], float]


class RateLimiter:
    """`RATE_LIMIT` per API key and user, and `RATE_LIMIT_PER_KEY` per API key in total: moving windows
    in Redis, shared by every instance.

    Keyed by the key's name and the body's `user_id`, never by an address a client can claim in
    `X-Forwarded-For`. The key's total is checked first, so a client that rotates `user_id` is held to
    its key's budget (issue #13)."""

    def __init__(
        self,
        storage: Storage,
        items: list[RateLimitItem],
        *,
        timeout: float,
        per_key: list[RateLimitItem] | None = None,
    ) -> None:
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._items = items
        self._per_key = per_key or []
        self._timeout = timeout
        # The cluster client `limits` makes for itself (it has no close of its own): closed in `close()`.
        self._own_client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, redis: RedisClient, keys: KeySpace) -> RateLimiter:
        storage: Storage
        own_client = None
        if settings.embedded_redis:
            # The embedded Redis has no Lua; it serves one process, so memory is as shared.
            storage = MemoryStorage()
        elif settings.redis_cluster:
            # A cluster client has no single pool to share: limits makes its own, to the same nodes.
            scheme, _, rest = settings.redis_dsn().partition("://")
            storage = RedisClusterStorage(
                f"async+redis+cluster://{rest}",
                implementation="redispy",
                key_prefix=keys.rate_limits,
                ssl=scheme == "rediss",
            )
            own_client = cast(Any, storage.bridge).storage
        else:
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=keys.rate_limits,
                connection_pool=cast(Redis, redis).connection_pool,  # type: ignore[arg-type]
            )
        limiter = cls(
            storage,
            parse_many(settings.rate_limit) if settings.rate_limit else [],
            timeout=settings.redis_timeout,
            per_key=parse_many(settings.rate_limit_per_key) if settings.rate_limit_per_key else [],
        )
        limiter._own_client = own_client
        return limiter

    async def hit(self, principal: Principal, user_id: str | None) -> None:
        """Count one request of the key (and of its user, when the request has one); `RateLimited`
        (with how long to wait) once a window is full."""
        # `#` cannot occur in a user id: the key's own windows are never a user's.
        checks = [(item, (principal.owner, "#key")) for item in self._per_key]
        if user_id is not None:
            checks += [(item, (principal.owner, user_id)) for item in self._items]
        for item, identifiers in checks:
            async with bounded(self._timeout):
                allowed = await self._limiter.hit(item, *identifiers)
                if allowed:
                    continue
                stats = await self._limiter.get_window_stats(item, *identifiers)
            retry_after = max(1, math.ceil(stats.reset_time - time.time()))
            whose = "this API key" if identifiers[1] == "#key" else "this user"
            raise RateLimited(f"Rate limit of {item} for {whose} exceeded", retry_after)

    async def close(self) -> None:
        if self._own_client is not None:
            await self._own_client.aclose()


class StreamSlots:
    """`MAX_STREAMS_PER_USER` and `MAX_STREAMS_PER_KEY`: running answers per key and user, and per key in
    total, counted in Redis across instances.

    A sorted set per key and user (and one per key) whose members are message ids scored by a lease's
    expiry. The instance running an answer renews its lease while it runs and removes it when the answer
    ends, however it ends; if the instance dies, the lease runs out after `STREAM_LEASE_SECONDS` and the
    slot is free again. Plain MULTI/EXEC, no Lua, so it also runs on the embedded Redis; one transaction
    per set, as the two live in different cluster slots. `clock` gives the leases' time (tests move it
    instead of waiting). A limit of 0 is no limit.
    """

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        *,
        limit: int,
        lease: float,
        timeout: float,
        clock: Clock = time.time,
        per_key: int = 0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.limit = limit
        self.per_key = per_key
        self._lease = lease
        self._timeout = timeout
        self._clock = clock
        # answer key (`ids.answer_key`) -> its sorted sets, for the answers this process runs
        self._held: dict[str, list[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self, principal: Principal, user_id: str, message_id: str) -> bool:
        """Take a slot for the answer; False if it already had one (a repeated send).
        Raises `RateLimited` when the key, or the user, already runs as many answers as it may."""
        sets = []
        if self.per_key:
            sets.append((self._keys.key_stream_slots(principal.owner), self.per_key, "one API key"))
        if self.limit:
            sets.append((self._keys.stream_slots(principal.owner, user_id), self.limit, "one user"))
        taken: list[str] = []
        for key, limit, whose in sets:
            added, count = await self._take(key, message_id)
            if not added:
                return False  # a repeated send: it took every slot the first time
            taken.append(key)
            if count > limit:
                # Two racing sends may both see the other and both be refused: never one too many.
                async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                    for held in taken:
                        pipe.zrem(held, message_id)
                    await pipe.execute()
                raise RateLimited(f"At most {limit} answers may run at once for {whose}", 1)
        self._held[message_id] = taken
        return True

    async def _take(self, key: str, message_id: str) -> tuple[bool, int]:
        now = self._clock()
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {message_id: now + self._lease}, nx=True)
            pipe.zcard(key)
            pipe.expire(key, math.ceil(self._lease) + 1)
            _, added, count, _ = await pipe.execute()
        return bool(added), int(count)

    async def release(self, message_id: str) -> None:
        """Give the answer's slot back (once: a second release does nothing)."""
        keys = self._held.pop(message_id, None)
        if not keys:
            return
        try:
            async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrem(key, message_id)
                await pipe.execute()
        except RedisUnavailable as error:
            logger.warning("could not free the stream slot of %s (%s); its lease expires", message_id, error)

    def release_later(self, message_id: str) -> None:
        """`release` in a task of its own, from code that cannot await (an answer's end)."""
        if message_id not in self._held:
            return
        task = asyncio.create_task(self.release(message_id), name="stream-slot-release")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever(), name="stream-slot-renewer")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def renew(self) -> None:
        """Extend the lease of every slot this process holds to a full lease from now."""
        if not self._held:
            return
        expiry = self._clock() + self._lease
        try:
            async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                for message_id, keys in list(self._held.items()):
                    for key in keys:
                        pipe.zadd(key, {message_id: expiry}, xx=True)
                        pipe.expire(key, math.ceil(self._lease) + 1)
                await pipe.execute()
        except RedisUnavailable as error:
            logger.warning("could not renew %d stream slots: %s", len(self._held), error.reason)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            await self.renew()


class Capacity:
    """`MAX_ACTIVE_STREAMS`: how many answers this process runs, and how many chats are between the
    check and their answer's start; refuses early, before anything touches Redis."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: set[str] = set()
        self.admitting = 0

    def check(self) -> None:
        if self.limit and len(self.running) + self.admitting >= self.limit:
            raise Overloaded(retry_after=1)
