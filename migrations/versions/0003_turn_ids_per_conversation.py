"""A turn's row id carries its conversation: `<conversation id>/<message_id>:<role>` (issue #13, item 7).

Message ids are each API key's own, so two keys' conversations may hold turns of the same message id;
with the bare `<message_id>:<role>` as the primary key the archiver kept only the first of them. An
UPDATE in place (not a rebuilt table): SQLite's full-text index follows the rows by their rowid.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A conversation id (128) and `/`, then a UUID message id, a role and a tool call id (256).
WIDE = 600
NARROW = 400


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite does not hold strings to their length
        op.alter_column("messages", "id", type_=sa.String(WIDE), existing_type=sa.String(NARROW))
    op.execute("UPDATE messages SET id = conversation_id || '/' || id")


def downgrade() -> None:
    # The bare ids (`substr` and `length` run on SQLite and PostgreSQL alike) are unique again only
    # without the turns another conversation shares an id with: the oldest is kept, as the archiver did.
    op.execute(
        "DELETE FROM messages WHERE EXISTS (SELECT 1 FROM messages AS older "
        "WHERE older.message_id = messages.message_id "
        "AND older.conversation_id <> messages.conversation_id "
        "AND substr(older.id, length(older.conversation_id) + 2) "
        "= substr(messages.id, length(messages.conversation_id) + 2) "
        "AND older.position < messages.position)"
    )
    op.execute("UPDATE messages SET id = substr(id, length(conversation_id) + 2)")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("messages", "id", type_=sa.String(NARROW), existing_type=sa.String(WIDE))
