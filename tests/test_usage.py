"""Usage accounting (usage/, issue #16): every answer's tokens and cost, recorded per key, user, session
and model in Redis, read back with `GET /usage`, and counted in `/metrics`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import tiktoken

from config import Settings
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient
from tests.sse_flows import collect

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
        body = await usage_after(first, 3, ALICE)
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
