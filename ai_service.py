"""Chat orchestration: answer sources, and the machinery that streams an answer to its listeners.

An answer source turns a conversation into an async iterator of text deltas and knows nothing of Redis.
`ChatService` stores turns, runs each answer in a background task it owns, and publishes the answer's
events (`start`, `chunk`..., then `end` or `error`) on the session's channel.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from models import (
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
    Usage,
    new_message_id,
    utc_now,
)
from redis_client import Command, EventWriter, HistoryStore, KeySpace, RedisUnavailable

if TYPE_CHECKING:
    from config import Settings

__all__ = [
    "AnswerSource",
    "ChatService",
    "Completion",
    "ConversationMessage",
    "ServiceUnavailable",
    "SimulatedAnswerSource",
]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=EventBase)


@dataclass(frozen=True, slots=True)
class ConversationMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(slots=True)
class Completion:
    """What a source reports about an answer besides its text, filled in while it streams."""

    finish_reason: FinishReason = "stop"
    usage: Usage | None = None


class AnswerSource(Protocol):
    """Where answers come from: a simulated model, or a real one behind an HTTP API."""

    name: str

    def stream(
        self, conversation: Sequence[ConversationMessage], completion: Completion
    ) -> AsyncIterator[str]:
        """Yield the answer to the conversation's last message as text deltas."""
        ...


class AnswerError(Exception):
    """An answer source failed; `code` goes into the stream's `error` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ServiceUnavailable(Exception):
    """The service is shutting down and takes no new chats."""


# --- The simulated model -------------------------------------------------------------------------

_STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has
    have having he her here hers him his how i if in into is it its itself just me more most my no
    nor not now of off on once only or other our out over own same she should so some such than that
    the their them then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours hello hi hey please
    thanks thank tell explain give show know want need like get""".split()  # noqa: SIM905 - a word list reads best as prose
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'\-]{2,}")


def _topics(text: str, limit: int = 3) -> list[str]:
    """The message's most telling words: longest first, stopwords dropped, order kept on ties."""
    seen: dict[str, int] = {}
    for position, word in enumerate(_WORD.findall(text)):
        lowered = word.lower()
        if lowered not in _STOPWORDS and lowered not in seen:
            seen[lowered] = position
    return sorted(seen, key=lambda word: (-len(word), seen[word]))[:limit]


def _pick(options: Sequence[str], seed: bytes) -> str:
    return options[int.from_bytes(hashlib.blake2b(seed, digest_size=4).digest(), "big") % len(options)]


def compose_answer(conversation: Sequence[ConversationMessage]) -> str:
    """A relevant, multi-sentence answer to the conversation's last user message.

    Deterministic for the same conversation, so tests can compare; different for different messages,
    questions and sessions, and it refers back to what the user said earlier in the session.
    """
    user_turns = [message.content for message in conversation if message.role == "user"]
    message = user_turns[-1] if user_turns else ""
    seed = "\x00".join(message.content for message in conversation).encode()
    topics = _topics(message)
    stripped = message.strip().lower()
    sentences: list[str] = []

    if not topics:
        sentences.append(
            _pick(
                [
                    "Hello! I'm the simulated assistant of this chat service.",
                    "Hi there! This is the simulated assistant speaking.",
                ],
                seed,
            )
        )
        sentences.append("Ask me about anything and I will stream my answer back to you, chunk by chunk.")
    else:
        subject = topics[0]
        others = " and ".join(topics[1:])
        if stripped.startswith(("how", "can", "could")):
            sentences.append(f"Here is how I would approach {subject}, step by step.")
            sentences.append(
                f"First, pin down what {subject} has to achieve; then try the smallest version of it."
            )
        elif stripped.startswith("why"):
            sentences.append(f"Good question: the reasons behind {subject} usually come down to trade-offs.")
            sentences.append(f"Each choice about {subject} buys something and costs something else.")
        elif stripped.startswith(("what", "who", "which", "where", "when")) or stripped.endswith("?"):
            sentences.append(f"In short, {subject} is the heart of what you are asking about.")
            sentences.append(f"The details of {subject} depend on the context you use it in.")
        else:
            sentences.append(
                _pick(
                    [
                        f"You mentioned {subject}, so let's look at it more closely.",
                        f"Thanks for bringing up {subject}.",
                        f"Let's talk about {subject}.",
                    ],
                    seed,
                )
            )
            sentences.append(f"There is more to {subject} than first meets the eye.")
        if others:
            sentences.append(f"It also connects with {others}, which is worth keeping in mind.")

    if len(user_turns) > 1:
        earlier = _topics(user_turns[-2], limit=1)
        if earlier:
            sentences.append(f"Earlier you asked about {earlier[0]}, and that still applies here.")
        sentences.append(f"This is message {len(user_turns)} of our conversation.")
    sentences.append(
        _pick(
            [
                "I'm a simulated model, so treat this as a demonstration of streaming.",
                "Note that I'm simulated: a real model can be configured in place of me.",
            ],
            seed + b"closing",
        )
    )
    return " ".join(sentences)


