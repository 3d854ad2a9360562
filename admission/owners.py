"""Session ownership (OWASP API1, broken object-level authorisation): each session belongs to the key
that created it."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Literal, cast

from redis_client import bounded

if TYPE_CHECKING:
    from redis_client import KeySpace, RedisClient

__all__ = ["Claim", "SessionOwners"]

Claim = Literal["new", "ours", "theirs"]


class SessionOwners:
    """The key that created each session, stored beside the session's keys (same hash tag) with the
    history's TTL, refreshed on every chat."""

    def __init__(self, redis: RedisClient, keys: KeySpace, *, ttl: int, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl
        self._timeout = timeout

    async def claim(self, session_id: str, owner: str) -> Claim:
        """Make `owner` the session's owner unless it already has another: "new" if the session had
        none, "ours" if it was `owner`'s already (its TTL renewed), "theirs" if another key has it."""
        key = self._keys.owner(session_id)
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, owner, nx=True, ex=self._ttl)
            pipe.get(key)
            created, current = await pipe.execute()
        if current != owner.encode():
            return "theirs"
        if created:
            return "new"
        async with bounded(self._timeout):
            await self._redis.expire(key, self._ttl)
        return "ours"

    async def restore(self, session_id: str, owner: str) -> None:
        """Give the session back to `owner`, the key the conversation record knows it by, after another
        key's claim found it free in Redis (its owner record had expired with its history)."""
        async with bounded(self._timeout):
            await self._redis.set(self._keys.owner(session_id), owner, ex=self._ttl)

    async def owns(self, session_id: str, owner: str) -> bool:
        async with bounded(self._timeout):
            current = await self._redis.get(self._keys.owner(session_id))
        return current is not None and hmac.compare_digest(cast(bytes, current), owner.encode())
