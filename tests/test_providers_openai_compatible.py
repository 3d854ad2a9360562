"""The OpenAI-compatible provider against a real Chat Completions server on loopback (the scriptable
`testkit.openai_server`), as the chat pipeline (ChatService on the embedded Redis) sees it: the messages
and options it sends, how it reads the stream's parts, retries, failures, usage, and cancellation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from config import Settings
from models import (
    ChunkEvent,
    EndEvent,
    ReasoningEvent,
    StartEvent,
    StreamEvent,
    ToolCallDeltaEvent,
    ToolCallStartEvent,
)
from parts import CompletionTokensDetails, Reasoning, Refusal, ToolCall, ToolCallStart, Usage
from providers.base import AnswerError, Completion
from providers.openai_compatible import model_location
from providers.openai_stream import ChunkReader, sse_data
from testkit.openai_server import OpenAIServer, Reply, tool_call
from testkit.redis_server import RedisServer
from tests.conftest import AppClient, wait_for_history
from tests.test_providers import chat_pipeline, collect, error_of, sent, text_of

SettingsFactory = Callable[..., Settings]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def end_of(events: list[StreamEvent]) -> EndEvent:
    assert isinstance(events[0], StartEvent)
    end = events[-1]
    assert isinstance(end, EndEvent), f"the answer did not end well: {events}"
    return end


# --- Context -------------------------------------------------------------------------------------


async def test_model_receives_system_prompt_earlier_turns_and_new_message(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Answer", " one.")), Reply(tokens=("Answer two.",)))
    async with chat_pipeline(openai_settings(system_prompt="Answer in haiku.")) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        events = await chat.ask("Third question")
    assert isinstance(events[-1], EndEvent)
    assert sent(model_server) == [
        {"role": "system", "content": "Answer in haiku."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "Answer one."},
        {"role": "user", "content": "Second question"},
        {"role": "assistant", "content": "Answer two."},
        {"role": "user", "content": "Third question"},
    ]
    body = model_server.requests[-1].body
    assert body["model"] == "test-model"
    assert body["stream"] is True


@pytest.mark.parametrize(
    ("max_messages", "expected_earlier"),
    [
        (2, ["Second question", "Answer two."]),
        # The newest three turns begin with an answer whose question is gone: it is dropped too.
        (3, ["Second question", "Answer two."]),
        (0, []),
    ],
)
async def test_context_holds_at_most_max_context_messages_newest_turns(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    max_messages: int,
    expected_earlier: list[str],
) -> None:
    model_server.script(Reply(tokens=("Answer one.",)), Reply(tokens=("Answer two.",)))
    async with chat_pipeline(
        openai_settings(system_prompt="Be brief.", max_context_messages=max_messages)
    ) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        await chat.ask("Third question")
    messages = sent(model_server)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in messages[1:-1]] == expected_earlier
    assert messages[-1] == {"role": "user", "content": "Third question"}


async def test_character_budget_drops_the_oldest_turns_first(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Answer one.",)), Reply(tokens=("Answer two.",)))
    # "S" + "Second question" + "Answer two." + "Third question" is 41 characters; one more turn is not.
    settings = openai_settings(system_prompt="S", max_context_chars=45)
    async with chat_pipeline(settings) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        await chat.ask("Third question")
    assert [m["content"] for m in sent(model_server)] == [
        "S",
        "Second question",
        "Answer two.",
        "Third question",
    ]


async def test_system_prompt_and_new_message_are_sent_even_over_the_budget(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    settings = openai_settings(system_prompt="A system prompt longer than the budget.", max_context_chars=10)
    async with chat_pipeline(settings) as chat:
        await chat.ask("An earlier question")
        await chat.ask("A question that alone is over the budget")
    assert sent(model_server) == [
        {"role": "system", "content": "A system prompt longer than the budget."},
        {"role": "user", "content": "A question that alone is over the budget"},
    ]


async def test_an_answer_that_failed_before_its_first_token_is_left_out_of_the_context(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(status=500))
    async with chat_pipeline(openai_settings(system_prompt="S")) as chat:
        await chat.ask("First question")
        await chat.ask("Second question")
        turns = await chat.turns()
    assert [(turn.content, turn.finish_reason) for turn in turns[:2]] == [
        ("First question", None),
        ("", "error"),
    ]
    assert sent(model_server) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "First question"},
        {"role": "user", "content": "Second question"},
    ]


# --- The messages sent ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Let me look that up.", ""])
async def test_an_answers_tool_calls_and_their_results_are_sent_back_in_openais_shape(
    openai_settings: SettingsFactory, model_server: OpenAIServer, text: str
) -> None:
    model_server.script(
        Reply(
            tokens=(
                *([text] if text else []),
                *tool_call(0, "get_weather", '{"city": "Oslo"}', call_id="c1"),
            ),
            finish_reason="tool_calls",
        ),
        Reply(tokens=("Cold.",)),
    )
    async with chat_pipeline(openai_settings(system_prompt="S")) as chat:
        await chat.ask("Weather in Oslo?", tools=[WEATHER])
        end = end_of(await chat.answer_calls({"c1": '{"temp_c": -3}'}, tools=[WEATHER]))
    assert end.content == "Cold."
    assert sent(model_server) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            # OpenAI's shape: no text is null beside calls, not "".
            "content": text or None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": -3}'},
    ]


@pytest.mark.parametrize("send_reasoning", [False, True])
async def test_earlier_reasoning_is_sent_back_only_with_ai_send_reasoning(
    openai_settings: SettingsFactory, model_server: OpenAIServer, send_reasoning: bool
) -> None:
    model_server.script(Reply(tokens=({"reasoning_content": "Two and two."}, "Four.")))
    async with chat_pipeline(openai_settings(system_prompt="S", ai_send_reasoning=send_reasoning)) as chat:
        await chat.ask("2+2?")
        await chat.ask("And 3+3?")
    earlier: dict[str, Any] = {"role": "assistant", "content": "Four."}
    if send_reasoning:
        earlier["reasoning_content"] = "Two and two."
    assert sent(model_server)[1:] == [
        {"role": "user", "content": "2+2?"},
        earlier,
        {"role": "user", "content": "And 3+3?"},
    ]


# --- Options -------------------------------------------------------------------------------------


async def test_options_a_request_leaves_unset_are_left_out(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    async with chat_pipeline(openai_settings()) as chat:
        end_of(await chat.ask("Hello?"))
    assert set(model_server.requests[0].body) == {"model", "messages", "stream", "stream_options"}


async def test_tool_choice_and_parallel_tool_calls_go_upstream_only_with_tools(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    # OpenAI answers 400 to either without `tools`.
    async with chat_pipeline(openai_settings()) as chat:
        end_of(await chat.ask("Hello?", tool_choice="none", parallel_tool_calls=False))
        end_of(await chat.ask("Hello?", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    first, second = (request.body for request in model_server.requests)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(first)
    assert (second["tool_choice"], second["parallel_tool_calls"]) == ("required", False)
    assert second["tools"] == [WEATHER]


@pytest.mark.parametrize(
    ("requested", "setting", "sent_temperature"),
    [(None, None, None), (None, 0.3, 0.3), (1.5, 0.3, 1.5), (0.0, 0.3, 0.0), (0.7, None, 0.7)],
)
async def test_temperature_is_the_requests_else_ai_temperature(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    requested: float | None,
    setting: float | None,
    sent_temperature: float | None,
) -> None:
    async with chat_pipeline(openai_settings(ai_temperature=setting)) as chat:
        end_of(await chat.ask("Hello?", temperature=requested))
    assert model_server.requests[0].body.get("temperature") == sent_temperature


@pytest.mark.parametrize(
    ("requested", "ceiling", "sent_max_tokens"),
    [(None, None, None), (300, None, 300), (None, 100, 100), (300, 100, 100), (20, 100, 20)],
)
async def test_ai_max_tokens_caps_what_a_request_asks_for(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    requested: int | None,
    ceiling: int | None,
    sent_max_tokens: int | None,
) -> None:
    async with chat_pipeline(openai_settings(ai_max_tokens=ceiling)) as chat:
        end_of(await chat.ask("Hello?", max_tokens=requested))
    assert model_server.requests[0].body.get("max_tokens") == sent_max_tokens


# --- Reading the stream --------------------------------------------------------------------------


async def test_a_tool_call_with_no_id_and_a_late_name_gets_an_id_and_keeps_every_argument(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    arguments = '{"city": "Lisbon", "unit": "celsius"}'
    model_server.script(
        Reply(
            tokens=tool_call(0, "get_weather", arguments, call_id=None, pieces=5, name_late=True),
            finish_reason="tool_calls",
        )
    )
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Weather in Lisbon?", tools=[WEATHER])
        turns = await chat.turns()
    (started,) = [event for event in events if isinstance(event, ToolCallStartEvent)]
    assert started.name == "get_weather"
    assert started.tool_call_id.startswith("call_")
    assert "".join(e.arguments for e in events if isinstance(e, ToolCallDeltaEvent)) == arguments
    end = end_of(events)
    assert end.tool_calls == [ToolCall(id=started.tool_call_id, name="get_weather", arguments=arguments)]
    assert end.finish_reason == "tool_calls"
    assert turns[-1].tool_calls == end.tool_calls


async def test_tool_calls_whose_arguments_interleave_fail_the_answer_clearly(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    first = tool_call(0, "get_weather", '{"city": "Rome"}', call_id="a", pieces=2)
    second = tool_call(1, "get_time", "{}", call_id="b")
    model_server.script(Reply(tokens=(first[0], first[1], *second, first[2]), finish_reason="tool_calls"))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Weather and time in Rome?", tools=[WEATHER, CLOCK])
    assert error_of(events).error.code == "upstream_error"


async def test_a_tool_call_that_never_gets_a_name_is_not_relayed(
    openai_settings: SettingsFactory, model_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    nameless = {"tool_calls": [{"index": 0, "id": "x", "function": {"arguments": "{}"}}]}
    model_server.script(Reply(tokens=("Hm.", nameless), finish_reason="tool_calls"))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Weather?", tools=[WEATHER])
    end = end_of(events)
    assert (end.content, end.tool_calls, end.finish_reason) == ("Hm.", None, "stop")
    assert "1 tool calls without a name" in caplog.text


async def test_a_delta_with_both_reasoning_fields_is_read_once(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    # Servers moving from `reasoning_content` to `reasoning` send both, with the same text.
    both = {"reasoning_content": "Think.", "reasoning": "Think."}
    model_server.script(Reply(tokens=(both, {"reasoning": " Again."}, "Done.")))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Hello?")
    assert [event.content for event in events if isinstance(event, ReasoningEvent)] == ["Think.", " Again."]
    assert end_of(events).reasoning == "Think. Again."


@pytest.mark.parametrize(
    ("upstream", "calls", "finish_reason"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("content_filter", False, "content_filter"),
        ("tool_calls", True, "tool_calls"),
        ("function_call", True, "tool_calls"),  # the legacy name
        ("stop", True, "tool_calls"),  # some servers say `stop` after calling tools
        ("tool_calls", False, "stop"),  # nothing was called: a client would look for calls in vain
        ("a_new_reason", False, "stop"),
    ],
)
async def test_the_model_servers_finish_reason_is_mapped_to_the_services(
    openai_settings: SettingsFactory,
    model_server: OpenAIServer,
    upstream: str,
    calls: bool,
    finish_reason: str,
) -> None:
    called = tool_call(0, "get_time", "{}", call_id="t") if calls else []
    model_server.script(Reply(tokens=("Well.", *called), finish_reason=upstream))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Time?", tools=[CLOCK])
        turns = await chat.turns()
    assert end_of(events).finish_reason == finish_reason
    assert turns[-1].finish_reason == finish_reason


async def test_reasoning_tokens_reach_the_end_event_and_history(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(
        Reply(tokens=({"reasoning_content": "Hmm."}, "Yes."), usage=(10, 40), reasoning_tokens=32)
    )
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Is it?")
        turns = await chat.turns()
    expected = Usage(
        prompt_tokens=10,
        completion_tokens=40,
        total_tokens=50,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=32),
    )
    assert end_of(events).usage == expected
    assert turns[-1].usage == expected


# --- Retries and failures ------------------------------------------------------------------------


async def test_rate_limit_is_retried_after_retry_after(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(status=429, headers={"Retry-After": "1"}))
    async with chat_pipeline(openai_settings(ai_max_retries=2)) as chat:
        events = await chat.ask("Hello?")
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert end.content == "Hello there, friend."
    first, second = model_server.requests
    # The client's own first backoff is at most 0.5 s: waiting a second is the server's Retry-After.
    assert second.at - first.at >= 0.95


async def test_server_errors_before_the_first_token_are_retried(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    quick = {"retry-after-ms": "10"}
    model_server.script(Reply(status=500, headers=quick), Reply(status=503, headers=quick))
    async with chat_pipeline(openai_settings(ai_max_retries=2)) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert len(model_server.requests) == 3
    assert isinstance(events[-1], EndEvent)
    assert turns[-1].content == "Hello there, friend."
    assert turns[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("status", "code"), [(429, "rate_limited"), (500, "upstream_error"), (502, "upstream_error")]
)
async def test_failure_once_retries_are_spent_ends_with_its_error_code(
    openai_settings: SettingsFactory, model_server: OpenAIServer, status: int, code: str
) -> None:
    quick = {"retry-after-ms": "10"}
    model_server.script(Reply(status=status, headers=quick), Reply(status=status, headers=quick))
    async with chat_pipeline(openai_settings(ai_max_retries=1)) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert len(model_server.requests) == 2
    assert error_of(events).error.code == code
    assert [turn.role for turn in turns] == ["user", "assistant"]
    assert turns[-1].content == ""
    assert turns[-1].finish_reason == "error"


async def test_connection_dropped_mid_answer_is_not_retried_and_keeps_the_partial_answer(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("One", " two", " three", " four"), drop_after=2))
    async with chat_pipeline(openai_settings(ai_max_retries=3)) as chat:
        events = await chat.ask("Count to four")
        turns = await chat.turns()
    assert len(model_server.requests) == 1
    assert text_of(events) == "One two"
    assert error_of(events).error.code == "upstream_error"
    assert turns[-1].content == "One two"
    assert turns[-1].finish_reason == "error"


async def test_stalled_stream_times_out_and_keeps_the_partial_answer(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Slow", " answer"), delay=30))
    async with chat_pipeline(openai_settings(ai_timeout=0.5, ai_max_retries=2)) as chat:
        started = time.monotonic()
        events = await chat.ask("Take your time")
        elapsed = time.monotonic() - started
        turns = await chat.turns()
    assert elapsed < 10  # the stalled reply takes 30 s
    assert len(model_server.requests) == 1
    assert error_of(events).error.code == "upstream_timeout"
    assert turns[-1].content == "Slow"
    assert turns[-1].finish_reason == "error"


async def test_stream_closed_before_its_finish_is_an_incomplete_answer(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("Half", " an answer"), finish_reason=None))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert error_of(events).error.code == "upstream_error"
    assert turns[-1].content == "Half an answer"
    assert turns[-1].finish_reason == "error"


async def test_wrong_api_key_is_a_clear_error_and_never_logged(
    openai_settings: SettingsFactory, model_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = "sk-wrong-secret-4242"
    async with chat_pipeline(openai_settings(openai_api_key=wrong_key, ai_max_retries=2)) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert len(model_server.requests) == 1  # a refused key is not retried
    error = error_of(events).error
    assert error.code == "upstream_auth"
    assert any(
        record.levelno == logging.ERROR and "OPENAI_API_KEY" in record.getMessage()
        for record in caplog.records
    )
    # The model server quoted the key back: it must reach neither the logs, nor the stream, nor history.
    assert wrong_key in str(model_server.requests[0].headers)
    assert wrong_key not in caplog.text
    assert wrong_key not in error.message
    assert all(wrong_key not in turn.content for turn in turns)


async def test_unknown_model_is_a_clear_error(
    openai_settings: SettingsFactory, model_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with chat_pipeline(openai_settings(ai_model="no-such-model")) as chat:
        events = await chat.ask("Hello?")
    assert error_of(events).error.code == "model_not_found"
    assert any(
        record.levelno == logging.ERROR
        and "AI_MODEL" in record.getMessage()
        and "no-such-model" in record.getMessage()
        for record in caplog.records
    )


# --- Usage ---------------------------------------------------------------------------------------


async def test_token_usage_reaches_the_end_event_and_history(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(usage=(12, 5)))
    async with chat_pipeline(openai_settings()) as chat:
        events = await chat.ask("Hello?")
        turns = await chat.turns()
    assert model_server.requests[0].body["stream_options"] == {"include_usage": True}
    expected = Usage(prompt_tokens=12, completion_tokens=5, total_tokens=17)
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert end.usage == expected
    assert turns[-1].usage == expected
    assert not model_server.disconnected.is_set()  # a finished stream is not a hang-up


async def test_usage_is_not_asked_for_when_disabled(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(usage=(12, 5)))
    async with chat_pipeline(openai_settings(ai_stream_usage=False)) as chat:
        events = await chat.ask("Hello?")
    assert "stream_options" not in model_server.requests[0].body
    end = events[-1]
    assert isinstance(end, EndEvent)
    assert end.usage is None


# --- Cancellation --------------------------------------------------------------------------------


async def test_shutdown_closes_the_upstream_stream_at_once(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    model_server.script(Reply(tokens=("First", " second"), delay=30))
    async with chat_pipeline(openai_settings(shutdown_grace_seconds=0)) as chat:
        events = await chat.start("Write a long essay")
        received: list[StreamEvent] = []
        async with asyncio.timeout(15):
            while not any(isinstance(event, ChunkEvent) for event in received):
                event = await events.get()
                assert event is not None
                received.append(event)
        cancelled = time.monotonic()
        await chat.service.shutdown()
        closed = await asyncio.to_thread(model_server.disconnected.wait, 15)
        elapsed = time.monotonic() - cancelled
        received += await collect(events)
        turns = await chat.turns()
    assert closed, "the model server never saw the client hang up"
    assert elapsed < 10  # not the reply's 30 s
    assert error_of(received).error.code == "shutdown"
    assert turns[-1].content == "First"
    assert turns[-1].finish_reason == "shutdown"


async def test_listener_hears_the_end_of_an_answer_even_when_redis_goes_away(
    openai_settings: SettingsFactory, model_server: OpenAIServer, own_redis: RedisServer
) -> None:
    model_server.script(Reply(tokens=("One", " two", " three"), delay=0.5))
    settings = openai_settings(redis_url=own_redis.url, redis_timeout=0.5)
    async with chat_pipeline(settings) as chat:
        events = await chat.start("Count")
        first = [await events.get(), await events.get()]
        own_redis.stop(kill=True)
        rest = await collect(events)
    assert [type(event) for event in first] == [StartEvent, ChunkEvent]
    received = [event for event in first if event is not None] + rest
    assert error_of(received).error.code == "redis_unavailable"


# --- Wiring --------------------------------------------------------------------------------------


async def test_app_answers_from_the_configured_model_server(
    openai_settings: SettingsFactory, model_server: OpenAIServer, app_client: AppClient
) -> None:
    model_server.script(Reply(usage=(7, 3)))
    async with app_client(openai_settings(system_prompt="Be kind.")) as client:
        health = (await client.get("/health")).json()
        accepted = await client.post("/chat", json={"session_id": "wired", "message": "Hi!", "user_id": "u1"})
        assert accepted.status_code == 202
        history = await wait_for_history(client, "wired")
    assert health["ai"] == {"provider": "openai", "model": "test-model", "base_url": model_server.url}
    answer = history["messages"][1]
    assert answer["content"] == "Hello there, friend."
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert sent(model_server) == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi!"},
    ]


def test_the_model_server_location_shown_carries_no_credentials_or_query() -> None:
    assert model_location("https://user:pw@models.example:8443/v1?api-version=1") == (
        "https://models.example:8443/v1"
    )


# --- Reading the raw stream (issue #14: decoded with orjson, not the client's typed chunks) -------


async def _pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_stream_events_split_across_reads_are_read_whole_up_to_done() -> None:
    chunks = (
        b'data: {"a":',
        b'1}\r\n\r\n: keep-alive\n\nevent: x\ndata:{"b":2}\n',
        b"\ndata: [DONE]\n\ndata: {}\n\n",
    )
    assert [data async for data in sse_data(_pieces(*chunks))] == [b'{"a":1}', b'{"b":2}']


def test_error_sent_in_the_stream_ends_the_answer_with_an_upstream_error() -> None:
    reader = ChunkReader(Completion())
    with pytest.raises(AnswerError) as raised:
        reader.read(b'{"error":{"message":"overloaded","type":"server_error"}}')
    assert raised.value.code == "upstream_error"
    assert "overloaded" not in raised.value.message  # the server's text goes to the log, not to users


def test_every_part_of_a_chunk_is_read_and_other_choices_are_ignored() -> None:
    completion = Completion()
    reader = ChunkReader(completion)
    chunk = {
        "choices": [
            {"index": 1, "delta": {"content": "not ours"}},
            {
                "index": 0,
                "delta": {
                    "reasoning": "Hm.",
                    "content": "Hi",
                    "refusal": "No.",
                    "tool_calls": tool_call(0, "f", "{}", call_id="c1")[0]["tool_calls"],
                },
                "finish_reason": "tool_calls",
            },
        ],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
    }
    parts = reader.read(orjson.dumps(chunk))
    assert parts == [Reasoning("Hm."), "Hi", Refusal("No."), ToolCallStart("c1", "f")]
    assert reader.finish == "tool_calls"
    assert completion.usage == Usage(
        prompt_tokens=3,
        completion_tokens=2,
        total_tokens=5,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=1),
    )


async def test_answers_one_after_another_reuse_one_upstream_connection(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    # The stream is read past `[DONE]` to its end, so its connection goes back to the client's pool: a
    # connection closed part-read is dropped, and each answer would open a new one before its first
    # token (issue #14).
    model_server.script(Reply(tokens=("One.",)), Reply(tokens=("Two.",)), Reply(tokens=("Three.",)))
    async with chat_pipeline(openai_settings()) as chat:
        answers = [await chat.ask(question) for question in ("One?", "Two?", "Three?")]
    assert [text_of(events) for events in answers] == ["One.", "Two.", "Three."]
    peers = {received.peer for received in model_server.requests}
    assert None not in peers
    assert len(peers) == 1, f"each answer opened its own connection: {peers}"


async def test_a_server_that_keeps_its_stream_open_after_done_does_not_hold_the_answer(
    openai_settings: SettingsFactory, model_server: OpenAIServer
) -> None:
    # The rest of the stream after `[DONE]` is waited for only briefly (`DRAIN_SECONDS`): a server that
    # never ends its body must not hold the answer's end until the read timeout.
    model_server.script(Reply(tokens=("Done", " already."), hold_after_done=60))
    async with chat_pipeline(openai_settings(ai_timeout=30)) as chat:
        async with asyncio.timeout(10):
            events = await chat.ask("Are you done?")
    end_of(events)
    assert text_of(events) == "Done already."
