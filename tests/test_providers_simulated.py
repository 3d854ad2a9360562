"""The simulated model (providers/simulated.py): what it says, how it paces its chunks, and the other
parts it learns: tool calls and their results, structured output, reasoning, `max_tokens` and `stop`."""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from config import Settings
from conversation import ConversationMessage
from generation import GenerationOptions
from parts import Delta, Reasoning, ToolCall, ToolCallArguments, ToolCallStart
from providers.base import AnswerError, Completion
from providers.simulated import SimulatedAnswerSource, compose_answer, create
from tests.chat_harness import user
from tests.conftest import AppClient, wait_for_answer


def sentences(text: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part]


async def collect(source: SimulatedAnswerSource, conversation: Sequence[ConversationMessage]) -> list[str]:
    deltas = [delta async for delta in source.stream(conversation, GenerationOptions(), Completion())]
    assert all(isinstance(delta, str) for delta in deltas)
    return [str(delta) for delta in deltas]


@pytest.mark.parametrize(
    ("message", "topic"),
    [
        ("How do I configure Kubernetes autoscaling?", "autoscaling"),
        ("Why is PostgreSQL replication lagging?", "replication"),
        ("What is a vector database?", "database"),
        ("I love gardening tomatoes", "gardening"),
    ],
)
def test_the_answer_is_about_the_message_and_several_sentences_long(message: str, topic: str) -> None:
    answer = compose_answer([user(message)])
    assert topic in answer.lower()
    assert len(sentences(answer)) >= 3


def test_a_greeting_gets_a_greeting_back() -> None:
    answer = compose_answer([user("Hello!")])
    assert answer.startswith(("Hello", "Hi"))
    assert len(sentences(answer)) >= 2


def test_different_messages_get_different_answers() -> None:
    messages = ["How do I bake bread?", "Why do cats purr?", "What is Redis?", "Tell me about volcanoes"]
    answers = {compose_answer([user(message)]) for message in messages}
    assert len(answers) == len(messages)


def test_the_same_conversation_gets_the_same_answer() -> None:
    conversation = [user("Explain Redis streams")]
    assert compose_answer(conversation) == compose_answer(list(conversation))


def test_a_later_answer_refers_back_to_earlier_turns() -> None:
    first = "Tell me about PostgreSQL replication"
    conversation = [
        user(first),
        ConversationMessage(role="assistant", content=compose_answer([user(first)])),
        user("And what about backups?"),
    ]
    answer = compose_answer(conversation)
    assert "backups" in answer
    assert "replication" in answer  # the earlier question
    assert answer != compose_answer([user("And what about backups?")])


async def test_chunks_concatenate_to_the_composed_answer() -> None:
    conversation = [user("How do I configure Kubernetes autoscaling?")]
    chunks = await collect(SimulatedAnswerSource(stream_delay=0, chunk_delay=0), conversation)
    assert len(chunks) > 3
    assert "".join(chunks) == compose_answer(conversation)
    assert all(1 <= len(chunk.split()) <= 3 for chunk in chunks)


async def test_each_chunk_waits_stream_delay_per_word_plus_chunk_delay() -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    source = SimulatedAnswerSource(stream_delay=0.1, chunk_delay=0.05, sleep=recording_sleep)
    chunks = await collect(source, [user("Why is PostgreSQL replication lagging?")])
    assert pauses == pytest.approx([0.1 * len(chunk.split()) + 0.05 for chunk in chunks])


async def test_with_both_delays_zero_nothing_sleeps() -> None:
    pauses: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)

    conversation = [user("What is a vector database?")]
    source = SimulatedAnswerSource(stream_delay=0, chunk_delay=0, sleep=recording_sleep)
    chunks = await collect(source, conversation)
    assert "".join(chunks) == compose_answer(conversation)
    assert pauses == []


