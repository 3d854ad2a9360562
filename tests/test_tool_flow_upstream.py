"""Typed parts end to end with a real model server behind the service (issue #11): the scriptable upstream
streams parallel tool calls split across many deltas, reasoning, refusals and usage; a client follows the
answer over SSE on a real Redis; the tool results it posts continue the conversation, and the model
server is sent exactly the messages OpenAI expects, budget trimming included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from httpx_sse import ServerSentEvent

from config import Settings
from models import EndEvent
from testkit.openai_server import OpenAIServer, Reply, tool_call
from testkit.redis_server import RedisServer
from tests.sse_flows import collect, post_chat, running, stored_answer
from tests.test_providers import chat_pipeline, sent

pytestmark = pytest.mark.redis

SettingsFactory = Callable[..., Settings]
Json = dict[str, Any]

QUESTION = "What is the weather in Paris, and what time is it there?"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, CLOCK]
WEATHER_ARGUMENTS = '{"city": "Paris"}'
CLOCK_ARGUMENTS = '{"timezone": "Europe/Paris"}'
# What a client sends back for the two calls.
RESULTS = {"call_weather": '{"temp_c": 18, "sky": "clear"}', "call_time": '{"time": "14:05"}'}


def calling_both(reasoning_field: str = "reasoning_content") -> Reply:
    """An answer that thinks, then calls both tools at once, each call's arguments in several pieces."""
    return Reply(
        tokens=(
            {reasoning_field: "The user wants "},
            {reasoning_field: "the weather and the time."},
            *tool_call(0, "get_weather", WEATHER_ARGUMENTS, call_id="call_weather", pieces=4),
            *tool_call(1, "get_time", CLOCK_ARGUMENTS, call_id="call_time", pieces=3),
        ),
        finish_reason="tool_calls",
        usage=(42, 30),
        reasoning_tokens=11,
    )


def of_type(events: list[ServerSentEvent], kind: str, **matching: object) -> list[Json]:
    found = [event.json() for event in events if event.event == kind]
    return [event for event in found if all(event[key] == value for key, value in matching.items())]


def assistant_calls(*calls: tuple[str, str, str]) -> list[Json]:
    """Tool calls as OpenAI's messages carry them."""
    return [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in calls
    ]


BOTH_CALLS = assistant_calls(
    ("call_weather", "get_weather", WEATHER_ARGUMENTS), ("call_time", "get_time", CLOCK_ARGUMENTS)
)


@pytest.mark.parametrize("reasoning_field", ["reasoning_content", "reasoning"])
async def test_parallel_tool_calls_and_reasoning_stream_as_parts_that_add_up_to_end_and_history(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    redis_server: RedisServer,
    reasoning_field: str,
) -> None:
    model_server.script(calling_both(reasoning_field))
    async with running(openai_settings(redis_url=redis_server.url), timeout=20) as client:
        message_id = (await post_chat(client, "tools", message=QUESTION, tools=TOOLS))["message_id"]
        events = await collect(client, f"/stream/tools?message_id={message_id}")
        stored = await stored_answer(client, "tools", message_id)

    assert [event.event for event in events] == [
        "start",
        *["reasoning"] * 2,
        "tool_call_start",
        *["tool_call_delta"] * 4,
        "tool_call_end",
        "tool_call_start",
        *["tool_call_delta"] * 3,
        "tool_call_end",
        "end",
    ]
    starts = of_type(events, "tool_call_start")
    assert [(s["tool_call_id"], s["name"], s["index"]) for s in starts] == [
        ("call_weather", "get_weather", 0),
        ("call_time", "get_time", 1),
    ]
    end = events[-1].json()
    assert end["reasoning"] == "The user wants the weather and the time."
    assert end["reasoning"] == "".join(event["content"] for event in of_type(events, "reasoning"))
    assert end["tool_calls"] == [
        {"id": "call_weather", "name": "get_weather", "arguments": WEATHER_ARGUMENTS},
        {"id": "call_time", "name": "get_time", "arguments": CLOCK_ARGUMENTS},
    ]
    for call in end["tool_calls"]:
        pieces = of_type(events, "tool_call_delta", tool_call_id=call["id"])
        assert "".join(piece["arguments"] for piece in pieces) == call["arguments"]
        (completed,) = of_type(events, "tool_call_end", tool_call_id=call["id"])
        assert (completed["name"], completed["arguments"]) == (call["name"], call["arguments"])
    assert end["content"] == ""
    assert end["finish_reason"] == "tool_calls"
    usage = {"prompt_tokens": 42, "completion_tokens": 30, "total_tokens": 72}
    assert end["usage"] == {**usage, "completion_tokens_details": {"reasoning_tokens": 11}}
    for part in ("content", "reasoning", "tool_calls", "finish_reason", "usage"):
        assert stored[part] == end[part], part


