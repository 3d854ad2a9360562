"""Where each turn hangs in its conversation's tree, and the session's active branch (issue #15).

Every turn carries its exchange's `parent_id` (`conversation_tree.py`). A message follows the active
branch's newest exchange; an edited message (`parent_id` given) starts a new branch from its parent; a
regenerated answer is a sibling of the answer it replaces; a switch makes another branch the active one.
The Redis history holds the active branch, so the context an answer is built from is that branch's
path: an edit, a regeneration or a switch rewrites it in one transaction with the owner's refresh and
the outbox (a switch or a regeneration adds an entry that moves the record's active branch too).

The tree comes from the conversation record, with the Redis history's turns not archived yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conversation import ConversationMessage, build_context
from conversation_tree import Tree, Turn, turn_row_id
from errors import ServiceError
from models import ChatRequest, ChatTurn
from records.store import ConversationStore, reachable
from redis_client import Command, KeySpace
from stores.history import HistoryStore
from stores.outbox import outbox_branch
from stores.replay_log import ReplayLog, position_of

if TYPE_CHECKING:
    from config import Settings

__all__ = ["BranchBusy", "BranchInvalid", "Branches"]

# How many turns of tool calls and results since their question an answer to tool results reads beyond
# MAX_CONTEXT_MESSAGES: a question more rounds back than this is not sent with them.
TOOL_ROUNDS_READ = 64
# The newest turns a message looks through for the exchange it follows: the newest to begin among them
# (the answers of two messages sent at once may be stored in either order).
LEAF_WINDOW = 8


class BranchInvalid(ServiceError):
    """A branch names a message the conversation does not have (or one it cannot be built on)."""

    status = 422
    code = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            f"Invalid request: {field}: {message}", fields=[{"field": field, "message": message}], param=field
        )


class BranchBusy(ServiceError):
    """An answer of the session is still streaming: its branch cannot change under it."""

    status = 409
    code = "answer_streaming"

    def __init__(self, field: str) -> None:
        message = "an answer of this session is still streaming"
        super().__init__(
            f"Conflict: {field}: {message}", fields=[{"field": field, "message": message}], param=field
        )


class Branches:
    """The session's branches, over its Redis history and the conversation record."""

    def __init__(
        self,
        settings: Settings,
        *,
        history: HistoryStore,
        log: ReplayLog,
        keys: KeySpace,
        records: ConversationStore,
    ) -> None:
        self._settings = settings
        self._history = history
        self._log = log
        self._keys = keys
        self._records = records

    async def tree(self, session_id: str) -> tuple[Tree, list[Turn]]:
        """Every branch: the archived turns, then those Redis has that may not be archived yet (those
        branch switches took out of the history, then the history's); and the history's turns."""
        async with reachable():
            archived = await self._records.turns(session_id)
        hot: list[Turn] = [
            turn.model_dump(mode="json", exclude_none=True) for turn in await self._history.read(session_id)
        ]
        return Tree([*archived, *await self._history.off_branch(session_id), *hot]), hot

    async def _replace(
        self, session_id: str, leaf: str, *, field: str, answered: bool = True
    ) -> tuple[list[Command], list[Turn]]:
        """The commands that make the branch ending with `leaf` the history (without the leaf's own
        answer unless `answered`), keeping the turns that leave it until the record has them."""
        await self._idle(session_id, field)
        tree, hot = await self.tree(session_id)
        exchange = tree.exchanges.get(leaf)
        if field == "message_id" and not answered:  # a regeneration: `leaf` is the answer to replace
            exchange = tree.prompt_of(exchange) if exchange is not None and exchange.answered else None
        if exchange is None:
            what = "an answer" if not answered else "a message"
            raise BranchInvalid(field, f"not {what} of this conversation")
        path = tree.path(exchange.id, answered=answered)
        kept = {turn_row_id(turn) for turn in path}
        dropped = [turn for turn in hot if turn_row_id(turn) not in kept]
        return self._history.replace_commands(session_id, path, dropped), path

    async def _leaf(self, session_id: str, soon: asyncio.Future[list[Any]] | None = None) -> str | None:
        """The exchange the active branch ends with: of the newest turns, the one to begin last. `soon`:
        their read, queued by `read_leaf_soon`."""
        replies = await (soon if soon is not None else self._history.newest_soon(session_id, LEAF_WINDOW))
        firsts: dict[str, int] = {}
        for index, message_id in enumerate(self._history.message_ids(session_id, replies)):
            firsts.setdefault(message_id, index)
        return max(firsts, key=firsts.__getitem__) if firsts else None

    def read_leaf_soon(
        self, request: ChatRequest, context: Sequence[ConversationMessage] | None
    ) -> asyncio.Future[list[Any]] | None:
        """Queue the read of where the active branch ends, for `store_and_read`, when the turns will
        follow it (no `parent_id`): queued before the answer's claim, the read goes in the same batch,
        one round trip for both. Its failure is always retrieved, even if it is not waited for."""
        if "parent_id" in request.model_fields_set and context is None:
            return None
        read = self._history.newest_soon(request.session_id, LEAF_WINDOW)
        read.add_done_callback(_retrieved)
        return read

    async def _idle(self, session_id: str, field: str) -> None:
        if await self._log.running_starts(session_id):
            raise BranchBusy(field)

    async def store_and_read(
        self,
        request: ChatRequest,
        message_id: str,
        context: Sequence[ConversationMessage] | None,
        system_prompt: str | None,
        *,
        leaf: asyncio.Future[list[Any]] | None = None,
        owner: str | None = None,
    ) -> tuple[str, list[ConversationMessage], str | None]:
        """Store the user's turn (or the tool results) on its branch, as the session of `owner` (the
        API key's name); return where the answer's events will begin in the replay log, the
        conversation to answer (`context`, or one built from the branch's recent turns), and the
        exchange the turns follow."""
        settings = self._settings
        if request.tool_results is None:
            turns = [ChatTurn.user(request, message_id)]
        else:
            turns = [ChatTurn.tool(result, message_id, request.user_id) for result in request.tool_results]
        # The new turns and the limit's worth before them; the one more is the answer a user message
        # follows. Tool results also bring what is always sent with them: their question, and the calls
        # and results since it (up to TOOL_ROUNDS_READ turns of them).
        recent = settings.max_context_messages + len(turns) + 1
        if request.tool_results is not None:
            recent += TOOL_ROUNDS_READ
        first: list[Command] = []
        if "parent_id" in request.model_fields_set and context is None:
            parent = str(request.parent_id) if request.parent_id else None
            if parent is not None:
                first, _ = await self._replace(request.session_id, parent, field="parent_id")
            else:  # an edited first message: the whole history leaves for the off-branch list
                first = await self._replace_all(request.session_id)
        else:
            parent = await self._leaf(request.session_id, leaf)
        for turn in turns:
            turn.parent_id = parent
        (position,), stored = await self._history.append(
            request.session_id,
            turns,
            along=[self._log.position_command(request.session_id)],
            recent=0 if context is not None else recent,
            first=first,
            owner=owner,
        )
        if context is not None:
            return position_of(position), list(context), parent
        return position_of(position), self._context([message for _, message in stored], system_prompt), parent

    async def _replace_all(self, session_id: str) -> list[Command]:
        await self._idle(session_id, "parent_id")
        hot = [
            turn.model_dump(mode="json", exclude_none=True) for turn in await self._history.read(session_id)
        ]
        return self._history.replace_commands(session_id, [], hot)

    def _context(
        self, turns: list[ConversationMessage], system_prompt: str | None
    ) -> list[ConversationMessage]:
        settings = self._settings
        return build_context(
            turns,
            system_prompt=settings.system_prompt if system_prompt is None else system_prompt,
            max_messages=settings.max_context_messages,
            max_chars=settings.max_context_chars,
            send_reasoning=settings.ai_send_reasoning,
        )

    async def regenerate(
        self, session_id: str, answer_id: str, message_id: str
    ) -> tuple[str, list[ConversationMessage], str | None]:
        """Make the branch to the message `answer_id` answered, without its answer, the active one, for
        the new answer `message_id`; return where its events begin, its context, and its parent."""
        first, path = await self._replace(session_id, answer_id, field="message_id", answered=False)
        prompt = path[-1]["message_id"] if path else None
        (position, _), stored = await self._history.append(
            session_id,
            [],
            first=first,
            along=[self._log.position_command(session_id), outbox_branch(self._keys, session_id, message_id)],
            recent=self._settings.max_context_messages + TOOL_ROUNDS_READ + 1,
        )
        return position_of(position), self._context([message for _, message in stored], None), prompt

    async def switch(self, session_id: str, leaf: str) -> list[dict[str, Any]]:
        """Make the branch ending with the exchange `leaf` the active one; return its turns."""
        first, path = await self._replace(session_id, leaf, field="message_id")
        await self._history.append(
            session_id, [], first=first, along=[outbox_branch(self._keys, session_id, leaf)]
        )
        return [dict(turn) for turn in path]


def _retrieved(read: asyncio.Future[list[Any]]) -> None:
    if not read.cancelled():
        read.exception()  # a failed read that nobody waited for is not logged as never retrieved
