"""Budgets (usage/budgets.py, issue #16): `429 budget_exceeded` with `Retry-After` once a key has spent its
budget, at most one answer over it when instances race at its edge, and a fresh budget each period."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from redis.asyncio import Redis

from config import Settings
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient
from tests.sse_flows import collect
from usage.budgets import BudgetExceeded, Budgets
from usage.plans import Budget

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
CAROL = "carol-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ALICE}"}
Json = dict[str, Any]


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


# --- Budgets as the settings give them, end to end -----------------------------------------------


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def send(client: httpx.AsyncClient, key: str, session_id: str) -> httpx.Response:
    body = {"session_id": session_id, "message": "Spend some", "user_id": "u1"}
    return await client.post("/chat", json=body, headers=auth(key))


async def answered(client: httpx.AsyncClient, key: str, session_id: str) -> None:
    """A chat that is let in, followed to its end."""
    response = await send(client, key, session_id)
    assert response.status_code == 202, response.text
    events = await collect(client, response.json()["stream_url"], headers=auth(key))
    assert events[-1].event == "end"


async def budget_once(client: httpx.AsyncClient, key: str, spent_over: float) -> Json:
    """The key's budget in GET /usage once more than `spent_over` of it is settled."""

    async def settled() -> Json | None:
        budget: Json = (await client.get("/usage", headers=auth(key))).json()["budget"]
        return budget if budget["spent"] > spent_over else None

    return await eventually(settled, f"more than {spent_over} of the budget is settled")


def seconds_to(resets_at: str) -> float:
    return (dt.datetime.fromisoformat(resets_at) - dt.datetime.now(dt.UTC)).total_seconds()


async def test_the_default_budget_is_each_keys_without_its_own_and_not_a_key_with_its_own(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    settings = make_settings(
        api_keys=f"alice:{ALICE},bob:{BOB},carol:{CAROL}",
        budgets="alice:1000000tokens/day,default:1tokens/day",
    )
    async with app_client(settings) as client:
        carol_before = (await client.get("/usage", headers=auth(CAROL))).json()["budget"]
        await answered(client, BOB, "s-bob")
        await answered(client, ALICE, "s-alice")
        bob = await budget_once(client, BOB, spent_over=1)
        alice = await budget_once(client, ALICE, spent_over=0)
        bob_again = await send(client, BOB, "s-bob")
        alice_again = await send(client, ALICE, "s-alice")
        # The default is a budget per key, not one shared by the keys without their own.
        carol = await send(client, CAROL, "s-carol")
    assert (carol_before["limit"], carol_before["unit"], carol_before["spent"]) == (1, "tokens", 0)
    assert (bob["limit"], bob["unit"], bob["period"]) == (1, "tokens", "day")
    assert bob_again.status_code == 429
    assert bob_again.json()["error"]["code"] == "budget_exceeded"
    assert "1 tokens per day" in bob_again.json()["error"]["message"]
    assert alice["limit"] == 1_000_000
    assert alice_again.status_code == 202, alice_again.text  # over the default, well within her own
    assert carol.status_code == 202, carol.text


async def test_a_usd_budget_from_the_settings_is_charged_each_answers_priced_cost(
    openai_settings: Callable[..., Settings], model_server: OpenAIServer, app_client: AppClient
) -> None:
    # Each answer: 1,100 prompt and 700 completion tokens at 1.50 and 6 USD per million, 0.00585 USD.
    model_server.script(Reply(tokens=("Hi",), usage=(1100, 700)), Reply(tokens=("Hi",), usage=(1100, 700)))
    settings = openai_settings(
        api_keys=f"alice:{ALICE}", prices="test-model:1.50/6", budgets="alice:0.01usd/day"
    )
    async with app_client(settings) as client:
        await answered(client, ALICE, "s1")
        first = await budget_once(client, ALICE, spent_over=0)
        await answered(client, ALICE, "s1")  # 0.00585 of 0.01 spent: room for one more
        second = await budget_once(client, ALICE, spent_over=first["spent"])
        refused = await send(client, ALICE, "s1")
    assert first["spent"] == pytest.approx(0.00585)
    assert (second["limit"], second["unit"], second["period"]) == (0.01, "usd", "day")
    assert second["spent"] == pytest.approx(0.0117)
    assert second["overshoot"] == pytest.approx(0.0017)  # the second answer finished past the budget
    assert second["remaining"] == 0
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "code": "budget_exceeded",
        "message": "This API key has spent its budget (0.01 USD per day); "
        f"it resets in {refused.headers['Retry-After']}s",
    }
    assert abs(int(refused.headers["Retry-After"]) - seconds_to(second["resets_at"])) < 5
    assert len(model_server.requests) == 2  # the refused answer never reached the model


async def test_the_openai_api_refuses_over_budget_as_a_rate_limit_error_with_retry_after(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    settings = make_settings(api_keys=f"alice:{ALICE}", budgets="alice:1tokens/day")
    hello: list[Any] = [{"role": "user", "content": "Hello!"}]
    async with app_client(settings) as http:
        # The SDK is typed for httpx2's client but takes an httpx one, as bound to the app here.
        client = AsyncOpenAI(
            http_client=cast(Any, http), base_url="http://test/v1", api_key=ALICE, max_retries=0
        )
        await client.chat.completions.create(model="simulated", messages=hello)
        budget = await budget_once(http, ALICE, spent_over=1)
        with pytest.raises(openai.RateLimitError) as completion:
            await client.chat.completions.create(model="simulated", messages=hello)
        with pytest.raises(openai.RateLimitError) as streamed:
            await client.chat.completions.create(model="simulated", messages=hello, stream=True)
        with pytest.raises(openai.RateLimitError) as response:
            await client.responses.create(model="simulated", input="Hello!")
    for refused in (completion.value, streamed.value, response.value):
        assert refused.status_code == 429
        body = refused.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert (refused.type, refused.code) == ("rate_limit_error", "budget_exceeded")
        assert "1 tokens per day" in body["error"]["message"]
        assert abs(int(refused.response.headers["Retry-After"]) - seconds_to(budget["resets_at"])) < 5