async def test_tool_results_continue_the_conversation_with_exactly_the_messages_openai_expects(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    model_server.script(calling_both(), Reply(tokens=("It is 18°C and clear", " in Paris; 14:05 there.")))
    settings = openai_settings(redis_url=redis_server.url, system_prompt="Use the tools.")
    async with running(settings, timeout=20) as client:
        first = (await post_chat(client, "results", message=QUESTION, tools=TOOLS))["message_id"]
        await collect(client, f"/stream/results?message_id={first}")
        results = [{"tool_call_id": call_id, "content": content} for call_id, content in RESULTS.items()]
        accepted = await client.post(
            "/chat", json={"session_id": "results", "user_id": "u1", "tool_results": results, "tools": TOOLS}
        )
        assert accepted.status_code == 202, accepted.text
        second = accepted.json()["message_id"]
        events = await collect(client, f"/stream/results?message_id={second}")
        history = (await client.get("/history/results")).json()["messages"]

    assert events[-1].json()["content"] == "It is 18°C and clear in Paris; 14:05 there."
    # The earlier answer's reasoning stays home (AI_SEND_REASONING is off); its calls go back with
    # `content` null, each followed by its result.
    assert sent(model_server) == [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": BOTH_CALLS},
        {"role": "tool", "tool_call_id": "call_weather", "content": RESULTS["call_weather"]},
        {"role": "tool", "tool_call_id": "call_time", "content": RESULTS["call_time"]},
    ]
    assert model_server.requests[-1].body["tools"] == TOOLS
    assert [(turn["role"], turn.get("tool_call_id")) for turn in history] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_weather"),
        ("tool", "call_time"),
        ("assistant", None),
    ]


async def test_a_refusal_streams_as_refusal_events_and_is_stored(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    model_server.script(Reply(tokens=({"refusal": "I can't help"}, {"refusal": " with that."})))
    async with running(openai_settings(redis_url=redis_server.url), timeout=20) as client:
        message_id = (await post_chat(client, "refused"))["message_id"]
        events = await collect(client, f"/stream/refused?message_id={message_id}")
        stored = await stored_answer(client, "refused", message_id)
    assert [event.event for event in events] == ["start", "refusal", "refusal", "end"]
    end = events[-1].json()
    assert end["refusal"] == "I can't help with that."
    assert end["refusal"] == "".join(event["content"] for event in of_type(events, "refusal"))
    assert (stored["refusal"], stored["content"], stored["finish_reason"]) == (end["refusal"], "", "stop")


async def test_every_option_posted_to_chat_reaches_the_model_server_capped_by_ai_max_tokens(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    schema = {"type": "object", "properties": {"temp_c": {"type": "number"}}, "required": ["temp_c"]}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": schema, "strict": True},
    }
    options: Json = {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": response_format,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 500,
        "stop": ["END", "STOP"],
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "reasoning_effort": "low",
    }
    settings = openai_settings(redis_url=redis_server.url, ai_max_tokens=100, ai_temperature=1.0)
    async with running(settings, timeout=20) as client:
        message_id = (await post_chat(client, "options", **options))["message_id"]
        await collect(client, f"/stream/options?message_id={message_id}")
    body = model_server.requests[0].body
    assert {key: value for key, value in body.items() if key != "messages"} == {
        "model": "test-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        **options,
        "max_tokens": 100,  # AI_MAX_TOKENS is a ceiling
    }


async def test_images_reach_the_model_server_as_image_url_parts_on_every_turn(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    images = ["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="]
    async with running(openai_settings(redis_url=redis_server.url, system_prompt="S"), timeout=20) as client:
        first = (await post_chat(client, "seen", message="What is this?", images=images))["message_id"]
        await collect(client, f"/stream/seen?message_id={first}")
        second = (await post_chat(client, "seen", message="And its colour?"))["message_id"]
        await collect(client, f"/stream/seen?message_id={second}")
        history = (await client.get("/history/seen")).json()["messages"]
    with_images = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": images[0]}},
            {"type": "image_url", "image_url": {"url": images[1]}},
        ],
    }
    assert sent(model_server, 0)[1:] == [with_images]
    assert sent(model_server, 1)[1:] == [
        with_images,
        {"role": "assistant", "content": "Hello there, friend."},
        {"role": "user", "content": "And its colour?"},
    ]
    assert history[0]["images"] == images


