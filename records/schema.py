"""The tables of the conversation record. Alembic's migrations (`migrations/`) create them; this module
is what the queries are written against."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["conversations", "feedback", "messages", "metadata"]

metadata = MetaData()

# One row per session: its id is the session id.
conversations = Table(
    "conversations",
    metadata,
    Column("id", String(128), primary_key=True),
    # The API key's name that owns it ("" on an open service) and the user it belongs to.
    Column("owner", String(128), nullable=False, default=""),
    Column("user_id", String(128), nullable=False),
    Column("title", String(200), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("pinned", Boolean, nullable=False, default=False),
    Column("archived", Boolean, nullable=False, default=False),
    # The message_id of the exchange its active branch ends with (issue #15); null: every turn in order.
    Column("active_id", String(128), nullable=True),
    Index("ix_conversations_owner_user_updated", "owner", "user_id", "updated_at", "id"),
    Index("ix_conversations_updated", "updated_at"),
)

# One row per stored turn. The turns of one exchange share its message_id (the user's message and the
# answer to it; tool results and the answer after them), so a turn's own id is `<message_id>:<role>`,
# or `<message_id>:tool:<tool_call_id>`; its row's id is that after its conversation's id and a `/`
# (message ids are each API key's own: two conversations may hold the same one, issue #13 item 7). The
# archiver upserts by it, so a replayed entry changes nothing.
messages = Table(
    "messages",
    metadata,
    Column("id", String(600), primary_key=True),
    Column("message_id", String(128), nullable=False),
    Column(
        "conversation_id",
        String(128),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("parent_id", String(128), nullable=True),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    # The whole turn as history returns it (`ChatTurn`'s JSON): its parts, usage, finish reason.
    Column("parts", JSON, nullable=False),
    Column("finish_reason", String(32), nullable=True),
    Column("usage", JSON, nullable=True),
    Column("model", String(256), nullable=True),
    Column("user_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The outbox entry's id as one number (ms * 1e6 + seq): the order the turns were stored in.
    Column("position", BigInteger, nullable=False),
    Index("ix_messages_conversation_position", "conversation_id", "position"),
    Index("ix_messages_message_id", "message_id"),
)

# One rating per answer, key and user; a new one replaces it.
feedback = Table(
    "feedback",
    metadata,
    Column("message_id", String(128), primary_key=True),
    Column("owner", String(128), primary_key=True),
    Column("user_id", String(128), primary_key=True),
    Column(
        "conversation_id",
        String(128),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("rating", String(8), nullable=False),
    Column("comment", String(2000), nullable=True),
    Column("tags", JSON, nullable=True),
    Column("model", String(256), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
