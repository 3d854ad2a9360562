"""Budgets (`BUDGETS`): how much each API key may spend per UTC day or month, in tokens or cost.

Admission holds a place for an answer in its key's budget before the answer starts, and the answer's
spend is settled into the budget when it ends, both by Lua scripts in Redis, so that every instance
sees one budget and two cannot both spend its last token. An answer that would start over budget is
refused (`BudgetExceeded`, 429 with `Retry-After` until the period resets); one that is running when the
budget runs out finishes, and its overshoot is recorded.

At the edge of a budget, each running answer holds the key's mean spend per answer in this period (in
earlier periods until one has finished in this one; one token for a key that has never spent): a new
answer starts only while what was spent plus what the running answers hold is under the budget, so
concurrent answers overshoot it by about one answer at most. A hold lapses after `hold_seconds`, so that
an instance that died cannot keep a budget's room for ever.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from errors import ServiceError
from redis_client import bounded
from usage.accounting import charged_to

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from redis_client import RedisClient
    from usage.plans import Budget

__all__ = ["BudgetExceeded", "BudgetStatus", "Budgets", "Clock", "period_bounds"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
# How long a key's spend across periods is kept after its last answer (for the first answers' holds).
LIFETIME_TTL = 62 * 86_400

# KEYS: the period's spend hash, its holds (sorted set scored by expiry), the key's spend across periods.
# ARGV: now, budget, hold seconds, message id, ttl. Returns 1 if the answer may start, else 0.
HOLD = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local answers = tonumber(redis.call('HGET', KEYS[1], 'answers') or '0')
local estimate = 1
if answers > 0 then
  estimate = math.max(1, spent / answers)
else
  local before = redis.call('HMGET', KEYS[3], 'spent', 'answers')
  if tonumber(before[2] or '0') > 0 then estimate = math.max(1, tonumber(before[1]) / tonumber(before[2])) end
end
if spent + redis.call('ZCARD', KEYS[2]) * estimate >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[3]), ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""
# KEYS: as HOLD. ARGV: message id, amount spent, budget, ttl, the ttl of the spend across periods.
# Returns the period's spend after it.
SETTLE = """
redis.call('ZREM', KEYS[2], ARGV[1])
local spent = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'answers', 1)
local over = spent - tonumber(ARGV[3])
if over > 0 then redis.call('HSET', KEYS[1], 'overshoot', over) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[3], 'spent', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'answers', 1)
redis.call('EXPIRE', KEYS[3], ARGV[5])
return spent
"""


class BudgetExceeded(ServiceError):
    """The key has spent its budget for the period."""

    status = 429
    code = "budget_exceeded"

    def __init__(self, budget: Budget, retry_after: int) -> None:
        super().__init__(
            f"This API key has spent its budget ({budget.describe()}); it resets in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


def period_bounds(budget: Budget, now: float) -> tuple[str, dt.datetime, dt.datetime]:
    """The period `now` falls in: its id (`2026-11-30`, `2026-11`), its start and its end, in UTC."""
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    if budget.period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.date().isoformat(), start, start + dt.timedelta(days=1)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return start.strftime("%Y-%m"), start, end


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A key's budget in the current period, for `GET /usage`."""

    budget: Budget
    period: str
    resets_at: dt.datetime
    spent: int
    overshoot: int


@dataclass(slots=True)
class _Hold:
    key: str
    period: str
    end: dt.datetime
    budget: Budget
    started: bool = False


