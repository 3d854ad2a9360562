"""One answer's run: from its source's deltas to its events in the replay log, to its stored turn.

`AnswerRunner.run` is the body of the task `ChatService` starts for each answer. It publishes `start`,
then a `chunk` per delta (many in flight to Redis at once, in order), then stores the answer, whole or
partial, and ends its stream with `end` or `error`, however it ends: done, failed, stopped, shut down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Literal, Protocol, get_args

from answer_events import Answer, EventEmitter, EventQueue, Phase, Written, event_of
from conversation import ConversationMessage
from generation import GenerationOptions
from models import (
    ChatTurn,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    ErrorInfo,
    FinishReason,
    StartEvent,
    StreamEvent,
)
from parts import Usage
from providers.base import AnswerError, AnswerSource, Completion
from redis_client import Command, RedisUnavailable

if TYPE_CHECKING:
    from batcher import CommandBatcher
    from leases import LeaseKeeper
    from stores.replay_log import ReplayLog

__all__ = ["Answer", "AnswerObserver", "AnswerRunner", "EventQueue", "Phase"]

logger = logging.getLogger(__name__)

# What observers are told, as `AnswerObserver` names its methods.
Hook = Literal["answer_started", "chunk_published", "answer_ended"]
# How many chunks an answer may have on their way to Redis before it waits for the oldest.
CHUNK_WINDOW = 32


class AnswerObserver(Protocol):
    """Told about each answer's life, on the event loop; must not block or raise (metrics, limits)."""

    def answer_started(self, answer: Answer) -> None: ...

    def chunk_published(self, answer: Answer) -> None: ...

    def answer_ended(self, answer: Answer) -> None:
        """Called once per answer however it ends; `answer.finish_reason` is set when it was stored."""
        ...


def start_event(answer: Answer) -> StartEvent:
    """`start`, with the answer's trace and the exchange it follows (issue #15)."""
    return event_of(answer, StartEvent, trace_id=answer.trace_id, parent_id=answer.parent_id)