async def test_pacing_really_takes_the_configured_time() -> None:
    source = SimulatedAnswerSource(stream_delay=0.005, chunk_delay=0.01)
    conversation = [user("How do I configure Kubernetes autoscaling?")]
    words = len(compose_answer(conversation).split(" "))
    chunks = -(-words // source.words_per_chunk)
    started = time.monotonic()
    await collect(source, conversation)
    # A lower bound only: a busy machine may be slower, never faster.
    assert time.monotonic() - started >= 0.9 * (0.005 * words + 0.01 * chunks)


# --- Tools, results, structured output, reasoning, limits ------------------------------------------


class City(BaseModel):
    name: str
    country: str | None = None


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class WeatherQuery(BaseModel):
    """A tool's parameters as pydantic writes them: `$defs`, `$ref`, an enum, optional fields, a list."""

    city: City
    unit: Unit = Unit.CELSIUS
    days: int = Field(ge=1, le=7)
    extras: list[str] = Field(default_factory=list)


WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": WeatherQuery.model_json_schema()},
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
ASK = "What is the weather in Oslo for 3 days? Use get_weather"
FAST = SimulatedAnswerSource(stream_delay=0, chunk_delay=0)


async def answer(
    conversation: Sequence[ConversationMessage], source: SimulatedAnswerSource = FAST, **fields: Any
) -> tuple[list[Delta], Completion]:
    completion = Completion()
    options = GenerationOptions.model_validate(fields)
    return [delta async for delta in source.stream(conversation, options, completion)], completion


def text_of(deltas: Sequence[Delta]) -> str:
    return "".join(delta for delta in deltas if isinstance(delta, str))


def reasoning_of(deltas: Sequence[Delta]) -> str:
    return "".join(delta.text for delta in deltas if isinstance(delta, Reasoning))


def calls_of(deltas: Sequence[Delta]) -> dict[str, tuple[str, str]]:
    """Each call's name and whole arguments, by id, as the runner assembles them."""
    calls: dict[str, tuple[str, str]] = {}
    for delta in deltas:
        if isinstance(delta, ToolCallStart):
            calls[delta.id] = (delta.name, "")
        elif isinstance(delta, ToolCallArguments):
            name, arguments = calls[delta.id]
            calls[delta.id] = (name, arguments + delta.text)
    return calls


async def test_a_message_naming_a_tool_gets_a_call_with_valid_arguments_in_pieces() -> None:
    deltas, completion = await answer([user(ASK)], tools=[WEATHER])
    assert completion.finish_reason == "tool_calls"
    assert text_of(deltas) == ""
    assert isinstance(deltas[0], ToolCallStart)
    assert deltas[0].name == "get_weather"
    assert re.fullmatch(r"call_[0-9a-f]{24}", deltas[0].id)
    pieces = deltas[1:]
    assert len(pieces) >= 3
    assert all(isinstance(piece, ToolCallArguments) and piece.id == deltas[0].id for piece in pieces)
    [(_, arguments)] = calls_of(deltas).values()
    Draft202012Validator(WeatherQuery.model_json_schema()).validate(json.loads(arguments))
    query = WeatherQuery.model_validate_json(arguments)
    assert (query.city.name, query.days) == ("Oslo", 3)  # the user's words and numbers


async def test_several_named_tools_are_each_called_with_their_own_id() -> None:
    deltas, completion = await answer(
        [user("Use search_docs and get_weather for Oslo")], tools=[WEATHER, SEARCH]
    )
    calls = calls_of(deltas)
    assert [name for name, _ in calls.values()] == ["search_docs", "get_weather"]
    assert json.loads(calls_of(deltas)[next(iter(calls))][1]) == {"query": "Oslo"}
    assert completion.finish_reason == "tool_calls"


async def test_tool_choice_none_gets_text_even_when_a_tool_is_named() -> None:
    deltas, completion = await answer([user(ASK)], tools=[WEATHER], tool_choice="none")
    assert text_of(deltas) == compose_answer([user(ASK)])
    assert not calls_of(deltas)
    assert completion.finish_reason == "stop"


async def test_a_required_tool_is_called_when_the_message_names_none() -> None:
    deltas, _ = await answer([user("Hello there")], tools=[SEARCH, WEATHER], tool_choice="required")
    assert [name for name, _ in calls_of(deltas).values()] == ["search_docs"]


async def test_parameters_it_cannot_satisfy_fail_the_answer_before_anything_streams() -> None:
    impossible = {
        "type": "function",
        "function": {
            "name": "count",
            "parameters": {
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 2}},
                "required": ["n"],
            },
        },
    }
    options = GenerationOptions.model_validate({"tools": [impossible]})
    deltas = FAST.stream([user("Use count")], options, Completion())
    with pytest.raises(AnswerError) as failure:
        await anext(deltas)  # the first delta: nothing has streamed
    assert failure.value.code == "schema_unsupported"
    assert "count" in failure.value.message


