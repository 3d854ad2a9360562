"""Usage accounting (usage/, issue #16): every answer's tokens and cost, recorded per key, user, session
and model in Redis, read back with `GET /usage`, and counted in `/metrics`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import tiktoken
from fastapi import Request

from config import Settings
from protocols.deps import get_budgets, get_usage, services_of
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient
from tests.sse_flows import collect
from usage.accounting import OPEN_KEY
from usage.budgets import Budgets
from usage.ledger import UsageLedger, UsageRecord

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"
KEYS = f"alice:{ALICE},bob:{BOB}"
Json = dict[str, Any]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def chat(client: httpx.AsyncClient, key: str | None = None, **fields: str) -> list[Json]:
    """Send a chat and follow its answer to the end; return its events."""
    headers = auth(key) if key else {}
    body = {"session_id": "s1", "message": "How many tokens is this?", "user_id": "u1", **fields}
    response = await client.post("/chat", json=body, headers=headers)
    assert response.status_code == 202, response.text
    events = await collect(client, response.json()["stream_url"], headers=headers)
    return [event.json() for event in events]


async def usage_after(client: httpx.AsyncClient, answers: int, key: str | None = None, **params: str) -> Json:
    """GET /usage once it has recorded `answers` answers (they are recorded just after they end)."""

    async def recorded() -> Json | None:
        response = await client.get("/usage", params=params, headers=auth(key) if key else {})
        assert response.status_code == 200, response.text
        body: Json = response.json()
        return body if body["totals"]["answers"] >= answers else None

    return await eventually(recorded, f"{answers} answers are recorded")


def metric(text: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, f"{line_start} in /metrics"
    return values[0]


# A short message is counted on the event loop; a long one (more new text than the recorder's
# INLINE_CHARS) in a worker thread: both must count the same way.
@pytest.mark.parametrize(
    "message", ["How many tokens is this?", "Count every token of this long message, please. " * 60]
)
async def test_an_answer_without_reported_usage_is_counted_with_tiktoken(
    make_settings: Callable[..., Settings], app_client: AppClient, message: str
) -> None:
    async with app_client(make_settings(system_prompt="Be brief.")) as client:
        events = await chat(client, message=message)
        body = await usage_after(client, 1)
        metrics = (await client.get("/metrics")).text
    # The simulated model's encoding is o200k_base (tiktoken does not know it); OpenAI's accounting:
    # 3 tokens per message besides its role and content, and 3 that prime the reply.
    encoding = tiktoken.get_encoding("o200k_base")

    def tokens(text: str) -> int:
        return len(encoding.encode(text))

    prompt = 3 + (3 + tokens("system") + tokens("Be brief.")) + (3 + tokens("user") + tokens(message))
    completion = tokens(events[-1]["content"])
    assert events[-1]["type"] == "end"
    assert "usage" not in events[-1]  # the simulated model reports none: the count is ours
    assert body["key"] == "-"
    assert body["totals"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "reasoning_tokens": 0,
        "total_tokens": prompt + completion,
        "answers": 1,
        "counted_answers": 1,
        "cost_usd": 0.0,
    }
    assert [row["model"] for row in body["by_model"]] == ["simulated"]
    assert (
        metric(metrics, 'chat_tokens_total{key="-",kind="prompt",model="simulated",source="counted"}')
        == prompt
    )
    assert metric(metrics, 'chat_accounted_answers_total{key="-",model="simulated"}') == 1


async def test_reported_usage_is_recorded_as_reported_and_priced(
    openai_settings: Callable[..., Settings], model_server: OpenAIServer, app_client: AppClient
) -> None:
    model_server.script(Reply(tokens=("Hi", " there"), usage=(1100, 700), reasoning_tokens=300))
    settings = openai_settings(prices="test-model:1.50/6", api_keys=KEYS)
    async with app_client(settings) as client:
        await chat(client, ALICE)
        body = await usage_after(client, 1, ALICE, session_id="s1")
        metrics = (await client.get("/metrics", headers=auth(ALICE))).text
    expected_cost = (1100 * 1.50 + 700 * 6) / 1_000_000
    totals = {
        "prompt_tokens": 1100,
        "completion_tokens": 700,
        "reasoning_tokens": 300,
        "total_tokens": 1800,
        "answers": 1,
        "counted_answers": 0,
        "cost_usd": pytest.approx(expected_cost),
    }
    assert body["key"] == "alice"
    assert body["totals"] == totals
    assert body["session"] == totals
    assert body["by_model"] == [{"model": "test-model", **totals}]
    assert body["by_user"] == [{"user_id": "u1", **totals}]
    assert (
        metric(
            metrics, 'chat_tokens_total{key="alice",kind="completion",model="test-model",source="reported"}'
        )
        == 700
    )
    assert metric(metrics, 'chat_cost_usd_total{key="alice",model="test-model"}') == pytest.approx(
        expected_cost
    )


@pytest.mark.redis
async def test_totals_by_key_and_user_add_up_across_two_instances(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(api_keys=KEYS, redis_url=redis_server.url)
    async with app_client(settings) as first, app_client(settings) as second:
        one = await chat(first, ALICE, user_id="u1", session_id="s1")
        two = await chat(second, ALICE, user_id="u2", session_id="s2")
        three = await chat(second, ALICE, user_id="u2", session_id="s2")
        # Bob's, on each instance too: each key's totals hold its own answers only.
        await chat(first, BOB, user_id="u2", session_id="b1")
        await chat(second, BOB, user_id="u2", session_id="b2")
        bobs = await usage_after(second, 2, BOB)  # first: Bob's are recorded before Alice's are read
        body = await usage_after(first, 3, ALICE)
    assert (body["key"], body["totals"]["answers"]) == ("alice", 3)
    assert (bobs["key"], bobs["totals"]["answers"]) == ("bob", 2)
    assert {row["user_id"]: row["answers"] for row in bobs["by_user"]} == {"u2": 2}
    answers = {"u1": 1, "u2": 2}
    assert {row["user_id"]: row["answers"] for row in body["by_user"]} == answers
    completion = {row["user_id"]: row["completion_tokens"] for row in body["by_user"]}
    assert completion["u1"] > 0
    assert sum(completion.values()) == body["totals"]["completion_tokens"]
    assert len(body["by_day"]) == 1
    assert body["by_day"][0]["answers"] == 3
    assert all(events[-1]["type"] == "end" for events in (one, two, three))


async def test_usage_shows_another_key_nothing_of_yours(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        await chat(client, ALICE)
        mine = await usage_after(client, 1, ALICE)
        theirs = (await client.get("/usage", params={"session_id": "s1"}, headers=auth(BOB))).json()
        nobody = await client.get("/usage")
    assert mine["totals"]["answers"] == 1
    assert theirs["key"] == "bob"
    assert theirs["totals"]["answers"] == 0
    assert theirs["by_user"] == []
    assert theirs["session"]["answers"] == 0  # alice's session, asked for by bob: nothing of it
    assert nobody.status_code == 401


async def test_a_range_that_ends_before_it_starts_is_refused(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        backwards = await client.get("/usage", params={"start": "2026-11-30", "end": "2026-11-01"})
        too_long = await client.get("/usage", params={"start": "2024-01-01", "end": "2026-11-01"})
        bad_session = await client.get("/usage", params={"session_id": "a b"})
        first_days = await client.get("/usage", params={"end": "0001-01-05"})  # 30 days back: before year 1
    assert backwards.status_code == 400
    assert backwards.json()["error"]["code"] == "invalid_range"
    assert too_long.status_code == 400
    assert bad_session.status_code == 422
    assert first_days.status_code == 200
    assert first_days.json()["start"] == "0001-01-01"


# --- Ranges of days ------------------------------------------------------------------------------


def at(moment: str) -> float:
    """A UTC time, as a record's `at`."""
    return dt.datetime.fromisoformat(moment).replace(tzinfo=dt.UTC).timestamp()


