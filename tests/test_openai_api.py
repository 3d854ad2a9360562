"""The OpenAI-compatible API, driven by the official `openai` client against the app served by uvicorn
on a real socket, on a real Redis: stateless and with `X-Session-Id`, sync and async, streaming and not,
and through the service to the test model server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from redis.asyncio import Redis

from app import create_app
from config import Settings
from conversation import ConversationMessage
from generation import GenerationOptions
from parts import (
    CompletionTokensDetails,
    Delta,
    Reasoning,
    Refusal,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    Usage,
)
from protocols.openai.encoder import ChunkEncoder, Meta
from providers.base import AnswerSource, Completion
from providers.simulated import compose_answer
from testkit.asgi_server import serve
from testkit.openai_server import OpenAIServer, Reply
from testkit.redis_server import RedisServer
from testkit.waiting import eventually
from tests.chat_harness import ScriptedSource
from tests.conftest import AppClient

SettingsFactory = Callable[..., Settings]

QUESTION = "How should I tune Redis persistence?"


@contextmanager
def running(settings: Settings, source: AnswerSource | None = None) -> Iterator[str]:
    """The app served on a free loopback port (answering from `source`, else as configured); yields
    its base URL."""
    with serve(create_app(settings, source=source)) as url:
        yield url


@asynccontextmanager
async def openai_client(app_client: AppClient, settings: Settings) -> AsyncIterator[AsyncOpenAI]:
    """The official client, talking to the app in-process (lifespan entered)."""
    async with app_client(settings) as http:
        # The SDK is typed for httpx2's client but takes an httpx one, as bound to the app here.
        yield AsyncOpenAI(http_client=cast(Any, http), base_url="http://test/v1", api_key="k", max_retries=0)


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


def stored_keys(redis_server: RedisServer) -> set[str]:
    """Every key but the usage totals (issue #16): token counts per key and day, nothing of a conversation."""
    return {key for key in redis_server.cli("KEYS", "*").split() if not key.startswith("chat:usage:")}


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
    assert stored_keys(redis_server) == set()


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
            async with asyncio.timeout(15):
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None:
                        channels.append(message["channel"])
                        if json.loads(message["data"])["type"] == "end":
                            break
    await redis.aclose()
    assert "persistence" in text
    assert set(channels) == {b"chat:control"}
    # Only the call with a session left keys: its history, replay log and answer state, and its turns
    # in the outbox to the conversation record.
    keys = stored_keys(redis_server)
    answer_states = {key for key in keys if key.startswith("chat:message:")}
    assert len(answer_states) == 1
    assert keys - answer_states == {"chat:{control}:history", "chat:{control}:events", "chat:outbox"}


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
        ([{"role": "tool", "content": "a result", "tool_call_id": "1"}], {}, "messages"),
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
            # The service's own model, which the model server may not know.
            model=overrides.get("ai_model", "test-model"),
            messages=[{"role": "user", "content": "Hi"}],
            stream=stream,
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


# --- Every bad input: a 400 naming the field, in OpenAI's shape, and nothing stored ---------------

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL: Any = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
CALLED: list[Any] = [*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}]


def image(url: str) -> list[Any]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


