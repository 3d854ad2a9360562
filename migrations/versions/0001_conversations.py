"""Conversations, their messages and feedback, with full-text search over the messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite: an FTS5 index over messages.content, kept in step by triggers (the "external content" table
# of https://www.sqlite.org/fts5.html#external_content_tables).
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='rowid')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE ON messages BEGIN "
    "INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.rowid, old.content); "
    "INSERT INTO messages_fts(rowid, content) VALUES (new.rowid, new.content); END",
]


def upgrade() -> None:
    _conversations()
    _messages()
    _feedback()
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_messages_fts ON messages USING gin (to_tsvector('simple', content))")
    else:
        for statement in SQLITE_FTS:
            op.execute(statement)


def _conversations() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pinned", sa.Boolean, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_conversations_owner_user_updated", "conversations", ["owner", "user_id", "updated_at", "id"]
    )
    op.create_index("ix_conversations_updated", "conversations", ["updated_at"])


def _messages() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(400), primary_key=True),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column(
            "conversation_id",
            sa.String(128),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("parent_id", sa.String(128), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("parts", sa.JSON, nullable=False),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("usage", sa.JSON, nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_messages_conversation_position", "messages", ["conversation_id", "position"])
    op.create_index("ix_messages_message_id", "messages", ["message_id"])


def _feedback() -> None:
    op.create_table(
        "feedback",
        sa.Column("message_id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(128),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("comment", sa.String(2000), nullable=True),
        sa.Column("tags", sa.JSON, nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_messages_fts")
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS messages_fts_{trigger}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    op.drop_table("feedback")
    op.drop_table("messages")
    op.drop_table("conversations")