def spent(moment: str, user_id: str, prompt_tokens: int, model: str = "simulated") -> UsageRecord:
    """One answer of the open service's key that ended at `moment` (UTC), as the recorder adds it."""
    return UsageRecord(
        key=OPEN_KEY,
        user_id=user_id,
        session_id="",
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=1,
        reasoning_tokens=0,
        counted=False,
        cost_nanos=0,
        at=at(moment),
    )


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The host's zone 14 hours ahead of UTC, so that a day taken in local time would be the wrong one."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "XYZ-14"  # POSIX: local time is UTC+14
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@asynccontextmanager
async def app_on(
    app_client: AppClient, settings: Settings, today: str | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, UsageLedger]]:
    """The app, and its own ledger (handed over on a first request) to add answers that ended on chosen
    days, so that no test waits for real days to pass; `today` (UTC): the clock `GET /usage` reads."""
    ledgers: list[UsageLedger] = []

    async def ledger_of(request: Request) -> UsageLedger:
        ledgers.append(services_of(request).usage)
        return ledgers[-1]

    async def budgets_of(request: Request) -> Budgets:
        budgets = services_of(request).budgets
        return budgets if today is None else dataclasses.replace(budgets, clock=lambda: at(today))

    async with app_client(settings, overrides={get_usage: ledger_of, get_budgets: budgets_of}) as client:
        assert (await client.get("/usage")).status_code == 200
        yield client, ledgers[0]


