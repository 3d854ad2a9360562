"""An answer's events in OpenAI's Chat Completions wire format: `chat.completion.chunk` Server-Sent Events
as they stream, or one `chat.completion` built from the `end` event.

Every part streams as OpenAI's own deltas: text as `content`, reasoning as `reasoning_content` (the name
vLLM, DeepSeek and Ollama use), a refusal as `refusal`, each tool call as `tool_calls` entries (its id,
type and name first, then pieces of its arguments, by `index`). Text, the common case, is encoded by
splicing the JSON string into a prepared frame rather than building and dumping a dict per chunk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from models import (
    ChunkEvent,
    EndEvent,
    ReasoningEvent,
    RefusalEvent,
    StreamEvent,
    ToolCallDeltaEvent,
    ToolCallStartEvent,
)
from models import FinishReason as AnswerFinishReason
from protocols.errors import openai_error, problem_of
from protocols.openai.wire import (
    AssistantMessage,
    ChatCompletionResponse,
    Choice,
    FinishReason,
    OutboundFunction,
    OutboundToolCall,
)
from providers.base import AnswerError

__all__ = ["FINISH_REASONS", "ChunkEncoder", "Meta", "event_stream", "whole_response"]

# How an answer's ending reads to an OpenAI client, which knows only OpenAI's four: a stopped answer
# (`cancelled`) ended where its user wanted it to, so `stop`. The failures (`error`, `shutdown`) end a
# stream with an `error` object or an HTTP status, never with a finish reason; `stop` is their fallback.
FINISH_REASONS: dict[AnswerFinishReason, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "cancelled": "stop",
    "error": "stop",
    "shutdown": "stop",
}
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Meta:
    id: str
    model: str
    created: int
    include_usage: bool


def _dumps(value: object) -> bytes:
    return orjson.dumps(value)


class ChunkEncoder:
    """One answer's `chat.completion.chunk` events. Keeps the index of each tool call by id: the
    argument deltas of the events name the call, OpenAI's name its index."""

    __slots__ = ("_frame", "_indexes", "_meta", "_tail", "_text_head", "_text_tail")

    def __init__(self, meta: Meta) -> None:
        self._meta = meta
        self._indexes: dict[str, int] = {}
        header = {
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
        }
        # Every chunk but the last carries a null usage when usage is asked for, as OpenAI's do.
        usage = b',"usage":null' if meta.include_usage else b""
        self._frame = b"data: " + _dumps(header)[:-1] + b',"choices":[{"index":0,"delta":'
        self._tail = b',"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"
        self._text_head = self._frame + b'{"content":'
        self._text_tail = b"}" + self._tail

    def delta(self, delta: dict[str, Any]) -> bytes:
        return self._frame + _dumps(delta) + self._tail

    def text(self, content: str) -> bytes:
        return self._text_head + _dumps(content) + self._text_tail

    def event(self, event: StreamEvent) -> bytes | None:
        """The chunk of one event of the answer (not its `end`), or None for an event OpenAI's stream
        has no delta for (`tool_call_end`: the call's arguments have all been sent)."""
        if type(event) is ChunkEvent:
            return self.text(event.content)
        if isinstance(event, ReasoningEvent):
            return self.delta({"reasoning_content": event.content})
        if isinstance(event, RefusalEvent):
            return self.delta({"refusal": event.content})
        if isinstance(event, ToolCallStartEvent):
            self._indexes[event.tool_call_id] = event.index
            call = {"index": event.index, "id": event.tool_call_id, "type": "function"}
            return self.delta({"tool_calls": [{**call, "function": {"name": event.name, "arguments": ""}}]})
        if isinstance(event, ToolCallDeltaEvent):
            index = self._indexes[event.tool_call_id]
            return self.delta({"tool_calls": [{"index": index, "function": {"arguments": event.arguments}}]})
        return None

    def end(self, end: EndEvent) -> list[bytes]:
        """The last chunk, with the finish reason, then (when asked for) the usage chunk, and `[DONE]`."""
        choice = {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": FINISH_REASONS[end.finish_reason],
        }
        last = [self._chunk([choice])]
        if self._meta.include_usage:
            usage = end.usage.model_dump(exclude_none=True) if end.usage else None
            last.append(self._chunk([], usage=usage))
        return [*last, DONE]

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        meta = self._meta
        body: dict[str, Any] = {
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "choices": choices,
        }
        if meta.include_usage:
            body["usage"] = None
        body.update(extra)
        return b"data: " + _dumps(body) + b"\n\n"


async def event_stream(
    meta: Meta, first: StreamEvent, events: AsyncGenerator[StreamEvent, None]
) -> AsyncIterator[bytes]:
    """The answer as Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`; `first` is
    its first event, already read.

    A failure once the stream has begun is sent as an `error` object (the OpenAI clients raise it) and
    ends the stream without `[DONE]`.
    """
    encoder = ChunkEncoder(meta)
    try:
        yield encoder.delta({"role": "assistant", "content": ""})
        event = first
        try:
            while not isinstance(event, EndEvent):
                chunk = encoder.event(event)
                if chunk is not None:
                    yield chunk
                event = await anext(events)
        except AnswerError as error:
            yield b"data: " + _dumps({"error": openai_error(problem_of(error)).model_dump()}) + b"\n\n"
            return
        for chunk in encoder.end(event):
            yield chunk
    finally:
        # A client that hangs up closes this stream; closing the events ends a stateless answer.
        await events.aclose()


def whole_response(meta: Meta, end: EndEvent) -> ChatCompletionResponse:
    """The whole answer as one `chat.completion`: `content` is null when the answer only calls tools
    or refuses, as OpenAI's is."""
    calls = [
        OutboundToolCall(id=call.id, function=OutboundFunction(name=call.name, arguments=call.arguments))
        for call in end.tool_calls or ()
    ]
    message = AssistantMessage(
        content=end.content if end.content or not (calls or end.refusal) else None,
        refusal=end.refusal,
        tool_calls=calls or None,
        reasoning_content=end.reasoning,
    )
    return ChatCompletionResponse(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        choices=[Choice(message=message, finish_reason=FINISH_REASONS[end.finish_reason])],
        usage=end.usage,
    )
