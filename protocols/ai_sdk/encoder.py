"""An answer's events as the Vercel AI SDK's UI message stream (v1): one JSON chunk per `data:` line,
ending with `data: [DONE]`.

The chunk types and their fields are the SDK's own (`uiMessageChunkSchema` in the `ai` package, 6.x):
`start` (the UI message's id), `start-step` / `finish-step` around each answer, `text-*`, `reasoning-*`,
`tool-input-*` and `tool-output-available` parts, then `finish` (the SDK's finish reason, and the
service's finish reason and usage in `messageMetadata`), `abort` for a stopped answer, or `error`.

One UI message may span several answers: an answer that called the client's tools, the results the
client sent, and the answer that continues from them are one assistant message to the SDK, which
appends each answer as a step. So a stream opens with `start` naming the UI message, then `prelude`:
what the client must have before this answer's parts (the results it sent; after a reload, the earlier
steps too), then this answer's step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from cursor import CursorItem, Keepalive, Reset
from models import (
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    FinishReason,
    ReasoningEvent,
    RefusalEvent,
    StartEvent,
    StreamEvent,
    ToolCallDeltaEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
    stream_event_adapter,
)
from parts import ToolCall, Usage

__all__ = [
    "DONE",
    "FINISH_REASONS",
    "HEADERS",
    "Chunk",
    "UIMessageEncoder",
    "frame",
    "step_chunks",
    "tool_input",
    "tool_output",
    "tool_output_error",
]

Chunk = dict[str, Any]

# What the SDK's `createUIMessageStreamResponse` sends besides the SSE defaults: the header names the
# protocol and its version, for clients and proxies that check it.
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"

# The SDK's finish reasons (`finish.finishReason`); the service's own reason is in `messageMetadata`.
# A stopped answer (`cancelled`) ends with `abort`, never `finish`; a failure with `error`.
FINISH_REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
    "error": "error",
    "shutdown": "error",
    "cancelled": "other",
}


def frame(chunk: Chunk) -> bytes:
    return b"data: %s\n\n" % orjson.dumps(chunk)


def tool_input(call: ToolCall) -> Chunk:
    """`tool-input-available`: the call whole. Arguments that are not JSON (a model's slip) are sent as
    `tool-input-error`, which the SDK shows as a failed call rather than failing the whole stream."""
    try:
        arguments = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        return {
            "type": "tool-input-error",
            "toolCallId": call.id,
            "toolName": call.name,
            "input": call.arguments,
            "errorText": "The model's arguments are not JSON.",
        }
    return {"type": "tool-input-available", "toolCallId": call.id, "toolName": call.name, "input": arguments}


def tool_output(tool_call_id: str, output: Any) -> Chunk:
    return {"type": "tool-output-available", "toolCallId": tool_call_id, "output": output}


def tool_output_error(tool_call_id: str, error: str) -> Chunk:
    return {"type": "tool-output-error", "toolCallId": tool_call_id, "errorText": error}


def step_chunks(
    step_id: str, *, text: str = "", reasoning: str | None = None, tool_calls: Iterable[ToolCall] = ()
) -> list[Chunk]:
    """A whole earlier step of the UI message (an answer whose tool calls have their results) as
    chunks, in the order its parts streamed."""
    chunks: list[Chunk] = [{"type": "start-step"}]
    for kind, value in (("reasoning", reasoning), ("text", text)):
        if value:
            part_id = f"{step_id}-{kind}"
            chunks += [
                {"type": f"{kind}-start", "id": part_id},
                {"type": f"{kind}-delta", "id": part_id, "delta": value},
                {"type": f"{kind}-end", "id": part_id},
            ]
    for call in tool_calls:
        # Streamed rather than `tool-input-available`, which would make the client's `onToolCall` run
        # the tool again: its result follows this step, and turns the part into `output-available`.
        chunks += [
            {"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name},
            {"type": "tool-input-delta", "toolCallId": call.id, "inputTextDelta": call.arguments},
        ]
    chunks.append({"type": "finish-step"})
    return chunks


def finish_metadata(end: EndEvent) -> Chunk:
    """`messageMetadata` of `finish`: the service's own finish reason and the model's usage."""
    metadata: Chunk = {"finishReason": end.finish_reason}
    usage: Usage | None = end.usage
    if usage is not None:
        metadata["usage"] = usage.model_dump(exclude_none=True)
    return metadata


class UIMessageEncoder:
    """Encodes one answer's cursor items as UI message chunks; it keeps which part is open, since the
    SDK's text and reasoning parts are opened and closed explicitly while the service's are not."""

    __slots__ = ("_message_id", "_open", "_prelude")

    def __init__(self, ui_message_id: str, prelude: Iterable[Chunk] = ()) -> None:
        self._message_id = ui_message_id
        self._prelude = list(prelude)
        self._open: tuple[str, str] | None = None  # the open text or reasoning part: (kind, id)

    def __call__(self, item: CursorItem) -> bytes:
        if isinstance(item, Keepalive):
            return PING  # an SSE comment: the SDK's parser skips it
        if isinstance(item, Reset):
            message = "Events of this answer were missed and cannot be replayed: reload the chat."
            return frame({"type": "error", "errorText": message}) + DONE
        event = stream_event_adapter.validate_json(item.payload)
        return b"".join(frame(chunk) for chunk in self.chunks(event)) + (
            DONE if isinstance(event, EndEvent | ErrorEvent) else b""
        )

    def chunks(self, event: StreamEvent) -> list[Chunk]:
        """The chunks one event becomes."""
        if isinstance(event, StartEvent):
            start: Chunk = {"type": "start", "messageId": self._message_id}
            return [start, *self._prelude, {"type": "start-step"}]
        if isinstance(event, ChunkEvent | RefusalEvent):
            # The SDK has no refusal part: a refusal is the answer's text, flagged in `finish`'s metadata.
            return self._delta("text", event.seq, event.content)
        if isinstance(event, ReasoningEvent):
            return self._delta("reasoning", event.seq, event.content)
        if isinstance(event, ToolCallStartEvent):
            start = {"type": "tool-input-start", "toolCallId": event.tool_call_id, "toolName": event.name}
            return [*self._close(), start]
        if isinstance(event, ToolCallDeltaEvent):
            return [
                {
                    "type": "tool-input-delta",
                    "toolCallId": event.tool_call_id,
                    "inputTextDelta": event.arguments,
                }
            ]
        if isinstance(event, ToolCallEndEvent):
            return [tool_input(ToolCall(id=event.tool_call_id, name=event.name, arguments=event.arguments))]
        if isinstance(event, EndEvent):
            return [*self._close(), *self._ending(event)]
        return [*self._close(), {"type": "error", "errorText": event.error.message}]

    def _ending(self, end: EndEvent) -> list[Chunk]:
        if end.finish_reason == "cancelled":
            return [{"type": "finish-step"}, {"type": "abort", "reason": "The answer was stopped."}]
        metadata = finish_metadata(end)
        if end.refusal:
            metadata["refusal"] = end.refusal
        finish = {
            "type": "finish",
            "finishReason": FINISH_REASONS[end.finish_reason],
            "messageMetadata": metadata,
        }
        return [{"type": "finish-step"}, finish]

    def _delta(self, kind: str, seq: int, delta: str) -> list[Chunk]:
        chunks: list[Chunk] = []
        if self._open is None or self._open[0] != kind:
            chunks = self._close()
            # Named by the event that opened it: a replay of the same answer gives the same ids.
            self._open = (kind, f"{kind}-{seq}")
            chunks.append({"type": f"{kind}-start", "id": self._open[1]})
        chunks.append({"type": f"{kind}-delta", "id": self._open[1], "delta": delta})
        return chunks

    def _close(self) -> list[Chunk]:
        if self._open is None:
            return []
        kind, part_id = self._open
        self._open = None
        return [{"type": f"{kind}-end", "id": part_id}]