def with_result(content: str) -> list[ConversationMessage]:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": {"name": "Oslo"}, "days": 3}')
    return [
        user(ASK),
        ConversationMessage(role="assistant", content="", tool_calls=(call,)),
        ConversationMessage(role="tool", content=content, tool_call_id="call_1"),
    ]


async def test_a_tool_result_gets_a_text_answer_that_uses_it() -> None:
    # The follow-up request carries no options: the result alone decides the answer.
    deltas, completion = await answer(with_result('{"temperature": 21, "sky": "clear"}'))
    text = text_of(deltas)
    assert "get_weather" in text
    assert "temperature 21, sky clear" in text
    assert completion.finish_reason == "stop"
    assert all(isinstance(delta, str) for delta in deltas)


async def test_a_plain_text_result_is_quoted() -> None:
    deltas, _ = await answer(with_result("Sunny, 21 degrees"), tools=[WEATHER])
    assert '"Sunny, 21 degrees"' in text_of(deltas)
    assert not calls_of(deltas)  # `auto` does not call again once the result is back


class Report(BaseModel):
    title: str
    summary: str
    unit: Unit
    cities: list[City] = Field(min_length=2)
    confidence: float = Field(ge=0, le=1)


def json_schema_format(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": model.model_json_schema()},
    }


async def test_a_json_schema_answer_is_valid_json_for_it_streamed_in_pieces() -> None:
    deltas, completion = await answer(
        [user("Tell me about Oslo weather")], response_format=json_schema_format(Report)
    )
    assert len(deltas) > 3
    assert all(isinstance(delta, str) for delta in deltas)
    text = text_of(deltas)
    Draft202012Validator(Report.model_json_schema()).validate(json.loads(text))
    report = Report.model_validate_json(text)
    assert report.summary == compose_answer([user("Tell me about Oslo weather")])  # prose where asked
    assert completion.finish_reason == "stop"


async def test_a_json_schema_it_cannot_satisfy_fails_the_answer() -> None:
    impossible = {
        "type": "json_schema",
        "json_schema": {"name": "never", "schema": {"type": "string", "minLength": 3, "maxLength": 1}},
    }
    with pytest.raises(AnswerError, match="response_format") as failure:
        await answer([user("Hi")], response_format=impossible)
    assert failure.value.code == "schema_unsupported"


async def test_a_json_object_answer_holds_the_text_answer() -> None:
    conversation = [user("Tell me about volcanoes")]
    deltas, _ = await answer(conversation, response_format={"type": "json_object"})
    assert json.loads(text_of(deltas)) == {"answer": compose_answer(conversation)}
    assert len(deltas) > 3


async def test_a_text_response_format_is_the_plain_answer() -> None:
    conversation = [user("Tell me about volcanoes")]
    deltas, _ = await answer(conversation, response_format={"type": "text"})
    assert text_of(deltas) == compose_answer(conversation)


