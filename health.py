"""Readiness that tells the truth: Redis answers *and* this process's own PubSub subscription works.

A PING can succeed while the stream hub's subscriber is dead (its connection killed, its task gone),
and then no SSE client of this process would hear of new events until a poll. So `/health` also sends
a probe through the control channel that the hub is subscribed to and waits for the hub to hand it back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from redis_client import KeySpace, RedisUnavailable, bounded

if TYPE_CHECKING:
    from redis_client import RedisClient

__all__ = ["PubSubProbe"]

logger = logging.getLogger(__name__)


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
