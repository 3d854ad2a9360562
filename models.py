"""Pydantic models: the HTTP API's requests and responses, history turns and the stream's events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

from generation import GenerationOptions, check_image_url
from ids import ID_PATTERN as ID_PATTERN
from ids import MessageId as MessageId
from ids import SessionId as SessionId
from ids import UserId as UserId
from ids import check_message_id as check_message_id
from ids import new_message_id as new_message_id
from parts import ToolCall, ToolResult, Usage

Role = Literal["user", "assistant", "tool"]
# `stop`, `length`, `content_filter` and `tool_calls` are the model's own endings; the others end an
# answer early and mark its stored parts incomplete: `error` (the model or Redis failed), `shutdown`,
# `cancelled`.
FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "cancelled", "error", "shutdown"]
AnswerStatus = Literal["streaming", "completed", "cancelled", "failed"]
MAX_IMAGES = 16


def status_of(finish_reason: FinishReason) -> AnswerStatus:
    """The final status of an answer that ended for this reason."""
    if finish_reason in ("stop", "length", "content_filter", "tool_calls"):
        return "completed"
    if finish_reason == "cancelled":
        return "cancelled"
    return "failed"


def utc_now() -> datetime:
    return datetime.now(UTC)


class ChatRequest(GenerationOptions):
    """A user's message to a session, or the results of the tool calls its last answer asked for; with
    the options of the answer (tools, structured output, sampling), which apply to this answer only."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"session_id": "test123", "message": "Hello!", "user_id": "user1"}]},
    )

    session_id: SessionId
    tool_results: list[ToolResult] | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="In place of `message`: the results of the tool calls the session's last answer "
        "asked for; they are stored as `tool` turns and a new answer continues the conversation.",
    )
    message: str | None = Field(
        default=None,
        validate_default=True,
        min_length=1,
        description="The user's message: not blank, at most MAX_MESSAGE_LENGTH (default 8000) characters.",
    )
    images: list[str] | None = Field(
        default=None,
        max_length=MAX_IMAGES,
        description="With `message`: images for the model to see, as https or base64 data URLs.",
    )
    user_id: UserId
    message_id: MessageId | None = Field(
        default=None,
        description=(
            "Your own id for this message, for safe retries: repeating a POST with the same id returns "
            "the same answer's state and never starts a second answer. A random UUID (version 4 or 7)."
        ),
    )
    parent_id: UUID | None = Field(
        default=None,
        description="An edit: the exchange the message follows on a new, active branch (`null`: first).",
    )

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("message must not be blank")
        if "tool_results" in info.data and (value is None) == (info.data["tool_results"] is None):
            raise ValueError("send either a `message` or `tool_results`")
        return value

    @field_validator("images")
    @classmethod
    def _image_urls(cls, urls: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if urls and info.data.get("message") is None:
            raise ValueError("images go with a `message`")
        return None if urls is None else [check_image_url(url) for url in urls]

    @field_validator("tool_results")
    @classmethod
    def _distinct_calls(cls, results: list[ToolResult] | None) -> list[ToolResult] | None:
        ids = [result.tool_call_id for result in results or []]
        duplicate = next((call_id for call_id in ids if ids.count(call_id) > 1), None)
        if duplicate is not None:
            raise ValueError(f"two results for the tool call {duplicate!r}")
        return results


class ChatAccepted(BaseModel):
    """The answer has started (a repeated `message_id` gets its current state); it streams on `channel`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "streaming",
                    "message_id": "6f1c3f7e-8a49-4d0e-9b8e-2f7f5a1c9d10",
                    "session_id": "test123",
                    "channel": "chat:test123",
                    "stream_url": "/stream/test123?message_id=6f1c3f7e-8a49-4d0e-9b8e-2f7f5a1c9d10",
                }
            ]
        }
    )

    status: AnswerStatus = Field(
        default="streaming", description="`streaming` for a new answer; a repeated message_id gets its state."
    )
    message_id: str = Field(description="Id of the assistant answer being streamed.")
    session_id: str
    channel: str = Field(description="Redis PubSub channel on which the answer's events are published.")
    stream_url: str = Field(description="Server-Sent Events URL that follows this answer to its end.")
    finish_reason: FinishReason | None = Field(default=None, description="Set once the answer has ended.")
    stream_token: str | None = Field(
        default=None,
        description=(
            "With API keys on: a short-lived token for `GET /stream/{session_id}?token=...`, for clients "
            "such as a browser's EventSource that cannot send the key. Good for this session only."
        ),
    )


class AnswerState(BaseModel):
    """Where an answer stands."""

    message_id: str
    session_id: str
    status: AnswerStatus
    finish_reason: FinishReason | None = None


class ChatTurn(BaseModel):
    """One turn of a conversation as stored in history: a user's message, an answer, or a tool's result.

    The turns of one exchange share its `message_id`: the user's message (or the tool results) and the
    answer to it."""

    message_id: str
    role: Role
    content: str
    user_id: str
    created_at: datetime = Field(description="When the turn was written, ISO 8601 in UTC.")
    parent_id: str | None = Field(default=None, description="The exchange it follows (absent: the first).")
    finish_reason: FinishReason | None = Field(
        default=None, description="How an assistant turn ended; absent on the others."
    )
    usage: Usage | None = None
    reasoning: str | None = Field(
        default=None, description="An answer's reasoning, when the model showed it."
    )
    tool_calls: list[ToolCall] | None = Field(default=None, description="The tools an answer called.")
    refusal: str | None = Field(default=None, description="An answer's refusal, when the model refused.")
    tool_call_id: str | None = Field(default=None, description="Which call a `tool` turn is the result of.")
    images: list[str] | None = Field(default=None, description="A user turn's images (URLs).")

    @classmethod
    def user(cls, request: ChatRequest, message_id: str) -> ChatTurn:
        assert request.message is not None
        return cls(
            message_id=message_id,
            role="user",
            content=request.message,
            user_id=request.user_id,
            created_at=utc_now(),
            images=request.images,
        )

    @classmethod
    def tool(cls, result: ToolResult, message_id: str, user_id: str) -> ChatTurn:
        return cls(
            message_id=message_id,
            role="tool",
            content=result.content,
            user_id=user_id,
            created_at=utc_now(),
            tool_call_id=result.tool_call_id,
        )

    @classmethod
    def assistant(
        cls,
        message_id: str,
        content: str,
        user_id: str,
        finish_reason: FinishReason,
        usage: Usage | None = None,
        *,
        reasoning: str | None = None,
        tool_calls: list[ToolCall] | None = None,
        refusal: str | None = None,
        parent_id: str | None = None,
    ) -> ChatTurn:
        return cls(
            message_id=message_id,
            parent_id=parent_id,
            role="assistant",
            content=content,
            user_id=user_id,
            created_at=utc_now(),
            finish_reason=finish_reason,
            usage=usage,
            reasoning=reasoning,
            tool_calls=tool_calls,
            refusal=refusal,
        )


class HistoryResponse(BaseModel):
    """A page of a session's turns, oldest first."""

    session_id: str
    messages: list[ChatTurn]
    count: int = Field(ge=0, description="How many turns this page holds.")
    next_before: int | None = Field(
        default=None,
        ge=1,
        description="Pass as `before` to read the turns older than this page; absent on the oldest page.",
    )


class StatusResponse(BaseModel):
    """The outcome of an operation."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "success", "message": "History cleared for session test123"}]
        }
    )

    status: Literal["success"] = "success"
    message: str


# --- The stream contract: one JSON object per PubSub message -------------------------------------


class EventBase(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_id: str
    session_id: str
    seq: int = Field(ge=0, description="0 for `start`, then +1 for every event of the same answer.")
    timestamp: datetime = Field(description="When the event was published, ISO 8601 in UTC.")


class StartEvent(EventBase):
    """An answer begins."""

    type: Literal["start"] = "start"
    trace_id: str | None = Field(
        default=None,
        description="The answer's OpenTelemetry trace id (32 hex digits), when tracing is on.",
        examples=["4bf92f3577b34da6a3ce929d0e0e4736"],
    )
    parent_id: str | None = Field(default=None, description="As its stored turn's (`ChatTurn.parent_id`).")


class ChunkEvent(EventBase):
    """The next piece of the answer's text."""

    type: Literal["chunk"] = "chunk"
    content: str = Field(description="The text delta: concatenating every chunk gives the answer.")

    @staticmethod
    def json_header(message_id: str, session_id: str) -> bytes:
        """What every chunk of one answer starts with, for `fast_json`."""
        return orjson.dumps({"message_id": message_id, "session_id": session_id})[:-1] + b',"seq":'

    @staticmethod
    def fast_json(header: bytes, seq: int, content: str) -> bytes:
        """The same JSON as `model_dump_json()` of this event, stamped now, without building a model.

        Answers publish one of these per chunk, and validating and dumping a model was the larger part
        of a chunk's cost (issue #6); the fields are known valid here, and tests compare the two forms.
        """
        return b'%s%d,"timestamp":%s,"type":"chunk","content":%s}' % (
            header,
            seq,
            orjson.dumps(utc_now(), option=orjson.OPT_UTC_Z),
            orjson.dumps(content),
        )


def part_json(header: bytes, seq: int, kind: bytes, fields: dict[str, object]) -> bytes:
    """`ChunkEvent.fast_json` for the other parts: the event of type `kind` with these `fields`, in the
    order its model declares them."""
    return b'%s%d,"timestamp":%s,"type":"%s",%s' % (
        header,
        seq,
        orjson.dumps(utc_now(), option=orjson.OPT_UTC_Z),
        kind,
        orjson.dumps(fields)[1:],
    )


class ReasoningEvent(EventBase):
    """The next piece of the model's reasoning ("thinking"), shown apart from the answer."""

    type: Literal["reasoning"] = "reasoning"
    content: str = Field(description="The reasoning delta: concatenated, `end`'s `reasoning`.")


class RefusalEvent(EventBase):
    """The next piece of the model's refusal."""

    type: Literal["refusal"] = "refusal"
    content: str = Field(description="The refusal delta: concatenated, `end`'s `refusal`.")


class ToolCallStartEvent(EventBase):
    """The model begins a tool call; its arguments follow as `tool_call_delta` events."""

    type: Literal["tool_call_start"] = "tool_call_start"
    tool_call_id: str
    name: str = Field(description="The function called: one of the request's `tools`.")
    index: int = Field(ge=0, description="The call's position among this answer's calls, from 0.")


class ToolCallDeltaEvent(EventBase):
    """The next piece of a tool call's arguments."""

    type: Literal["tool_call_delta"] = "tool_call_delta"
    tool_call_id: str
    arguments: str = Field(description="The arguments delta: concatenated, the call's `arguments`.")


class ToolCallEndEvent(EventBase):
    """A tool call is complete: its whole arguments, a JSON object as text."""

    type: Literal["tool_call_end"] = "tool_call_end"
    tool_call_id: str
    name: str
    arguments: str


class EndEvent(EventBase):
    """The answer is complete and stored in history: the assembled message."""

    type: Literal["end"] = "end"
    content: str = Field(description="The whole text of the answer.")
    reasoning: str | None = Field(default=None, description="The whole reasoning, when there was any.")
    tool_calls: list[ToolCall] | None = Field(default=None, description="Every tool call, in order.")
    refusal: str | None = Field(default=None, description="The whole refusal, when the model refused.")
    finish_reason: FinishReason
    usage: Usage | None = None


class ErrorInfo(BaseModel):
    code: str = Field(examples=["shutdown", "internal_error"])
    message: str


class ErrorEvent(EventBase):
    """The answer failed; no more events follow for it. What was written is stored in history."""

    type: Literal["error"] = "error"
    error: ErrorInfo


AnyEvent = (
    StartEvent
    | ChunkEvent
    | ReasoningEvent
    | RefusalEvent
    | ToolCallStartEvent
    | ToolCallDeltaEvent
    | ToolCallEndEvent
    | EndEvent
    | ErrorEvent
)
StreamEvent = Annotated[AnyEvent, Field(discriminator="type")]
stream_event_adapter: TypeAdapter[AnyEvent] = TypeAdapter(StreamEvent)


def stream_event_schema() -> dict[str, Any]:
    """JSON Schema of a stream event, for frontends that validate what they receive."""
    return stream_event_adapter.json_schema()
