"""Deleting from the conversation record: one owner's conversations (and a user's ratings), those past
their retention, and the turns an archive batch stored while their conversation was being deleted.

A mixin of `ConversationStore`, over its `engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncEngine

from records.schema import conversations, feedback, messages

__all__ = ["Deletions"]


class Deletions:
    engine: AsyncEngine

    async def delete(self, owner: str, session_ids: Sequence[str], *, user_id: str | None = None) -> None:
        """Delete the conversations (their messages and feedback first: SQLite may not cascade), and with
        `user_id` every rating that user gave under `owner`, on any conversation."""
        async with self.engine.begin() as connection:
            if user_id is not None:
                await connection.execute(
                    delete(feedback).where(feedback.c.owner == owner, feedback.c.user_id == user_id)
                )
            if not session_ids:
                return
            await connection.execute(delete(feedback).where(feedback.c.conversation_id.in_(session_ids)))
            await connection.execute(delete(messages).where(messages.c.conversation_id.in_(session_ids)))
            await connection.execute(
                delete(conversations).where(
                    conversations.c.id.in_(session_ids), conversations.c.owner == owner
                )
            )

    async def purge(self, session_id: str, before: int) -> None:
        """What the archiver stored of a conversation that was deleted meanwhile: its turns stored
        before position `before` (the deletion's moment), their ratings, and the conversation itself
        unless turns stored after the deletion (a new exchange under the same session id) remain."""
        stored = select(messages.c.message_id).where(
            messages.c.conversation_id == session_id, messages.c.position < before
        )
        remaining = exists().where(messages.c.conversation_id == session_id)
        async with self.engine.begin() as connection:
            await connection.execute(
                delete(feedback).where(
                    feedback.c.conversation_id == session_id, feedback.c.message_id.in_(stored)
                )
            )
            await connection.execute(
                delete(messages).where(messages.c.conversation_id == session_id, messages.c.position < before)
            )
            await connection.execute(
                delete(conversations).where(conversations.c.id == session_id, ~remaining)
            )

    async def ids_of_user(self, owner: str, user_id: str) -> list[str]:
        async with self.engine.connect() as connection:
            found = await connection.scalars(
                select(conversations.c.id).where(
                    conversations.c.owner == owner, conversations.c.user_id == user_id
                )
            )
            return list(found.all())

    async def expired(self, before: datetime, limit: int = 500) -> list[tuple[str, str]]:
        """(owner, id) of conversations last updated before `before` (CONVERSATION_RETENTION_DAYS)."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(
                select(conversations.c.owner, conversations.c.id)
                .where(conversations.c.updated_at < before)
                .limit(limit)
            )
            return [(str(owner), str(session_id)) for owner, session_id in rows.all()]