class SimulatedAnswerSource:
    """The default answer source: a composed answer, streamed a few words at a time.

    Each chunk is up to `words_per_chunk` words. Before a chunk is sent the source waits
    `stream_delay` for each of its words (the model "writing"), plus `chunk_delay` (the pause between
    chunks). Both at 0 stream as fast as the machinery allows.
    """

    name = "simulated"

    def __init__(self, *, stream_delay: float, chunk_delay: float, words_per_chunk: int = 3) -> None:
        self.stream_delay = stream_delay
        self.chunk_delay = chunk_delay
        self.words_per_chunk = words_per_chunk

    async def stream(
        self, conversation: Sequence[ConversationMessage], completion: Completion
    ) -> AsyncIterator[str]:
        words = compose_answer(conversation).split(" ")
        for start in range(0, len(words), self.words_per_chunk):
            piece = words[start : start + self.words_per_chunk]
            pause = self.stream_delay * len(piece) + self.chunk_delay
            if pause:
                await asyncio.sleep(pause)
            yield (" " if start else "") + " ".join(piece)
        completion.finish_reason = "stop"


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
    finishing: bool = False


class ChatService:
    """Accepts chats, runs each answer in a background task it owns, and ends them all on shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        history: HistoryStore,
        writer: EventWriter,
        keys: KeySpace,
        source: AnswerSource,
    ) -> None:
        self._settings = settings
        self._history = history
        self._writer = writer
        self._keys = keys
        self.source = source
        self._answers: dict[str, Answer] = {}
        self._accepting = True

    @property
    def active_answers(self) -> int:
        return len(self._answers)

    async def submit(self, request: ChatRequest) -> ChatAccepted:
        """Store the user's turn and start the answer; return at once."""
        if not self._accepting:
            raise ServiceUnavailable("the service is shutting down")
        message_id = new_message_id()
        # The user turn is stored before 202 is answered: an accepted chat is always in history.
        await self._history.append(request.session_id, ChatTurn.user(request, message_id))
        conversation = await self._conversation(request.session_id)
        answer = Answer(
            message_id=message_id,
            session_id=request.session_id,
            user_id=request.user_id,
            channel=self._keys.channel(request.session_id),
        )
        self._answers[message_id] = answer
        answer.task = asyncio.create_task(self._run(answer, conversation), name=f"answer-{message_id}")
        return ChatAccepted(message_id=message_id, session_id=request.session_id, channel=answer.channel)

    async def _conversation(self, session_id: str) -> list[ConversationMessage]:
        turns = await self._history.read(session_id)
        return [ConversationMessage(role=turn.role, content=turn.content) for turn in turns]

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
                answer.task.cancel()
        if pending:
            logger.warning("ending %d answers still running at shutdown", len(pending))
            await asyncio.wait(pending)

    # -- one answer --

    def _event_commands(self, answer: Answer, payload: bytes) -> list[Command]:
        return [("PUBLISH", answer.channel, payload)]

    async def _publish(self, answer: Answer, event: StartEvent | ChunkEvent | EndEvent | ErrorEvent) -> None:
        await self._writer.write(
            self._event_commands(answer, event.model_dump_json(exclude_none=True).encode())
        )

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
            await self._publish(answer, self._event(answer, StartEvent))
            async for delta in self.source.stream(conversation, completion):
                if not delta:
                    continue
                answer.seq += 1
                answer.parts.append(delta)
                await self._publish(answer, self._event(answer, ChunkEvent, content=delta))
            await self._finish(answer, completion.finish_reason, completion.usage)
        except asyncio.CancelledError:
            # Only this service cancels answer tasks (at shutdown), and it awaits them: the task
            # ends normally once the partial answer is stored.
            await self._end_early(answer, "shutdown", "shutdown", "the service is shutting down")
        except AnswerError as error:
            logger.warning(
                "answer failed message_id=%s code=%s: %s", answer.message_id, error.code, error.message
            )
            await self._end_early(answer, "error", error.code, error.message)
        except RedisUnavailable as error:
            logger.error("answer lost Redis message_id=%s: %s", answer.message_id, error.reason)
            await self._end_early(answer, "error", "redis_unavailable", "Redis became unavailable")
        except Exception:
            logger.exception("answer failed message_id=%s", answer.message_id)
            await self._end_early(answer, "error", "internal_error", "the answer failed")
        finally:
            self._answers.pop(answer.message_id, None)
            logger.info(
                "answer ended message_id=%s chunks=%d duration_ms=%.1f",
                answer.message_id,
                answer.seq,
                (time.perf_counter() - answer.started) * 1000,
            )

    async def _finish(self, answer: Answer, finish_reason: FinishReason, usage: Usage | None) -> None:
        content = "".join(answer.parts)
        turn = ChatTurn.assistant(answer.message_id, content, answer.user_id, finish_reason, usage)
        answer.finishing = True
        # History first, then `end`: a client that reads history on `end` finds the turn.
        await self._writer.write(self._history.append_commands(answer.session_id, turn))
        answer.seq += 1
        await self._publish(
            answer,
            self._event(answer, EndEvent, content=content, finish_reason=finish_reason, usage=usage),
        )

    async def _end_early(self, answer: Answer, finish_reason: FinishReason, code: str, message: str) -> None:
        """Store what was written so far and end the stream with an `error` event."""
        try:
            content = "".join(answer.parts)
            turn = ChatTurn.assistant(answer.message_id, content, answer.user_id, finish_reason)
            await self._writer.write(self._history.append_commands(answer.session_id, turn))
            answer.seq += 1
            await self._publish(
                answer, self._event(answer, ErrorEvent, error=ErrorInfo(code=code, message=message))
            )
        except RedisUnavailable as error:
            logger.error(
                "could not store the end of answer message_id=%s: %s", answer.message_id, error.reason
            )
