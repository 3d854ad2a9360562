"""Pydantic models: the HTTP API's requests and responses, history turns and the stream's events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

# Ids become Redis keys and channel names: no glob characters, spaces, braces or control characters.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
SessionId = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["test123"]),
]
UserId = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["user1"]),
]

Role = Literal["user", "assistant"]
# `stop`, `length` and `content_filter` are the model's own endings; the others end an answer early and
# mark its stored text incomplete: `error` (the model or Redis failed), `shutdown`, `cancelled`.
FinishReason = Literal["stop", "length", "content_filter", "cancelled", "error", "shutdown"]
AnswerStatus = Literal["streaming", "completed", "cancelled", "failed"]


def status_of(finish_reason: FinishReason) -> AnswerStatus:
    """The final status of an answer that ended for this reason."""
    if finish_reason in ("stop", "length", "content_filter"):
        return "completed"
    if finish_reason == "cancelled":
        return "cancelled"
    return "failed"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_message_id() -> str:
    return str(uuid.uuid4())


class ChatRequest(BaseModel):
    """A user's message to a session."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"session_id": "test123", "message": "Hello!", "user_id": "user1"}]},
    )

    session_id: SessionId
    message: str = Field(
        min_length=1,
        description="The user's message: not blank, at most MAX_MESSAGE_LENGTH (default 8000) characters.",
    )
    user_id: UserId
    message_id: uuid.UUID | None = Field(
        default=None,
        description=(
            "Your own id for this message, for safe retries: repeating a POST with the same id returns "
            "the same answer's state and never starts a second answer."
        ),
    )

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be blank")
        return value


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


class Usage(BaseModel):
    """Token counts reported by the model, when it reports them."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ChatTurn(BaseModel):
    """One turn of a conversation as stored in history."""

    message_id: str
    role: Role
    content: str
    user_id: str
    created_at: datetime = Field(description="When the turn was written, ISO 8601 in UTC.")
    finish_reason: FinishReason | None = Field(
        default=None, description="How an assistant turn ended; absent on user turns."
    )
    usage: Usage | None = None

    @classmethod
    def user(cls, request: ChatRequest, message_id: str) -> ChatTurn:
        return cls(
            message_id=message_id,
            role="user",
            content=request.message,
            user_id=request.user_id,
            created_at=utc_now(),
        )

    @classmethod
    def assistant(
        cls,
        message_id: str,
        content: str,
        user_id: str,
        finish_reason: FinishReason,
        usage: Usage | None = None,
    ) -> ChatTurn:
        return cls(
            message_id=message_id,
            role="assistant",
            content=content,
            user_id=user_id,
            created_at=utc_now(),
            finish_reason=finish_reason,
            usage=usage,
        )


class HistoryResponse(BaseModel):
    """A session's turns, oldest first."""

    session_id: str
    messages: list[ChatTurn]
    count: int = Field(ge=0)


class StatusResponse(BaseModel):
    """The outcome of an operation."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "success", "message": "History cleared for session test123"}]
        }
    )

    status: Literal["success"] = "success"
    message: str


class RedisHealth(BaseModel):
    status: Literal["connected", "disconnected"]
    mode: Literal["redis", "embedded"]
    latency_ms: float | None = Field(default=None, description="PING round trip, in milliseconds.")
    pubsub: Literal["ok"] | None = Field(
        default=None, description="A probe came back through this process's PubSub subscription."
    )
    error: str | None = Field(default=None, description="Why Redis is unreachable, when it is.")


class AIHealth(BaseModel):
    """Which model answers. Not probed: a health check must not spend tokens or wait on a model server."""

    provider: str = Field(examples=["openai"], description="The `AI_PROVIDER` that answers.")
    model: str = Field(examples=["gpt-4o-mini"])
    base_url: str | None = Field(
        default=None, description="The model server, for `openai`; never with credentials."
    )


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"]
    version: str
    redis: RedisHealth
    ai: AIHealth | None = Field(default=None, description="The model provider answers come from.")


class LivenessResponse(BaseModel):
    status: Literal["alive"]
    version: str


class ServiceInfo(BaseModel):
    """What the service is and where to go next."""

    service: str
    version: str
    docs: str
    redoc: str
    health: str
    metrics: str
    openapi: str
    event_schema: str
    chat_page: str
    channel_pattern: str = Field(description="How a session's PubSub channel is named.")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(examples=["redis_unavailable"])
    message: str
    fields: list[FieldError] | None = Field(
        default=None, description="For invalid requests: each field that failed, and why."
    )


class ErrorResponse(BaseModel):
    """Every error answer has this body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "redis_unavailable", "message": "Redis is unavailable"}}]
        }
    )

    error: ErrorDetail


class ConflictResponse(ErrorResponse):
    """The answer has already ended: the error, and the answer's final state."""

    state: AnswerState


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


class EndEvent(EventBase):
    """The answer is complete and stored in history."""

    type: Literal["end"] = "end"
    content: str = Field(description="The whole answer.")
    finish_reason: FinishReason
    usage: Usage | None = None


class ErrorInfo(BaseModel):
    code: str = Field(examples=["shutdown", "internal_error"])
    message: str


class ErrorEvent(EventBase):
    """The answer failed; no more events follow for it. What was written is stored in history."""

    type: Literal["error"] = "error"
    error: ErrorInfo


StreamEvent = Annotated[StartEvent | ChunkEvent | EndEvent | ErrorEvent, Field(discriminator="type")]
stream_event_adapter: TypeAdapter[StartEvent | ChunkEvent | EndEvent | ErrorEvent] = TypeAdapter(StreamEvent)


def stream_event_schema() -> dict[str, Any]:
    """JSON Schema of a stream event, for frontends that validate what they receive."""
    return stream_event_adapter.json_schema()
