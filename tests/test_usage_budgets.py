"""Budgets (usage/budgets.py, issue #16): `429 budget_exceeded` with `Retry-After` once a key has spent its
budget, at most one answer over it when instances race at its edge, and a fresh budget each period."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from config import Settings
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient
from tests.sse_flows import collect
from usage.budgets import BudgetExceeded, Budgets
from usage.plans import Budget

ALICE = "alice-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ALICE}"}


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, now: str) -> None:
        self.now = at(now)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def budgets_over(redis: Redis, budget: Budget, clock: Clock) -> Budgets:
    return Budgets(redis, "chat", {"alice": budget}, timeout=2.0, hold_seconds=60, clock=clock)


async def spend(budgets: Budgets, message_id: str, tokens: int) -> None:
    """One answer of alice's, admitted, started and settled."""
    async with budgets.admit("alice", message_id):
        budgets.started(message_id)
    await budgets.settle("alice", message_id, tokens, 0, at=budgets.clock())


async def test_a_spent_daily_budget_refuses_until_midnight_and_then_resets(redis: Redis) -> None:
    clock = Clock("2026-11-30T23:59:00")
    budgets = budgets_over(redis, Budget(100, "tokens", "day"), clock)
    await spend(budgets, "m1", 120)  # admitted with room left, it finishes: 20 over, recorded
    with pytest.raises(BudgetExceeded) as refused:
        await spend(budgets, "m2", 1)
    assert refused.value.retry_after == 60
    assert refused.value.headers == {"Retry-After": "60"}
    status = await budgets.status("alice")
    assert status is not None
    assert (status.spent, status.overshoot, status.period) == (120, 20, "2026-11-30")
    clock.now = at("2026-12-01T00:00:01")
    await spend(budgets, "m3", 1)  # a new day, a new budget
    status = await budgets.status("alice")
    assert status is not None
    assert (status.spent, status.period) == (1, "2026-12-01")


async def test_a_monthly_cost_budget_resets_on_the_first_of_the_month(redis: Redis) -> None:
    clock = Clock("2026-12-31T12:00:00")
    budgets = budgets_over(redis, Budget(5_000, "usd", "month"), clock)
    async with budgets.admit("alice", "m1"):
        budgets.started("m1")
    await budgets.settle("alice", "m1", tokens=10, nanos=5_000, at=clock())
    with pytest.raises(BudgetExceeded) as refused:
        await spend(budgets, "m2", 1)
    assert refused.value.retry_after == 12 * 3600
    clock.now = at("2027-01-01T00:00:00")
    await spend(budgets, "m3", 1)


async def test_a_hold_is_given_back_when_no_answer_starts(redis: Redis) -> None:
    budgets = budgets_over(redis, Budget(100, "tokens", "day"), Clock("2026-11-30T12:00:00"))
    await spend(budgets, "m1", 60)  # each running answer now holds 60: one at a time fits
    async with budgets.admit("alice", "not-started"):
        pass  # a repeated send, or a failure before the answer started
    async with budgets.admit("alice", "m2"):  # refused if the first hold were still there
        budgets.started("m2")


async def test_a_hold_of_an_instance_that_died_lapses(redis: Redis) -> None:
    clock = Clock("2026-11-30T12:00:00")
    budgets = budgets_over(redis, Budget(100, "tokens", "day"), clock)
    await spend(budgets, "m1", 60)
    async with budgets.admit("alice", "orphan"):
        budgets.started("orphan")  # started, and never settled: its instance died
    with pytest.raises(BudgetExceeded):
        await spend(budgets, "m2", 1)
    clock.now += 61
    await spend(budgets, "m3", 1)


async def test_an_answer_over_budget_gets_429_with_retry_after_and_the_running_one_finishes(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    settings = make_settings(api_keys=f"alice:{ALICE}", budgets="alice:1tokens/day")
    body = {"session_id": "s1", "message": "Spend it all", "user_id": "u1"}
    async with app_client(settings) as client:
        first = await client.post("/chat", json=body, headers=AUTH)
        events = await collect(client, first.json()["stream_url"], headers=AUTH)

        async def spent() -> dict[str, Any] | None:
            usage: dict[str, Any] = (await client.get("/usage", headers=AUTH)).json()
            return usage if usage["budget"]["spent"] > 1 else None

        usage = await eventually(spent, "the answer is settled into the budget")
        refused = await client.post("/chat", json=body, headers=AUTH)
        metrics = (await client.get("/metrics", headers=AUTH)).text
    assert first.status_code == 202
    assert events[-1].event == "end"  # no half answer: it finished past the budget
    assert usage["budget"]["overshoot"] == usage["budget"]["spent"] - 1
    assert usage["budget"]["remaining"] == 0
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(
        days=1
    )
    retry_after = int(refused.headers["Retry-After"])
    assert abs(retry_after - (midnight - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert 'chat_budget_refusals_total{key="alice"} 1.0' in metrics


@pytest.mark.redis
async def test_two_instances_racing_at_the_edge_start_one_answer_at_most(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer, redis: Redis
) -> None:
    settings = make_settings(
        api_keys=f"alice:{ALICE}", budgets="alice:1000tokens/day", redis_url=redis_server.url
    )
    # What alice spent today: 999 tokens in one answer. Room for one more answer, not two.
    seed = Budgets(redis, "chat", settings.budgets, timeout=2.0)
    await spend(seed, "seed", 999)
    async with app_client(settings) as first, app_client(settings) as second:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/chat",
                    json={"session_id": f"s{index}", "message": "Race", "user_id": "u1"},
                    headers=AUTH,
                )
                for index, client in enumerate([first, second] * 5)
            )
        )
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [202] + [429] * 9
        started = next(response for response in responses if response.status_code == 202)
        events = await collect(first, started.json()["stream_url"], headers=AUTH)

        async def settled() -> dict[str, float] | None:
            budget = (await first.get("/usage", headers=AUTH)).json()["budget"]
            return budget if budget["spent"] > 999 else None

        budget = await eventually(settled, "the answer is settled")
    assert events[-1].event == "end"
    assert budget["overshoot"] == budget["spent"] - 1000 > 0
