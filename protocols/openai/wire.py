"""OpenAI's Chat Completions and Models shapes, as far as the service speaks them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from generation import GenerationOptions
from models import ID_PATTERN
from parts import Usage
from protocols.openai.messages import InboundMessage

__all__ = [
    "AssistantMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "Choice",
    "FinishReason",
    "ModelCard",
    "ModelList",
    "OutboundFunction",
    "OutboundToolCall",
    "StreamOptions",
]

# OpenAI's endings: every answer ends with one of them (`protocols.openai.encoder` maps the service's).
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


def _refused(value: object, info: ValidationInfo) -> object:
    if value is not None:
        raise ValueError(f"`{info.field_name}` is not supported by this service")
    return value


class ChatCompletionRequest(GenerationOptions):
    """OpenAI's Chat Completions request. Tools, `response_format` and the sampling options go to the
    model (the server's `AI_MAX_TOKENS` caps `max_tokens`); what the service cannot honour (more than one
    choice, log probabilities, audio, predicted outputs, legacy `functions`) is refused, never ignored."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{"model": "simulated", "messages": [{"role": "user", "content": "Hello!"}]}]
        },
    )

    model: str = Field(
        min_length=1, max_length=256, description="The model that answers, as `/v1/models` lists it."
    )
    messages: list[InboundMessage] = Field(
        min_length=1, description="The conversation; the last is the user's, or tool results."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="The same as `max_tokens` (OpenAI's newer name); give one."
    )
    user: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="The user id stored with a session's turns: 1 to 128 of A-Z a-z 0-9 _ . : -.",
    )
    n: int | None = Field(default=None, ge=1, description="Only one choice is supported.")
    logprobs: bool | None = Field(default=None, description="Not supported: `true` is refused.")
    top_logprobs: int | None = Field(default=None, ge=0, description="Not supported: above 0 is refused.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Not supported: refused.")
    modalities: list[str] | None = Field(default=None, description='Only `["text"]`.')
    audio: object = Field(default=None, description="Not supported: refused.")
    prediction: object = Field(default=None, description="Not supported: refused.")
    web_search_options: object = Field(default=None, description="Not supported: refused.")
    functions: object = Field(default=None, description="Legacy: refused; use `tools`.")
    function_call: object = Field(default=None, description="Legacy: refused; use `tool_choice`.")

    _refuse = field_validator("audio", "prediction", "web_search_options", "functions", "function_call")(
        _refused
    )

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        given = info.data.get("max_tokens")
        if value is not None and given is not None and given != value:
            raise ValueError("differs from `max_tokens`: give one of them")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value > 1:
            raise ValueError("only one choice (n=1) is supported")
        return value

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise ValueError("log probabilities are not supported")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("`logit_bias` is not supported by this service")
        return value

    @field_validator("modalities")
    @classmethod
    def _text_out(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(modality != "text" for modality in value):
            raise ValueError("only text output is supported")
        return value

    @model_validator(mode="after")
    def _max_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class OutboundFunction(BaseModel):
    name: str
    arguments: str = Field(description="A JSON object as text, as the model wrote it.")


class OutboundToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: OutboundFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="The answer's text; null when it only calls tools.")
    refusal: str | None = None
    tool_calls: list[OutboundToolCall] | None = None
    reasoning_content: str | None = Field(
        default=None, description="The model's reasoning, as vLLM, DeepSeek and Ollama name it."
    )


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
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
