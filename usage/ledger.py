"""The usage ledger in Redis: per key and UTC day, every answer's tokens and cost added up by model and
user, and per session; read back as totals over a range of days (`GET /usage`).

One hash per key and day (`<prefix>:usage:{<key>}:<day>`), its fields `[model, user_id, measure]` as
JSON, each an integer summed with HINCRBY, so that any number of instances add to the same totals.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from redis_client import bounded

if TYPE_CHECKING:
    from batcher import CommandBatcher
    from redis_client import Command, RedisClient

__all__ = ["MEASURES", "UsageLedger", "UsageRecord", "UsageRow", "day_of"]

# What each answer adds to its day's totals.
MEASURES = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "answers", "counted", "cost_nanos")


def day_of(timestamp: float) -> dt.date:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date()


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one answer spent. `counted`: its tokens were counted here with tiktoken, not reported."""

    key: str
    user_id: str
    session_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    counted: bool
    cost_nanos: int
    at: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def values(self) -> tuple[int, ...]:
        """Its MEASURES, in their order."""
        return (
            self.prompt_tokens,
            self.completion_tokens,
            self.reasoning_tokens,
            1,
            int(self.counted),
            self.cost_nanos,
        )

    def measures(self) -> dict[str, int]:
        return dict(zip(MEASURES, self.values(), strict=True))


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One day's total for one model and user."""

    day: dt.date
    model: str
    user_id: str
    measures: dict[str, int]


class UsageLedger:
    """Adds records to the ledger and reads totals back; every call bounded by `timeout`."""

    def __init__(
        self,
        redis: RedisClient,
        writer: CommandBatcher,
        prefix: str,
        *,
        retention_days: int,
        session_ttl: int,
        timeout: float,
    ) -> None:
        """`writer`: the batcher the answers' own writes go through (records are added with them, packed
        by it rather than by redis-py's pipeline, which cost several times the CPU per command)."""
        self._redis = redis
        self._writer = writer
        self._prefix = prefix
        self._retention = retention_days * 86_400
        self._session_ttl = session_ttl
        self._timeout = timeout

    def day_key(self, key: str, day: dt.date) -> str:
        # The key's name as the hash tag: one key's days live on one cluster slot.
        return f"{self._prefix}:usage:{{{key}}}:{day.isoformat()}"

    def session_key(self, key: str, session_id: str) -> str:
        return f"{self._prefix}:usage:{{{key}}}:session:{session_id}"

    async def record(self, *records: UsageRecord) -> None:
        """Add the records to their keys' daily and session totals, in one round trip: summed here first
        per (key, day, model, user) and per session, so each total is one HINCRBY per batch."""
        days: dict[tuple[str, dt.date, str, str], list[int]] = {}
        sessions: dict[tuple[str, str], list[int]] = {}
        for record in records:
            values = record.values()
            _add(days, (record.key, day_of(record.at), record.model, record.user_id), values)
            if record.session_id:
                _add(sessions, (record.key, record.session_id), values)
        commands: list[Command] = []
        expiries: dict[str, int] = {}  # one EXPIRE per hash, however many of its fields were added to
        for (key, day, model, user_id), totals in days.items():
            day_key = self.day_key(key, day)
            commands += [
                ("HINCRBY", day_key, orjson.dumps([model, user_id, measure]), value)
                for measure, value in zip(MEASURES, totals, strict=True)
                if value
            ]
            expiries[day_key] = self._retention
        for (key, session_id), totals in sessions.items():
            session_key = self.session_key(key, session_id)
            commands += [
                ("HINCRBY", session_key, measure, value)
                for measure, value in zip(MEASURES, totals, strict=True)
                if value
            ]
            expiries[session_key] = self._session_ttl
        commands += [("EXPIRE", key, ttl) for key, ttl in expiries.items()]
        await self._writer.submit(commands)

    async def rows(self, key: str, days: Iterable[dt.date]) -> list[UsageRow]:
        """Every (day, model, user) total of `key` on these days, in day order."""
        wanted = list(days)
        async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
            for day in wanted:
                pipe.hgetall(self.day_key(key, day))
            hashes = await pipe.execute()
        rows: dict[tuple[dt.date, str, str], dict[str, int]] = {}
        for day, fields in zip(wanted, hashes, strict=True):
            for field, value in fields.items():
                model, user_id, measure = orjson.loads(field)
                totals = rows.setdefault((day, model, user_id), dict.fromkeys(MEASURES, 0))
                totals[measure] = int(value)
        return [UsageRow(day, model, user, totals) for (day, model, user), totals in rows.items()]

    async def session(self, key: str, session_id: str) -> dict[str, int]:
        """One session's totals (all zero for a session that spent nothing, or whose totals expired)."""
        async with bounded(self._timeout):
            fields = await self._redis.hgetall(self.session_key(key, session_id))
        totals = dict.fromkeys(MEASURES, 0)
        totals.update({_text(name): int(value) for name, value in fields.items()})
        return totals


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name


def _add(totals: dict[Any, list[int]], group: Any, values: tuple[int, ...]) -> None:
    current = totals.get(group)
    if current is None:
        totals[group] = list(values)
    else:
        for index, value in enumerate(values):
            current[index] += value
