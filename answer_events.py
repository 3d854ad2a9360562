"""An answer in flight, and how its deltas become events: the answer's state, and `EventEmitter`, which
numbers each event, hands it to an in-process listener and puts it on its way to the replay log.

Text is the common case and takes the cheapest path (`ChunkEvent.fast_json`); reasoning, refusals and
tool calls build their events the same way, and `MessageParts` assembles them for `end` and history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from models import (
    ChunkEvent,
    EventBase,
    FinishReason,
    ReasoningEvent,
    RefusalEvent,
    StreamEvent,
    ToolCallDeltaEvent,
    ToolCallEndEvent,
    ToolCallStartEvent,
    part_json,
    utc_now,
)
from parts import Delta, MessageParts, Reasoning, Refusal, ToolCallArguments, ToolCallStart, Usage
from redis_client import Command

if TYPE_CHECKING:
    from collections.abc import Sequence

    from batcher import CommandBatcher
    from conversation import ConversationMessage

__all__ = ["Answer", "EventEmitter", "EventQueue", "Phase", "event_of"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=EventBase)
# An in-process caller's copy of an answer's events, then None once its task is over.
EventQueue = asyncio.Queue[StreamEvent | None]
# The replay log's commands that append one event to the answer's session, or None if it is not stored.
Appender = Callable[[bytes], list[Command]] | None
Written = asyncio.Future[list[Any]]


class Phase(Enum):
    """Where an answer is in its life. Stop and shutdown cancel only a running answer: one being
    stored is complete, and cancelling it would store it twice and send `error` after `end`."""

    RUNNING = "running"
    CANCELLING = "cancelling"  # a Stop cancelled it: it is stored as `cancelled`
    SHUTTING_DOWN = "shutting_down"  # shutdown cancelled it: it is stored as `shutdown`
    FINISHING = "finishing"  # being stored and ended
    ENDED = "ended"


@dataclass(eq=False, slots=True)
class Answer:
    """One answer being streamed, and what its listeners have been sent so far."""

    message_id: str
    session_id: str  # "" for a stateless answer
    user_id: str
    # The replay-log entry after which this answer's events begin.
    since: str
    listener: EventQueue | None = None
    # False for a stateless answer: nothing of it is written to Redis.
    stored: bool = True
    # The exchange its turn follows on the session's branch (issue #15); None for the first.
    parent_id: str | None = None
    started: float = field(default_factory=time.perf_counter)
    seq: int = 0
    parts: list[str] = field(default_factory=list)  # the text deltas
    # Reasoning, refusal and tool calls, once the answer has any (most answers are text only).
    other: MessageParts | None = None
    task: asyncio.Task[None] | None = None
    phase: Phase = Phase.RUNNING
    # How it ended, once it has: `finish_reason` is set once the answer is stored.
    finish_reason: FinishReason | None = None
    error_code: str | None = None
    # For tracing and usage accounting (issue #16): the answer's trace (when tracing is on), what the
    # model reported it used (if it did), and what it was asked (to count tokens when it did not).
    trace_id: str | None = None
    usage: Usage | None = None
    conversation: Sequence[ConversationMessage] = ()
    # Its identity in Redis and in this process (`ids.answer_key`): the message id within its API key's;
    # the message id itself when not given (an open service, a stateless answer's fresh id).
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.message_id


def event_of(answer: Answer, kind: type[E], **fields: object) -> E:
    """The answer's event of `kind` at its current `seq`, stamped now."""
    return kind.model_validate(
        {
            "message_id": answer.message_id,
            "session_id": answer.session_id,
            "seq": answer.seq,
            "timestamp": utc_now(),
            **fields,
        }
    )


class EventEmitter:
    """Turns an answer's deltas into its events, written through `writer`."""

    def __init__(self, writer: CommandBatcher) -> None:
        self._writer = writer

    def chunk(self, answer: Answer, header: bytes, delta: str, append: Appender) -> Written | None:
        """Hand a delta on as the answer's next `chunk`; the write on its way to Redis, if it is stored
        (`append`: the replay log's commands for the answer's session)."""
        answer.seq += 1
        answer.parts.append(delta)
        if answer.listener is None:
            payload = ChunkEvent.fast_json(header, answer.seq, delta)
        else:  # an in-process listener (the /v1 API) takes the event itself
            # Built without validation, as `fast_json` writes one: every field is known valid here, and
            # this runs for every token a real model streams (issue #14).
            event = ChunkEvent.model_construct(
                message_id=answer.message_id,
                session_id=answer.session_id,
                seq=answer.seq,
                timestamp=utc_now(),
                content=delta,
            )
            answer.listener.put_nowait(event)
            if append is None:  # a stateless answer: nothing is written
                return None
            payload = event.model_dump_json(exclude_none=True).encode()
        return None if append is None else self._writer.submit(append(payload))

    def part(
        self,
        answer: Answer,
        header: bytes,
        delta: Delta,
        append: Appender,
    ) -> list[Written]:
        """Hand a delta other than text on as its events; their writes on their way to Redis."""
        other = answer.other
        if other is None:
            other = answer.other = MessageParts()
        if isinstance(delta, Reasoning):
            other.reasoning.append(delta.text)
            return self._emit(answer, header, append, ReasoningEvent, content=delta.text)
        if isinstance(delta, Refusal):
            other.refusal.append(delta.text)
            return self._emit(answer, header, append, RefusalEvent, content=delta.text)
        if isinstance(delta, ToolCallStart):
            if delta.id in other.calls:
                return []
            # Calls stream one after another: a new one completes those before it.
            written = self.end_calls(answer, header, append)
            index = other.start_call(delta.id, delta.name)
            fields = {"tool_call_id": delta.id, "name": delta.name, "index": index}
            return [*written, *self._emit(answer, header, append, ToolCallStartEvent, **fields)]
        if isinstance(delta, ToolCallArguments):
            call = other.calls.get(delta.id)
            if call is None or call.ended or not delta.text:
                logger.warning(
                    "ignoring arguments of an unknown tool call in message_id=%s", answer.message_id
                )
                return []
            call.pieces.append(delta.text)
            return self._emit(
                answer, header, append, ToolCallDeltaEvent, tool_call_id=delta.id, arguments=delta.text
            )
        raise TypeError(f"an answer source yielded {type(delta).__name__}")

    def end_calls(self, answer: Answer, header: bytes, append: Appender) -> list[Written]:
        """`tool_call_end` for each call that has started and not ended, in order."""
        assert answer.other is not None
        written = []
        for call_id in answer.other.open_calls():
            call = answer.other.end_call(call_id)
            written.extend(
                self._emit(
                    answer,
                    header,
                    append,
                    ToolCallEndEvent,
                    tool_call_id=call.id,
                    name=call.name,
                    arguments=call.arguments,
                )
            )
        return written

    def _emit(
        self,
        answer: Answer,
        header: bytes,
        append: Appender,
        kind: type[EventBase],
        **fields: object,
    ) -> list[Written]:
        """The answer's next event of `kind`, to its listener and (if stored) on its way to Redis."""
        answer.seq += 1
        if answer.listener is None:
            type_name = kind.model_fields["type"].default
            payload = part_json(header, answer.seq, type_name.encode(), fields)
        else:
            event = event_of(answer, kind, **fields)
            answer.listener.put_nowait(event)  # type: ignore[arg-type]
            payload = event.model_dump_json(exclude_none=True).encode()
        return [] if append is None else [self._writer.submit(append(payload))]