def _consume(future: Written) -> None:
    """Retrieve a future's outcome, so an unawaited failure is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


class AnswerRunner:
    """Runs answers from `source`, writing through `writer`; tells `observers` of each answer's life."""

    def __init__(
        self,
        source: AnswerSource,
        *,
        log: ReplayLog,
        writer: CommandBatcher,
        observers: Sequence[AnswerObserver],
        end_retry_seconds: float,
        keeper: LeaseKeeper,
    ) -> None:
        """`keeper` writes each answer's end, and knows whether our lease on an answer surely holds."""
        self._source = source
        self._ends = keeper.ends
        self._holds = keeper.holds
        self._log = log
        self._writer = writer
        self._emitter = EventEmitter(writer)
        self._end_retry = end_retry_seconds
        # Each hook's bound methods, looked up once: `chunk_published` runs for every chunk.
        self._hooks: dict[Hook, tuple[Callable[[Answer], None], ...]] = {
            hook: tuple(getattr(observer, hook) for observer in observers) for hook in get_args(Hook)
        }

    def _notify(self, hook: Hook, answer: Answer) -> None:
        for call in self._hooks[hook]:
            try:
                call(answer)
            except Exception:
                logger.exception("answer observer %s failed", hook)

    def started(self, answer: Answer) -> None:
        """Tell the observers that the answer runs; `run` tells them when it has ended."""
        self._notify("answer_started", answer)

    async def run(
        self, answer: Answer, conversation: list[ConversationMessage], options: GenerationOptions
    ) -> None:
        # One frame for the whole answer, the stream included: thousands run at once (issue #6, f).
        completion = Completion()
        logger.info(
            "answer started message_id=%s session_id=%s trace_id=%s",
            answer.message_id,
            answer.session_id,
            answer.trace_id or "-",
        )
        header = ChunkEvent.json_header(answer.message_id, answer.session_id)
        append = self._log.appender(answer.session_id) if answer.stored else None
        # The answer goes on producing while its chunks are on their way to Redis, up to CHUNK_WINDOW
        # of them, instead of waiting for each round trip. The writer keeps their order, and every one
        # is confirmed before the answer is stored and ended.
        in_flight: deque[Written] = deque()
        try:
            starting = self._log.starting_commands(answer.session_id, answer.since, answer.key)
            await self._publish(answer, start_event(answer), *starting)
            # aclosing: a cancelled answer closes its source (and the source its upstream stream) at
            # once, even when the cancel lands while a chunk is being published.
            async with aclosing(self._source.stream(conversation, options, completion)) as deltas:
                async for delta in deltas:
                    if type(delta) is str:
                        if not delta:
                            continue
                        written = self._emitter.chunk(answer, header, delta, append)
                        if written is not None:
                            in_flight.append(written)
                    else:
                        in_flight.extend(self._emitter.part(answer, header, delta, append))
                    self._notify("chunk_published", answer)
                    while in_flight and (len(in_flight) >= CHUNK_WINDOW or in_flight[0].done()):
                        await in_flight.popleft()
            if answer.other is not None:
                in_flight.extend(self._emitter.end_calls(answer, header, append))
            while in_flight:
                await in_flight.popleft()
            finish_reason = completion.finish_reason
            if finish_reason == "stop" and answer.other is not None and answer.other.calls:
                finish_reason = "tool_calls"  # some servers say `stop` after calling tools
            await self._end(answer, finish_reason, usage=completion.usage)
        except (asyncio.CancelledError, Exception) as error:
            # Only the service cancels answer tasks (Stop, shutdown), and it awaits them: the task
            # ends normally once the partial answer is stored and the stream is ended.
            finish_reason, failure = self._failure(answer, error)
            await self._end(answer, finish_reason, error=failure)
        finally:
            for future in in_flight:  # left behind by a failure or a Stop: nobody awaits them
                future.add_done_callback(_consume)
            answer.phase = Phase.ENDED
            self._notify("answer_ended", answer)
            logger.info(
                "answer ended message_id=%s trace_id=%s chunks=%d duration_ms=%.1f",
                answer.message_id,
                answer.trace_id or "-",
                len(answer.parts),
                (time.perf_counter() - answer.started) * 1000,
            )

    @staticmethod
    def _failure(answer: Answer, error: BaseException) -> tuple[FinishReason, tuple[str, str] | None]:
        """How an answer that raised `error` ends: its finish reason, and the `error` event's code and
        message (none for a Stop)."""
        if isinstance(error, asyncio.CancelledError):
            if answer.phase is Phase.CANCELLING:
                return "cancelled", None
            return "shutdown", ("shutdown", "the service is shutting down")
        if isinstance(error, AnswerError):
            logger.warning(
                "answer failed message_id=%s trace_id=%s code=%s: %s",
                answer.message_id,
                answer.trace_id or "-",
                error.code,
                error.message,
            )
            return "error", (error.code, error.message)
        if isinstance(error, RedisUnavailable):
            logger.error("answer lost Redis message_id=%s: %s", answer.message_id, error.reason)
            return "error", ("redis_unavailable", "Redis became unavailable")
        logger.error("answer failed message_id=%s", answer.message_id, exc_info=error)
        return "error", ("internal_error", "the answer failed")

    async def _publish(self, answer: Answer, event: StreamEvent, *extra: Command) -> None:
        """Append the event to the session's replay log (which publishes it), after `extra` commands."""
        if answer.listener is not None:
            answer.listener.put_nowait(event)
        await self._write_event(answer, event, *extra)

    async def _write_event(self, answer: Answer, event: StreamEvent, *extra: Command) -> None:
        if not answer.stored:
            return
        payload = event.model_dump_json(exclude_none=True).encode()
        await self._writer.submit(
            [*extra, *self._log.append_commands(answer.session_id, payload, refresh_ttl=True)]
        )

    async def _end(
        self,
        answer: Answer,
        finish_reason: FinishReason,
        *,
        usage: Usage | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        """Store the answer (whole or partial), then end its stream with `end`, or `error` if given."""
        content = "".join(answer.parts)
        other = answer.other
        reasoning = other.reasoning_text() if other else None
        tool_calls = other.tool_calls() if other else None
        refusal = other.refusal_text() if other else None
        turn = ChatTurn.assistant(
            answer.message_id,
            content,
            answer.user_id,
            finish_reason,
            usage,
            reasoning=reasoning,
            tool_calls=tool_calls,
            refusal=refusal,
            parent_id=answer.parent_id,
        )
        answer.phase = Phase.FINISHING
        answer.usage = usage
        answer.seq += 1
        event: StreamEvent
        if error is None:
            event = event_of(
                answer,
                EndEvent,
                content=content,
                reasoning=reasoning,
                tool_calls=tool_calls,
                refusal=refusal,
                finish_reason=finish_reason,
                usage=usage,
            )
        else:
            event = event_of(answer, ErrorEvent, error=ErrorInfo(code=error[0], message=error[1]))
        answer.error_code = error[0] if error else None
        # Redis may be down for a moment (a restart, a pause, a failover): keep trying until it is back.
        # If it never is, the answer's lease expires and another instance (or the next process) ends it
        # as lost (#13, item 5).
        deadline = time.monotonic() + self._end_retry
        if await self._retrying(
            answer, deadline, "store", lambda attempt: self._store_end(answer, turn, event, attempt)
        ):
            answer.finish_reason = finish_reason
        if answer.listener is not None:
            # Even when nothing reached Redis, the in-process listener learns how the answer ended.
            answer.listener.put_nowait(event)

    async def _store_end(self, answer: Answer, turn: ChatTurn, event: StreamEvent, attempt: int) -> None:
        """The turn, the final state and the terminal event in one transaction: all of it or nothing."""
        if not answer.stored:
            return
        commands = self._ends.commands(
            answer.session_id, turn, event.model_dump_json(exclude_none=True).encode(), answer.key
        )
        # While our lease surely holds, nobody else ends the answer. After a timeout (a timed-out EXEC
        # may have landed) or once the lease may have expired, only if it is still streaming.
        if attempt == 1 and self._holds(answer.key):
            await self._ends.commit(commands)
        elif not await self._ends.commit_if_streaming(answer.key, commands):
            logger.warning("answer message_id=%s had already been ended", answer.message_id)

    async def _retrying(
        self, answer: Answer, deadline: float, what: str, step: Callable[[int], Awaitable[None]]
    ) -> bool:
        """Run `step` until it gets through to Redis, backing off, until `deadline`; False if it never did."""
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                await step(attempt)
                return True
            except RedisUnavailable as failure:
                if time.monotonic() + delay > deadline:
                    logger.error(
                        "could not %s the end of answer message_id=%s: %s",
                        what,
                        answer.message_id,
                        failure.reason,
                    )
                    return False
                logger.warning(
                    "retrying to %s the end of answer message_id=%s: %s",
                    what,
                    answer.message_id,
                    failure.reason,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