BAD_INPUTS = [
    pytest.param(
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
        "tool_choice",
        id="unknown tool in tool_choice",
    ),
    pytest.param({"tool_choice": "required"}, "tool_choice", id="required with no tools"),
    pytest.param(
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]},
        "tools.0.function.parameters",
        id="invalid JSON Schema in parameters",
    ),
    pytest.param({"tools": [WEATHER, WEATHER]}, "tools", id="two tools of one name"),
    pytest.param(
        {"messages": [*CALLED, {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}]},
        "messages",
        id="tool result for an unknown call",
    ),
    pytest.param(
        {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
        "messages",
        id="tool result with no call before it",
    ),
    pytest.param(
        {"messages": [*CALLED, *[{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}] * 2]},
        "messages",
        id="two results for one call",
    ),
    pytest.param(
        {"messages": [{"role": "tool", "content": "sunny"}]}, "messages.0.tool_call_id", id="no call id"
    ),
    pytest.param({"messages": CALLED}, "messages", id="ends with the assistant"),
    pytest.param({"temperature": 5}, "temperature", id="temperature"),
    pytest.param({"top_p": 1.5}, "top_p", id="top_p"),
    pytest.param({"presence_penalty": 2.5}, "presence_penalty", id="presence_penalty"),
    pytest.param({"frequency_penalty": -3}, "frequency_penalty", id="frequency_penalty"),
    pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens"),
    pytest.param({"max_completion_tokens": 0}, "max_completion_tokens", id="max_completion_tokens"),
    pytest.param(
        {"max_tokens": 10, "max_completion_tokens": 20}, "max_completion_tokens", id="two different limits"
    ),
    pytest.param({"stop": ["a", "b", "c", "d", "e"]}, "stop", id="five stop sequences"),
    pytest.param({"reasoning_effort": "extreme"}, "reasoning_effort", id="reasoning_effort"),
    pytest.param(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 1}}}},
        "response_format.json_schema.json_schema.schema",
        id="invalid response schema",
    ),
    pytest.param({"n": 2}, "n", id="n=2"),
    pytest.param({"logprobs": True}, "logprobs", id="logprobs"),
    pytest.param({"top_logprobs": 3}, "top_logprobs", id="top_logprobs"),
    pytest.param({"logit_bias": {"50256": -100}}, "logit_bias", id="logit_bias"),
    pytest.param({"audio": {"voice": "alloy", "format": "wav"}}, "audio", id="audio"),
    pytest.param({"modalities": ["text", "audio"]}, "modalities", id="audio modality"),
    pytest.param({"prediction": {"type": "content", "content": "x"}}, "prediction", id="prediction"),
    pytest.param({"functions": [{"name": "f"}]}, "functions", id="legacy functions"),
    pytest.param({"user": "alice@example.com"}, "user", id="user not an id"),
    pytest.param({"user": "u" * 129}, "user", id="user too long"),
    pytest.param({"messages": image("http://example.com/a.png")}, "messages.0.content", id="image over http"),
    pytest.param(
        {"messages": image("https://example.com/" + "a" * 3000)},
        "messages.0.content",
        id="image URL too long",
    ),
    pytest.param(
        {"messages": image("data:image/svg+xml;base64,PHN2Zz4=")}, "messages.0.content", id="not an image"
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "image_url", "image_url": {"url": "https://a.b/c"}}],
                },
                *ASK,
            ]
        },
        "messages.0.content",
        id="image from the assistant",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "messages.0.content",
        id="audio input",
    ),
]


@pytest.mark.parametrize(("fields", "param"), BAD_INPUTS)
async def test_bad_inputs_are_refused_naming_the_field_and_nothing_is_stored(
    make_settings: SettingsFactory,
    app_client: AppClient,
    redis_server: RedisServer,
    fields: dict[str, Any],
    param: str,
) -> None:
    body = {"messages": ASK, **fields}
    async with openai_client(app_client, make_settings(redis_url=redis_server.url)) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model="simulated",
                messages=body.pop("messages"),
                extra_body=body,
                extra_headers={"X-Session-Id": "refused"},
            )
    assert raised.value.param == param, raised.value.message
    assert raised.value.type == "invalid_request_error"
    assert set(raised.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert redis_server.cli("DBSIZE") == "0"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("session", [None, "refused"])
async def test_an_unknown_model_is_not_found_naming_model(
    make_settings: SettingsFactory,
    app_client: AppClient,
    redis_server: RedisServer,
    session: str | None,
    stream: bool,
) -> None:
    headers = {"X-Session-Id": session} if session else {}
    async with openai_client(app_client, make_settings(redis_url=redis_server.url)) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            await client.chat.completions.create(
                model="gpt-4o", messages=ASK, stream=stream, extra_headers=headers
            )
    assert (raised.value.code, raised.value.param) == ("model_not_found", "model")
    assert raised.value.type == "invalid_request_error"
    assert redis_server.cli("DBSIZE") == "0"


@pytest.mark.parametrize("session", [None, "refused"])
async def test_images_for_a_model_that_cannot_see_them_are_refused(
    make_settings: SettingsFactory, app_client: AppClient, redis_server: RedisServer, session: str | None
) -> None:
    headers = {"X-Session-Id": session} if session else {}
    async with openai_client(app_client, make_settings(redis_url=redis_server.url)) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model="simulated", messages=image("data:image/png;base64,iVBORw0KGgo="), extra_headers=headers
            )
    assert (raised.value.code, raised.value.param) == ("images_unsupported", "messages")
    assert redis_server.cli("DBSIZE") == "0"


async def test_an_image_over_the_body_limit_is_refused(
    make_settings: SettingsFactory, app_client: AppClient, redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url=redis_server.url, max_body_bytes=4096)
    big = "data:image/png;base64," + "A" * 8192
    async with openai_client(app_client, settings) as client:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(
                model="simulated", messages=image(big), extra_headers={"X-Session-Id": "refused"}
            )
    assert (raised.value.status_code, raised.value.code) == (413, "payload_too_large")
    assert redis_server.cli("DBSIZE") == "0"


# --- Every part of an answer, streamed and whole, from a scripted source ---------------------------

PARTS: list[Delta] = [
    Reasoning("The user wants "),
    Reasoning("the weather."),
    "Let me check ",
    "both.",
    ToolCallStart("call_1", "get_weather"),
    ToolCallArguments("call_1", '{"city": '),
    ToolCallArguments("call_1", '"Paris"}'),
    ToolCallStart("call_2", "get_time"),
    ToolCallArguments("call_2", "{}"),
]
TIME: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


