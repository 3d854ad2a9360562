"""Chat orchestration: answer sources, and the machinery that streams an answer to its listeners.

An answer source turns a conversation into an async iterator of text deltas and knows nothing of Redis.
`ChatService` stores turns, runs each answer in a background task it owns, and publishes the answer's
events (`start`, `chunk`..., then `end` or `error`) on the session's channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import orjson

from batcher import CommandBatcher
from conversation import ConversationMessage, build_context
from errors import ServiceError
from models import (
    AnswerState,
    ChatAccepted,
    ChatRequest,
    ChatTurn,
    ChunkEvent,
    EndEvent,
    ErrorEvent,
    ErrorInfo,
    EventBase,
    FinishReason,
    StartEvent,
    StreamEvent,
    Usage,
    new_message_id,
    utc_now,
)
from providers.base import AnswerError, AnswerSource, Completion
from redis_client import AnswerRegistry, Command, HistoryStore, KeySpace, RedisUnavailable

if TYPE_CHECKING:
    from config import Settings

__all__ = [
    "AnswerFinished",
    "AnswerNotFound",
    "AnswerObserver",
    "ChatService",
    "MessageConflict",
    "ServiceUnavailable",
]

logger = logging.getLogger(__name__)

# How long an answer keeps trying to store its end while Redis is unavailable.
END_RETRY_SECONDS = 15.0

E = TypeVar("E", bound=EventBase)


class AnswerObserver(Protocol):
    """Told about each answer's life, on the event loop; must not block or raise (metrics, limits)."""

    def answer_started(self, answer: Answer) -> None: ...

    def chunk_published(self, answer: Answer) -> None: ...

    def answer_ended(self, answer: Answer) -> None:
        """Called once per answer however it ends; `answer.finish_reason` is set when it was stored."""
        ...


class ServiceUnavailable(ServiceError):
    """The service is shutting down and takes no new chats."""

    status = 503
    code = "shutting_down"


class AnswerNotFound(ServiceError):
    """No answer has this message id (or it has expired)."""

    status = 404
    code = "not_found"

    def __init__(self, message_id: str) -> None:
        super().__init__("No such answer")
        self.message_id = message_id


class AnswerFinished(ServiceError):
    """The answer has already ended; `state` says how."""

    status = 409
    code = "already_finished"

    def __init__(self, state: AnswerState) -> None:
        super().__init__("The answer has already ended")
        self.state = state


class MessageConflict(ServiceError):
    """A client-chosen message id is already used by another session."""

    status = 409
    code = "message_id_conflict"


# --- Streaming machinery -------------------------------------------------------------------------


@dataclass(eq=False)
class Answer:
    """One answer being streamed, and what its listeners have been sent so far."""

    message_id: str
    session_id: str
    user_id: str
    channel: str
    started: float = field(default_factory=time.perf_counter)
    seq: int = 0
    parts: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    # The replay-log entry after which this answer's events begin.
    since: str = "0-0"
    # Why the task was cancelled: a Stop, or shutdown.
    stop_reason: Literal["cancelled", "shutdown"] = "shutdown"
    # How it ended, once it has: for observers.
    finish_reason: FinishReason | None = None
    error_code: str | None = None
    listener: asyncio.Queue[StreamEvent | None] | None = None
    # Set once the answer is being stored: Stop and shutdown then let it end by itself.
    finishing: bool = False


# How many chunks an answer may have on their way to Redis before it waits for the oldest.
CHUNK_WINDOW = 32


