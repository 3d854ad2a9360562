"""A client that follows `stream_url` right after `POST /chat` gets the answer from its `start`."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Callable, Sequence

import httpx
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from app import create_app
from config import Settings
from conversation import ConversationMessage
from generation import GenerationOptions
from parts import Delta
from providers.base import Completion
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.chat_harness import ScriptedSource


class HeldAtStart(ScriptedSource):
    """Gives nothing until `release` is set: the answer's log holds its `start` and nothing more."""

    def __init__(self, deltas: Sequence[Delta]) -> None:
        super().__init__(deltas)
        self.release = asyncio.Event()

    async def stream(
        self, conversation: Sequence[ConversationMessage], options: GenerationOptions, completion: Completion
    ) -> AsyncGenerator[Delta, None]:
        await self.release.wait()
        async for delta in super().stream(conversation, options, completion):
            yield delta


async def test_following_an_answer_between_its_start_and_first_chunk_gets_the_start(
    make_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    # The model gives its first chunk only once the client follows: the client arrives while the log
    # holds the `start` and nothing more.
    source = HeldAtStart(["Hello", " there"])
    app = create_app(make_settings(redis_url=redis_server.url), source=source)
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
        Redis.from_url(redis_server.url) as redis,
    ):
        accepted = (
            await client.post("/chat", json={"session_id": "early", "message": "Hi there", "user_id": "u"})
        ).json()

        async def logged() -> int:
            return await redis.xlen("chat:{early}:events")

        assert await eventually(logged, "the answer's start is in the log") == 1
        following = asyncio.create_task(client.get(accepted["stream_url"]))

        async def sse_clients() -> bool:
            metrics = (await client.get("/metrics")).text
            found = re.search(r"^chat_sse_clients (\S+)$", metrics, re.MULTILINE)
            return bool(found and float(found.group(1)) >= 1)

        await eventually(sse_clients, "the client follows the answer")
        assert await logged() == 1  # still only the start
        source.release.set()
        body = (await following).text
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [event["type"] for event in events] == ["start", "chunk", "chunk", "end"]
    assert [event["seq"] for event in events] == list(range(len(events)))
    assert "".join(event["content"] for event in events if event["type"] == "chunk") == "Hello there"