@dataclass(slots=True)
class Budgets:
    """The configured budgets over Redis. `table` maps key names (and `default`) to budgets."""

    redis: RedisClient
    prefix: str
    table: dict[str, Budget]
    timeout: float
    hold_seconds: float = 600.0
    clock: Clock = time.time
    # Told the key's name when an answer is refused (the `/metrics` counter).
    refused: Callable[[str], None] = lambda _: None
    _holds: dict[str, _Hold] = field(default_factory=dict)
    _scripts: tuple[AsyncScript, AsyncScript] = field(init=False)

    def __post_init__(self) -> None:
        # Loaded by their SHA (EVALSHA), sent whole only when Redis does not have them yet.
        self._scripts = (self.redis.register_script(HOLD), self.redis.register_script(SETTLE))

    def budget_for(self, key: str) -> Budget | None:
        return self.table.get(key) or self.table.get("default")

    def _keys(self, key: str, period: str) -> list[str]:
        spend = f"{self.prefix}:budget:{{{key}}}:{period}"
        # Across periods: the first answers of a period hold what answers cost before.
        return [spend, f"{spend}:holds", f"{self.prefix}:budget:{{{key}}}:all"]

    @staticmethod
    def _ttl(end: dt.datetime, now: float) -> int:
        # Kept a day past the period, so that GET /usage can show a period that has just ended.
        return math.ceil(end.timestamp() - now) + 86_400

    @asynccontextmanager
    async def admit(self, key: str, message_id: str) -> AsyncIterator[None]:
        """Admission's hook: refuse the answer if its key is over budget, hold room for it, and charge
        the answer started inside the block to `key`. A hold not taken up by a started answer (a repeated
        send, a failure) is given back when the block ends. `message_id`: the answer's key
        (`ids.answer_key`), as the answer's observers name it."""
        budget = self.budget_for(key)
        if budget is not None:
            await self._hold(key, budget, message_id)
        try:
            with charged_to(key):
                yield
        finally:
            hold = self._holds.get(message_id)
            if hold is not None and not hold.started:
                del self._holds[message_id]
                await self._release(hold, message_id)

    async def _hold(self, key: str, budget: Budget, message_id: str) -> None:
        now = self.clock()
        period, _, end = period_bounds(budget, now)
        async with bounded(self.timeout):
            allowed = await self._scripts[0](
                keys=self._keys(key, period),
                args=[now, budget.amount, self.hold_seconds, message_id, self._ttl(end, now)],
            )
        if not allowed:
            self.refused(key)
            raise BudgetExceeded(budget, max(1, math.ceil(end.timestamp() - now)))
        self._holds[message_id] = _Hold(key, period, end, budget)

    async def _release(self, hold: _Hold, message_id: str) -> None:
        try:
            async with bounded(self.timeout):
                await self.redis.zrem(self._keys(hold.key, hold.period)[1], message_id)
        except Exception:  # it lapses after hold_seconds anyway
            logger.warning("could not give back the budget hold of message_id=%s", message_id)

    def started(self, message_id: str) -> None:
        """The held answer has started: its hold is settled when it ends, not given back."""
        hold = self._holds.get(message_id)
        if hold is not None:
            hold.started = True

    async def settle(self, key: str, message_id: str, tokens: int, nanos: int, *, at: float) -> None:
        """Add what an answer spent to its key's budget, in the period it was admitted in (or the
        period of `at` if it held no place: the budget was set while it ran)."""
        hold = self._holds.pop(message_id, None)
        budget = hold.budget if hold is not None else self.budget_for(key)
        if budget is None:
            return
        if hold is not None:
            period, end = hold.period, hold.end
        else:
            period, _, end = period_bounds(budget, at)
        amount = nanos if budget.unit == "usd" else tokens
        async with bounded(self.timeout):
            spent = cast(
                int,
                await self._scripts[1](
                    keys=self._keys(key, period),
                    args=[message_id, amount, budget.amount, self._ttl(end, self.clock()), LIFETIME_TTL],
                ),
            )
        if spent > budget.amount:
            logger.warning(
                "key %s is over its budget (%s) by %d after message_id=%s",
                key,
                budget.describe(),
                spent - budget.amount,
                message_id,
            )

    async def status(self, key: str) -> BudgetStatus | None:
        budget = self.budget_for(key)
        if budget is None:
            return None
        period, _, end = period_bounds(budget, self.clock())
        async with bounded(self.timeout):
            spent, overshoot = await self.redis.hmget(self._keys(key, period)[0], ["spent", "overshoot"])
        return BudgetStatus(budget, period, end, int(spent or 0), int(overshoot or 0))