class ReportingSource(ScriptedSource):
    """A scripted source that reports usage, reasoning tokens included, as a reasoning model does."""

    async def stream(
        self, conversation: Sequence[ConversationMessage], options: GenerationOptions, completion: Completion
    ) -> AsyncGenerator[Delta, None]:
        async for delta in super().stream(conversation, options, completion):
            yield delta
        completion.usage = Usage(
            prompt_tokens=12,
            completion_tokens=30,
            total_tokens=42,
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=20),
        )


def sse_data(body: str) -> list[Any]:
    """The JSON objects of an SSE body, `[DONE]` as itself."""
    lines = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_a_stream_carries_every_part_as_openai_deltas(settings: Settings) -> None:
    source = ReportingSource(PARTS)
    with running(settings, source) as url:
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "scripted",
                "messages": ASK,
                "tools": [WEATHER, TIME],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
    chunks = sse_data(response.text)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks[:-3]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "The user wants "},
        {"reasoning_content": "the weather."},
        {"content": "Let me check "},
        {"content": "both."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
    ]
    assert all(chunk["usage"] is None for chunk in chunks[:-2])
    finish, usage, done = chunks[-3:]
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "total_tokens": 42,
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    assert done == "[DONE]"
    assert len({chunk["id"] for chunk in chunks[:-1]}) == 1


async def test_the_sdk_assembles_a_streamed_answer_with_every_part(settings: Settings) -> None:
    source = ReportingSource([*PARTS[:4], Refusal("I will not guess."), *PARTS[4:]])
    with running(settings, source) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        async with (
            client,
            client.chat.completions.stream(
                model="scripted", messages=ASK, tools=[WEATHER, TIME], stream_options={"include_usage": True}
            ) as stream,
        ):
            reasoning = "".join(
                [
                    getattr(event.chunk.choices[0].delta, "reasoning_content", None) or ""
                    async for event in stream
                    if event.type == "chunk" and event.chunk.choices
                ]
            )
            final = await stream.get_final_completion()
    message = final.choices[0].message
    assert reasoning == "The user wants the weather."
    assert message.content == "Let me check both."
    assert message.refusal == "I will not guess."
    assert [(call.id, call.function.name, call.function.arguments) for call in message.tool_calls or []] == [
        ("call_1", "get_weather", '{"city": "Paris"}'),
        ("call_2", "get_time", "{}"),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.completion_tokens_details is not None
    assert final.usage.completion_tokens_details.reasoning_tokens == 20


def test_a_whole_answer_holds_every_part(settings: Settings) -> None:
    source = ReportingSource([*PARTS[:4], Refusal("I will not guess."), *PARTS[4:]])
    with running(settings, source) as url, OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
        completion = client.chat.completions.create(model="scripted", messages=ASK, tools=[WEATHER, TIME])
    message = completion.choices[0].message
    assert message.content == "Let me check both."
    assert getattr(message, "reasoning_content", None) == "The user wants the weather."
    assert message.refusal == "I will not guess."
    assert [call.model_dump() for call in message.tool_calls or []] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 20


@pytest.mark.parametrize(
    ("deltas", "content", "refusal"),
    [
        pytest.param(PARTS[4:7], None, None, id="only tool calls"),
        pytest.param(
            [Refusal("I can't "), Refusal("help with that.")],
            None,
            "I can't help with that.",
            id="only a refusal",
        ),
        pytest.param(["Sunny."], "Sunny.", None, id="only text"),
    ],
)
def test_a_whole_answer_has_null_content_only_when_it_has_none(
    settings: Settings, deltas: list[Delta], content: str | None, refusal: str | None
) -> None:
    with running(settings, ScriptedSource(deltas)) as url:
        raw = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "scripted", "messages": ASK, "tools": [WEATHER]}
        )
    message = raw.json()["choices"][0]["message"]
    assert (message["content"], message["refusal"]) == (content, refusal)
    assert message["role"] == "assistant"


async def test_a_stopped_answer_ends_with_stop(settings: Settings) -> None:
    # `cancelled` is not one of OpenAI's finish reasons: a client sees `stop`, history keeps `cancelled`.
    source = ScriptedSource(["Half an ", "answer"], hold=asyncio.Event())
    with running(settings, source) as url:
        async with (
            AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client,
            httpx.AsyncClient(base_url=url) as http,
        ):
            stream = await client.chat.completions.create(
                model="scripted", messages=ASK, stream=True, extra_headers={"X-Session-Id": "stopped"}
            )
            chunks = []
            async for chunk in stream:
                chunks.append(chunk)
                if chunk.choices and chunk.choices[0].delta.content == "answer":  # then it waits
                    cancelled = await http.post(f"/chat/{chunk.id.removeprefix('chatcmpl-')}/cancel")
                    assert cancelled.status_code == 200, cancelled.text
        turns = await asyncio.to_thread(history, url, "stopped")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert turns[-1]["finish_reason"] == "cancelled"
    assert turns[-1]["content"] == "Half an answer"


