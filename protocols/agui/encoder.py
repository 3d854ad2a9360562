"""AG-UI events on the wire: one answer's log entries as the protocol's events, built with the
`ag-ui-protocol` package's own models and encoded by its `EventEncoder` (`data: <json>` per event).

A run is one answer: `RUN_STARTED` (sent before the answer's first entry, with what the route puts
before it, such as a reconnect's `MESSAGES_SNAPSHOT`), then its parts, then `RUN_FINISHED` for its `end`
or `RUN_ERROR` for its `error`. The assistant message that streams is named by the answer's
`message_id`; its reasoning is a reasoning message of its own, `<message_id>-reasoning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ag_ui.core import (
    BaseEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
)
from ag_ui.encoder import EventEncoder

from cursor import CursorItem, Keepalive, Reset
from models import (
    AnyEvent,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    ReasoningEvent,
    RefusalEvent,
    stream_event_adapter,
)
from models import ToolCallDeltaEvent as CallDelta
from models import ToolCallEndEvent as CallEnd
from models import ToolCallStartEvent as CallStart
from parts import Usage

__all__ = ["PING", "RunEncoder", "reasoning_id"]

PING = b": ping\n\n"


def reasoning_id(message_id: str) -> str:
    """The id of an answer's reasoning message (in the stream and in a `MESSAGES_SNAPSHOT`)."""
    return f"{message_id}-reasoning"


def _millis(event: AnyEvent) -> int:
    return int(event.timestamp.timestamp() * 1000)


def token_usage(usage: Usage | None, *, provider: str, model: str) -> list[TokenUsage] | None:
    """The answer's usage in AG-UI's accounting (reasoning tokens are a part of the output tokens, as
    OpenAI counts them too)."""
    if usage is None:
        return None
    details = usage.completion_tokens_details
    return [
        TokenUsage(
            provider=provider,
            model=model,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            reasoning_tokens=details.reasoning_tokens if details else None,
        )
    ]


class RunEncoder:
    """Encodes one run's cursor items; it keeps which messages and calls are open, so that each is
    closed before the run ends (the client's event verifier refuses a run that leaves them open)."""

    def __init__(
        self,
        thread_id: str,
        run_id: str,
        *,
        provider: str,
        model: str,
        before: Sequence[BaseEvent] = (),
    ) -> None:
        """`before`: events sent after `RUN_STARTED` and before the answer's first event."""
        self._thread_id = thread_id
        self._run_id = run_id
        self._provider = provider
        self._model = model
        self._prelude: list[BaseEvent] | None = [
            RunStartedEvent(thread_id=thread_id, run_id=run_id),
            *before,
        ]
        self._encoder = EventEncoder()
        self._text_open = False
        self._reasoning_open = False
        self._calls: set[str] = set()
        # After RUN_FINISHED or RUN_ERROR the protocol allows nothing more in the run.
        self._ended = False

    def __call__(self, item: CursorItem) -> bytes:
        events: list[BaseEvent] = []
        if self._prelude is not None:
            events, self._prelude = self._prelude, None
        if isinstance(item, Keepalive):
            return self._encode(events) + PING
        if self._ended:
            return self._encode(events)
        if isinstance(item, Reset):
            # The log no longer holds what this client missed: the run cannot be completed in order.
            events.append(
                RunErrorEvent(
                    message="events of this run were missed: reconnect to the thread for its messages",
                    code="events_lost",
                )
            )
            self._ended = True
        else:
            events.extend(self._translate(stream_event_adapter.validate_json(item.payload)))
        return self._encode(events)

    def _encode(self, events: list[BaseEvent]) -> bytes:
        return "".join(self._encoder.encode(event) for event in events).encode()

    def _translate(self, event: AnyEvent) -> list[BaseEvent]:
        message_id, at = event.message_id, _millis(event)
        out: list[BaseEvent] = []
        if not isinstance(event, ReasoningEvent):
            out.extend(self._close_reasoning(message_id, at))
        if isinstance(event, ReasoningEvent):
            if not self._reasoning_open:
                self._reasoning_open = True
                out.append(ReasoningStartEvent(message_id=reasoning_id(message_id), timestamp=at))
                out.append(ReasoningMessageStartEvent(message_id=reasoning_id(message_id), timestamp=at))
            out.append(
                ReasoningMessageContentEvent(
                    message_id=reasoning_id(message_id), delta=event.content, timestamp=at
                )
            )
        elif isinstance(event, ChunkEvent | RefusalEvent):
            # A refusal is what the assistant says instead of an answer: AG-UI has no part for it.
            if not self._text_open:
                self._text_open = True
                out.append(TextMessageStartEvent(message_id=message_id, role="assistant", timestamp=at))
            out.append(TextMessageContentEvent(message_id=message_id, delta=event.content, timestamp=at))
        elif isinstance(event, CallStart):
            self._calls.add(event.tool_call_id)
            out.append(
                ToolCallStartEvent(
                    tool_call_id=event.tool_call_id,
                    tool_call_name=event.name,
                    parent_message_id=message_id,
                    timestamp=at,
                )
            )
        elif isinstance(event, CallDelta):
            out.append(
                ToolCallArgsEvent(tool_call_id=event.tool_call_id, delta=event.arguments, timestamp=at)
            )
        elif isinstance(event, CallEnd):
            self._calls.discard(event.tool_call_id)
            out.append(ToolCallEndEvent(tool_call_id=event.tool_call_id, timestamp=at))
        elif isinstance(event, EndEvent):
            out.extend(self._close(message_id, at))
            out.append(self._finished(event, at))
            self._ended = True
        elif isinstance(event, ErrorEvent):
            out.append(RunErrorEvent(message=event.error.message, code=event.error.code, timestamp=at))
            self._ended = True
        return out  # `start`: RUN_STARTED went first

    def _close_reasoning(self, message_id: str, at: int) -> list[BaseEvent]:
        if not self._reasoning_open:
            return []
        self._reasoning_open = False
        return [
            ReasoningMessageEndEvent(message_id=reasoning_id(message_id), timestamp=at),
            ReasoningEndEvent(message_id=reasoning_id(message_id), timestamp=at),
        ]

    def _close(self, message_id: str, at: int) -> list[BaseEvent]:
        out: list[BaseEvent] = [
            ToolCallEndEvent(tool_call_id=call, timestamp=at) for call in sorted(self._calls)
        ]
        self._calls.clear()
        if self._text_open:
            self._text_open = False
            out.append(TextMessageEndEvent(message_id=message_id, timestamp=at))
        return out

    def _finished(self, end: EndEvent, at: int) -> RunFinishedEvent:
        outcome: Any
        if end.finish_reason == "cancelled":
            outcome = RunFinishedCancelledOutcome()
        else:
            # Calls the client is to answer in its next run's messages, as the protocol names them.
            pending = [call.id for call in end.tool_calls or ()]
            outcome = RunFinishedSuccessOutcome(pending_tool_call_ids=pending or None)
        return RunFinishedEvent(
            thread_id=self._thread_id,
            run_id=self._run_id,
            result={"messageId": end.message_id, "finishReason": end.finish_reason},
            outcome=outcome,
            usage=token_usage(end.usage, provider=self._provider, model=self._model),
            timestamp=at,
        )
