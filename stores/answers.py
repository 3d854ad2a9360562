"""Each answer's state in Redis, shared by every instance: what makes sends idempotent and lets any
instance stop or follow an answer that another one runs. An answer is named by its key
(`ids.answer_key`: its message id within its API key's), so one key's ids are invisible to another."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from batcher import CommandBatcher
from ids import message_of
from models import AnswerState, AnswerStatus, FinishReason, status_of
from redis_client import Command, KeySpace, RedisClient, bounded
from stores.leases import AnswerLeases

__all__ = ["AnswerRegistry"]


class AnswerRegistry:
    """A hash per answer: its session, status and finish reason, with the history's TTL."""

    def __init__(
        self,
        redis: RedisClient,
        writer: CommandBatcher,
        keys: KeySpace,
        leases: AnswerLeases,
        *,
        ttl: int,
        timeout: float,
    ) -> None:
        self._redis = redis
        self._leases = leases
        self._writer = writer
        self._keys = keys
        self._ttl = ttl
        self._timeout = timeout

    async def claim(self, answer: str, session_id: str, user_id: str) -> AnswerState | None:
        """Record a new answer (its key), and take its lease; if the key is taken, return the existing
        answer's state instead (a lease that it already holds is left as it is)."""
        key = self._keys.message(answer)
        # HSETNX is the atomic claim: of two identical sends, on any instances, exactly one wins.
        won, *_ = await self._writer.submit(
            [
                ("HSETNX", key, "session_id", session_id),
                ("HSETNX", key, "status", "streaming"),
                ("HSETNX", key, "user_id", user_id),
                ("EXPIRE", key, self._ttl),
                self._leases.take_command(answer),
            ]
        )
        if won:
            return None
        existing = await self.get(answer)
        # The winner may not have written its status yet: it is streaming.
        return existing or AnswerState(
            message_id=message_of(answer), session_id=session_id, status="streaming"
        )

    async def release(self, answer: str) -> None:
        """Forget a claim whose answer never started (its user turn could not be stored)."""
        async with bounded(self._timeout):
            await self._redis.delete(self._keys.message(answer))

    async def release_all(self, answers: Iterable[str]) -> None:
        """Forget these answers' states in one round trip (a deleted conversation's answers)."""
        keys = [self._keys.message(answer) for answer in answers]
        if not keys:
            return
        async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:  # one DEL each: on a cluster, each answer's state is in a slot of its own
                pipe.delete(key)
            await pipe.execute()

    async def get(self, answer: str) -> AnswerState | None:
        """The state of the answer with this key, or None."""
        async with bounded(self._timeout):
            fields = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.message(answer)))
        if not fields or b"session_id" not in fields:
            return None
        finish_reason = fields.get(b"finish_reason")
        return AnswerState.model_validate(
            {
                "message_id": message_of(answer),
                "session_id": fields[b"session_id"].decode(),
                "status": fields.get(b"status", b"streaming").decode(),
                "finish_reason": finish_reason.decode() if finish_reason else None,
            }
        )

    async def user_of(self, answer: str) -> str:
        """Who asked for the answer ("" for a state written before this was recorded)."""
        async with bounded(self._timeout):
            value = await self._redis.hget(self._keys.message(answer), "user_id")
        return cast(bytes, value).decode() if value else ""

    def keep_alive_command(self, answer: str) -> Command:
        return ("EXPIRE", self._keys.message(answer), self._ttl)

    def finished_commands(self, answer: str, finish_reason: FinishReason) -> list[Command]:
        status: AnswerStatus = status_of(finish_reason)
        return [("HSET", self._keys.message(answer), "status", status, "finish_reason", finish_reason)]
