"""A client that follows `stream_url` right after `POST /chat` gets the answer from its `start`."""

from __future__ import annotations

import json
from collections.abc import Callable

from redis.asyncio import Redis

from config import Settings
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.conftest import AppClient


async def test_following_an_answer_between_its_start_and_first_chunk_gets_the_start(
    make_settings: Callable[..., Settings], app_client: AppClient, redis_server: RedisServer
) -> None:
    # The first chunk comes 0.25 s after `start`: the client arrives in between, once the log holds
    # the `start` and nothing more.
    settings = make_settings(redis_url=redis_server.url, chunk_delay=0.25)
    async with app_client(settings) as client, Redis.from_url(redis_server.url) as redis:
        accepted = (
            await client.post("/chat", json={"session_id": "early", "message": "Hi there", "user_id": "u"})
        ).json()

        async def logged() -> int:
            return await redis.xlen("chat:{early}:events")

        assert await eventually(logged, "the answer's start is in the log") == 1
        body = (await client.get(accepted["stream_url"])).text
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [event["type"] for event in events][:2] == ["start", "chunk"]
    assert [event["seq"] for event in events] == list(range(len(events)))
    assert events[-1]["type"] == "end"
