"""OpenAI's Chat Completions and Models shapes, as far as the service speaks them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from generation import GenerationOptions
from parts import Usage

__all__ = [
    "AssistantMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "Choice",
    "ContentPart",
    "InboundMessage",
    "ModelCard",
    "ModelList",
    "StreamOptions",
]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class InboundMessage(BaseModel):
    """One message of the conversation. Text only: no images, audio or tool calls."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(value, list) and any(part.type != "text" or part.text is None for part in value):
            raise ValueError("only text content parts are supported")
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(GenerationOptions):
    """OpenAI's Chat Completions request. Sampling options (`temperature`, `max_tokens`, ...) are accepted
    and ignored: the service's `AI_TEMPERATURE` and `AI_MAX_TOKENS` apply."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "simulated", "messages": [{"role": "user", "content": "Hello!"}]}]
        },
    )

    model: str = Field(
        min_length=1, max_length=256, description="Any name: answers come from the service's model."
    )
    messages: list[InboundMessage] = Field(
        min_length=1, description="The conversation; the last is the user's."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice is supported.")
    user: str | None = Field(
        default=None,
        description="With X-Session-Id: the user id stored with the turns (1 to 128 of A-Z a-z 0-9 _ . : -).",
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    """A whole answer. Its `id` is `chatcmpl-<message_id>` when it belongs to a session."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
