"""Answer leases (issue #13, item 5): every stored answer that runs holds a lease, renewed by the
instance running it; an answer whose lease has expired has lost its instance (it died, or could not
write its end) and is ended by whichever instance next sees it.

The leases are one sorted set, `chat:leases`: an answer's key (`ids.answer_key`) -> when its lease
expires (epoch milliseconds, by the instances' clocks, so a lease is much longer than their skew).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from batcher import CommandBatcher
from redis_client import Command, KeySpace

__all__ = ["AnswerLeases"]

# How many expired leases one look at the set returns.
EXPIRED_PAGE = 100


class AnswerLeases:
    """The commands that take, renew and give back leases, and the look-ups of expired ones."""

    def __init__(
        self,
        keys: KeySpace,
        reader: CommandBatcher,
        *,
        seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = keys.leases
        self._reader = reader
        self.seconds = seconds
        self._clock = clock

    def _expiry(self) -> int:
        return int((self._clock() + self.seconds) * 1000)

    def take_command(self, answer: str) -> Command:
        """A new answer's lease (NX: a repeated claim does not extend an existing one)."""
        return ("ZADD", self._key, "NX", self._expiry(), answer)

    def renew_commands(self, answers: Sequence[str]) -> list[Command]:
        """Extend these answers' leases, and read them back: a None score is an answer that another
        instance has ended (its lease had expired), whose lease is not taken again (XX)."""
        expiry = self._expiry()
        members = [value for answer in answers for value in (expiry, answer)]
        return [("ZADD", self._key, "XX", *members), ("ZMSCORE", self._key, *answers)]

    def release_command(self, answer: str) -> Command:
        return ("ZREM", self._key, answer)

    async def expired(self, count: int = EXPIRED_PAGE) -> list[str]:
        """Up to `count` answers (their keys) whose lease has expired, oldest first."""
        now = int(self._clock() * 1000)
        (members,) = await self._reader.submit(
            [("ZRANGE", self._key, "-inf", now, "BYSCORE", "LIMIT", 0, count)]
        )
        return [bytes(member).decode() for member in members]

    async def live(self, answer: str) -> bool:
        """Whether the answer holds a lease that has not expired."""
        (score,) = await self._reader.submit([("ZSCORE", self._key, answer)])
        return score is not None and float(score) > self._clock() * 1000
