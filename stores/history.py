"""A session's turns: one Redis list per session, one JSON object per turn, oldest first, with a TTL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from redis.asyncio import Redis, RedisCluster

from batcher import CommandBatcher
from conversation import ConversationMessage
from models import ChatTurn
from redis_client import Command, KeySpace, RedisClient, RedisUnavailable, bounded, describe
from stores.outbox import outbox_append

__all__ = ["HistoryPage", "HistoryStore", "RecentTurn"]

logger = logging.getLogger(__name__)

# (message_id, the turn as a model is sent it) of a stored turn, as the context for an answer needs it.
RecentTurn = tuple[str, ConversationMessage]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Some of a session's turns, as stored (one JSON object each, oldest first), and the cursor to the
    turns before them: their position in the stored list, None when none is older."""

    turns: list[bytes]
    next_before: int | None


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

    def append_commands(self, session_id: str, *turns: ChatTurn, owner: str | None = None) -> list[Command]:
        """RPUSH, LTRIM and EXPIRE of the turns: the key never exists without its TTL. The session's
        owner record (if keys are on) is refreshed with it, so it never expires before the turns it
        guards (#13, item 4); the outbox's entries name the owner (`owner`, the API key's name)."""
        key = self._keys.history(session_id)
        stored = [turn.model_dump_json(exclude_none=True) for turn in turns]  # once, for both
        pushed: list[Command] = [("RPUSH", key, *stored)]
        return [
            *(pushed if turns else []),
            ("LTRIM", key, -self._max_messages, -1),
            ("EXPIRE", key, self._ttl),
            ("EXPIRE", self._keys.owner(session_id), self._ttl),
            # The durable outbox, in the same transaction: the archiver copies it to SQL (issue #15).
            *(outbox_append(self._keys, session_id, turn, owner) for turn in stored),
        ]

    def replace_commands(
        self, session_id: str, turns: Sequence[Mapping[str, Any]], dropped: Sequence[Mapping[str, Any]]
    ) -> list[Command]:
        """The history becomes these stored turns (another branch's, issue #15), for `append`'s `first`;
        the `dropped` ones wait in the off-branch list (with the history's TTL) until the record has them."""
        key, off = self._keys.history(session_id), self._keys.off_branch(session_id)
        kept: list[Command] = [("RPUSH", key, *(orjson.dumps(turn) for turn in turns))] if turns else []
        moved: list[Command] = [("RPUSH", off, *(orjson.dumps(turn) for turn in dropped))] if dropped else []
        return [*moved, ("EXPIRE", off, self._ttl), ("DEL", key), *kept]

    def clear_commands(self, session_id: str) -> list[Command]:
        return [("DEL", self._keys.history(session_id), self._keys.off_branch(session_id))]

    async def off_branch(self, session_id: str) -> list[dict[str, Any]]:
        """The turns branch switches took out of the history that the record may not have yet."""
        async with bounded(self._timeout):
            raw = await self._redis.lrange(self._keys.off_branch(session_id), 0, -1)
        return [orjson.loads(item) for item in raw]

    async def append(
        self,
        session_id: str,
        turns: Sequence[ChatTurn],
        *,
        along: Sequence[Command] = (),
        recent: int = 0,
        first: Sequence[Command] = (),
        owner: str | None = None,
    ) -> tuple[list[Any], list[RecentTurn]]:
        """Store the turns in one transaction with `along` (another store's commands that must see the
        same moment, such as the replay log's position) and after `first` (`replace_commands`); return
        the replies of `along` and the session's `recent` newest turns, these included.

        With `wait_replicas`, return only once that many replicas hold the turn (WAIT), or every attached
        replica if fewer are attached, so a failover cannot lose it.
        """
        appended = [*first, *self.append_commands(session_id, *turns, owner=owner)]
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

    def newest_soon(self, session_id: str, count: int) -> asyncio.Future[list[Any]]:
        """The `count` newest turns, read in the writer's next batch (a round trip shared with other
        requests, and no connection of its own: every message reads where its branch ends, issue #15),
        queued now; `message_ids` reads the reply."""
        return self._writer.submit([("LRANGE", self._keys.history(session_id), -count, -1)])

    @staticmethod
    def message_ids(session_id: str, replies: Sequence[Any]) -> list[str]:
        """The message ids of `newest_soon`'s turns, oldest first (an unreadable entry is skipped)."""
        ids: list[str] = []
        for item in replies[0]:
            try:
                message_id = orjson.loads(item)["message_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message_id = None
            if isinstance(message_id, str):
                ids.append(message_id)
            else:
                logger.warning("skipping an unreadable history entry in session %s", session_id)
        return ids

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

    async def read_page(
        self, session_id: str, *, limit: int, before: int | None = None, max_bytes: int
    ) -> HistoryPage:
        """Up to `limit` turns before position `before` (the newest without it), and no more of them
        than fit in `max_bytes` (always one): the newest are kept. The turns stay as stored, so a page
        costs the event loop a parse check and a copy, never a model per turn (issue #13).

        Positions count from the oldest stored turn, so a cursor holds while turns are appended; when
        the oldest are trimmed (MAX_HISTORY_MESSAGES) between two pages, the next page repeats as many
        turns as were trimmed, and skips none."""
        key = self._keys.history(session_id)
        async with bounded(self._timeout):
            if before is None:
                # No MULTI: out of memory, Redis refuses even the reads queued in one. The length, read
                # after the turns, can only be longer (a turn appended between): that moves the cursor
                # later, so the next page repeats that many turns and skips none.
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.lrange(key, -limit, -1)
                    pipe.llen(key)
                    raw, length = await pipe.execute()
                start = max(0, int(length) - len(raw))
            elif before == 0:  # nothing is before the oldest turn (and LRANGE 0 -1 would be all)
                start, raw = 0, []
            else:
                start = max(0, before - limit)
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.lrange(key, start, before - 1)
                    pipe.llen(key)
                    raw, length = await pipe.execute()
                if before > int(length):  # a cursor past the end (cleared, or trimmed): from the end
                    start = max(0, int(length) - limit)
                    raw = await self._redis.lrange(key, start, int(length) - 1)
        return self.fit(session_id, raw, start, max_bytes)

    @staticmethod
    def fit(session_id: str, raw: Sequence[bytes], start: int, max_bytes: int) -> HistoryPage:
        """The newest of `raw` (stored from position `start` on) that fit in `max_bytes`, and readable."""
        kept: list[bytes] = []
        size = 0
        oldest = start
        for index in range(len(raw) - 1, -1, -1):
            item = raw[index]
            if kept and size + len(item) > max_bytes:
                oldest = start + index + 1
                break
            try:
                readable = isinstance(orjson.loads(item), dict)
            except orjson.JSONDecodeError:
                readable = False
            if not readable:
                logger.warning("skipping an unreadable history entry in session %s", session_id)
                continue
            kept.append(item)
            size += len(item)
        kept.reverse()
        return HistoryPage(kept, oldest or None)

    async def ping(self) -> float:
        """Round trip of a PING, in milliseconds."""
        started = time.perf_counter()
        async with bounded(self._timeout):
            await self._redis.ping()
        return (time.perf_counter() - started) * 1000
