"""Limits a client cannot walk around (issue #13, item 3): per-key totals that rotating `user_id` does
not escape, and stateless `/v1` completions counted like every other answer, from the attacker's side."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from admission import Principal, RateLimited, StreamSlots
from config import Settings
from redis_client import KeySpace
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient

KEY = "alice-key-0123456789abcdef"
OTHER_KEY = "bob-key-0123456789abcdefgh"
KEYS = f"alice:{KEY},bob:{OTHER_KEY}"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Long enough answers that every request of a burst arrives while the first ones still run.
SLOW = {"stream_delay": 0.05, "chunk_delay": 0.05}


def completion(user: str | None = None, *, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "simulated",
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "stream": stream,
    }
    return body if user is None else {**body, "user": user}


async def completions(
    client: httpx.AsyncClient, bodies: list[dict[str, Any]], headers: dict[str, str] = AUTH
) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body, headers=headers) for body in bodies)
        )
    )


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(response.status_code for response in responses)


def openai_refusal(responses: list[httpx.Response], status: int) -> dict[str, Any]:
    refused = next(response for response in responses if response.status_code == status)
    assert "Retry-After" in refused.headers
    error: dict[str, Any] = refused.json()["error"]
    return error


async def test_concurrent_stateless_completions_above_max_active_streams_are_refused(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=KEYS, max_active_streams=5, **SLOW)) as client:
        responses = await completions(client, [completion(f"u{i}") for i in range(30)])
    assert statuses(responses) == [200] * 5 + [503] * 25
    error = openai_refusal(responses, 503)
    assert (error["code"], error["type"]) == ("overloaded", "server_error")


@pytest.mark.redis
async def test_concurrent_stateless_completions_above_max_streams_per_user_get_429(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(api_keys=KEYS, max_streams_per_user=3, redis_url=redis_server.url, **SLOW)
    async with app_client(settings) as client:
        responses = await completions(client, [completion("mallory") for _ in range(12)])
    assert statuses(responses) == [200] * 3 + [429] * 9
    error = openai_refusal(responses, 429)
    assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")


@pytest.mark.redis
async def test_rotating_user_ids_gains_no_stream_beyond_max_streams_per_key(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(
        api_keys=KEYS, max_streams_per_user=3, max_streams_per_key=4, redis_url=redis_server.url, **SLOW
    )
    async with app_client(settings) as client:
        # A new user id per request, stateless and through sessions alike.
        stateless = completions(client, [completion(f"rotated-{i}") for i in range(8)])
        stored = asyncio.gather(
            *(
                client.post(
                    "/chat",
                    json={"session_id": f"s{i}", "message": "Tell me a long story", "user_id": f"chat-{i}"},
                    headers=AUTH,
                )
                for i in range(8)
            )
        )
        first, second = await asyncio.gather(stateless, stored)
        # Another key has a budget of its own.
        bob = {"Authorization": f"Bearer {OTHER_KEY}"}
        other = await completions(client, [completion("bob")], headers=bob)
        # Once the answers end, the key's slots are free again.

        async def admitted() -> httpx.Response | None:
            again = await client.post(
                "/chat", json={"session_id": "later", "message": "Hi", "user_id": "later"}, headers=AUTH
            )
            return again if again.status_code == 202 else None

        await eventually(admitted, "a chat is admitted once the key's answers end")
    assert len([r for r in [*first, *second] if r.status_code in (200, 202)]) == 4
    assert statuses(first + second).count(429) == 12
    for response in first:
        if response.status_code == 429:
            assert response.json()["error"]["type"] == "rate_limit_error"  # OpenAI's shape
    for response in second:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"  # the service's
    assert [r.status_code for r in other] == [200]


async def test_rotating_user_ids_gains_no_request_beyond_rate_limit_per_key(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    settings = make_settings(api_keys=KEYS, rate_limit="5/minute", rate_limit_per_key="6/minute")
    async with app_client(settings) as client:
        responses = await completions(client, [completion(f"rotated-{i}", stream=False) for i in range(12)])
        # A history read is a request of the key's too.
        read = await client.get("/history/s1", headers=AUTH)
        other = await client.get("/history/s1", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert statuses(responses) == [200] * 6 + [429] * 6
    error = openai_refusal(responses, 429)
    assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")
    assert read.status_code == 429
    assert read.json()["error"]["code"] == "rate_limited"
    assert other.status_code == 404  # bob's budget is untouched: his read gets as far as the session


@pytest.mark.redis
async def test_a_refused_answer_holds_no_slot_in_either_set(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    try:
        slots = StreamSlots(redis, KeySpace("chat"), limit=1, per_key=2, lease=30.0, timeout=2)
        alice = Principal("alice")
        assert await slots.acquire(alice, "u1", "m1")
        assert not await slots.acquire(alice, "u1", "m1")  # a repeated send takes no second slot
        with pytest.raises(RateLimited, match="one user"):
            await slots.acquire(alice, "u1", "m2")
        # m2's place in the key's set was given back: u2 still fits in the key's two.
        assert await slots.acquire(alice, "u2", "m3")
        with pytest.raises(RateLimited, match="one API key"):
            await slots.acquire(alice, "u3", "m4")
        assert sorted(await redis.zrange("chat:streams:{alice}", 0, -1)) == [b"m1", b"m3"]
        await slots.release("m1")
        assert await redis.zrange("chat:streams:{alice}", 0, -1) == [b"m3"]
        assert await redis.zrange("chat:streams:{alice:u1}", 0, -1) == []
        assert await slots.acquire(alice, "u3", "m4")
    finally:
        await redis.aclose()
