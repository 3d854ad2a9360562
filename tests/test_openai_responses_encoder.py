"""`ResponseEncoder`: the Responses events and object an answer's events make, for the parts and endings
the clients' tests do not reach (a refusal after text, parallel tool calls, a failure, a stop), each
event and object validated with the openai SDK's own types; and the same object rebuilt from a stored
turn when the log no longer has the answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from models import (
    AnyEvent,
    ChatTurn,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    ErrorInfo,
    ReasoningEvent,
    RefusalEvent,
    StartEvent,
    ToolCallDeltaEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
)
from parts import CompletionTokensDetails, ToolCall, Usage
from protocols.openai.responses_create import default_head
from protocols.openai.responses_encoder import ResponseEncoder
from protocols.openai.responses_store import turn_events

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
MESSAGE_ID = "6f1c3f7e-8a49-4d0e-9b8e-2f7f5a1c9d10"
HEX = MESSAGE_ID.replace("-", "")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CALLS = [
    ToolCall(id="call_a", name="get_weather", arguments='{"city": "Oslo"}'),
    ToolCall(id="call_b", name="get_time", arguments="{}"),
]


class Answer:
    """Events of one answer, numbered as the core numbers them."""

    def __init__(self) -> None:
        self.events: list[AnyEvent] = []

    def add(self, kind: type[Any], **fields: Any) -> Answer:
        base = {"message_id": MESSAGE_ID, "session_id": "s1", "seq": len(self.events), "timestamp": NOW}
        self.events.append(kind(**base, **fields))
        return self


def encoded(events: list[AnyEvent]) -> tuple[list[dict[str, Any]], Response]:
    encoder = ResponseEncoder(default_head(f"resp_{HEX}", "m"), HEX)
    out = [event for answer_event in events for event in encoder.feed(answer_event)]
    for event in out:
        EVENTS.validate_python(event)
    assert [event["sequence_number"] for event in out] == list(range(len(out)))
    return out, Response.model_validate(encoder.response())


def test_text_then_a_refusal_are_two_parts_of_one_message() -> None:
    answer = Answer().add(StartEvent).add(ChunkEvent, content="I can")
    answer.add(RefusalEvent, content="not help.").add(
        EndEvent, content="I can", refusal="not help.", finish_reason="stop"
    )
    events, response = encoded(answer.events)
    [message] = response.output
    assert message.type == "message"
    assert [part.type for part in message.content] == ["output_text", "refusal"]
    kinds = [event["type"] for event in events]
    assert kinds.count("response.content_part.added") == kinds.count("response.content_part.done") == 2
    assert "response.refusal.done" in kinds
    assert response.status == "completed"


def test_parallel_tool_calls_are_items_of_their_own_with_their_arguments() -> None:
    answer = Answer().add(StartEvent).add(ReasoningEvent, content="Two tools.")
    for index, call in enumerate(CALLS):
        answer.add(ToolCallStartEvent, tool_call_id=call.id, name=call.name, index=index)
        answer.add(ToolCallDeltaEvent, tool_call_id=call.id, arguments=call.arguments)
    for call in CALLS:
        answer.add(ToolCallEndEvent, tool_call_id=call.id, name=call.name, arguments=call.arguments)
    usage = Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=3)
    answer.add(EndEvent, content="", tool_calls=CALLS, finish_reason="tool_calls", usage=usage)
    _, response = encoded(answer.events)
    assert [item.type for item in response.output] == ["reasoning", "function_call", "function_call"]
    calls = [
        (item.call_id, item.arguments, item.id) for item in response.output if item.type == "function_call"
    ]
    assert calls == [("call_a", CALLS[0].arguments, f"fc_{HEX}_1"), ("call_b", "{}", f"fc_{HEX}_2")]
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 3


def test_a_failure_ends_with_response_failed_and_its_open_items_incomplete() -> None:
    answer = Answer().add(StartEvent).add(ChunkEvent, content="Half")
    answer.add(ErrorEvent, error=ErrorInfo(code="rate_limited", message="slow down"))
    events, response = encoded(answer.events)
    assert events[-1]["type"] == "response.failed"
    assert response.status == "failed"
    assert response.error is not None
    assert (response.error.code, response.error.message) == ("rate_limit_exceeded", "slow down")
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]


def test_a_stopped_answer_is_cancelled_and_nothing_follows_its_end() -> None:
    answer = (
        Answer()
        .add(StartEvent)
        .add(ChunkEvent, content="Half")
        .add(EndEvent, content="Half", finish_reason="cancelled")
    )
    encoder = ResponseEncoder(default_head(f"resp_{HEX}", "m"), HEX)
    events = [event for answer_event in answer.events for event in encoder.feed(answer_event)]
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["status"] == "cancelled"
    assert encoder.feed(answer.events[-1]) == []  # a terminal event published twice is sent once


def test_a_stored_turn_rebuilds_the_object_its_events_made() -> None:
    turn = ChatTurn.assistant(
        MESSAGE_ID, "It rains.", "u1", "tool_calls", reasoning="Look it up.", tool_calls=CALLS[:1]
    )
    turn.created_at = NOW
    answer = (
        Answer()
        .add(StartEvent)
        .add(ReasoningEvent, content="Look it up.")
        .add(ChunkEvent, content="It rains.")
    )
    answer.add(ToolCallStartEvent, tool_call_id="call_a", name="get_weather", index=0)
    answer.add(ToolCallDeltaEvent, tool_call_id="call_a", arguments=CALLS[0].arguments)
    answer.add(ToolCallEndEvent, tool_call_id="call_a", name="get_weather", arguments=CALLS[0].arguments)
    answer.add(
        EndEvent,
        content="It rains.",
        reasoning="Look it up.",
        tool_calls=CALLS[:1],
        finish_reason="tool_calls",
    )
    _, live = encoded(answer.events)
    _, rebuilt = encoded(turn_events(turn, "s1"))
    assert rebuilt == live
