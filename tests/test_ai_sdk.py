"""`/api/chat` in process: what the router refuses and how (the SDK's chat client sees these bodies as
its error), retries, the idle resume and stop, and the encoder's chunks for endings a simulated answer
does not reach. The SDK's own client drives the flows in `test_ai_sdk_clients.py`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from config import Settings
from models import ChatTurn, EndEvent, ErrorEvent, ErrorInfo, StartEvent, StreamEvent, ToolCallEndEvent
from parts import ToolCall, ToolResult, Usage
from protocols.ai_sdk.encoder import UIMessageEncoder
from protocols.ai_sdk.resume import resumed_message
from tests.conftest import AppClient

Json = dict[str, Any]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def user_message(text: str, message_id: str = "u1", **extra: Any) -> Json:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}], **extra}


def body(chat_id: str, *messages: Json, **extra: Any) -> Json:
    return {"id": chat_id, "messages": list(messages), "trigger": "submit-message", **extra}


def chunks_of(stream: str) -> list[Json]:
    events = [event.removeprefix("data: ") for event in stream.split("\n\n") if event.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [orjson.loads(event) for event in events[:-1]]


async def test_a_repeated_post_streams_the_same_answer_and_stores_one(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        first = await client.post("/api/chat", json=body("retry", user_message("Hello")))
        again = await client.post("/api/chat", json=body("retry", user_message("Hello")))
        turns = (await client.get("/history/retry")).json()["messages"]

    assert first.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert first.text == again.text
    assert [turn["role"] for turn in turns] == ["user", "assistant"]
    assert chunks_of(first.text)[0] == {"type": "start", "messageId": turns[1]["message_id"]}


@pytest.mark.parametrize(
    ("request_body", "status", "code", "field"),
    [
        (body("c", user_message("Hi"), trigger="regenerate-message"), 400, "regenerate_unsupported", None),
        (body("c", {"id": "s", "role": "system", "parts": []}), 422, "invalid_request", "messages.0.role"),
        (body("c", user_message("  ")), 422, "invalid_request", "messages.0.parts"),
        (body("bad id!", user_message("Hi")), 422, "invalid_request", "id"),
        (body("c", user_message("Hi"), temperature=5), 422, "invalid_request", "temperature"),
        (body("c", user_message("Hi"), unknown_option=1), 422, "invalid_request", "unknown_option"),
        (
            body("c", {"id": "a", "role": "assistant", "parts": [{"type": "text", "text": "Hi"}]}),
            422,
            "invalid_request",
            "messages.0",
        ),
        (
            body(
                "c",
                {
                    "id": "u",
                    "role": "user",
                    "parts": [{"type": "file", "mediaType": "application/pdf", "url": "data:,x"}],
                },
            ),
            422,
            "invalid_request",
            "messages.0.parts.0",
        ),
    ],
)
async def test_what_cannot_be_submitted_is_refused_naming_the_field(
    make_settings: Callable[..., Settings],
    app_client: AppClient,
    request_body: Json,
    status: int,
    code: str,
    field: str | None,
) -> None:
    async with app_client(make_settings()) as client:
        response = await client.post("/api/chat", json=request_body)
        turns = (await client.get("/history/c")).json()["count"]

    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    if field is not None:
        assert field in [item["field"] for item in error["fields"]]
    assert turns == 0


async def test_images_the_simulated_model_cannot_see_are_refused(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    image = {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,iVBORw0KGgo="}
    message = {"id": "u", "role": "user", "parts": [{"type": "text", "text": "What is it?"}, image]}
    async with app_client(make_settings()) as client:
        response = await client.post("/api/chat", json=body("img", message))

    assert (response.status_code, response.json()["error"]["code"]) == (400, "images_unsupported")


async def test_tool_output_for_a_call_nobody_made_is_a_conflict(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    tool_part = {"type": "tool-get_weather", "toolCallId": "call_x", "state": "output-available", "output": 1}
    assistant = {"id": "a", "role": "assistant", "parts": [{"type": "step-start"}, tool_part]}
    async with app_client(make_settings()) as client:
        response = await client.post("/api/chat", json=body("tools", user_message("Hi"), assistant))
        turns = (await client.get("/history/tools")).json()["count"]

    assert (response.status_code, response.json()["error"]["code"]) == (409, "tool_result_conflict")
    assert turns == 0


async def test_resume_and_stop_of_an_idle_chat_answer_204(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    async with app_client(make_settings()) as client:
        await client.post("/api/chat", json=body("idle", user_message("Hello")))
        resume = await client.get("/api/chat/idle/stream")
        stop = await client.post("/api/chat/idle/stop")
        never = await client.get("/api/chat/never-used/stream")

    assert (resume.status_code, stop.status_code, never.status_code) == (204, 204, 204)
    assert resume.content == b""


# --- The encoder ------------------------------------------------------------------------------------


def event(kind: type[StreamEvent], seq: int, **fields: Any) -> StreamEvent:
    return kind(message_id="m1", session_id="s", seq=seq, timestamp=NOW, **fields)


def test_a_stopped_answer_ends_with_abort_and_no_finish() -> None:
    encoder = UIMessageEncoder("ui-1")
    chunks = encoder.chunks(event(StartEvent, 0)) + encoder.chunks(
        event(EndEvent, 1, content="", finish_reason="cancelled")
    )
    assert [chunk["type"] for chunk in chunks] == ["start", "start-step", "finish-step", "abort"]


def test_a_failed_answer_ends_with_error_naming_why() -> None:
    encoder = UIMessageEncoder("ui-1")
    failed = event(ErrorEvent, 3, error=ErrorInfo(code="upstream_timeout", message="The model timed out"))
    assert encoder.chunks(failed) == [{"type": "error", "errorText": "The model timed out"}]


def test_finish_carries_the_sdk_reason_and_the_service_reason_and_usage_in_metadata() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    end = event(EndEvent, 5, content="x", finish_reason="content_filter", usage=usage)
    (_, finish) = UIMessageEncoder("ui-1").chunks(end)
    assert finish == {
        "type": "finish",
        "finishReason": "content-filter",
        "messageMetadata": {
            "finishReason": "content_filter",
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        },
    }


def test_arguments_that_are_not_json_become_a_tool_input_error() -> None:
    ended = event(ToolCallEndEvent, 2, tool_call_id="c1", name="f", arguments="{not json")
    (chunk,) = UIMessageEncoder("ui-1").chunks(ended)
    assert chunk["type"] == "tool-input-error"
    assert chunk["input"] == "{not json"


def test_a_continued_answer_resumes_under_the_ui_message_of_its_first_answer() -> None:
    call = ToolCall(id="c1", name="get_weather", arguments='{"city":"Paris"}')
    first = ChatTurn.assistant("m1", "", "u", "tool_calls", reasoning="thinking", tool_calls=[call])
    result = ChatTurn.tool(ToolResult(tool_call_id="c1", content='{"sky":"clear"}'), "m2", "u")
    turns = [ChatTurn(message_id="m1", role="user", content="Hi", user_id="u", created_at=NOW), first, result]

    ui_message_id, prelude = resumed_message(turns, "m2")

    assert ui_message_id == "m1"
    assert [chunk["type"] for chunk in prelude] == [
        "start-step", "reasoning-start", "reasoning-delta", "reasoning-end",
        "tool-input-start", "tool-input-delta", "finish-step", "tool-output-available",
    ]  # fmt: skip
    assert prelude[-1] == {"type": "tool-output-available", "toolCallId": "c1", "output": {"sky": "clear"}}
    assert resumed_message(turns, "m1") == ("m1", [])


def test_an_answer_to_a_user_message_resumes_as_its_own_ui_message() -> None:
    message_id = str(uuid.uuid4())
    question = ChatTurn(message_id=message_id, role="user", content="Hi", user_id="u", created_at=NOW)
    assert resumed_message([question], message_id) == (message_id, [])
