"""AG-UI at `POST /agui`: a `RunAgentInput` runs the thread's new turn as one run of AG-UI events, every
one of which validates against the `ag-ui-protocol` package's models; the input's fields map onto the
answer (tools, tool results, context, forwarded options), bad inputs are refused naming the field, and
keys and ownership are those of `POST /chat`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from ag_ui.core import RunFinishedCancelledOutcome, RunFinishedSuccessOutcome
from asgi_lifespan import LifespanManager

from app import create_app
from config import Settings
from protocols.agui.inputs import message_id_of
from testkit.openai_server import OpenAIServer, Reply
from tests.agui_events import (
    WEATHER,
    HeldSource,
    as_a,
    events_of,
    failed,
    finished,
    of_type,
    run_input,
    squeezed,
    started,
    text_of,
    tool_result,
    types,
    user,
)
from tests.chat_harness import ScriptedSource
from tests.conftest import AppClient

ALICE = {"X-API-Key": "alice-key-0123456789abcdef"}
BOB = {"X-API-Key": "bob-key-0123456789abcdef00"}
KEYS = f"alice:{ALICE['X-API-Key']},bob:{BOB['X-API-Key']}"


@asynccontextmanager
async def scripted(settings: Settings, source: ScriptedSource) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, answering from `source`."""
    app = create_app(settings, source=source)
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        yield client


