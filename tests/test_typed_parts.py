"""Typed parts through ChatService: reasoning, refusals and tool calls as events, the assembled `end`,
history, tool results continuing the conversation, and the conflicts that store nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from ai_service import ImagesUnsupported, ToolResultConflict
from config import Settings
from models import ChatRequest
from parts import Delta, Reasoning, Refusal, ToolCallArguments, ToolCallStart
from tests.chat_harness import KEYS, RunService, ScriptedSource, assert_well_formed, read_answers
from tests.conftest import AppClient

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}

# Two calls, each with its arguments split across deltas, after some reasoning and a little text.
CALLING: list[Delta] = [
    Reasoning("The user wants "),
    Reasoning("the weather."),
    "Let me check.",
    ToolCallStart("call_1", "get_weather"),
    ToolCallArguments("call_1", '{"ci'),
    ToolCallArguments("call_1", 'ty": "Paris"}'),
    ToolCallStart("call_2", "get_time"),
    ToolCallArguments("call_2", "{}"),
]


async def test_parts_stream_as_typed_events_in_one_seq_and_end_assembles_them(
    run_service: RunService,
) -> None:
    async with run_service(ScriptedSource(CALLING)) as harness:
        message_id, events = await harness.chat("Weather in Paris?", tools=[WEATHER, TIME])
        turns = await harness.history.read("s1")
    assert_well_formed(events, message_id)
    assert [event["type"] for event in events] == [
        "start",
        "reasoning",
        "reasoning",
        "chunk",
        "tool_call_start",
        "tool_call_delta",
        "tool_call_delta",
        "tool_call_end",  # the next call's start completes the one before
        "tool_call_start",
        "tool_call_delta",
        "tool_call_end",  # the stream's end completes the last
        "end",
    ]
    starts = [event for event in events if event["type"] == "tool_call_start"]
    assert [(s["tool_call_id"], s["name"], s["index"]) for s in starts] == [
        ("call_1", "get_weather", 0),
        ("call_2", "get_time", 1),
    ]
    end = events[-1]
    assert end["finish_reason"] == "tool_calls"  # the source said `stop`; it called tools
    assert end["reasoning"] == "The user wants the weather."
    assert end["tool_calls"] == [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_time", "arguments": "{}"},
    ]
    stored = turns[-1].model_dump(mode="json", exclude_none=True)
    assert {key: stored[key] for key in ("content", "reasoning", "tool_calls", "finish_reason")} == {
        key: end[key] for key in ("content", "reasoning", "tool_calls", "finish_reason")
    }


async def test_a_text_only_answer_keeps_its_old_shape(run_service: RunService) -> None:
    async with run_service(ScriptedSource(["Hel", "lo"])) as harness:
        _, events = await harness.chat()
        turns = await harness.history.read("s1")
    assert set(events[-1]) == {
        "message_id",
        "session_id",
        "seq",
        "timestamp",
        "type",
        "content",
        "finish_reason",
    }
    assert set(turns[-1].model_dump(exclude_none=True)) == {
        "message_id",
        "role",
        "content",
        "user_id",
        "created_at",
        "finish_reason",
    }


async def test_a_refusal_streams_and_lands_in_end_and_history(run_service: RunService) -> None:
    async with run_service(ScriptedSource([Refusal("I can't "), Refusal("help with that.")])) as harness:
        message_id, events = await harness.chat("Something forbidden")
        turns = await harness.history.read("s1")
    assert_well_formed(events, message_id)
    assert events[-1]["refusal"] == "I can't help with that."
    assert turns[-1].refusal == "I can't help with that."


async def test_tool_results_are_stored_and_a_new_answer_continues_with_the_calls_and_results(
    run_service: RunService,
) -> None:
    source = ScriptedSource(CALLING)
    async with run_service(source, system_prompt="") as harness:
        await harness.chat("Weather in Paris?", tools=[WEATHER, TIME])
        source.deltas = ["It is sunny in Paris at noon."]
        results = [
            {"tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
            {"tool_call_id": "call_2", "content": "12:00"},
        ]
        message_id, events = await harness.chat(None, tool_results=results, tools=[WEATHER, TIME])
        turns = await harness.history.read("s1")
    assert_well_formed(events, message_id)
    assert events[-1]["content"] == "It is sunny in Paris at noon."
    assert [(t.role, t.tool_call_id) for t in turns] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_1"),
        ("tool", "call_2"),
        ("assistant", None),
    ]
    assert turns[2].message_id == turns[3].message_id == message_id  # the inputs of that answer
    sent = source.conversations[-1]
    assert [(m.role, m.tool_call_id) for m in sent] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_1"),
        ("tool", "call_2"),
    ]
    assert [call.id for call in sent[1].tool_calls] == ["call_1", "call_2"]
    assert sent[1].reasoning is None  # earlier reasoning is not sent back unless configured
    assert [tool.function.name for tool in source.options[-1].tools or []] == ["get_weather", "get_time"]


@pytest.mark.parametrize(
    ("results", "named"),
    [
        ([{"tool_call_id": "call_9", "content": "x"}], "call_9"),  # never asked for
        ([{"tool_call_id": "call_1", "content": "x"}, {"tool_call_id": "nope", "content": "y"}], "nope"),
    ],
)
async def test_results_for_unknown_calls_are_409_naming_the_id_and_store_nothing(
    run_service: RunService, results: list[dict[str, Any]], named: str
) -> None:
    async with run_service(ScriptedSource(CALLING)) as harness:
        await harness.chat("Weather?", tools=[WEATHER, TIME])
        before = await harness.history.read("s1")
        with pytest.raises(ToolResultConflict) as caught:
            await harness.service.submit(ChatRequest(session_id="s1", user_id="user1", tool_results=results))
        assert await harness.history.read("s1") == before
    assert caught.value.status == 409
    assert repr(named) in caught.value.message


async def test_a_result_already_given_is_409(run_service: RunService) -> None:
    source = ScriptedSource(CALLING)
    async with run_service(source) as harness:
        await harness.chat("Weather?", tools=[WEATHER, TIME])
        source.deltas = [ToolCallStart("call_3", "get_time"), ToolCallArguments("call_3", "{}")]
        await harness.chat(None, tool_results=[{"tool_call_id": "call_1", "content": "sunny"}])
        # The answer after those results called another tool: call_1 is answered, call_2 was
        # abandoned by the turn after it, and only call_3 awaits a result.
        for stale in ("call_1", "call_2"):
            with pytest.raises(ToolResultConflict):
                await harness.service.submit(
                    ChatRequest.model_validate(
                        {
                            "session_id": "s1",
                            "user_id": "u",
                            "tool_results": [{"tool_call_id": stale, "content": "x"}],
                        }
                    )
                )
        source.deltas = ["Done."]
        _, events = await harness.chat(None, tool_results=[{"tool_call_id": "call_3", "content": "12:00"}])
    assert events[-1]["content"] == "Done."


async def test_a_result_while_an_answer_streams_is_409_and_stores_nothing(run_service: RunService) -> None:
    hold = asyncio.Event()
    async with (
        run_service(ScriptedSource(CALLING, hold=hold)) as harness,
        harness.redis.pubsub() as pubsub,
    ):
        await pubsub.subscribe(KEYS.channel("s1"))
        accepted, _ = await harness.service.submit(
            ChatRequest.model_validate(
                {"session_id": "s1", "message": "Weather?", "user_id": "u", "tools": [WEATHER, TIME]}
            )
        )
        late = ChatRequest.model_validate(
            {
                "session_id": "s1",
                "user_id": "u",
                "tool_results": [{"tool_call_id": "call_1", "content": "x"}],
            }
        )
        with pytest.raises(ToolResultConflict) as caught:
            await harness.service.submit(late)
        assert [t.role for t in await harness.history.read("s1")] == ["user"]
        hold.set()
        await read_answers(pubsub, {accepted.message_id})
    assert "still streaming" in caught.value.message


async def test_images_to_a_model_that_cannot_see_them_are_400_and_store_nothing(
    run_service: RunService,
) -> None:
    async with run_service(ScriptedSource(["ok"])) as harness:
        request = ChatRequest(
            session_id="s1", user_id="u", message="What is this?", images=["https://example.com/cat.png"]
        )
        with pytest.raises(ImagesUnsupported) as caught:
            await harness.service.submit(request)
        assert await harness.history.read("s1") == []
    assert caught.value.status == 400


async def test_images_are_stored_with_the_user_turn_and_sent_to_a_model_that_sees_them(
    run_service: RunService,
) -> None:
    source = ScriptedSource(["A cat."])
    source.accepts_images = True
    image = "data:image/png;base64,iVBORw0KGgo="
    async with run_service(source) as harness:
        await harness.chat("What is this?", images=[image])
        turns = await harness.history.read("s1")
    assert turns[0].images == [image]
    assert source.conversations[-1][-1].images == (image,)


# --- POST /chat: every bad input is a 4xx naming its field, and nothing is stored -------------------


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(stream_delay=0, chunk_delay=0)) as client:
        yield client


CHAT = {"session_id": "s1", "user_id": "u1", "message": "Hi"}
BAD_INPUTS = [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
        "tools.0.function.parameters",
    ),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"temperature": 5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nope"}},
            }
        },
        "response_format.json_schema.json_schema.schema",
    ),
    ({"images": ["http://example.com/cat.png"]}, "images"),
    ({"images": ["data:text/html;base64,PGI+"]}, "images"),
    ({"tool_results": [{"tool_call_id": "c1", "content": "x"}]}, "message"),  # both
    ({"message": None}, "message"),  # neither
    ({"message": None, "tool_results": [{"tool_call_id": "c", "content": "1"}] * 2}, "tool_results"),
    (
        {"message": None, "tool_results": [{"tool_call_id": "bad id\n", "content": "1"}]},
        "tool_results.0.tool_call_id",
    ),
]


@pytest.mark.parametrize(("fields", "named"), BAD_INPUTS)
async def test_a_bad_option_is_422_naming_the_field_and_stores_nothing(
    client: httpx.AsyncClient, fields: dict[str, Any], named: str
) -> None:
    response = await client.post("/chat", json={**CHAT, **fields})
    assert response.status_code == 422, response.text
    names = [item["field"] for item in response.json()["error"]["fields"]]
    assert any(name.startswith(named) for name in names), names
    assert (await client.get("/history/s1")).json()["count"] == 0


async def test_tool_results_for_unknown_calls_are_409_over_http(client: httpx.AsyncClient) -> None:
    body = {"session_id": "s1", "user_id": "u1", "tool_results": [{"tool_call_id": "call_x", "content": "1"}]}
    response = await client.post("/chat", json=body)
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "tool_result_conflict"
    assert "call_x" in response.json()["error"]["message"]
    assert (await client.get("/history/s1")).json()["count"] == 0


async def test_images_to_the_simulated_model_are_400_over_http(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={**CHAT, "images": ["https://example.com/cat.png"]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "images_unsupported"
    assert (await client.get("/history/s1")).json()["count"] == 0


async def test_a_retried_tool_result_post_gets_the_same_answer_not_a_conflict(
    run_service: RunService,
) -> None:
    source = ScriptedSource(CALLING)
    async with run_service(source) as harness:
        await harness.chat("Weather?", tools=[WEATHER, TIME])
        source.deltas = ["Sunny."]
        results = ChatRequest.model_validate(
            {
                "session_id": "s1",
                "user_id": "u1",
                "message_id": str(uuid.uuid4()),
                "tool_results": [{"tool_call_id": "call_1", "content": "sunny"}],
            }
        )
        accepted, started = await harness.service.submit(results)
        retried, started_again = await harness.service.submit(results)
        turns = await harness.history.read("s1")
    assert (started, started_again) == (True, False)
    assert retried.message_id == accepted.message_id
    assert [turn.role for turn in turns].count("tool") == 1


async def test_results_with_a_given_context_are_refused_while_an_answer_streams(
    run_service: RunService,
) -> None:
    # The OpenAI-compatible API checks the ids against its own messages, but not whether one streams.
    hold = asyncio.Event()
    async with run_service(ScriptedSource(["..."], hold=hold)) as harness:
        async with harness.redis.pubsub() as pubsub:
            await pubsub.subscribe(KEYS.channel("s1"))
            accepted, _ = await harness.service.submit(
                ChatRequest(session_id="s1", message="Hi", user_id="u")
            )
            late = ChatRequest.model_validate(
                {"session_id": "s1", "user_id": "u", "tool_results": [{"tool_call_id": "c1", "content": "x"}]}
            )
            with pytest.raises(ToolResultConflict):
                await harness.service.submit(late, context=[])
            hold.set()
            await read_answers(pubsub, {accepted.message_id})
        assert [turn.role for turn in await harness.history.read("s1")] == ["user", "assistant"]


async def test_the_running_answer_of_a_session_is_known_until_it_ends(run_service: RunService) -> None:
    hold = asyncio.Event()
    async with (
        run_service(ScriptedSource(["..."], hold=hold)) as harness,
        harness.redis.pubsub() as pubsub,
    ):
        await pubsub.subscribe(KEYS.channel("s1"))
        assert await harness.service.running_answer("s1") is None
        accepted, _ = await harness.service.submit(ChatRequest(session_id="s1", message="Hi", user_id="u"))
        await read_answers(pubsub, {accepted.message_id}, until=lambda events: len(events) >= 2)
        assert await harness.service.running_answer("s1") == accepted.message_id
        hold.set()
        await read_answers(pubsub, {accepted.message_id})
        assert await harness.service.running_answer("s1") is None
