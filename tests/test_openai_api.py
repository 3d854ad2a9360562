"""The OpenAI-compatible API, driven by the official `openai` client against the app served by uvicorn
on a real socket, on a real Redis: stateless and with `X-Session-Id`, sync and async, streaming and not,
and through the service to the test model server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from redis.asyncio import Redis

from app import create_app
from config import Settings
from conversation import ConversationMessage
from providers.simulated import compose_answer
from testkit.asgi_server import serve
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer
from testkit.waiting import eventually

SettingsFactory = Callable[..., Settings]

QUESTION = "How should I tune Redis persistence?"


@contextmanager
def running(settings: Settings) -> Iterator[str]:
    """The app served on a free loopback port; yields its base URL."""
    with serve(create_app(settings)) as url:
        yield url


def history(url: str, session_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = httpx.get(f"{url}/history/{session_id}").json()["messages"]
    return messages


async def channel_events(redis_url: str, channel: str, received: list[dict[str, Any]]) -> None:
    """Subscribe, append `{"type": "subscribed"}` once the subscription is active, then append each JSON
    event published on the channel until an `end` or `error` arrives."""
    redis = Redis.from_url(redis_url)
    try:
        async with redis.pubsub() as pubsub, asyncio.timeout(10):
            await pubsub.subscribe(channel)
            while (await pubsub.get_message(timeout=1)) is None:
                pass  # the subscription's confirmation
            received.append({"type": "subscribed"})
            while received[-1]["type"] not in {"end", "error"}:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    received.append(json.loads(message["data"]))
    finally:
        await redis.aclose()


@pytest.fixture
def settings(make_settings: SettingsFactory, redis_server: RedisServer) -> Settings:
    return make_settings(redis_url=redis_server.url)


# --- Stateless -----------------------------------------------------------------------------------


def test_sync_client_gets_a_whole_answer_and_nothing_is_stored(
    settings: Settings, redis_server: RedisServer
) -> None:
    with running(settings) as url, OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        completion = client.chat.completions.create(
            model="simulated", messages=[{"role": "user", "content": QUESTION}]
        )
    expected = compose_answer(
        [ConversationMessage("system", settings.system_prompt), ConversationMessage("user", QUESTION)]
    )
    assert completion.object == "chat.completion"
    assert completion.model == "simulated"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert redis_server.cli("DBSIZE") == "0"


async def test_async_stream_without_session_publishes_nothing(
    settings: Settings, redis_server: RedisServer
) -> None:
    redis = Redis.from_url(redis_server.url)
    with running(settings) as url:
        async with (
            redis.pubsub() as pubsub,
            AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client,
        ):
            await pubsub.psubscribe("chat:*")
            confirmation = await pubsub.get_message(timeout=2)
            assert confirmation is not None
            stream = await client.chat.completions.create(
                model="simulated", messages=[{"role": "user", "content": QUESTION}], stream=True
            )
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
            # Then a call with a session: PubSub keeps order, so anything the first call published
            # would arrive before this one's events.
            await client.chat.completions.create(
                model="simulated",
                messages=[{"role": "user", "content": "Hello"}],
                extra_headers={"X-Session-Id": "control"},
            )
            channels = []
            async with asyncio.timeout(5):
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        channels.append(message["channel"])
                        if json.loads(message["data"])["type"] == "end":
                            break
    await redis.aclose()
    assert "persistence" in text
    assert set(channels) == {b"chat:control"}
    # Only the call with a session left keys: its history, replay log and answer state.
    keys = set(redis_server.cli("KEYS", "*").split())
    answer_states = {key for key in keys if key.startswith("chat:message:")}
    assert len(answer_states) == 1
    assert keys - answer_states == {"chat:{control}:history", "chat:{control}:events"}


# --- With a session ------------------------------------------------------------------------------


def test_sync_stream_with_session_lands_in_history(settings: Settings) -> None:
    with (
        running(settings) as url,
        OpenAI(
            base_url=f"{url}/v1", api_key="unused", max_retries=0, default_headers={"X-Session-Id": "sync-1"}
        ) as client,
    ):
        chunks = list(
            client.chat.completions.create(
                model="simulated", messages=[{"role": "user", "content": QUESTION}], stream=True, user="alice"
            )
        )
        turns = history(url, "sync-1")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [(t["role"], t["content"], t["user_id"]) for t in turns] == [
        ("user", QUESTION, "alice"),
        ("assistant", text, "alice"),
    ]
    assert chunks[0].id == f"chatcmpl-{turns[1]['message_id']}"


async def test_async_stream_with_session_is_published_on_its_channel(
    settings: Settings, redis_server: RedisServer
) -> None:
    published: list[dict[str, Any]] = []
    with running(settings) as url:
        listener = asyncio.create_task(channel_events(redis_server.url, "chat:async-1", published))

        async def subscribed() -> bool:
            return bool(published) or listener.done()

        await eventually(subscribed, "the channel listener has subscribed")
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="simulated",
                messages=[{"role": "user", "content": QUESTION}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"X-Session-Id": "async-1"},
            )
            chunks = [chunk async for chunk in stream]
        await listener
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    events = published[1:]
    assert [event["type"] for event in events] == ["start"] + ["chunk"] * (len(events) - 2) + ["end"]
    assert "".join(event["content"] for event in events if event["type"] == "chunk") == text
    assert events[-1]["content"] == text
    assert chunks[0].id == f"chatcmpl-{events[0]['message_id']}"
    # include_usage: a last chunk with no choices carries the usage (none from the simulated model).
    assert chunks[-1].choices == []
    assert chunks[-1].usage is None


async def test_async_whole_answers_with_session_build_up_its_history(settings: Settings) -> None:
    headers = {"X-Session-Id": "async-2"}
    with running(settings) as url:
        async with AsyncOpenAI(
            base_url=f"{url}/v1", api_key="k", max_retries=0, default_headers=headers
        ) as client:
            first = await client.chat.completions.create(
                model="simulated", messages=[{"role": "user", "content": "Tell me about kubernetes"}]
            )
            second = await client.chat.completions.create(
                model="simulated",
                messages=[
                    {"role": "user", "content": "Tell me about kubernetes"},
                    {"role": "assistant", "content": first.choices[0].message.content or ""},
                    {"role": "user", "content": "And databases?"},
                ],
            )
        turns = await asyncio.to_thread(history, url, "async-2")
    assert "Earlier you asked about kubernetes" in (second.choices[0].message.content or "")
    assert [(t["role"], t["content"]) for t in turns] == [
        ("user", "Tell me about kubernetes"),
        ("assistant", first.choices[0].message.content),
        ("user", "And databases?"),
        ("assistant", second.choices[0].message.content),
    ]


# --- Models and errors ---------------------------------------------------------------------------


def test_models_lists_the_model_that_answers(settings: Settings) -> None:
    with running(settings) as url, OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        listed = [model.id for model in client.models.list()]
        retrieved = client.models.retrieve("simulated")
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("gpt-4o")
    assert listed == ["simulated"]
    assert retrieved.id == "simulated"
    assert missing.value.code == "model_not_found"


def test_models_lists_the_model_server_model_as_the_openai_provider(
    openai_settings: SettingsFactory, redis_server: RedisServer
) -> None:
    settings = openai_settings(redis_url=redis_server.url)
    with running(settings) as url, OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        listed = [(model.id, model.owned_by) for model in client.models.list()]
        retrieved = client.models.retrieve("test-model")
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("simulated")
    assert listed == [("test-model", "openai")]
    assert (retrieved.id, retrieved.owned_by) == ("test-model", "openai")


@pytest.mark.parametrize(
    ("messages", "headers", "param"),
    [
        ([{"role": "assistant", "content": "I go last"}], {}, "messages"),
        ([{"role": "tool", "content": "a result", "tool_call_id": "1"}], {}, "messages.0.role"),
        ([{"role": "user", "content": "Hello"}], {"X-Session-Id": "not a valid id"}, "X-Session-Id"),
        ([{"role": "user", "content": "x" * 9000}], {}, "messages"),
    ],
)
def test_bad_requests_get_openai_error_bodies(
    settings: Settings, messages: list[Any], headers: dict[str, str], param: str
) -> None:
    with running(settings) as url, OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(model="simulated", messages=messages, extra_headers=headers)
        raw = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "m", "messages": messages}, headers=headers
        )
    assert raised.value.param == param
    assert raised.value.type == "invalid_request_error"
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}


# --- Through the service to a model server -------------------------------------------------------


async def test_openai_client_through_the_service_to_the_model_server(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    model_server.script(Reply(tokens=("Through", " the", " service."), usage=(9, 3)))
    settings = openai_settings(redis_url=redis_server.url)
    with running(settings) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="test-model",
                messages=[
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Hi"},
                ],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"X-Session-Id": "e2e"},
            )
            chunks = [chunk async for chunk in stream]
        turns = await asyncio.to_thread(history, url, "e2e")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Through the service."
    assert {chunk.model for chunk in chunks} == {"test-model"}
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 3)
    # The client's system message stands in for SYSTEM_PROMPT.
    assert model_server.requests[0].body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
    ]
    assert turns[1]["content"] == "Through the service."
    assert turns[1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("overrides", "reply", "error", "status", "code"),
    [
        ({"openai_api_key": "sk-wrong-key-777"}, Reply(), openai.InternalServerError, 502, "upstream_auth"),
        ({"ai_model": "unknown-model"}, Reply(), openai.InternalServerError, 502, "model_not_found"),
        ({}, Reply(status=429, headers={"Retry-After": "0"}), openai.RateLimitError, 429, "rate_limited"),
    ],
)
def test_model_server_failures_before_the_answer_reach_the_client_as_statuses(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    redis_server: RedisServer,
    stream: bool,
    overrides: dict[str, Any],
    reply: Reply,
    error: type[openai.APIStatusError],
    status: int,
    code: str,
) -> None:
    model_server.script(reply)
    with (
        running(openai_settings(redis_url=redis_server.url, **overrides)) as url,
        OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(error) as raised,
    ):
        client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "Hi"}], stream=stream
        )
    assert raised.value.status_code == status
    assert raised.value.code == code
    assert "sk-wrong-key-777" not in str(raised.value.body)


async def test_model_server_dropping_mid_answer_raises_in_the_client_and_keeps_the_partial(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    model_server.script(Reply(tokens=("Partial", " answer", " never", " ends"), drop_after=2))
    received: list[str] = []
    with running(openai_settings(redis_url=redis_server.url)) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="test-model",
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                extra_headers={"X-Session-Id": "dropped"},
            )
            with pytest.raises(openai.APIError) as raised:  # noqa: PT012 - it raises part-way through the stream
                async for chunk in stream:
                    received.extend(choice.delta.content or "" for choice in chunk.choices)
        turns = await asyncio.to_thread(history, url, "dropped")
    assert "".join(received) == "Partial answer"
    assert raised.value.code == "upstream_error"
    assert turns[1]["content"] == "Partial answer"
    assert turns[1]["finish_reason"] == "error"


async def test_client_hanging_up_closes_the_model_server_stream(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    model_server.script(Reply(tokens=("First", " of", " many"), delay=30))
    with running(openai_settings(redis_url=redis_server.url)) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            await stream.close()
            closed = await asyncio.to_thread(model_server.disconnected.wait, 3)
    assert closed, "the model server never saw the service hang up"
