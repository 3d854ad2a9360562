"""Model-written titles (issue #15, `AI_TITLES=true`): `TitleWriter`, an `AnswerObserver`.

When a conversation's first answer has ended well (`stop`; not a stateless answer, a later one or a
regeneration), its first user message is queued, and the writer's task (owned by the lifespan) asks the
answer source for a short title of it: never in the answer's way, its failures logged and ignored. The
title goes to the outbox as an entry of its own (`outbox_title`), which the archiver applies after the
conversation's row exists, and only while its title is still the one taken from the first message: a
rename (`PATCH /conversations/{id}`) in the meantime is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import aclosing
from typing import TYPE_CHECKING

from conversation import ConversationMessage
from generation import GenerationOptions
from providers.base import AnswerError, Completion
from records.store import title_of
from redis_client import RedisUnavailable, bounded
from stores.outbox import outbox_title

if TYPE_CHECKING:
    from answer_run import Answer
    from providers.base import AnswerSource
    from redis_client import KeySpace, RedisClient

__all__ = ["INSTRUCTION", "MAX_TOKENS", "TitleWriter", "clean_title"]

logger = logging.getLogger(__name__)

INSTRUCTION = (
    "Write a short title (at most six words) for a conversation that begins with the user's message "
    "below. Reply with the title only: no quotes, no final punctuation."
)
MAX_TOKENS = 20
# At most this many first messages wait for their titles; more are not titled by the model.
QUEUE_LIMIT = 1000
QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"


def clean_title(text: str) -> str:
    """The model's reply as a title: one line, without quotes, at most 80 characters ("" for none),
    as a PATCH title must be (not blank, at most 200)."""
    line = " ".join(text.split()).strip(QUOTES + " ").rstrip(".").strip(QUOTES + " ")
    return title_of(line) if line else ""


class TitleWriter:
    """Titles conversations with `source`; writes through `redis` (an outbox entry per title)."""

    def __init__(
        self, source: AnswerSource, redis: RedisClient, keys: KeySpace, *, timeout: float, ai_timeout: float
    ) -> None:
        self._source = source
        self._redis = redis
        self._keys = keys
        self._timeout = timeout
        self._ai_timeout = ai_timeout
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="title-writer")

    async def close(self) -> None:
        """Stop (after the chat service has shut down): a title not written by then is not written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- AnswerObserver --

    def answer_started(self, answer: Answer) -> None:
        pass

    def chunk_published(self, answer: Answer) -> None:
        pass

    def answer_ended(self, answer: Answer) -> None:
        first = _first_message(answer)
        if first is None:
            return
        try:
            self._queue.put_nowait((answer.session_id, first))
        except asyncio.QueueFull:
            logger.warning("too many titles waiting: session_id=%s is not titled", answer.session_id)

    # -- the writer's task --

    async def _run(self) -> None:
        while True:
            session_id, message = await self._queue.get()
            try:
                await self._title(session_id, message)
            except AnswerError as error:
                logger.warning("could not title session_id=%s: the model failed (%s)", session_id, error.code)
            except TimeoutError:
                logger.warning("could not title session_id=%s: the model did not answer in time", session_id)
            except RedisUnavailable as error:
                logger.warning("could not store the title of session_id=%s: %s", session_id, error.reason)
            except Exception:
                logger.exception("could not title session_id=%s", session_id)

    async def _title(self, session_id: str, message: str) -> None:
        title = clean_title(await self._ask(message))
        if not title:
            logger.info("the model gave no title for session_id=%s", session_id)
            return
        async with bounded(self._timeout):
            await self._redis.execute_command(*outbox_title(self._keys, session_id, title, title_of(message)))

    async def _ask(self, message: str) -> str:
        """The model's reply to the title instruction and the message (its text only)."""
        conversation = [ConversationMessage("system", INSTRUCTION), ConversationMessage("user", message)]
        options = GenerationOptions(max_tokens=MAX_TOKENS)
        text: list[str] = []
        async with asyncio.timeout(self._ai_timeout):
            async with aclosing(self._source.stream(conversation, options, Completion())) as deltas:
                async for delta in deltas:
                    if isinstance(delta, str):
                        text.append(delta)
        return "".join(text)


def _first_message(answer: Answer) -> str | None:
    """The first user message, if `answer` is its conversation's first answer and ended well."""
    if not answer.stored or not answer.session_id or answer.finish_reason != "stop":
        return None
    if answer.parent_id is not None:  # a later answer, or a regeneration (its parent is its message)
        return None
    users = [message.content for message in answer.conversation if message.role == "user"]
    return users[0] if len(users) == 1 and users[0].strip() else None
