"""AG-UI runs as the tests read them: a `RunAgentInput` to post, and the events of a response, each
validated against the `ag-ui-protocol` package's own event models (and holding no field they lack)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any, TypeVar

import httpx
from ag_ui.core import (
    BaseEvent,
    Event,
    MessagesSnapshotEvent,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
)
from pydantic import TypeAdapter

from conversation import ConversationMessage
from generation import GenerationOptions
from parts import Delta
from providers.base import Completion
from tests.chat_harness import ScriptedSource

Json = dict[str, Any]

_events: TypeAdapter[BaseEvent] = TypeAdapter(Event)

WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def run_input(thread: str, *messages: Json, run_id: str | None = None, **fields: Any) -> Json:
    """A `RunAgentInput` as `HttpAgent` sends it: every field present, empty where unused."""
    return {
        "threadId": thread,
        "runId": run_id or str(uuid.uuid4()),
        "messages": list(messages),
        "tools": [],
        "context": [],
        "state": {},
        "forwardedProps": {},
        **fields,
    }


def user(text: str) -> Json:
    return {"id": str(uuid.uuid4()), "role": "user", "content": text}


def tool_result(call_id: str, content: str) -> Json:
    return {"id": str(uuid.uuid4()), "role": "tool", "toolCallId": call_id, "content": content}


def events_of(response: httpx.Response) -> list[BaseEvent]:
    """The response's events, each one validated against the package's models; any field the models
    do not declare (they keep unknown fields) fails the test."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 1, block
        assert lines[0].startswith("data: "), block
        raw = json.loads(lines[0].removeprefix("data: "))
        event = _events.validate_python(raw)
        assert not event.model_extra, f"fields the protocol does not define: {event.model_extra}"
        assert event.model_dump(mode="json", by_alias=True) == raw
        events.append(event)
    return events


T = TypeVar("T")


def as_a(value: object, kind: type[T]) -> T:
    """`value`, which must be a `kind` (an event, or a run's outcome)."""
    assert isinstance(value, kind), value
    return value


def started(events: list[BaseEvent]) -> RunStartedEvent:
    return as_a(events[0], RunStartedEvent)


def snapshot(events: list[BaseEvent]) -> MessagesSnapshotEvent:
    """A reconnect's snapshot, which follows its RUN_STARTED."""
    return as_a(events[1], MessagesSnapshotEvent)


def finished(events: list[BaseEvent]) -> RunFinishedEvent:
    return as_a(events[-1], RunFinishedEvent)


def failed(events: list[BaseEvent]) -> RunErrorEvent:
    return as_a(events[-1], RunErrorEvent)


def types(events: list[BaseEvent]) -> list[str]:
    return [event.type.value for event in events]


def squeezed(names: list[str]) -> list[str]:
    """The event types with each run of one type kept once (deltas come in varying numbers)."""
    return [name for index, name in enumerate(names) if index == 0 or names[index - 1] != name]


def of_type(events: list[BaseEvent], name: str) -> list[Any]:
    return [event for event in events if event.type.value == name]


def text_of(events: list[BaseEvent]) -> str:
    return "".join(event.delta for event in of_type(events, "TEXT_MESSAGE_CONTENT"))


class HeldSource(ScriptedSource):
    """Yields its deltas, sets `written` (each one has been handed to the answer's run, so it is in
    the answer whatever happens next), then holds the answer open until `release` is set."""

    def __init__(self, deltas: Sequence[Delta]) -> None:
        super().__init__(deltas)
        self.written = asyncio.Event()
        self.release = asyncio.Event()

    async def stream(
        self, conversation: Sequence[ConversationMessage], options: GenerationOptions, completion: Completion
    ) -> AsyncGenerator[Delta, None]:
        async for delta in super().stream(conversation, options, completion):
            yield delta
        self.written.set()
        await self.release.wait()