# --- The request's options and tool turns reach the model, and a session's history ----------------

OPTIONS: dict[str, Any] = {
    "tools": [WEATHER, TIME],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
    },
    "temperature": 0.3,
    "top_p": 0.9,
    "max_completion_tokens": 50,
    "stop": ["END"],
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.25,
    "reasoning_effort": "low",
}


@pytest.mark.parametrize("session", [None, "options"])
def test_the_requests_options_reach_the_model(settings: Settings, session: str | None) -> None:
    source = ScriptedSource(["{}"])
    headers = {"X-Session-Id": session} if session else {}
    with running(settings, source) as url:
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "scripted", "messages": ASK, **OPTIONS},
            headers=headers,
        )
    assert response.status_code == 200, response.text
    options = source.options[0]
    assert [tool.function.name for tool in options.tools or []] == ["get_weather", "get_time"]
    assert options.tool_named("get_weather") is not None
    assert options.model_dump(
        include={"tool_choice", "parallel_tool_calls", "response_format"}, by_alias=True, exclude_none=True
    ) == {key: OPTIONS[key] for key in ("tool_choice", "parallel_tool_calls", "response_format")}
    assert (options.temperature, options.top_p, options.max_tokens, options.stop_sequences()) == (
        0.3,
        0.9,
        50,
        ["END"],
    )
    assert (options.seed, options.presence_penalty, options.frequency_penalty) == (7, 0.5, -0.25)
    assert options.reasoning_effort == "low"


def test_tool_results_with_a_session_are_stored_as_tool_turns(settings: Settings) -> None:
    source = ScriptedSource(PARTS[4:])
    with running(settings, source) as url, OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
        headers = {"X-Session-Id": "tools"}
        first = client.chat.completions.create(
            model="scripted", messages=ASK, tools=[WEATHER, TIME], extra_headers=headers
        )
        calls = first.choices[0].message.tool_calls or []
        source.deltas = ["Sunny in Paris, at noon."]
        results: list[Any] = [
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
        ]
        second = client.chat.completions.create(
            model="scripted",
            messages=results,
            tools=[WEATHER, TIME],
            extra_headers=headers,
        )
        turns = history(url, "tools")
    assert [call.id for call in calls] == ["call_1", "call_2"]
    assert second.choices[0].message.content == "Sunny in Paris, at noon."
    assert [(turn["role"], turn.get("tool_call_id"), turn["content"]) for turn in turns] == [
        ("user", None, ASK[0]["content"]),
        ("assistant", None, ""),
        ("tool", "call_1", '{"sky": "sunny"}'),
        ("tool", "call_2", "12:00"),
        ("assistant", None, "Sunny in Paris, at noon."),
    ]
    assert turns[1]["tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_time", "arguments": "{}"},
    ]
    assert (turns[1]["finish_reason"], turns[4]["finish_reason"]) == ("tool_calls", "stop")
    # The model answered the conversation the client sent: its calls, each with its result.
    assert [(m.role, m.tool_call_id, [c.id for c in m.tool_calls]) for m in source.conversations[1][1:]] == [
        ("user", None, []),
        ("assistant", None, ["call_1", "call_2"]),
        ("tool", "call_1", []),
        ("tool", "call_2", []),
    ]


def test_stateless_tool_results_reach_the_model_and_nothing_is_stored(
    settings: Settings, redis_server: RedisServer
) -> None:
    source = ScriptedSource(["It is sunny."])
    messages: list[Any] = [
        {"role": "developer", "content": "Be brief."},
        *CALLED,
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
    ]
    with running(settings, source) as url, OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
        completion = client.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
    assert completion.choices[0].message.content == "It is sunny."
    assert source.conversations[0] == [
        ConversationMessage("system", "Be brief."),
        ConversationMessage("user", ASK[0]["content"]),
        ConversationMessage(
            "assistant",
            "",
            tool_calls=(ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'),),
        ),
        ConversationMessage("tool", "sunny", tool_call_id="call_1"),
    ]
    assert stored_keys(redis_server) == set()


def test_text_chunks_take_a_prepared_frame_that_encodes_as_a_dict_would() -> None:
    encoder = ChunkEncoder(Meta("chatcmpl-1", "m", 1, include_usage=True))
    for text in ("plain", 'quotes " and \\ backslash', "unicode é ✓ \U0001f600", "new\nline\t</script>"):
        assert json.loads(encoder.text(text)[6:]) == json.loads(encoder.delta({"content": text})[6:])
        assert json.loads(encoder.text(text)[6:])["choices"][0]["delta"] == {"content": text}