async def history(client: httpx.AsyncClient, thread: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = (await client.get(f"/history/{thread}")).json()["messages"]
    return messages


async def test_a_run_streams_reasoning_and_a_tool_call_as_agui_events(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    body = run_input("t1", user("What is the weather in Paris? Use get_weather."), tools=[WEATHER])
    async with app_client(make_settings(simulated_reasoning=True)) as client:
        events = events_of(await client.post("/agui", json=body))
        turns = await history(client, "t1")

    assert squeezed(types(events)) == [
        "RUN_STARTED",
        "REASONING_START",
        "REASONING_MESSAGE_START",
        "REASONING_MESSAGE_CONTENT",
        "REASONING_MESSAGE_END",
        "REASONING_END",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "RUN_FINISHED",
    ]
    assert (started(events).thread_id, started(events).run_id) == ("t1", body["runId"])
    (call,) = of_type(events, "TOOL_CALL_START")
    assert call.tool_call_name == "get_weather"
    assert call.parent_message_id == body["runId"]  # a UUID runId is the answer's message_id
    arguments = "".join(event.delta for event in of_type(events, "TOOL_CALL_ARGS"))
    assert json.loads(arguments) == {"city": "Paris"}
    assert (finished(events).thread_id, finished(events).run_id) == ("t1", body["runId"])
    outcome = as_a(finished(events).outcome, RunFinishedSuccessOutcome)
    assert outcome.pending_tool_call_ids == [call.tool_call_id]
    assert finished(events).result == {"messageId": body["runId"], "finishReason": "tool_calls"}
    reasoning = "".join(event.delta for event in of_type(events, "REASONING_MESSAGE_CONTENT"))
    assert [turn["role"] for turn in turns] == ["user", "assistant"]
    assert turns[1]["message_id"] == body["runId"]
    assert turns[1]["reasoning"] == reasoning
    assert turns[1]["tool_calls"] == [
        {"id": call.tool_call_id, "name": "get_weather", "arguments": arguments}
    ]


async def test_tool_messages_answer_the_calls_and_the_next_run_streams_the_final_text(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    question = user("Weather in Oslo? Use get_weather.")
    async with app_client(make_settings()) as client:
        first = events_of(await client.post("/agui", json=run_input("t2", question, tools=[WEATHER])))
        (call,) = of_type(first, "TOOL_CALL_START")
        asked = {
            "id": finished(first).run_id,
            "role": "assistant",
            "toolCalls": [
                {
                    "id": call.tool_call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        }
        result = tool_result(call.tool_call_id, "station WX-4471: snow, -3 C")
        second = events_of(
            await client.post("/agui", json=run_input("t2", question, asked, result, tools=[WEATHER]))
        )
        turns = await history(client, "t2")

    assert squeezed(types(second)) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert "WX-4471" in text_of(second)
    assert as_a(finished(second).outcome, RunFinishedSuccessOutcome).pending_tool_call_ids is None
    assert [turn["role"] for turn in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_call_id"] == call.tool_call_id
    assert turns[3]["content"] == text_of(second)


async def test_a_run_id_that_is_no_uuid_names_its_answer_and_a_repeated_run_replays_it(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    body = run_input("t3", user("Hello there"), run_id="run-1")
    async with app_client(make_settings()) as client:
        first = events_of(await client.post("/agui", json=body))
        again = events_of(await client.post("/agui", json=body))
        turns = await history(client, "t3")

    message_id = str(message_id_of("t3", "run-1"))
    assert message_id == str(uuid.uuid5(uuid.UUID("0b6f4f7a-6c1e-4a8e-9d1f-7a0b6f4f7a6c"), "t3\nrun-1"))
    assert started(first).run_id == finished(first).run_id == "run-1"
    assert finished(first).result == {"messageId": message_id, "finishReason": "stop"}
    assert of_type(first, "TEXT_MESSAGE_START")[0].message_id == message_id
    assert types(again) == types(first)
    assert text_of(again) == text_of(first)
    assert [turn["message_id"] for turn in turns] == [message_id, message_id]  # answered once


async def test_a_run_id_that_is_a_guessable_uuid_is_not_used_as_the_message_id(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    # The nil UUID, or a time-based one, would be a message id anyone can guess (issue #13, item 7).
    nil = "00000000-0000-0000-0000-000000000000"
    body = run_input("t4", user("Hello there"), run_id=nil)
    async with app_client(make_settings()) as client:
        events = events_of(await client.post("/agui", json=body))
        turns = await history(client, "t4")

    derived = str(uuid.uuid5(uuid.UUID("0b6f4f7a-6c1e-4a8e-9d1f-7a0b6f4f7a6c"), f"t4\n{nil}"))
    assert started(events).run_id == nil  # the run keeps its id; the answer gets its own
    assert finished(events).result == {"messageId": derived, "finishReason": "stop"}
    assert [turn["message_id"] for turn in turns] == [derived, derived]


async def test_context_and_system_messages_become_the_system_prompt(
    make_settings: Callable[..., Settings],
) -> None:
    source = ScriptedSource(["Noted."])
    system = {"id": "s", "role": "system", "content": "You are terse."}
    context = [{"description": "The user's timezone", "value": "Europe/Oslo"}]
    async with scripted(make_settings(), source) as client:
        events_of(await client.post("/agui", json=run_input("t4", system, user("Hi"), context=context)))

    prompt = source.conversations[0][0]
    assert prompt.role == "system"
    assert (
        prompt.content
        == "You are terse.\n\nContext from the application:\n- The user's timezone: Europe/Oslo"
    )
    assert [(m.role, m.content) for m in source.conversations[0][1:]] == [("user", "Hi")]


async def test_context_reaches_the_model_with_the_thread_history_and_tool_results(
    make_settings: Callable[..., Settings],
) -> None:
    source = ScriptedSource(["Done."])
    context = [{"description": "Units", "value": "metric"}]
    async with scripted(make_settings(system_prompt="Be kind."), source) as client:
        events_of(await client.post("/agui", json=run_input("t5", user("First"))))
        events_of(await client.post("/agui", json=run_input("t5", user("Second"), context=context)))

    prompt, *turns = source.conversations[1]
    assert prompt.content == "Be kind.\n\nContext from the application:\n- Units: metric"
    assert [(m.role, m.content) for m in turns] == [
        ("user", "First"),
        ("assistant", "Done."),
        ("user", "Second"),
    ]


async def test_forwarded_props_carry_generation_options_and_the_user(
    make_settings: Callable[..., Settings],
) -> None:
    source = ScriptedSource(["Fine."])
    props = {
        "temperature": 0.25,
        "toolChoice": "none",
        "reasoning_effort": "low",
        "userId": "ann",
        "copilot": 1,
    }
    async with scripted(make_settings(), source) as client:
        events_of(
            await client.post(
                "/agui", json=run_input("t6", user("Hi"), tools=[WEATHER], forwardedProps=props)
            )
        )
        turns = await history(client, "t6")

    options = source.options[0]
    assert (options.temperature, options.tool_choice, options.reasoning_effort) == (0.25, "none", "low")
    assert options.tools is not None
    assert options.tools[0].function.name == "get_weather"
    assert {turn["user_id"] for turn in turns} == {"ann"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"messages": [{"id": "a", "role": "assistant", "content": "Hi"}]}, "messages.0"),
        ({"messages": []}, "messages"),
        ({"messages": [{"id": "u", "role": "user", "content": "   "}]}, "messages.0.content"),
        ({"threadId": "no spaces allowed"}, "threadId"),
        ({"resume": [{"interruptId": "i1", "status": "resolved"}]}, "resume"),
        ({"forwardedProps": {"temperature": 5}}, "forwardedProps.temperature"),
        ({"tools": [{"name": "bad name!", "description": "x"}]}, "tools.0.name"),
        ({"tools": [{"name": "t", "description": "x", "parameters": {"type": 5}}]}, "tools.0.parameters"),
    ],
)
async def test_an_input_that_cannot_be_served_is_refused_naming_the_field(
    app_client: AppClient, make_settings: Callable[..., Settings], change: dict[str, Any], field: str
) -> None:
    body = {**run_input("t7", user("Hello")), **change}
    async with app_client(make_settings()) as client:
        response = await client.post("/agui", json=body)
        stored = await history(client, "t7")

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in [item["field"] for item in error["fields"]]
    assert stored == []


@pytest.mark.parametrize("context", [[], [{"description": "Units", "value": "metric"}]])
async def test_tool_results_for_calls_that_await_none_get_409_and_store_nothing(
    app_client: AppClient, make_settings: Callable[..., Settings], context: list[dict[str, str]]
) -> None:
    async with app_client(make_settings()) as client:
        events_of(await client.post("/agui", json=run_input("t8", user("Hello"))))
        body = run_input("t8", tool_result("call_unknown", "42"), context=context)
        response = await client.post("/agui", json=body)
        turns = await history(client, "t8")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "tool_result_conflict"
    assert "call_unknown" in response.json()["error"]["message"]
    assert [turn["role"] for turn in turns] == ["user", "assistant"]


async def test_another_keys_thread_is_not_found_like_a_missing_one(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    async with app_client(make_settings(api_keys=KEYS)) as client:
        events_of(await client.post("/agui", json=run_input("mine", user("Hi")), headers=ALICE))
        run_there = await client.post("/agui", json=run_input("mine", user("Hijack")), headers=BOB)
        connect_there = await client.post("/agui/connect", json=run_input("mine"), headers=BOB)
        connect_missing = await client.post("/agui/connect", json=run_input("nothing"), headers=BOB)
        anonymous = await client.post("/agui", json=run_input("mine", user("Hi")))
        turns = await history_as(client, "mine", ALICE)

    for response in (run_there, connect_there, connect_missing):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert anonymous.status_code == 401
    assert [turn["content"] for turn in turns if turn["role"] == "user"] == ["Hi"]


async def history_as(client: httpx.AsyncClient, thread: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = (await client.get(f"/history/{thread}", headers=headers)).json()[
        "messages"
    ]
    return messages


@pytest.mark.parametrize(
    ("reply", "expected", "said"),
    [
        (Reply(status=500, message="upstream exploded"), ["RUN_STARTED", "RUN_ERROR"], "(HTTP 500)"),
        (
            Reply(tokens=("Partly", " written", " answer"), drop_after=2),
            ["RUN_STARTED", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "RUN_ERROR"],
            "connection to the model server failed",
        ),
    ],
)
async def test_a_failing_model_ends_the_run_with_run_error(
    app_client: AppClient,
    openai_settings: Callable[..., Settings],
    model_server: OpenAIServer,
    reply: Reply,
    expected: list[str],
    said: str,
) -> None:
    model_server.script(reply)
    async with app_client(openai_settings()) as client:
        events = events_of(await client.post("/agui", json=run_input("t9", user("Hello"))))
        turns = await history(client, "t9")

    assert squeezed(types(events)) == expected
    error = failed(events)
    assert error.code == "upstream_error"
    assert said in error.message
    assert "exploded" not in error.message
    assert turns[-1]["finish_reason"] == "error"


async def test_a_stopped_answer_finishes_its_run_as_cancelled(make_settings: Callable[..., Settings]) -> None:
    source = HeldSource(["Working", " on it"])
    body = run_input("t10", user("Take your time"))
    async with scripted(make_settings(), source) as client:
        running = asyncio.create_task(client.post("/agui", json=body))
        await source.written.wait()
        stopped = await client.post(f"/chat/{body['runId']}/cancel")
        events = events_of(await running)

    assert stopped.json()["finish_reason"] == "cancelled"
    assert squeezed(types(events)) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert text_of(events) == "Working on it"
    assert isinstance(finished(events).outcome, RunFinishedCancelledOutcome)
