"""Session ownership (OWASP API1, broken object-level authorisation): each session belongs to the key
that created it."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, cast

from redis_client import bounded

if TYPE_CHECKING:
    from redis_client import KeySpace, RedisClient

__all__ = ["SessionOwners"]


class SessionOwners:
    """The key that created each session, stored beside the session's keys (same hash tag) with the
    history's TTL, refreshed on every chat."""

    def __init__(self, redis: RedisClient, keys: KeySpace, *, ttl: int, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl
        self._timeout = timeout

    async def claim(self, session_id: str, owner: str) -> bool:
        """Make `owner` the session's owner unless it already has another; True if `owner` owns it."""
        key = self._keys.owner(session_id)
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, owner, nx=True, ex=self._ttl)
            pipe.get(key)
            _, current = await pipe.execute()
        if current != owner.encode():
            return False
        async with bounded(self._timeout):
            await self._redis.expire(key, self._ttl)
        return True

    async def owns(self, session_id: str, owner: str) -> bool:
        async with bounded(self._timeout):
            current = await self._redis.get(self._keys.owner(session_id))
        return current is not None and hmac.compare_digest(cast(bytes, current), owner.encode())
