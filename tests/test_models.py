"""Models: what a request may hold, history turns, and the stream events' contract and schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import ValidationError

from models import (
    ChatRequest,
    ChatTurn,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    ErrorInfo,
    StartEvent,
    stream_event_adapter,
    stream_event_schema,
)

VALID = {"session_id": "test123", "message": "Hello!", "user_id": "user1"}
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
BASE: dict[str, Any] = {"message_id": "m-1", "session_id": "test123", "timestamp": NOW}

BAD_IDS = [
    "",
    "a*",
    "a?b",
    "[ab]",
    "a b",
    " leading",
    "line\r\nbreak",
    "trailing\n",
    "nul\x00byte",
    "tab\tid",
    "{tagged}",
    "a}b",
    "caf\u00e9",
    "\u0441\u0435\u0441\u0441\u0438\u044f",  # Cyrillic letters that look Latin
    "a/b",
    "x" * 129,
]
GOOD_IDS = ["a", "test123", "user_1", "org.team:chat-42", "A-Z_a.z:0-9", "x" * 128]


@pytest.mark.parametrize("field", ["session_id", "user_id"])
@pytest.mark.parametrize("value", BAD_IDS)
def test_ids_that_would_break_keys_or_channels_are_invalid(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate({**VALID, field: value})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


@pytest.mark.parametrize("field", ["session_id", "user_id"])
@pytest.mark.parametrize("value", GOOD_IDS)
def test_ids_of_the_allowed_characters_are_valid(field: str, value: str) -> None:
    assert getattr(ChatRequest.model_validate({**VALID, field: value}), field) == value


@pytest.mark.parametrize("message", ["", " ", "\n\t  \r\n"])
def test_an_empty_or_blank_message_is_invalid(message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate({**VALID, "message": message})
    assert [error["loc"] for error in caught.value.errors()] == [("message",)]


def test_a_message_keeps_its_text_exactly() -> None:
    text = "  Xin chào! 👋\nLine two  "
    assert ChatRequest.model_validate({**VALID, "message": text}).message == text


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate({**VALID, "role": "system"})
    assert caught.value.errors()[0]["loc"] == ("role",)


@pytest.mark.parametrize("missing", ["session_id", "message", "user_id"])
def test_every_field_is_required(missing: str) -> None:
    body = {name: value for name, value in VALID.items() if name != missing}
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate(body)
    assert caught.value.errors()[0]["loc"] == (missing,)


def test_a_user_turn_is_stored_without_finish_reason_and_in_utc() -> None:
    turn = ChatTurn.user(ChatRequest.model_validate(VALID), "m-1")
    stored = turn.model_dump(mode="json", exclude_none=True)
    assert stored.keys() == {"message_id", "role", "content", "user_id", "created_at"}
    assert stored["role"] == "user"
    assert stored["created_at"].endswith("Z")  # ISO 8601, UTC


def test_an_assistant_turn_round_trips_through_json() -> None:
    turn = ChatTurn.assistant("m-1", "The answer.", "user1", "stop")
    again = ChatTurn.model_validate_json(turn.model_dump_json(exclude_none=True))
    assert again == turn
    assert again.finish_reason == "stop"


EVENTS = [
    StartEvent(**BASE, seq=0),
    ChunkEvent(**BASE, seq=1, content="Hel"),
    EndEvent(**BASE, seq=2, content="Hello", finish_reason="stop"),
    ErrorEvent(**BASE, seq=3, error=ErrorInfo(code="shutdown", message="the service is shutting down")),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: str(event.type))
def test_each_event_round_trips_to_its_own_type(
    event: StartEvent | ChunkEvent | EndEvent | ErrorEvent,
) -> None:
    wire = event.model_dump_json(exclude_none=True)
    parsed = stream_event_adapter.validate_json(wire)
    assert type(parsed) is type(event)
    assert parsed == event


def test_an_event_of_unknown_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        stream_event_adapter.validate_python({**BASE, "seq": 0, "type": "progress"})


def test_a_negative_seq_is_refused() -> None:
    with pytest.raises(ValidationError):
        StartEvent(**BASE, seq=-1)


def test_the_event_schema_is_valid_json_schema_covering_every_type() -> None:
    schema = stream_event_schema()
    Draft202012Validator.check_schema(schema)
    types = {
        definition["properties"]["type"]["const"]
        for definition in schema["$defs"].values()
        if "type" in definition.get("properties", {})
    }
    assert types == {
        "start",
        "chunk",
        "reasoning",
        "refusal",
        "tool_call_start",
        "tool_call_delta",
        "tool_call_end",
        "end",
        "error",
    }
    assert schema["discriminator"]["propertyName"] == "type"


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: str(event.type))
def test_published_events_validate_against_the_schema(
    event: StartEvent | ChunkEvent | EndEvent | ErrorEvent,
) -> None:
    validator = Draft202012Validator(stream_event_schema())
    validator.validate(event.model_dump(mode="json", exclude_none=True))


@pytest.mark.parametrize(
    "payload",
    [
        {**BASE, "timestamp": NOW.isoformat(), "seq": 1, "type": "chunk"},  # chunk without content
        {**BASE, "timestamp": NOW.isoformat(), "seq": 2, "type": "end", "content": "x"},  # no finish_reason
        {**BASE, "timestamp": NOW.isoformat(), "seq": 0, "type": "progress"},
    ],
)
def test_the_schema_rejects_malformed_events(payload: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        Draft202012Validator(stream_event_schema()).validate(payload)
