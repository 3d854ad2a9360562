"""What the service reads from and writes to the conversation record (`records/schema.py`).

Writes come from the archiver, as batches of outbox entries: each turn is inserted by its own id and a
turn already there is left as it is, so an entry archived twice (a retry after a timeout, a claim of a
dead consumer's entries) is stored once. Reads serve the Conversations API and expired sessions' history.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from conversation_tree import Tree, turn_row_id
from errors import ServiceError
from records.deletion import Deletions
from records.schema import conversations, feedback, messages
from stores.outbox import OutboxEntry, position_of_entry

__all__ = ["ConversationStore", "RecordUnavailable", "reachable", "turn_row_id"]

logger = logging.getLogger(__name__)

TITLE_LENGTH = 80
# Turns per INSERT: preparing a statement's rows runs on the event loop, so a few dozen at a time keep
# each such run well under a millisecond while answers stream.
ROWS_PER_STATEMENT = 50


# A conversation's stored turns, every branch counted: counted as it is read (an index range), so that
# archiving needs to know nothing of which turns it inserted and which were there already.
MESSAGE_COUNT = (
    select(func.count())
    .where(messages.c.conversation_id == conversations.c.id)
    .correlate(conversations)
    .scalar_subquery()
    .label("message_count")
)


class RecordUnavailable(ServiceError):
    """The conversation record (the SQL database) does not answer; chats go on, archived later."""

    status = 503
    code = "database_unavailable"


@contextlib.asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """Every database failure of a request becomes `RecordUnavailable` (no driver text reaches a client)."""
    try:
        yield
    except (SQLAlchemyError, OSError) as error:
        logger.warning("conversation record unavailable: %s", type(error).__name__)
        raise RecordUnavailable("The conversation record is temporarily unavailable") from None


def title_of(content: str) -> str:
    """A conversation's first title: its first user message's first line, shortened."""
    line = " ".join(content.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes: every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class ConversationStore(Deletions):
    """The conversation record over one engine. `model`: the model recorded on archived answers."""

    def __init__(self, engine: AsyncEngine, *, model: str | None = None) -> None:
        self.engine = engine
        self._model = model
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # The archiver's statements, built once. A conversation already there keeps its owner, user
        # and start; it takes the batch's newest time if that is later, and a title while it has none.
        upsert = self._insert(conversations)
        table, new = conversations.c, upsert.excluded
        changes = {
            "updated_at": case((table.updated_at < new.updated_at, new.updated_at), else_=table.updated_at),
            "title": case((table.title == "", new.title), else_=table.title),
        }
        self._upsert_conversations = upsert.on_conflict_do_update(index_elements=["id"], set_=changes)
        # The same for the conversations whose active branch the batch moves (`_active_ends`).
        self._upsert_moved = upsert.on_conflict_do_update(
            index_elements=["id"], set_={**changes, "active_id": new.active_id}
        )
        self._insert_messages = self._insert(messages).on_conflict_do_nothing(index_elements=["id"])

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(select(1))

    # -- archiving --

    async def archive(self, entries: Sequence[OutboxEntry], owners: Mapping[str, str]) -> int:
        """Store the entries' turns (each at most once) and bring their conversations up to date, in one
        transaction: the conversations upserted, the turns inserted ROWS_PER_STATEMENT at a time. Every
        statement is idempotent, so a batch archived twice changes nothing."""
        rows = [
            self._message_row(entry.session_id, position_of_entry(entry.entry_id), entry.turn)
            for entry in entries
            if entry.turn is not None and entry.session_id
        ]
        active = self._active_ends(entries)
        retitled = [entry for entry in entries if entry.title is not None and entry.session_id]
        if not rows and not active and not retitled:
            return 0
        found = self._conversation_rows(rows, owners, active)
        async with self.engine.begin() as connection:
            for statement, moved in ((self._upsert_moved, True), (self._upsert_conversations, False)):
                if chosen := [row for row in found.values() if (row["id"] in active) is moved]:
                    await connection.execute(statement, chosen)
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                await connection.execute(self._insert_messages, rows[start : start + ROWS_PER_STATEMENT])
            # A switch of branch alone: its conversation is there already (its turns came first).
            if switched := {key: end for key, end in active.items() if key not in found}:
                await connection.execute(
                    update(conversations)
                    .where(conversations.c.id == bindparam("b_id"))
                    .values(active_id=bindparam("b_active")),
                    [{"b_id": key, "b_active": end} for key, end in switched.items()],
                )
            await self._retitle(connection, retitled)
        return len(rows)

    @staticmethod
    def _conversation_rows(
        rows: Sequence[Mapping[str, Any]], owners: Mapping[str, str], active: Mapping[str, str | None]
    ) -> dict[str, dict[str, Any]]:
        """One row per conversation of the batch's turns: a new one as it starts (titled by its first
        user message), an existing one's newest time, its title while it has none, its active end."""
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            session_id, created_at = row["conversation_id"], row["created_at"]
            conversation = found.get(session_id)
            if conversation is None:
                conversation = found[session_id] = {
                    "id": session_id,
                    "owner": owners.get(session_id, ""),
                    "user_id": row["user_id"],
                    "title": "",
                    "created_at": created_at,
                    "updated_at": created_at,
                    "pinned": False,
                    "archived": False,
                    "active_id": active.get(session_id),
                }
            conversation["created_at"] = min(conversation["created_at"], created_at)
            conversation["updated_at"] = max(conversation["updated_at"], created_at)
            if not conversation["title"] and row["role"] == "user":
                conversation["title"] = title_of(row["content"])
        return found

    @staticmethod
    async def _retitle(connection: AsyncConnection, entries: Sequence[OutboxEntry]) -> None:
        """Apply model-written titles (`titles.py`), each only while the conversation's title is still
        the one its first message gave it: a rename is kept. Rare (one per conversation at most)."""
        for entry in entries:
            if entry.title is None:
                continue
            title, derived = entry.title
            await connection.execute(
                update(conversations)
                .where(conversations.c.id == entry.session_id, conversations.c.title == derived)
                .values(title=title)
            )

    @staticmethod
    def _active_ends(entries: Sequence[OutboxEntry]) -> dict[str, str | None]:
        """Where each session's active branch ends after these entries (issue #15): at its newest message
        or tool results (a turn is always stored on the active branch), or where a switch, an edit or
        a regeneration put it; an answer does not move it (answers may end in any order)."""
        ends: dict[str, str | None] = {}
        for entry in entries:
            if entry.branch is not None:
                ends[entry.session_id] = entry.branch or None
            elif entry.turn is not None and entry.turn.get("role") in ("user", "tool"):
                ends[entry.session_id] = entry.turn["message_id"]
        return ends

    def _message_row(self, session_id: str, position: int, turn: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"{session_id}/{turn_row_id(turn)}",
            "message_id": turn["message_id"],
            "conversation_id": session_id,
            "parent_id": turn.get("parent_id"),
            "role": turn["role"],
            "content": turn.get("content", ""),
            "parts": turn,
            "finish_reason": turn.get("finish_reason"),
            "usage": turn.get("usage"),
            "model": self._model if turn["role"] == "assistant" else None,
            "user_id": turn.get("user_id", ""),
            "created_at": utc(datetime.fromisoformat(turn["created_at"])),
            "position": position,
        }

    # -- reading --

    async def owner_of(self, session_id: str) -> str | None:
        """The key that owns the conversation ("" on an open service), or None if there is none."""
        async with self.engine.connect() as connection:
            owner = await connection.scalar(
                select(conversations.c.owner).where(conversations.c.id == session_id)
            )
        return None if owner is None else str(owner)

    async def owners_of(self, session_ids: Collection[str]) -> dict[str, str]:
        """The key that owns each of these conversations the record has ("" on an open service)."""
        if not session_ids:
            return {}
        query = select(conversations.c.id, conversations.c.owner).where(conversations.c.id.in_(session_ids))
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return {str(session_id): str(owner) for session_id, owner in rows}

    async def turns(self, session_id: str) -> list[dict[str, Any]]:
        """Every archived turn of the session, every branch, in the order they were stored."""
        query = (
            select(messages.c.parts)
            .where(messages.c.conversation_id == session_id)
            .order_by(messages.c.position)
        )
        async with self.engine.connect() as connection:
            return list((await connection.scalars(query)).all())

    async def active_id(self, session_id: str) -> str | None:
        async with self.engine.connect() as connection:
            found = await connection.scalar(
                select(conversations.c.active_id).where(conversations.c.id == session_id)
            )
        return None if found is None else str(found)

    async def history(self, session_id: str) -> list[dict[str, Any]]:
        """The turns of the session's active branch, oldest first, as history holds them (every turn in
        order for a conversation archived before branches)."""
        turns = await self.turns(session_id)
        leaf = await self.active_id(session_id)
        tree = Tree(turns)
        if leaf is None or leaf not in tree.exchanges:
            return turns
        return [dict(turn) for turn in tree.path(leaf)]

    async def history_page(
        self, session_id: str, *, limit: int, before: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Up to `limit` turns of the session's active branch before position `before` (the newest
        without it), oldest first, and the position of the first: positions count from the branch's
        first turn, as they do in Redis, which holds that branch. (The branch comes from the whole tree.)"""
        turns = await self.history(session_id)
        end = len(turns) if before is None else min(before, len(turns))
        start = max(0, end - limit)
        return turns[start:end], start

    async def conversation(self, owner: str, session_id: str) -> RowMapping | None:
        query = select(conversations, MESSAGE_COUNT).where(
            conversations.c.id == session_id, conversations.c.owner == owner
        )
        async with self.engine.connect() as connection:
            return (await connection.execute(query)).mappings().first()

    async def messages(self, session_id: str) -> list[RowMapping]:
        query = (
            select(messages.c.message_id, messages.c.parent_id, messages.c.parts)
            .where(messages.c.conversation_id == session_id)
            .order_by(messages.c.position)
        )
        async with self.engine.connect() as connection:
            return list((await connection.execute(query)).mappings().all())

    async def page(
        self,
        owner: str,
        user_id: str,
        *,
        after: tuple[datetime, str] | None,
        limit: int,
        archived: bool,
    ) -> list[RowMapping]:
        """One page of a user's conversations, newest first, after the cursor's (updated_at, id)."""
        table = conversations.c
        query = select(conversations, MESSAGE_COUNT).where(
            table.owner == owner, table.user_id == user_id, table.archived == archived
        )
        if after is not None:
            moment, last_id = after
            query = query.where(
                or_(table.updated_at < moment, and_(table.updated_at == moment, table.id < last_id))
            )
        query = query.order_by(table.updated_at.desc(), table.id.desc()).limit(limit)
        async with self.engine.connect() as connection:
            return list((await connection.execute(query)).mappings().all())

    async def search(self, owner: str, user_id: str, words: str, limit: int) -> list[RowMapping]:
        """The user's conversations whose messages match `words` (full-text), newest first."""
        if self.engine.dialect.name == "postgresql":
            matches = text("to_tsvector('simple', messages.content) @@ plainto_tsquery('simple', :q)")
            query_text = words
        else:
            matches = text("messages.rowid IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q)")
            # Each word as an FTS5 string: what a user types is never FTS5 query syntax.
            query_text = " ".join('"' + word.replace('"', '""') + '"' for word in words.split())
        hits = (
            select(messages.c.conversation_id, func.min(messages.c.content).label("snippet"))
            .where(matches.bindparams(q=query_text))
            .group_by(messages.c.conversation_id)
            .subquery()
        )
        table = conversations.c
        query = (
            select(conversations, MESSAGE_COUNT, hits.c.snippet)
            .join(hits, hits.c.conversation_id == table.id)
            .where(table.owner == owner, table.user_id == user_id)
            .order_by(table.updated_at.desc(), table.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return list((await connection.execute(query)).mappings().all())

    # -- changing --

    async def update(self, owner: str, session_id: str, changes: Mapping[str, Any]) -> RowMapping | None:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(conversations)
                .where(conversations.c.id == session_id, conversations.c.owner == owner)
                .values(**changes)
            )
            if not result.rowcount:
                return None
        return await self.conversation(owner, session_id)

    # -- feedback --

    async def answer_of(self, message_id: str, owner: str) -> RowMapping | None:
        """One owner's archived answer: its conversation and model, or None (another key's answer with
        the same message id is not found: message ids are each key's own, issue #13 item 7)."""
        query = (
            select(messages.c.conversation_id, messages.c.model)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(
                messages.c.message_id == message_id,
                messages.c.role == "assistant",
                conversations.c.owner == owner,
            )
            .limit(1)
        )
        async with self.engine.connect() as connection:
            return (await connection.execute(query)).mappings().first()

    async def rate(self, row: Mapping[str, Any]) -> None:
        """Store one key's and user's rating of an answer, replacing theirs if they rated it before."""
        statement = self._insert(feedback).values(**row)
        changes = {name: statement.excluded[name] for name in ("rating", "comment", "tags", "created_at")}
        async with self.engine.begin() as connection:
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["message_id", "owner", "user_id"], set_=changes
                )
            )
