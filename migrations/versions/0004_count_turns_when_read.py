"""A conversation's turn count is counted when it is read, no longer stored (issue #15).

The archiver kept `message_count` by asking every insert which turns were new (`RETURNING`), and that
cost the streaming process more CPU per turn than the insert itself. Counting the turns of the page
being read is one index range per conversation. SQLite's own `DROP COLUMN` (3.35 and later), not a
rebuilt table: rebuilding `conversations` would drop it, and with foreign keys on, its messages with it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE conversations DROP COLUMN message_count")


def downgrade() -> None:
    op.add_column("conversations", sa.Column("message_count", sa.Integer, nullable=False, server_default="0"))
    op.execute(
        "UPDATE conversations SET message_count = "
        "(SELECT count(*) FROM messages WHERE messages.conversation_id = conversations.id)"
    )
