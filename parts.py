"""The parts of an assistant message besides its text: reasoning, refusals, tool calls, and usage.

A source yields text as a plain `str` (the common case, kept as cheap as it was) and every other part as
one of the small delta types here. `MessageParts` assembles an answer's non-text deltas into what its
`end` event and its stored turn hold, so that concatenating a part's deltas always gives the whole part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CompletionTokensDetails",
    "Delta",
    "MessageParts",
    "Reasoning",
    "Refusal",
    "ToolCall",
    "ToolCallArguments",
    "ToolCallStart",
    "ToolResult",
    "Usage",
]


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int | None = Field(default=None, ge=0, description="Tokens the model spent thinking.")


class Usage(BaseModel):
    """Token counts reported by the model, when it reports them."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    completion_tokens_details: CompletionTokensDetails | None = None


class ToolCall(BaseModel):
    """A function the model asked the client to call, with its arguments as a JSON string."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="The call's id; a tool result names it as `tool_call_id`.")
    name: str = Field(description="The function's name, one of the request's `tools`.")
    arguments: str = Field(description="The arguments, a JSON object as text (as the model wrote it).")


# A tool call's id as a client sends it back: what models write, and nothing that could break a log line.
ToolCallId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]


class ToolResult(BaseModel):
    """The client's result of one tool call that an answer asked for."""

    model_config = ConfigDict(extra="forbid")

    tool_call_id: ToolCallId
    content: str = Field(max_length=1_000_000, description="What the tool returned, as text (often JSON).")


# --- What a source yields besides text ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A piece of the model's reasoning ("thinking"), streamed before or between its text."""

    text: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A piece of the model's refusal to answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """The model begins a tool call: its id and function name; its arguments follow."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    """A piece of the arguments of the tool call `id`, which has started."""

    id: str
    text: str


Delta = str | Reasoning | Refusal | ToolCallStart | ToolCallArguments


@dataclass(slots=True)
class _Call:
    name: str
    index: int
    pieces: list[str] = field(default_factory=list)
    ended: bool = False


@dataclass(slots=True)
class MessageParts:
    """An answer's reasoning, refusal and tool calls as they stream; text is kept by the answer itself."""

    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[str, _Call] = field(default_factory=dict)

    def start_call(self, call_id: str, name: str) -> int:
        """Record a new call; its index among the answer's calls. A repeated id is the same call."""
        existing = self.calls.get(call_id)
        if existing is not None:
            return existing.index
        self.calls[call_id] = _Call(name, len(self.calls))
        return len(self.calls) - 1

    def open_calls(self) -> list[str]:
        """Ids of the calls that have started and not ended, in the order they started."""
        return [call_id for call_id, call in self.calls.items() if not call.ended]

    def end_call(self, call_id: str) -> ToolCall:
        call = self.calls[call_id]
        call.ended = True
        return ToolCall(id=call_id, name=call.name, arguments="".join(call.pieces))

    def tool_calls(self) -> list[ToolCall] | None:
        if not self.calls:
            return None
        return [ToolCall(id=i, name=c.name, arguments="".join(c.pieces)) for i, c in self.calls.items()]

    def reasoning_text(self) -> str | None:
        return "".join(self.reasoning) if self.reasoning else None

    def refusal_text(self) -> str | None:
        return "".join(self.refusal) if self.refusal else None
