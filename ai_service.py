"""Chat orchestration: `ChatService` runs every answer, whichever protocol asked for it.

It stores the user's turn, runs each answer in a background task it owns, appends its events (`start`,
`chunk`..., then `end` or `error`) to the session's replay log, stores the answer, and ends every running
answer on shutdown; a stateless answer (`/v1` without a session) runs the same path, its events handed
only to the caller. Sources (`providers/`) know nothing of Redis; protocols nothing of answer tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson

from answer_events import Answer, EventQueue, Phase
from answer_run import AnswerObserver, AnswerRunner
from chat_errors import (
    AnswerFinished,
    AnswerNotFound,
    ImagesUnsupported,
    MessageConflict,
    ServiceUnavailable,
    ToolResultConflict,
)
from conversation import ConversationMessage
from cursor import AnswerStart, EventCursor
from errors import ServiceError
from generation import GenerationOptions
from hub import StreamHub
from ids import answer_key
from models import AnswerState, ChatAccepted, ChatRequest, new_message_id
from parts import ToolResult
from providers.base import AnswerSource
from redis_client import KeySpace, RedisUnavailable
from stores.answers import AnswerRegistry
from stores.history import HistoryStore
from stores.replay_log import ReplayLog, parse_entry_id

if TYPE_CHECKING:
    from batcher import CommandBatcher
    from branches import Branches
    from config import Settings
    from leases import LeaseKeeper

__all__ = [
    "AnswerFinished",
    "AnswerNotFound",
    "AnswerObserver",
    "ChatService",
    "ImagesUnsupported",
    "MessageConflict",
    "ServiceUnavailable",
    "ToolResultConflict",
]

logger = logging.getLogger(__name__)


class ChatService:
    """Accepts chats, runs each answer in a background task it owns, and ends them all on shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        history: HistoryStore,
        answers: AnswerRegistry,
        log: ReplayLog,
        hub: StreamHub,
        writer: CommandBatcher,
        keys: KeySpace,
        source: AnswerSource,
        keeper: LeaseKeeper,
        branches: Branches,
        observers: Sequence[AnswerObserver] = (),
        end_retry_seconds: float = 15.0,
        cancel_wait_seconds: float = 2.0,
    ) -> None:
        """`keeper`: answers' leases and ends (`leases.py`); `end_retry_seconds`: how long an answer retries
        storing its end while Redis refuses; `cancel_wait_seconds`: how long `cancel` waits for another."""
        self._settings = settings
        self._history = history
        self._answers_store = answers
        self._log = log
        self._hub = hub
        self._writer = writer
        self._keys = keys
        self.source = source
        self._cancel_wait = cancel_wait_seconds
        self._keeper = keeper
        self._branches = branches
        self._runner = AnswerRunner(
            source,
            log=log,
            writer=writer,
            observers=observers,
            end_retry_seconds=end_retry_seconds,
            keeper=keeper,
        )
        self._answers: dict[str, Answer] = {}
        self._accepting = True

    @property
    def branches(self) -> Branches:
        return self._branches

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
        system_prompt: str | None = None,
        listener: EventQueue | None = None,
        owner: str | None = None,
    ) -> tuple[ChatAccepted, bool]:
        """Store the user's turn and start the answer; return at once.

        Returns the answer's state and whether this call started it: a repeated `message_id` returns
        the existing answer's state and starts nothing. Message ids are each `owner`'s (the API key's
        name; None on an open service): another key's use of one changes nothing here.

        For in-process callers such as the OpenAI-compatible API: `context` is the conversation to
        answer, in place of the one built from the session's history; `listener` receives every event
        of the answer as it is published (in `seq` order, ending with its `end` or `error`, which it
        receives even when Redis refuses the event), then `None` once the answer's task is over.
        `system_prompt` replaces `SYSTEM_PROMPT` in the context built from history (a protocol whose
        input brings its own instructions).
        """
        self._check_accepting()
        message_id = str(request.message_id) if request.message_id else new_message_id()
        session_id = request.session_id
        if request.images and not self.source.accepts_images:
            raise ImagesUnsupported(f"The model {self.source.model!r} cannot see images.", param="images")
        key = answer_key(owner, message_id)
        leaf = self._branches.read_leaf_soon(request, context)  # in the claim's round trip
        if (existing := await self._claim(key, session_id, request.user_id)) is not None:
            return self._accepted(existing), False  # a retry, tool results included, is answered alike
        try:
            if request.tool_results is not None:
                # With `context` (the OpenAI-compatible API) the caller checked the ids against its
                # messages; no answer of the session may be streaming all the same.
                await self._check_tool_results(session_id, request.tool_results, by_history=context is None)
            # The user turn is stored before 202 is answered: an accepted chat is always in history.
            since, conversation, parent = await self._branches.store_and_read(
                request, message_id, context, system_prompt, leaf=leaf, owner=owner
            )
        except ServiceError:  # Redis, the record, tool results or the branch: nothing is stored
            with contextlib.suppress(RedisUnavailable):
                await self._answers_store.release(key)
            raise
        answer = Answer(
            message_id, session_id, request.user_id, since=since, listener=listener, parent_id=parent, key=key
        )
        self._start(answer, conversation, request)
        state = AnswerState(message_id=message_id, session_id=session_id, status="streaming")
        return self._accepted(state), True

    async def regenerate(
        self,
        session_id: str,
        answer_id: str,
        options: GenerationOptions,
        *,
        user_id: str,
        message_id: str,
        owner: str | None = None,
    ) -> tuple[ChatAccepted, bool]:
        """Start another answer (`message_id`) to the message `answer_id` answered, as its sibling on a
        branch made the active one (`branches.py`); a repeated `message_id` starts nothing, as `submit`."""
        self._check_accepting()
        key = answer_key(owner, message_id)
        if (existing := await self._claim(key, session_id, user_id)) is not None:
            return self._accepted(existing), False
        try:
            since, conversation, parent = await self._branches.regenerate(session_id, answer_id, message_id)
        except ServiceError:
            with contextlib.suppress(RedisUnavailable):
                await self._answers_store.release(key)
            raise
        answer = Answer(message_id, session_id, user_id, since=since, parent_id=parent, key=key)
        self._start(answer, conversation, options)
        return self._accepted(
            AnswerState(message_id=message_id, session_id=session_id, status="streaming")
        ), True

    async def _claim(self, key: str, session_id: str, user_id: str) -> AnswerState | None:
        """Claim the answer's key: None if this call did, else the existing answer's state (ended first
        if it was lost); `MessageConflict` if that answer is of another session."""
        existing = await self._answers_store.claim(key, session_id, user_id)
        if existing is None:
            return None
        existing = await self._keeper.settled(key, existing)
        if existing.session_id != session_id:
            raise MessageConflict("this message_id belongs to another session")
        return existing

    def submit_stateless(
        self,
        conversation: Sequence[ConversationMessage],
        options: GenerationOptions,
        *,
        user_id: str,
        listener: EventQueue,
        message_id: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Start an answer that is neither stored nor published: its events go to `listener` only (as
        for `submit`). It counts, is observed and is ended at shutdown like every other; returns its key
        (`ids.answer_key`: for `stop_local`)."""
        self._check_accepting()
        if not self.source.accepts_images and any(message.images for message in conversation):
            raise ImagesUnsupported(f"The model {self.source.model!r} cannot see images.", param="messages")
        answer_id = message_id or new_message_id()
        key = answer_key(owner, answer_id)
        answer = Answer(answer_id, "", user_id, since="0-0", listener=listener, stored=False, key=key)
        self._start(answer, list(conversation), options)
        return key

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise ServiceUnavailable("the service is shutting down")

    def _start(
        self, answer: Answer, conversation: list[ConversationMessage], options: GenerationOptions
    ) -> None:
        self._answers[answer.key] = answer
        answer.conversation = conversation
        # Before `submit` returns: admission counts it as running from here (its slot is not given back).
        self._runner.started(answer)
        task = asyncio.create_task(
            self._runner.run(answer, conversation, options), name=f"answer-{answer.message_id}"
        )
        answer.task = task
        # Callbacks, not the task's `finally`: they run even for a task cancelled before it started.
        task.add_done_callback(lambda _: self._answers.pop(answer.key, None))
        listener = answer.listener
        if listener is not None:
            task.add_done_callback(lambda _: listener.put_nowait(None))

    async def _check_tool_results(
        self, session_id: str, results: Sequence[ToolResult], *, by_history: bool
    ) -> None:
        """No answer of the session may be streaming (its calls are not final until it ends), and (if
        `by_history`) each result must answer a call of its last answer that has no result yet."""
        if await self._log.running_starts(session_id):
            raise ToolResultConflict("An answer of this session is still streaming.", param="tool_results")
        if not by_history:
            return
        # The last answer and the results it has had: one POST of at most 128 answers it (a result for
        # an answer starts the next one).
        turns = await self._history.recent(session_id, 129)
        last = max((i for i, (_, turn) in enumerate(turns) if turn.role == "assistant"), default=-1)
        open_calls = set()
        if last >= 0:
            open_calls = {call.id for call in turns[last][1].tool_calls}
            open_calls -= {turn.tool_call_id for _, turn in turns[last + 1 :]}
        for result in results:
            if result.tool_call_id not in open_calls:
                raise ToolResultConflict(
                    f"The tool call {result.tool_call_id!r} is not awaiting a result in this session.",
                    param="tool_results",
                )

    async def follow(
        self,
        session_id: str,
        *,
        after: str | None = None,
        message_id: str | None = None,
        owner: str | None = None,
    ) -> EventCursor:
        """A cursor over the session's events after `after`, or over one answer's (`AnswerNotFound` if
        it is not an answer of this session and `owner`), or over its running answers and then
        everything live."""
        answer = None
        if message_id is not None:
            key = answer_key(owner, message_id)
            state = await self._keeper.state(key)
            if state is None or state.session_id != session_id:
                raise AnswerNotFound(message_id)
            since = await self._log.start_of(key)
            answer = AnswerStart(message_id, since, finished=state.status != "streaming", key=key)
        return EventCursor(self._hub, session_id, after=after, answer=answer)

    async def running_answer(self, session_id: str) -> str | None:
        """The message id of the session's answer that is running now (the newest, if several), or None."""
        running = await self._log.running(session_id)
        if not running:
            return None
        return max(running, key=lambda message_id: parse_entry_id(running[message_id]))

    async def clear(self, session_id: str) -> None:
        """Delete the session's history and its replay log."""
        await self._writer.submit(
            [*self._history.clear_commands(session_id), *self._log.clear_commands(session_id)]
        )

    async def cancel(self, message_id: str, *, owner: str | None = None) -> AnswerState:
        """Stop `owner`'s answer wherever it runs; return its state once it has ended (or still
        `streaming` if the instance running it has not confirmed within `cancel_wait_seconds`)."""
        key = answer_key(owner, message_id)
        state = await self._keeper.state(key)
        if state is None:
            raise AnswerNotFound(message_id)
        if state.status != "streaming":
            raise AnswerFinished(state)
        local = self._answers.get(key)
        if self.stop_local(key) and local is not None and local.task is not None:
            # Ours: its task ends once the partial answer is stored, within REDIS_TIMEOUT per write.
            await asyncio.wait([local.task], timeout=self._cancel_wait)
        else:
            await self._writer.submit(
                [(self._keys.publish, self._keys.control, orjson.dumps({"cancel": key}))]
            )
        deadline = time.monotonic() + self._cancel_wait
        while True:
            current = await self._answers_store.get(key)
            if current is not None and current.status != "streaming":
                return current
            if time.monotonic() >= deadline:
                return state
            await asyncio.sleep(0.02)  # another instance stores it: poll its state until the deadline

    def stop_local(self, key: str) -> bool:
        """Cancel the answer (by its key) if this instance runs it (one already being stored ends by
        itself)."""
        answer = self._answers.get(key)
        if answer is None or answer.task is None or answer.task.done():
            return False
        if answer.phase is Phase.RUNNING:
            answer.phase = Phase.CANCELLING
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

    async def shutdown(self, *, began: float | None = None) -> None:
        """Take no new chats; let running answers finish within the grace period, then end the rest.

        `began`: when (the event loop's time) the server began to drain, if it has: the grace period is
        counted from then, so the streams' drain and the answers' together take one grace period, not
        one and a half (issue #13, item 6)."""
        self._accepting = False
        running = [answer.task for answer in self._answers.values() if answer.task is not None]
        if not running:
            return
        grace = self._settings.shutdown_grace_seconds
        if began is not None:
            grace = max(0.0, grace - (asyncio.get_running_loop().time() - began))
        logger.info("waiting up to %.1fs for %d running answers", grace, len(running))
        pending = set(running)
        if grace > 0:
            _, pending = await asyncio.wait(running, timeout=grace)
        for answer in list(self._answers.values()):
            # A finishing answer is complete: cancelling it would store it twice and send `error` after
            # `end`. Its last two writes are bounded by REDIS_TIMEOUT, so waiting for it cannot hang.
            if answer.task is not None and answer.task in pending and answer.phase is Phase.RUNNING:
                answer.phase = Phase.SHUTTING_DOWN
                answer.task.cancel()
        if pending:
            logger.warning("ending %d answers still running at shutdown", len(pending))
            await asyncio.wait(pending)