async def test_with_reasoning_on_a_few_reasoning_deltas_come_before_the_answer() -> None:
    conversation = [user("How do volcanoes erupt?")]
    deltas, _ = await answer(
        conversation, SimulatedAnswerSource(stream_delay=0, chunk_delay=0, reasoning=True)
    )
    kinds = [type(delta) for delta in deltas]
    first_text = kinds.index(str)
    assert first_text >= 3
    assert kinds == [Reasoning] * first_text + [str] * (len(kinds) - first_text)
    assert "volcanoes" in reasoning_of(deltas)
    assert text_of(deltas) == compose_answer(conversation)


async def test_reasoning_effort_turns_reasoning_on_for_a_request_and_scales_it() -> None:
    conversation = [user("How do volcanoes erupt?")]
    low, _ = await answer(conversation, reasoning_effort="low")
    high, _ = await answer(conversation, reasoning_effort="high")
    assert 0 < len(reasoning_of(low)) < len(reasoning_of(high))
    assert text_of(low) == text_of(high) == compose_answer(conversation)


async def test_reasoning_effort_none_turns_the_setting_off() -> None:
    source = SimulatedAnswerSource(stream_delay=0, chunk_delay=0, reasoning=True)
    deltas, _ = await answer([user("How do volcanoes erupt?")], source, reasoning_effort="none")
    assert reasoning_of(deltas) == ""
    assert all(isinstance(delta, str) for delta in deltas)


async def test_reasoning_comes_before_tool_calls_and_names_them() -> None:
    deltas, _ = await answer([user(ASK)], tools=[WEATHER], reasoning_effort="medium")
    assert isinstance(deltas[0], Reasoning)
    assert "get_weather" in reasoning_of(deltas)
    assert calls_of(deltas)


@pytest.mark.parametrize(
    ("requested", "ceiling", "words"), [(5, None, 5), (5, 3, 3), (2, 4, 2), (None, 4, 4)]
)
async def test_max_tokens_stops_the_answer_after_that_many_words(
    requested: int | None, ceiling: int | None, words: int
) -> None:
    conversation = [user("How do I configure Kubernetes autoscaling?")]
    source = SimulatedAnswerSource(stream_delay=0, chunk_delay=0, max_tokens=ceiling)
    deltas, completion = await answer(conversation, source, max_tokens=requested)
    text = text_of(deltas)
    assert len(text.split(" ")) == words
    assert compose_answer(conversation).startswith(text)
    assert completion.finish_reason == "length"


async def test_max_tokens_above_the_answers_length_changes_nothing() -> None:
    conversation = [user("How do I configure Kubernetes autoscaling?")]
    deltas, completion = await answer(conversation, max_tokens=1000)
    assert text_of(deltas) == compose_answer(conversation)
    assert completion.finish_reason == "stop"


async def test_the_answer_ends_before_its_first_stop_sequence() -> None:
    conversation = [user("How do I configure Kubernetes autoscaling?")]
    whole = compose_answer(conversation)
    deltas, completion = await answer(conversation, stop=["never there", "step", "First"])
    assert text_of(deltas) == whole[: whole.index("step")]
    assert completion.finish_reason == "stop"


async def test_the_same_conversation_and_options_stream_the_same_parts() -> None:
    conversation = [user("Use search_docs and get_weather for Oslo")]
    fields: dict[str, Any] = {"tools": [WEATHER, SEARCH], "reasoning_effort": "high"}
    assert await answer(conversation, **fields) == await answer(list(conversation), **fields)
    structured: dict[str, Any] = {
        "response_format": json_schema_format(Report),
        "max_tokens": 30,
        "stop": ["zzz"],
    }
    assert await answer(conversation, **structured) == await answer(conversation, **structured)


