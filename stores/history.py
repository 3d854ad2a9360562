"""A session's turns: one Redis list per session, one JSON object per turn, oldest first, with a TTL."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import orjson
from redis.asyncio import Redis, RedisCluster

from batcher import CommandBatcher
from conversation import ConversationMessage
from models import ChatTurn
from redis_client import Command, KeySpace, RedisClient, RedisUnavailable, bounded, describe
from stores.outbox import outbox_append

__all__ = ["HistoryStore", "RecentTurn"]

logger = logging.getLogger(__name__)

# (message_id, the turn as a model is sent it) of a stored turn, as the context for an answer needs it.
RecentTurn = tuple[str, ConversationMessage]


class HistoryStore:
    """A session's turns. Writes go through `writer`, in batches shared with every other request."""

    def __init__(
        self,
        redis: RedisClient,
        writer: CommandBatcher,
        keys: KeySpace,
        *,
        ttl: int,
        max_messages: int,
        timeout: float,
        wait_replicas: int = 0,
    ) -> None:
        self._redis = redis
        self._writer = writer
        self._keys = keys
        self._ttl = ttl
        self._max_messages = max_messages
        self._timeout = timeout
        self._wait_replicas = wait_replicas

    def append_commands(self, session_id: str, *turns: ChatTurn) -> list[Command]:
        """RPUSH, LTRIM and EXPIRE of the turns: the key never exists without its TTL. The session's
        owner record (if keys are on) is refreshed with it, so it never expires before the turns it
        guards (#13, item 4)."""
        key = self._keys.history(session_id)
        return [
            ("RPUSH", key, *(turn.model_dump_json(exclude_none=True) for turn in turns)),
            ("LTRIM", key, -self._max_messages, -1),
            ("EXPIRE", key, self._ttl),
            ("EXPIRE", self._keys.owner(session_id), self._ttl),
            # The durable outbox, in the same transaction: the archiver copies it to SQL (issue #15).
            *(outbox_append(self._keys, session_id, turn) for turn in turns),
        ]

    def clear_commands(self, session_id: str) -> list[Command]:
        return [("DEL", self._keys.history(session_id))]

    async def append(
        self, session_id: str, turns: Sequence[ChatTurn], *, along: Sequence[Command] = (), recent: int = 0
    ) -> tuple[list[Any], list[RecentTurn]]:
        """Store the turns in one transaction with `along` (another store's commands that must see the
        same moment, such as the replay log's position); return their replies and the session's
        `recent` newest turns, these included.

        With `wait_replicas`, return only once that many replicas hold the turn (WAIT), or every attached
        replica if fewer are attached, so a failover cannot lose it.
        """
        appended = self.append_commands(session_id, *turns)
        commands = [*appended, *along]
        if recent:
            commands.append(("LRANGE", self._keys.history(session_id), -recent, -1))
        if self._wait_replicas or isinstance(self._redis, RedisCluster):
            result = await self._append_on_own_connection(commands)
        else:
            # One transaction in the writer's next batch: a round trip shared with other requests.
            replies = await self._writer.submit([("MULTI",), *commands, ("EXEC",)])
            result = replies[-1]
            if not isinstance(result, list):  # EXEC refused: the transaction was discarded
                raise RedisUnavailable(
                    describe(result) if isinstance(result, Exception) else "transaction aborted"
                )
            failure = next((reply for reply in result if isinstance(reply, Exception)), None)
            if failure is not None:
                raise RedisUnavailable(describe(failure))
        stored = result[len(appended) :]
        if not recent:
            return stored, []
        return stored[:-1], self._parse(session_id, stored[-1])

    async def _append_on_own_connection(self, commands: list[Command]) -> list[Any]:
        # WAIT counts the writes of its own connection, and a cluster's batches take no MULTI: the
        # transaction goes through a redis-py pipeline (on a cluster, to the session's slot).
        async with bounded(self._timeout):
            if not self._wait_replicas:
                return await self._transaction(self._redis, commands)
            async with cast(Redis, self._redis).client() as connection:
                result = await self._transaction(connection, commands)
                acked = await connection.wait(self._wait_replicas, int(self._timeout * 500))
                if acked < self._wait_replicas:
                    # Fewer replicas than asked for may be attached (right after a failover there is
                    # none until one is re-attached): every attached replica must still confirm.
                    attached = int((await connection.info("replication")).get("connected_slaves", 0))
                    if acked < min(self._wait_replicas, attached):
                        raise RedisUnavailable("no replica confirmed the write in time")
            return result

    @staticmethod
    async def _transaction(redis: RedisClient, commands: list[Command]) -> list[Any]:
        # MULTI/EXEC: when Redis refuses the RPUSH (out of memory) nothing of the turn is applied.
        async with redis.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute()
            return replies

    @staticmethod
    def _parse(session_id: str, raw: Sequence[bytes | str]) -> list[RecentTurn]:
        turns: list[RecentTurn] = []
        for item in raw:
            try:
                stored = orjson.loads(item)
                turns.append((stored["message_id"], ConversationMessage.from_stored(stored)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                logger.warning("skipping an unreadable history entry in session %s", session_id)
        return turns

    async def recent(self, session_id: str, count: int) -> list[RecentTurn]:
        """The session's `count` newest turns, as a model is sent them."""
        async with bounded(self._timeout):
            raw = await self._redis.lrange(self._keys.history(session_id), -count, -1)
        return self._parse(session_id, raw)

    async def read(self, session_id: str, limit: int | None = None) -> list[ChatTurn]:
        start = -limit if limit else 0
        async with bounded(self._timeout):
            raw = await self._redis.lrange(self._keys.history(session_id), start, -1)
        turns = []
        for item in raw:
            try:
                turns.append(ChatTurn.model_validate_json(item))
            except ValueError:
                logger.warning("skipping an unreadable history entry in session %s", session_id)
        return turns

    async def ping(self) -> float:
        """Round trip of a PING, in milliseconds."""
        started = time.perf_counter()
        async with bounded(self._timeout):
            await self._redis.ping()
        return (time.perf_counter() - started) * 1000
