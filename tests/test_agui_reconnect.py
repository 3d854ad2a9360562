"""AG-UI reconnects (`POST /agui/connect`): the thread's messages as a `MESSAGES_SNAPSHOT` built from its
history, with every part (reasoning, tool calls, tool results), then the answer that runs now, live."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
from asgi_lifespan import LifespanManager

from app import create_app
from config import Settings
from testkit.waiting import eventually
from tests.agui_events import (
    WEATHER,
    HeldSource,
    events_of,
    finished,
    of_type,
    run_input,
    snapshot,
    squeezed,
    started,
    text_of,
    tool_result,
    types,
    user,
)
from tests.conftest import AppClient


async def test_a_reconnect_to_an_idle_thread_gets_its_messages_with_every_part(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    question = user("Weather in Lima? Use get_weather.")
    async with app_client(make_settings(simulated_reasoning=True)) as client:
        calling = events_of(await client.post("/agui", json=run_input("r1", question, tools=[WEATHER])))
        (call,) = of_type(calling, "TOOL_CALL_START")
        result = tool_result(call.tool_call_id, "station WX-4471: fog")
        answering = events_of(await client.post("/agui", json=run_input("r1", result, tools=[WEATHER])))
        connect = run_input("r1", run_id="reload-1")
        events = events_of(await client.post("/agui/connect", json=connect))

    assert types(events) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
    assert (started(events).run_id, finished(events).run_id) == ("reload-1", "reload-1")
    first, second = started(calling).run_id, started(answering).run_id
    messages = [message.model_dump(by_alias=True, exclude_none=True) for message in snapshot(events).messages]
    arguments = "".join(event.delta for event in of_type(calling, "TOOL_CALL_ARGS"))
    reasoning = [
        "".join(e.delta for e in of_type(run, "REASONING_MESSAGE_CONTENT")) for run in (calling, answering)
    ]
    assert messages == [
        {"id": f"{first}-user", "role": "user", "content": question["content"]},
        {"id": f"{first}-reasoning", "role": "reasoning", "content": reasoning[0]},
        {
            "id": first,
            "role": "assistant",
            "toolCalls": [
                {
                    "id": call.tool_call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {
            "id": f"{second}-{call.tool_call_id}",
            "role": "tool",
            "content": "station WX-4471: fog",
            "toolCallId": call.tool_call_id,
        },
        {"id": f"{second}-reasoning", "role": "reasoning", "content": reasoning[1]},
        {"id": second, "role": "assistant", "content": text_of(answering)},
    ]


async def _sse_clients(client: httpx.AsyncClient) -> float:
    metrics = (await client.get("/metrics")).text
    found = re.search(r"^chat_sse_clients (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_reconnect_while_an_answer_runs_gets_the_snapshot_then_the_rest_of_the_answer(
    make_settings: Callable[..., Settings],
) -> None:
    source = HeldSource(["Hello", " from", " the log"])
    app = create_app(make_settings(), source=source)
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test") as client,
    ):
        chat = {"session_id": "r2", "message": "Say hello", "user_id": "u1"}
        accepted = (await client.post("/chat", json=chat)).json()
        await source.written.wait()
        reconnect = asyncio.create_task(client.post("/agui/connect", json=run_input("r2")))

        async def following() -> bool:
            return await _sse_clients(client) >= 1

        await eventually(following, "the reconnect follows the running answer")
        source.release.set()  # the answer's end now arrives live
        events = events_of(await reconnect)

    message_id = accepted["message_id"]
    assert squeezed(types(events)) == [
        "RUN_STARTED",
        "MESSAGES_SNAPSHOT",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert started(events).run_id == finished(events).run_id == message_id  # the running answer's run
    messages = [(m.id, m.role) for m in snapshot(events).messages]
    assert messages == [(f"{message_id}-user", "user")]  # the answer itself streams after it
    assert of_type(events, "TEXT_MESSAGE_START")[0].message_id == message_id
    assert text_of(events) == "Hello from the log"
    assert finished(events).result == {"messageId": message_id, "finishReason": "stop"}


async def test_a_reconnect_to_a_thread_without_turns_gets_an_empty_snapshot_and_stores_nothing(
    app_client: AppClient, make_settings: Callable[..., Settings]
) -> None:
    async with app_client(make_settings()) as client:
        events = events_of(await client.post("/agui/connect", json=run_input("never-used", run_id="x")))
        turns = (await client.get("/history/never-used")).json()["messages"]

    assert types(events) == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "RUN_FINISHED"]
    assert snapshot(events).messages == []
    assert turns == []  # a reconnect stores nothing and starts no answer
    assert started(events).run_id == "x"