async def usage_of(client: httpx.AsyncClient, **params: str) -> Json:
    response = await client.get("/usage", params=params)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


def days(body: Json) -> list[tuple[str, int, int]]:
    """Each day of the answer: its date, prompt tokens and answers."""
    return [(row["day"], row["prompt_tokens"], row["answers"]) for row in body["by_day"]]


@pytest.mark.usefixtures("far_from_utc")
async def test_usage_over_a_range_has_the_days_inside_it_and_none_outside_it(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_on(app_client, make_settings()) as (client, ledger):
        await ledger.record(
            spent("2026-11-28T23:59:59", "early", 1000, model="old-model"),  # the last second before
            spent("2026-11-29T00:00:00", "u1", 10),  # the first second of the range
            spent("2026-11-30T12:00:00", "u2", 20),
            spent("2026-11-30T23:59:59", "u1", 30),  # its last second
            spent("2026-12-01T00:00:00", "late", 5000, model="new-model"),  # the first second after
        )
        inside = await usage_of(client, start="2026-11-29", end="2026-11-30")
        after = await usage_of(client, start="2026-12-01", end="2026-12-01")
        around = await usage_of(client, start="2026-11-28", end="2026-12-01")
    assert (inside["start"], inside["end"]) == ("2026-11-29", "2026-11-30")
    assert days(inside) == [("2026-11-29", 10, 1), ("2026-11-30", 50, 2)]
    assert (inside["totals"]["prompt_tokens"], inside["totals"]["answers"]) == (60, 3)
    assert [row["model"] for row in inside["by_model"]] == ["simulated"]
    assert [(row["user_id"], row["answers"]) for row in inside["by_user"]] == [("u1", 2), ("u2", 1)]
    # The days left out are in the ledger all the same: a range that takes them in shows them.
    assert days(after) == [("2026-12-01", 5000, 1)]
    assert [row["user_id"] for row in after["by_user"]] == ["late"]
    assert days(around) == [
        ("2026-11-28", 1000, 1),
        ("2026-11-29", 10, 1),
        ("2026-11-30", 50, 2),
        ("2026-12-01", 5000, 1),
    ]
    assert around["totals"]["answers"] == 5


@pytest.mark.usefixtures("far_from_utc")
async def test_usage_without_a_range_is_the_30_days_to_today_by_the_services_clock(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_on(app_client, make_settings(), today="2026-11-30T12:00:00") as (client, ledger):
        await ledger.record(
            spent("2026-10-31T23:59:59", "u1", 1000),  # 30 days before today: one day too many
            spent("2026-11-01T00:00:00", "u1", 10),  # 29 days before: the first day shown
            spent("2026-11-30T23:59:59", "u1", 20),  # today's last second
            spent("2026-12-01T00:00:00", "u1", 5000),  # tomorrow
        )
        default = await usage_of(client)
        from_start = await usage_of(client, start="2026-10-31")  # to today
    assert (default["start"], default["end"]) == ("2026-11-01", "2026-11-30")
    assert days(default) == [("2026-11-01", 10, 1), ("2026-11-30", 20, 1)]
    assert default["totals"]["prompt_tokens"] == 30
    assert from_start["end"] == "2026-11-30"
    assert days(from_start) == [("2026-10-31", 1000, 1), ("2026-11-01", 10, 1), ("2026-11-30", 20, 1)]