# --- Budget trimming -----------------------------------------------------------------------------

# Before the question being answered: a plain exchange (8 characters), then one with two tool calls
# (five messages: the question, the calls, two results, the answer; 186 characters). What is always
# sent, the system prompt "S" and the question with its call and result, is 55 characters.
FIRST = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
EARLIER = [
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": None, "tool_calls": BOTH_CALLS},
    {"role": "tool", "tool_call_id": "call_weather", "content": RESULTS["call_weather"]},
    {"role": "tool", "tool_call_id": "call_time", "content": RESULTS["call_time"]},
    {"role": "assistant", "content": "Clear, 18°C, 14:05."},
]
NEXT = "Should I take an umbrella?"
PINNED = [
    {"role": "user", "content": NEXT},
    {"role": "assistant", "content": None, "tool_calls": assistant_calls(("call_rain", "get_weather", "{}"))},
    {"role": "tool", "tool_call_id": "call_rain", "content": '{"rain": false}'},
]


@pytest.mark.parametrize(
    ("budget", "earlier"),
    [
        pytest.param({}, FIRST + EARLIER, id="within-defaults"),
        pytest.param({"max_context_messages": 8}, FIRST + EARLIER, id="8-messages"),
        pytest.param({"max_context_messages": 7}, FIRST + EARLIER, id="7-messages"),
        pytest.param({"max_context_messages": 5}, EARLIER, id="5-messages"),
        # Cut per message, these would send a tool result whose call is gone: OpenAI refuses that
        # (and so does the scriptable server). The exchange goes whole, or not at all.
        pytest.param({"max_context_messages": 4}, [], id="4-messages"),
        pytest.param({"max_context_messages": 2}, [], id="2-messages"),
        pytest.param({"max_context_chars": 249}, FIRST + EARLIER, id="249-chars"),
        pytest.param({"max_context_chars": 248}, EARLIER, id="248-chars"),
        pytest.param({"max_context_chars": 91}, [], id="91-chars"),
        pytest.param({"max_context_chars": 10}, [], id="10-chars"),
    ],
)
async def test_budget_trimming_keeps_each_tool_call_with_its_result(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    redis_server: RedisServer,
    budget: dict[str, int],
    earlier: list[Json],
) -> None:
    model_server.script(
        Reply(tokens=("Hello.",)),
        calling_both(),
        Reply(tokens=("Clear, 18°C, 14:05.",)),
        Reply(tokens=tool_call(0, "get_weather", "{}", call_id="call_rain"), finish_reason="tool_calls"),
        Reply(tokens=("No umbrella needed.",)),
    )
    settings = openai_settings(redis_url=redis_server.url, system_prompt="S", **budget)
    async with chat_pipeline(settings) as chat:
        await chat.ask("Hi")
        await chat.ask(QUESTION, tools=TOOLS)
        await chat.answer_calls(RESULTS, tools=TOOLS)
        await chat.ask(NEXT, tools=TOOLS)
        events = await chat.answer_calls({"call_rain": '{"rain": false}'}, tools=TOOLS)
    assert isinstance(events[-1], EndEvent), events[-1]
    assert events[-1].content == "No umbrella needed."
    # The question being answered, its answer's call and the call's result are always sent.
    assert sent(model_server) == [{"role": "system", "content": "S"}, *earlier, *PINNED]


async def test_a_call_left_without_its_result_is_not_sent_upstream(
    openai_settings: SettingsFactory, model_server: OpenAIServer, redis_server: RedisServer
) -> None:
    model_server.script(calling_both(), Reply(tokens=("Clear, 18°C; the time I could not get.",)))
    async with chat_pipeline(openai_settings(redis_url=redis_server.url, system_prompt="S")) as chat:
        await chat.ask(QUESTION, tools=TOOLS)
        events = await chat.answer_calls({"call_weather": RESULTS["call_weather"]}, tools=TOOLS)
    assert isinstance(events[-1], EndEvent), events[-1]
    weather_only = [call for call in BOTH_CALLS if call["id"] == "call_weather"]
    assert sent(model_server) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": weather_only},
        {"role": "tool", "tool_call_id": "call_weather", "content": RESULTS["call_weather"]},
    ]