async def test_tool_call_pieces_are_paced_like_text_chunks() -> None:
    pauses: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        pauses.append(seconds)

    source = SimulatedAnswerSource(stream_delay=0.1, chunk_delay=0.05, sleep=recording_sleep)
    deltas, _ = await answer([user(ASK)], source, tools=[WEATHER])
    assert pauses == pytest.approx([0.05] + [0.15] * (len(deltas) - 1))  # a start, then a word each


def test_create_reads_reasoning_and_the_max_tokens_ceiling_from_the_settings(
    make_settings: Callable[..., Settings],
) -> None:
    source = create(make_settings(simulated_reasoning=True, ai_max_tokens=4))
    assert isinstance(source, SimulatedAnswerSource)
    assert (source.reasoning, source.max_tokens) == (True, 4)
    assert create(make_settings()).accepts_images is False


# --- Through the service: POST /chat, the answer's events, history ---------------------------------


def events_of(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


async def answer_events(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST /chat, wait until the answer is stored, and read its events from `stream_url`."""
    response = await client.post("/chat", json={"session_id": "tools", "user_id": "u1", **body})
    assert response.status_code == 202, response.text
    accepted = response.json()
    await wait_for_answer(client, "tools", accepted["message_id"])
    return events_of((await client.get(accepted["stream_url"])).text)


async def test_a_tool_call_and_its_result_round_trip_through_post_chat(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        events = await answer_events(client, {"message": ASK, "tools": [WEATHER, SEARCH]})
        types = [event["type"] for event in events]
        assert types[:2] == ["start", "tool_call_start"]
        assert types[2:-2] == ["tool_call_delta"] * (len(types) - 4)
        assert types[-2:] == ["tool_call_end", "end"]
        start, end = events[1], events[-1]
        assert (start["name"], start["index"]) == ("get_weather", 0)
        arguments = "".join(event["arguments"] for event in events if event["type"] == "tool_call_delta")
        assert events[-2]["arguments"] == arguments
        assert WeatherQuery.model_validate_json(arguments).city.name == "Oslo"
        assert end["finish_reason"] == "tool_calls"
        assert end["tool_calls"] == [
            {"id": start["tool_call_id"], "name": "get_weather", "arguments": arguments}
        ]

        result = {"tool_call_id": start["tool_call_id"], "content": '{"temperature": 21, "sky": "clear"}'}
        events = await answer_events(client, {"tool_results": [result]})
        end = events[-1]
        assert [event["type"] for event in events[1:-1]] == ["chunk"] * (len(events) - 2)
        assert end["finish_reason"] == "stop"
        assert "get_weather" in end["content"]
        assert "temperature 21" in end["content"]

        history = (await client.get("/history/tools")).json()["messages"]
    assert [turn["role"] for turn in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1]["tool_calls"] == [
        {"id": start["tool_call_id"], "name": "get_weather", "arguments": arguments}
    ]
    assert (history[2]["tool_call_id"], history[2]["content"]) == (result["tool_call_id"], result["content"])
    assert history[3]["content"] == end["content"]


async def test_reasoning_and_structured_output_stream_through_post_chat(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings(simulated_reasoning=True)) as client:
        body = {"message": "Tell me about Oslo weather", "response_format": json_schema_format(Report)}
        events = await answer_events(client, body)
    types = [event["type"] for event in events]
    reasoning = [event["content"] for event in events if event["type"] == "reasoning"]
    assert types == [
        "start",
        *["reasoning"] * len(reasoning),
        *["chunk"] * (len(types) - len(reasoning) - 2),
        "end",
    ]
    assert len(reasoning) >= 3
    end = events[-1]
    assert end["reasoning"] == "".join(reasoning)
    Report.model_validate_json(end["content"])


async def test_images_for_the_simulated_model_are_refused(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        body = {
            "session_id": "img",
            "user_id": "u1",
            "message": "What is this?",
            "images": ["https://example.com/a.png"],
        }
        response = await client.post("/chat", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "images_unsupported"
        assert (await client.get("/history/img")).json()["count"] == 0