def _consume(future: asyncio.Future[list[Any]]) -> None:
    """Retrieve a future's outcome, so an unawaited failure is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


class ChatService:
    """Accepts chats, runs each answer in a background task it owns, and ends them all on shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        history: HistoryStore,
        registry: AnswerRegistry,
        writer: CommandBatcher,
        keys: KeySpace,
        source: AnswerSource,
        observers: Sequence[AnswerObserver] = (),
    ) -> None:
        self._settings = settings
        self._observers = tuple(observers)
        self._history = history
        self._registry = registry
        self._writer = writer
        self._keys = keys
        self.source = source
        self._answers: dict[str, Answer] = {}
        self._accepting = True

    @property
    def active_answers(self) -> int:
        return len(self._answers)

    def _accepted(self, state: AnswerState) -> ChatAccepted:
        return ChatAccepted(
            status=state.status,
            message_id=state.message_id,
            session_id=state.session_id,
            channel=self._keys.channel(state.session_id),
            stream_url=f"/stream/{state.session_id}?message_id={state.message_id}",
            finish_reason=state.finish_reason,
        )

    async def submit(
        self,
        request: ChatRequest,
        *,
        context: Sequence[ConversationMessage] | None = None,
        listener: asyncio.Queue[StreamEvent | None] | None = None,
    ) -> tuple[ChatAccepted, bool]:
        """Store the user's turn and start the answer; return at once.

        Returns the answer's state and whether this call started it: a repeated `message_id` returns
        the existing answer's state and starts nothing.

        For in-process callers such as the OpenAI-compatible API: `context` is the conversation to
        answer, in place of the one built from the session's history; `listener` receives every event
        of the answer as it is published (in `seq` order, ending with its `end` or `error`, which it
        receives even when Redis refuses the event), then `None` once the answer's task is over.
        """
        if not self._accepting:
            raise ServiceUnavailable("the service is shutting down")
        message_id = str(request.message_id) if request.message_id else new_message_id()
        session_id = request.session_id
        existing = await self._registry.claim(message_id, session_id, self._writer)
        if existing is not None:
            if existing.session_id != session_id:
                raise MessageConflict("this message_id belongs to another session")
            return self._accepted(existing), False
        try:
            # The user turn is stored before 202 is answered: an accepted chat is always in history.
            since, conversation = await self._store_and_read(request, message_id, context)
        except RedisUnavailable:
            with contextlib.suppress(RedisUnavailable):
                await self._registry.release(message_id)
            raise
        answer = Answer(
            message_id=message_id,
            session_id=session_id,
            user_id=request.user_id,
            channel=self._keys.channel(session_id),
            since=since,
            listener=listener,
        )
        self._answers[message_id] = answer
        self._notify("answer_started", answer)
        answer.task = asyncio.create_task(self._run(answer, conversation), name=f"answer-{message_id}")
        if listener is not None:
            # A callback, not the task's `finally`: it runs even for a task cancelled before it started.
            answer.task.add_done_callback(lambda _: listener.put_nowait(None))
        state = AnswerState(message_id=message_id, session_id=session_id, status="streaming")
        return self._accepted(state), True

    async def _store_and_read(
        self, request: ChatRequest, message_id: str, context: Sequence[ConversationMessage] | None
    ) -> tuple[str, list[ConversationMessage]]:
        """Store the user's turn; return where the answer's events will begin in the replay log, and
        the conversation to answer (`context`, or one built from the session's recent turns)."""
        settings = self._settings
        turn = ChatTurn.user(request, message_id)
        if context is not None:
            return await self._history.append(request.session_id, turn), list(context)
        # One more than the limit: the newest turn read is usually the user turn just stored.
        since, turns = await self._history.append_and_recent(
            self._writer, request.session_id, turn, settings.max_context_messages + 1
        )
        earlier = [
            ConversationMessage(role=role, content=content)
            for turn_id, role, content in turns
            if turn_id != message_id
        ]
        return since, build_context(
            earlier,
            request.message,
            system_prompt=settings.system_prompt,
            max_messages=settings.max_context_messages,
            max_chars=settings.max_context_chars,
        )

    async def cancel(self, message_id: str) -> AnswerState:
        """Stop an answer wherever it runs; return its state once it has ended (or still `streaming`
        if the instance running it has not confirmed within two seconds)."""
        state = await self._registry.get(message_id)
        if state is None:
            raise AnswerNotFound(message_id)
        if state.status != "streaming":
            raise AnswerFinished(state)
        if not self.stop_local(message_id):
            await self._writer.execute(
                [(self._keys.publish, self._keys.control, orjson.dumps({"cancel": message_id}))]
            )
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            current = await self._registry.get(message_id)
            if current is not None and current.status != "streaming":
                return current
        return state

    def stop_local(self, message_id: str) -> bool:
        """Cancel the answer if this instance runs it (one already being stored ends by itself)."""
        answer = self._answers.get(message_id)
        if answer is None or answer.task is None or answer.task.done():
            return False
        if not answer.finishing:
            answer.stop_reason = "cancelled"
            answer.task.cancel()
        return True

    def on_control(self, data: bytes) -> None:
        """A message on the control channel, from any instance."""
        try:
            command = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning("ignoring an unreadable control message")
            return
        if isinstance(command, dict) and isinstance(command.get("cancel"), str):
            self.stop_local(command["cancel"])

    async def shutdown(self) -> None:
        """Take no new chats; let running answers finish within the grace period, then end the rest."""
        self._accepting = False
        running = [answer.task for answer in self._answers.values() if answer.task is not None]
        if not running:
            return
        logger.info(
            "waiting up to %.1fs for %d running answers", self._settings.shutdown_grace_seconds, len(running)
        )
        _, pending = await asyncio.wait(running, timeout=self._settings.shutdown_grace_seconds)
        for answer in list(self._answers.values()):
            # A finishing answer is complete: cancelling it would store it twice and send `error` after
            # `end`. Its last two writes are bounded by REDIS_TIMEOUT, so waiting for it cannot hang.
            if answer.task is not None and answer.task in pending and not answer.finishing:
                answer.stop_reason = "shutdown"
                answer.task.cancel()
        if pending:
            logger.warning("ending %d answers still running at shutdown", len(pending))
            await asyncio.wait(pending)

    def _notify(
        self, hook: Literal["answer_started", "chunk_published", "answer_ended"], answer: Answer
    ) -> None:
        for observer in self._observers:
            try:
                getattr(observer, hook)(answer)
            except Exception:
                logger.exception("answer observer %s failed", hook)

    # -- one answer --

    async def _publish(self, answer: Answer, event: StreamEvent, *extra: Command) -> None:
        """Append the event to the session's replay log and publish it, after any `extra` commands."""
        if answer.listener is not None:
            answer.listener.put_nowait(event)
        await self._write_event(answer, event, *extra)

    async def _write_event(self, answer: Answer, event: StreamEvent, *extra: Command) -> None:
        payload = event.model_dump_json(exclude_none=True).encode()
        await self._writer.execute([*extra, *self._event_commands(answer, payload, refresh_ttl=True)])

    def _event_commands(self, answer: Answer, payload: bytes, *, refresh_ttl: bool) -> list[Command]:
        """XADD to the session's replay log, then PUBLISH: a reader woken by the PUBLISH finds the
        entry in the log. The log lives as long as the history: `start` and the terminal event set its
        TTL, and a chunk's XADD keeps it."""
        events = self._keys.events(answer.session_id)
        return [
            ("XADD", events, "MAXLEN", "~", self._settings.stream_maxlen, "*", "e", payload),
            *([("EXPIRE", events, self._settings.chat_history_ttl)] if refresh_ttl else []),
            (self._keys.publish, answer.channel, payload),
        ]

    @staticmethod
    def _event(answer: Answer, kind: type[E], **fields: object) -> E:
        return kind.model_validate(
            {
                "message_id": answer.message_id,
                "session_id": answer.session_id,
                "seq": answer.seq,
                "timestamp": utc_now(),
                **fields,
            }
        )

    async def _run(self, answer: Answer, conversation: list[ConversationMessage]) -> None:
        completion = Completion()
        logger.info("answer started message_id=%s session_id=%s", answer.message_id, answer.session_id)
        try:
            await self._publish(
                answer,
                self._event(answer, StartEvent),
                *self._registry.starting_commands(answer.session_id, answer.message_id, answer.since),
            )
            header = ChunkEvent.json_header(answer.message_id, answer.session_id)
            # The answer goes on producing while its chunks are on their way to Redis, up to
            # CHUNK_WINDOW of them, instead of waiting for each round trip. The writer keeps their
            # order, and every one is confirmed before the answer is stored and ended.
            in_flight: deque[asyncio.Future[list[Any]]] = deque()
            try:
                # aclosing: a cancelled answer closes its source (and the source its upstream stream)
                # at once, even when the cancel lands while a chunk is being published.
                async with aclosing(self.source.stream(conversation, completion)) as deltas:
                    async for delta in deltas:
                        if not delta:
                            continue
                        answer.seq += 1
                        answer.parts.append(delta)
                        if answer.listener is None:
                            payload = ChunkEvent.fast_json(header, answer.seq, delta)
                        else:  # an in-process listener (the /v1 API) takes the event itself
                            event = self._event(answer, ChunkEvent, content=delta)
                            answer.listener.put_nowait(event)
                            payload = event.model_dump_json(exclude_none=True).encode()
                        in_flight.append(
                            self._writer.submit(self._event_commands(answer, payload, refresh_ttl=False))
                        )
                        self._notify("chunk_published", answer)
                        while in_flight and (len(in_flight) >= CHUNK_WINDOW or in_flight[0].done()):
                            await in_flight.popleft()
                while in_flight:
                    await in_flight.popleft()
            finally:
                for future in in_flight:  # left behind by a failure or a Stop: nobody awaits them
                    future.add_done_callback(_consume)
            await self._end(answer, completion.finish_reason, usage=completion.usage)
        except asyncio.CancelledError:
            # Only this service cancels answer tasks (Stop, shutdown), and it awaits them: the task
            # ends normally once the partial answer is stored and the stream is ended.
            if answer.stop_reason == "cancelled":
                await self._end(answer, "cancelled")
            else:
                await self._end(answer, "shutdown", error=("shutdown", "the service is shutting down"))
        except AnswerError as error:
            logger.warning(
                "answer failed message_id=%s code=%s: %s", answer.message_id, error.code, error.message
            )
            await self._end(answer, "error", error=(error.code, error.message))
        except RedisUnavailable as error:
            logger.error("answer lost Redis message_id=%s: %s", answer.message_id, error.reason)
            await self._end(answer, "error", error=("redis_unavailable", "Redis became unavailable"))
        except Exception:
            logger.exception("answer failed message_id=%s", answer.message_id)
            await self._end(answer, "error", error=("internal_error", "the answer failed"))
        finally:
            self._answers.pop(answer.message_id, None)
            self._notify("answer_ended", answer)
            logger.info(
                "answer ended message_id=%s chunks=%d duration_ms=%.1f",
                answer.message_id,
                len(answer.parts),
                (time.perf_counter() - answer.started) * 1000,
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
        turn = ChatTurn.assistant(answer.message_id, content, answer.user_id, finish_reason, usage)
        answer.finishing = True
        answer.seq += 1
        event: StreamEvent
        if error is None:
            event = self._event(answer, EndEvent, content=content, finish_reason=finish_reason, usage=usage)
        else:
            event = self._event(answer, ErrorEvent, error=ErrorInfo(code=error[0], message=error[1]))
        answer.error_code = error[0] if error else None
        # Redis may be down for a moment (a restart, a pause, a failover): keep trying until it is back,
        # so that the answer is not left `streaming` with no turn and no terminal event (#5).
        deadline = time.monotonic() + END_RETRY_SECONDS
        if not await self._retrying(
            answer, deadline, "store", lambda attempt: self._store_end(answer, turn, attempt)
        ):
            if answer.listener is not None:
                # Nothing reached Redis, but the in-process listener still learns how the answer ended.
                answer.listener.put_nowait(event)
            return
        answer.finish_reason = finish_reason
        if answer.listener is not None:
            answer.listener.put_nowait(event)
        # A retried publish may add the terminal event twice if a timed-out one landed late; a
        # client following the answer stops at the first.
        await self._retrying(answer, deadline, "publish", lambda _: self._write_event(answer, event))

    async def _store_end(self, answer: Answer, turn: ChatTurn, attempt: int) -> None:
        # After a timeout, check whether the earlier attempt landed after all (a timeout does not
        # mean Redis did not apply it): the turn must not be stored twice.
        if attempt > 1:
            state = await self._registry.get(answer.message_id)
            if state is not None and state.status != "streaming":
                return
        # History first, in its own round trip, then the terminal event: a client that reads
        # history on `end` finds the turn.
        assert turn.finish_reason is not None
        await self._writer.execute(
            [
                *self._history.append_commands(answer.session_id, turn),
                *self._registry.finished_commands(answer.session_id, answer.message_id, turn.finish_reason),
            ]
        )

    async def _retrying(
        self,
        answer: Answer,
        deadline: float,
        what: str,
        step: Callable[[int], Awaitable[None]],
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
