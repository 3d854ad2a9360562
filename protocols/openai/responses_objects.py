"""The Responses API's response object, its output items and the lists around it, as documented in the
OpenAPI schema; `protocols.openai.responses_encoder` builds them (the tests check what it builds against
the openai SDK's own types)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from protocols.openai.responses_wire import ReasoningConfig, RefusalContent, ResponseFunctionTool

__all__ = ["InputItemList", "ResponseDeleted", "ResponseObject"]


class OutputTextPart(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputTextPart | RefusalContent]


class SummaryText(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningOutput(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[SummaryText] = Field(description="The model's reasoning, as one summary part.")
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutput(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(description="`reasoning_tokens`, 0 when not reported.")
    total_tokens: int


class ResponseObject(BaseModel):
    """A response: `id` is `resp_` and its answer's `message_id` without dashes."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    background: bool
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str]
    model: str
    output: list[OutputMessage | ReasoningOutput | FunctionCallOutput]
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    reasoning: ReasoningConfig
    store: bool
    temperature: float | None = None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[ResponseFunctionTool]
    top_p: float | None = None
    truncation: str
    usage: ResponseUsage | None = None
    user: str | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
