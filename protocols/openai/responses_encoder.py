"""An answer's events as the Responses API's: the streaming events, each with its `sequence_number`, and
the response object they build.

`ResponseEncoder` is a pure fold over the answer's events from its `start`: the same events give the
same output events with the same sequence numbers and item ids, wherever they are read from (the
in-process listener, the replay log on any instance, after a restart). That is what lets
`GET /v1/responses/{id}?stream=true&starting_after=N` replay the answer from its start and send exactly
the events after N. Item ids derive from the answer's message id and the item's output index.

Parts become output items in the order they stream: reasoning as a `reasoning` item with one
`summary_text` part, text and refusals as a `message` item's `output_text` and `refusal` parts, each tool
call as a `function_call` item.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

import orjson

from cursor import CursorItem, Keepalive, Reset
from models import (
    AnyEvent,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    ReasoningEvent,
    RefusalEvent,
    StartEvent,
    ToolCallDeltaEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
    stream_event_adapter,
)
from parts import Usage

__all__ = ["Event", "ResponseEncoder", "ResponseStream", "response_usage"]

Event = dict[str, Any]
PING = b": ping\n\n"
# `response.error.code` takes OpenAI's values only: the model server's rate limit is its own one, every
# other failure is the server's (`message` says which).
ERROR_CODES = {"rate_limited": "rate_limit_exceeded"}
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_usage(usage: Usage | None) -> dict[str, Any] | None:
    """Chat Completions' usage in the Responses API's names; reasoning tokens are 0 when not reported."""
    if usage is None:
        return None
    details = usage.completion_tokens_details
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": (details.reasoning_tokens if details else None) or 0},
        "total_tokens": usage.total_tokens,
    }


class _Message:
    """A `message` item: its parts (`output_text` or `refusal`), the last one still growing."""

    def __init__(self, item_id: str) -> None:
        self.id = item_id
        self.parts: list[tuple[str, list[str]]] = []

    @staticmethod
    def part(kind: str, text: str) -> dict[str, Any]:
        if kind == "refusal":
            return {"type": "refusal", "refusal": text}
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def item(self, status: str) -> dict[str, Any]:
        content = [self.part(kind, "".join(pieces)) for kind, pieces in self.parts]
        return {"id": self.id, "type": "message", "status": status, "role": "assistant", "content": content}


class _Reasoning:
    def __init__(self, item_id: str) -> None:
        self.id = item_id
        self.pieces: list[str] = []

    def item(self, status: str) -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": "".join(self.pieces)}] if self.pieces else []
        return {"id": self.id, "type": "reasoning", "summary": summary}


class _Call:
    def __init__(self, item_id: str, call_id: str, name: str) -> None:
        self.id = item_id
        self.call_id = call_id
        self.name = name
        self.pieces: list[str] = []

    def item(self, status: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function_call",
            "status": status,
            "arguments": "".join(self.pieces),
            "call_id": self.call_id,
            "name": self.name,
        }


_Item = _Message | _Reasoning | _Call
_T = TypeVar("_T", _Message, _Reasoning, _Call)


class ResponseEncoder:
    """The Responses events of one answer, fed its events in order from its `start`.

    `head` is the response object's fields that come from the request (`id`, `model`, `instructions`,
    `tools`, ...); `created_at`, when it has none, is the `start` event's time."""

    def __init__(self, head: dict[str, Any], message_hex: str) -> None:
        self._head = head
        self._hex = message_hex
        self._seq = -1
        self._items: list[_Item] = []
        self._status: dict[int, str] = {}
        self._open: _Message | _Reasoning | None = None
        self._calls: dict[str, int] = {}
        self.status = "in_progress"
        self.done = False
        self._end: dict[str, Any] = {}

    # -- the response object --

    def response(self) -> dict[str, Any]:
        """The response object as the events so far make it."""
        output = [item.item(self._status.get(index, "in_progress")) for index, item in enumerate(self._items)]
        return {
            **self._head,
            "status": self.status,
            "output": output,
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **self._end,
        }

    # -- events --

    def _event(self, kind: str, **fields: Any) -> Event:
        self._seq += 1
        return {"type": kind, **fields, "sequence_number": self._seq}

    def feed(self, event: AnyEvent) -> list[Event]:
        """The Responses events for the answer's next event (none after its end)."""
        if self.done:
            return []
        if isinstance(event, StartEvent):
            self._head.setdefault("created_at", int(event.timestamp.timestamp()))
            return [
                self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response()),
            ]
        if isinstance(event, ChunkEvent):
            return self._text("output_text", event.content)
        if isinstance(event, RefusalEvent):
            return self._text("refusal", event.content)
        if isinstance(event, ReasoningEvent):
            return self._reasoning(event.content)
        if isinstance(event, ToolCallStartEvent):
            return self._call_start(event)
        if isinstance(event, ToolCallDeltaEvent):
            index = self._calls[event.tool_call_id]
            self._item_of(index, _Call).pieces.append(event.arguments)
            item_id = self._items[index].id
            return [
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=event.arguments,
                )
            ]
        if isinstance(event, ToolCallEndEvent):
            return self._close_call(self._calls.pop(event.tool_call_id), "completed")
        if isinstance(event, EndEvent):
            return self._finish(event)
        if isinstance(event, ErrorEvent):
            return self._fail(event)
        return []

    def lost(self) -> list[Event]:
        """The log no longer holds the answer's events: an `error` event, and the stream ends."""
        self.done = True
        message = "The answer's events are no longer in the log: retrieve the response instead."
        return [self._event("error", code="events_lost", message=message, param=None)]

    def _item_of(self, index: int, kind: type[_T]) -> _T:
        item = self._items[index]
        assert isinstance(item, kind)
        return item

    def _add(self, item: _Item) -> list[Event]:
        index = len(self._items)
        self._items.append(item)
        return [self._event("response.output_item.added", output_index=index, item=item.item("in_progress"))]

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._hex}_{len(self._items)}"

    def _text(self, kind: str, delta: str) -> list[Event]:
        events = []
        message = self._open
        if not isinstance(message, _Message):
            events += self._close_open("completed")
            message = _Message(self._new_id("msg"))
            events += self._add(message)
            self._open = message
        index = len(self._items) - 1
        if not message.parts or message.parts[-1][0] != kind:
            events += self._close_part(index, message)
            message.parts.append((kind, []))
            events.append(self._part_event("added", index, message, _Message.part(kind, "")))
        message.parts[-1][1].append(delta)
        fields: dict[str, Any] = {"item_id": message.id, "output_index": index}
        fields["content_index"] = len(message.parts) - 1
        if kind == "refusal":
            events.append(self._event("response.refusal.delta", **fields, delta=delta))
        else:
            events.append(self._event("response.output_text.delta", **fields, delta=delta, logprobs=[]))
        return events

    def _part_event(self, what: str, index: int, message: _Message, part: dict[str, Any]) -> Event:
        return self._event(
            f"response.content_part.{what}",
            item_id=message.id,
            output_index=index,
            content_index=len(message.parts) - 1,
            part=part,
        )

    def _close_part(self, index: int, message: _Message) -> list[Event]:
        if not message.parts:
            return []
        kind, pieces = message.parts[-1]
        text = "".join(pieces)
        fields: dict[str, Any] = {"item_id": message.id, "output_index": index}
        fields["content_index"] = len(message.parts) - 1
        if kind == "refusal":
            done = self._event("response.refusal.done", **fields, refusal=text)
        else:
            done = self._event("response.output_text.done", **fields, text=text, logprobs=[])
        return [done, self._part_event("done", index, message, _Message.part(kind, text))]

    def _reasoning(self, delta: str) -> list[Event]:
        events = []
        reasoning = self._open
        index = len(self._items) - 1
        if not isinstance(reasoning, _Reasoning):
            events += self._close_open("completed")
            reasoning = _Reasoning(self._new_id("rs"))
            events += self._add(reasoning)
            self._open = reasoning
            index = len(self._items) - 1
            part = {"type": "summary_text", "text": ""}
            events.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    item_id=reasoning.id,
                    output_index=index,
                    summary_index=0,
                    part=part,
                )
            )
        reasoning.pieces.append(delta)
        events.append(
            self._event(
                "response.reasoning_summary_text.delta",
                item_id=reasoning.id,
                output_index=index,
                summary_index=0,
                delta=delta,
            )
        )
        return events

    def _close_open(self, status: str) -> list[Event]:
        """End the open message or reasoning item."""
        item, self._open = self._open, None
        if item is None:
            return []
        index = self._items.index(item)
        events = []
        if isinstance(item, _Message):
            events += self._close_part(index, item)
        else:
            text = "".join(item.pieces)
            fields = {"item_id": item.id, "output_index": index, "summary_index": 0}
            events.append(self._event("response.reasoning_summary_text.done", **fields, text=text))
            part = {"type": "summary_text", "text": text}
            events.append(self._event("response.reasoning_summary_part.done", **fields, part=part))
        self._status[index] = status
        events.append(self._event("response.output_item.done", output_index=index, item=item.item(status)))
        return events

    def _call_start(self, event: ToolCallStartEvent) -> list[Event]:
        events = self._close_open("completed")
        call = _Call(self._new_id("fc"), event.tool_call_id, event.name)
        self._calls[event.tool_call_id] = len(self._items)
        return events + self._add(call)

    def _close_call(self, index: int, status: str) -> list[Event]:
        call = self._item_of(index, _Call)
        self._status[index] = status
        arguments = "".join(call.pieces)
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call.id,
                output_index=index,
                name=call.name,
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=index, item=call.item(status)),
        ]

    def _close_all(self, status: str) -> list[Event]:
        events = self._close_open(status)
        for index in sorted(self._calls.values()):
            events += self._close_call(index, status)
        self._calls.clear()
        return events

    def _finish(self, end: EndEvent) -> list[Event]:
        """`response.completed`; `response.incomplete` for an answer cut short by its token limit or a
        content filter, and for a stopped one (its status `cancelled`: the API has no event for that)."""
        self.done = True
        completed = end.finish_reason in ("stop", "tool_calls")
        events = self._close_all("completed" if completed else "incomplete")
        self._end["usage"] = response_usage(end.usage)
        if completed:
            self.status = "completed"
            self._end["completed_at"] = int(end.timestamp.timestamp())
            return [*events, self._event("response.completed", response=self.response())]
        self.status = "cancelled" if end.finish_reason == "cancelled" else "incomplete"
        reason = INCOMPLETE.get(end.finish_reason)
        self._end["incomplete_details"] = {"reason": reason} if reason else None
        return [*events, self._event("response.incomplete", response=self.response())]

    def _fail(self, event: ErrorEvent) -> list[Event]:
        self.done = True
        events = self._close_all("incomplete")
        self.status = "failed"
        code = ERROR_CODES.get(event.error.code, "server_error")
        self._end["error"] = {"code": code, "message": event.error.message}
        return [*events, self._event("response.failed", response=self.response())]


def _frames(events: Iterable[Event], after: int) -> bytes:
    return b"".join(
        b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(event))
        for event in events
        if event["sequence_number"] > after
    )


class ResponseStream:
    """The encoder over a cursor, for `EventStreamResponse`: each item as Server-Sent Events, only those
    after sequence number `after` (`starting_after`)."""

    def __init__(self, encoder: ResponseEncoder, *, after: int = -1) -> None:
        self._encoder = encoder
        self._after = after

    def __call__(self, item: CursorItem) -> bytes:
        if isinstance(item, Keepalive):
            return PING
        if isinstance(item, Reset):
            return _frames(self._encoder.lost(), self._after)
        return _frames(self._encoder.feed(stream_event_adapter.validate_json(item.payload)), self._after)

    async def relay(self, events: AsyncIterator[AnyEvent]) -> AsyncIterator[bytes]:
        """The same from an answer's in-process events (a stateless response, which has no log)."""
        async for event in events:
            frames = _frames(self._encoder.feed(event), self._after)
            if frames:
                yield frames
