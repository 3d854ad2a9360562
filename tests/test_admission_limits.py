"""Admission's limits (admission/limits.py): the rate limit and stream slots, shared through Redis, and the
capacity cap (issue #5, item 4)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

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
AUTH = {"Authorization": f"Bearer {KEY}"}


def chat_body(user_id: str = "u1", session_id: str = "s1", **extra: object) -> dict[str, object]:
    return {"session_id": session_id, "message": "Count me", "user_id": user_id, **extra}


async def burst(client: httpx.AsyncClient, count: int, **body: object) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(
                client.post(
                    "/chat",
                    json=chat_body(**body),  # type: ignore[arg-type]
                    headers={**AUTH, "X-Forwarded-For": f"10.0.{index // 250}.{index % 250}"},
                )
                for index in range(count)
            )
        )
    )


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(response.status_code for response in responses)


async def test_a_burst_of_twice_the_limit_lets_exactly_the_limit_through(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    # Every request claims another address in X-Forwarded-For: that must not buy more requests.
    async with app_client(make_settings(api_keys=f"alice:{KEY}", rate_limit="10/minute")) as client:
        responses = await burst(client, 20)
    assert statuses(responses) == [202] * 10 + [429] * 10
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


async def test_the_rate_limit_is_per_user_within_a_key(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(api_keys=f"alice:{KEY}", rate_limit="3/minute")) as client:
        first = await burst(client, 4, user_id="u1", session_id="s1")
        second = await burst(client, 4, user_id="u2", session_id="s2")
    assert statuses(first) == [202] * 3 + [429]
    assert statuses(second) == [202] * 3 + [429]


@pytest.mark.redis
async def test_the_rate_limit_holds_across_two_processes_on_one_redis(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(api_keys=f"alice:{KEY}", rate_limit="10/minute", redis_url=redis_server.url)
    async with app_client(settings) as first, app_client(settings) as second:
        responses = await asyncio.gather(burst(first, 10), burst(second, 10))
    assert statuses(responses[0] + responses[1]) == [202] * 10 + [429] * 10
    # The limit's keys live in Redis, with an expiry: nothing is left behind for ever.
    keys = redis_server.cli("KEYS", "chat:ratelimit*").split()
    assert keys
    assert all(int(redis_server.cli("TTL", key)) > 0 for key in keys)


@pytest.mark.redis
async def test_streams_per_user_are_capped_across_instances_and_freed_when_answers_end(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(
        api_keys=f"alice:{KEY}", max_streams_per_user=2, redis_url=redis_server.url, chunk_delay=0.5
    )  # answers of about 4.5 s: running still through the five requests below on a loaded machine
    async with app_client(settings) as first, app_client(settings) as second:
        a = await first.post("/chat", json=chat_body(session_id="a"), headers=AUTH)
        b = await second.post("/chat", json=chat_body(session_id="b"), headers=AUTH)
        assert (a.status_code, b.status_code) == (202, 202)
        refused = await first.post("/chat", json=chat_body(session_id="c"), headers=AUTH)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert "Retry-After" in refused.headers
        # Another user of the same key is not held back.
        assert (await second.post("/chat", json=chat_body("u2", "d"), headers=AUTH)).status_code == 202
        # A repeated send of a running answer is not a new stream.
        again = await first.post(
            "/chat", json=chat_body(session_id="a", message_id=a.json()["message_id"]), headers=AUTH
        )
        assert again.status_code == 200

        # Stop one answer: its slot is free again at once.
        cancelled = await second.post(f"/chat/{b.json()['message_id']}/cancel", headers=AUTH)
        assert cancelled.json()["status"] == "cancelled"

        async def admitted() -> httpx.Response | None:
            retry = await first.post("/chat", json=chat_body(session_id="e"), headers=AUTH)
            return retry if retry.status_code == 202 else None

        retry = await eventually(admitted, "a new chat is admitted in the freed slot")
        assert retry.status_code == 202


class FakeClock:
    """The leases' time, moved by the test instead of waited for."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.redis
async def test_a_stream_slot_of_a_crashed_instance_expires_with_its_lease(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    clock = FakeClock()
    try:
        crashed = StreamSlots(redis, KeySpace("chat"), limit=1, lease=30.0, timeout=2, clock=clock)
        survivor = StreamSlots(redis, KeySpace("chat"), limit=1, lease=30.0, timeout=2, clock=clock)
        alice = Principal("alice")
        assert await crashed.acquire(alice, "u1", str(uuid.uuid4()))
        # The crashed instance never releases nor renews: the slot is taken until the lease runs out.
        clock.now += 29.9
        with pytest.raises(RateLimited):
            await survivor.acquire(alice, "u1", str(uuid.uuid4()))
        clock.now += 0.2
        assert await survivor.acquire(alice, "u1", str(uuid.uuid4()))
    finally:
        await redis.aclose()


@pytest.mark.redis
async def test_a_running_answers_slot_is_renewed_past_its_lease(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    clock = FakeClock()
    try:
        running = StreamSlots(redis, KeySpace("chat"), limit=1, lease=30.0, timeout=2, clock=clock)
        other = StreamSlots(redis, KeySpace("chat"), limit=1, lease=30.0, timeout=2, clock=clock)
        alice = Principal("alice")
        message_id = str(uuid.uuid4())
        assert await running.acquire(alice, "u1", message_id)
        # Renewed twice, a third of a lease apart, as the renewer does: held well past the first lease.
        for _ in range(2):
            clock.now += 10
            await running.renew()
        clock.now += 25
        with pytest.raises(RateLimited):
            await other.acquire(alice, "u1", str(uuid.uuid4()))
        # Once it ends and is released, the slot is free at once, whatever the lease.
        await running.release(message_id)
        assert await other.acquire(alice, "u1", str(uuid.uuid4()))
    finally:
        await redis.aclose()


async def test_max_active_streams_refuses_early_with_503_and_retry_after(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(max_active_streams=3, chunk_delay=0.05)) as client:
        responses = await asyncio.gather(
            *(client.post("/chat", json=chat_body(f"u{index}", f"s{index}")) for index in range(6))
        )
        assert statuses(responses) == [202] * 3 + [503] * 3
        refused = next(response for response in responses if response.status_code == 503)
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["Retry-After"] == "1"
