"""Model-written titles (issue #15, `AI_TITLES=true`, titles.py) against a real Redis, the conversation
record on SQLite and the scriptable model server: after a conversation's first answer, the model is asked
for a title, which replaces the first message's without holding the answer up, unless the user renamed
the conversation first; off by default."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from answer_events import Answer
from config import Settings
from conversation import ConversationMessage
from redis_client import KeySpace
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.sse_flows import collect, running
from titles import INSTRUCTION, MAX_TOKENS, _first_message, clean_title

pytestmark = pytest.mark.redis

SettingsFactory = Callable[..., Settings]
Json = dict[str, Any]

SESSION = "titled"
MESSAGE = "How do I fix a bicycle puncture?\nThe tyre is flat again."
DERIVED = "How do I fix a bicycle puncture? The tyre is flat again."


def settings_of(openai_settings: SettingsFactory, redis_server: RedisServer, tmp_path: Path) -> Settings:
    return openai_settings(
        redis_url=redis_server.url, database_url=f"sqlite:///{tmp_path / 'conversations.db'}", ai_titles=True
    )


async def answer(client: httpx.AsyncClient, message: str = MESSAGE, session: str = SESSION) -> str:
    """Send a message and read its answer to its `end`; return its message_id."""
    body = {"session_id": session, "message": message, "user_id": "u1"}
    response = await client.post("/chat", json=body)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["message_id"]
    events = await collect(client, f"/stream/{session}?message_id={message_id}")
    assert events[-1].event == "end"
    return message_id


async def title_of(client: httpx.AsyncClient) -> str | None:
    response = await client.get(f"/conversations/{SESSION}")
    return str(response.json()["title"]) if response.status_code == 200 else None


async def titled(client: httpx.AsyncClient, expected: str) -> None:
    """Wait until the archived conversation's title is `expected`."""

    async def done() -> bool:
        return await title_of(client) == expected

    await eventually(done, f"the title {expected!r}")


async def requests_received(model_server: OpenAIServer, count: int) -> None:
    async def done() -> bool:
        return len(model_server.requests) >= count

    await eventually(done, f"{count} requests upstream")


async def all_archived(redis: Redis, prefix: str, added: int) -> None:
    """Wait until the outbox has had `added` entries in all and every one is archived."""
    stream = KeySpace(prefix).outbox("")

    async def done() -> bool:
        info = await redis.xinfo_stream(stream)
        return bool(info["entries-added"] == added and info["length"] == 0)

    await eventually(done, f"{added} outbox entries archived")


async def test_the_models_title_replaces_the_first_messages_after_the_answer_has_ended(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    release = threading.Event()
    model_server.script(
        Reply(tokens=("Patch", " the tube.")),
        Reply(tokens=('"Fixing a', " bicycle\npuncture.", '"'), hold=release),
    )
    settings = settings_of(openai_settings, redis_server, tmp_path)
    async with running(settings, timeout=20) as client:
        # The answer ends while the title request is held: it does not wait for its title.
        first = await answer(client)
        await requests_received(model_server, 2)
        await titled(client, DERIVED)
        release.set()
        await titled(client, "Fixing a bicycle puncture")
        title_request = model_server.requests[1].body
        assert title_request["messages"] == [
            {"role": "system", "content": INSTRUCTION},
            {"role": "user", "content": MESSAGE},
        ]
        assert title_request["max_tokens"] == MAX_TOKENS

        # A regeneration and a later answer ask for no title: the next one asked for (titles are asked
        # for in order) is another conversation's.
        response = await client.post(f"/chat/{first}/regenerate", json={"user_id": "u1"})
        assert response.status_code == 202, response.text
        again = response.json()["message_id"]
        await collect(client, f"/stream/{SESSION}?message_id={again}")
        await answer(client, "And the valve?")
        await answer(client, "Another conversation", session="other")
        await requests_received(model_server, 6)

        async def titles_asked_for() -> list[str] | None:
            asked = [
                request.body["messages"][-1]["content"]
                for request in model_server.requests
                if request.body["messages"][0]["content"] == INSTRUCTION
            ]
            return asked if "Another conversation" in asked else None

        assert await eventually(titles_asked_for, "the other title") == [MESSAGE, "Another conversation"]


async def test_a_rename_before_the_models_title_lands_is_kept(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    release = threading.Event()
    model_server.script(Reply(tokens=("Patch it.",)), Reply(tokens=("Bike repair",), hold=release))
    settings = settings_of(openai_settings, redis_server, tmp_path)
    redis = Redis.from_url(redis_server.url)
    try:
        async with running(settings, timeout=20) as client:
            await answer(client)
            await requests_received(model_server, 2)
            await all_archived(redis, settings.redis_key_prefix, 2)  # the message and its answer
            response = await client.patch(f"/conversations/{SESSION}", json={"title": "My puncture"})
            assert response.status_code == 200, response.text
            release.set()
            await all_archived(redis, settings.redis_key_prefix, 3)  # and the model's title
            assert await title_of(client) == "My puncture"
    finally:
        await redis.aclose()


async def test_a_failed_title_request_leaves_the_first_messages_title(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model_server.script(Reply(tokens=("Patch it.",)), Reply(status=500))
    settings = settings_of(openai_settings, redis_server, tmp_path)
    async with running(settings, timeout=20) as client:
        await answer(client)

        async def logged() -> bool:
            return any("the model failed" in record.getMessage() for record in caplog.records)

        await eventually(logged, "the failure logged")
        await titled(client, DERIVED)


async def test_titles_are_off_by_default(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    assert Settings(_env_file=None).ai_titles is False
    settings = settings_of(openai_settings, redis_server, tmp_path).model_copy(update={"ai_titles": False})
    redis = Redis.from_url(redis_server.url)
    try:
        async with running(settings, timeout=20) as client:
            await answer(client)
            await all_archived(redis, settings.redis_key_prefix, 2)
            assert await title_of(client) == DERIVED
        assert len(model_server.requests) == 1  # the service has shut down: nothing more was asked
    finally:
        await redis.aclose()


def test_only_a_conversations_first_answer_that_ended_well_is_titled() -> None:
    conversation = (ConversationMessage("system", "Be brief."), ConversationMessage("user", MESSAGE))

    def ended(**fields: Any) -> Answer:
        values: dict[str, Any] = {"finish_reason": "stop", "conversation": conversation, **fields}
        return Answer("m1", SESSION, "u1", since="0-0", **values)

    assert _first_message(ended()) == MESSAGE
    assert _first_message(ended(finish_reason="length")) is None
    assert _first_message(ended(finish_reason="cancelled")) is None
    assert _first_message(ended(parent_id="m0")) is None
    assert _first_message(Answer("m1", "", "u1", since="0-0", stored=False, finish_reason="stop")) is None
    later = (*conversation, ConversationMessage("assistant", "Hi."), ConversationMessage("user", "And?"))
    assert _first_message(ended(conversation=later)) is None


def test_the_models_reply_becomes_a_title_like_a_rename() -> None:
    assert clean_title(' "Fixing a\n bicycle puncture." ') == "Fixing a bicycle puncture"
    assert clean_title("\u201cQuoted\u201d") == "Quoted"
    assert clean_title(' "" \n') == ""
    long = clean_title("word " * 40)
    assert len(long) == 80
    assert long.endswith("\u2026")
