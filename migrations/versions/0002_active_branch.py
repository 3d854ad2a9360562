"""Each conversation's active branch: the exchange it ends with (issue #15).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null: a conversation archived before branches, whose active branch is every turn in order.
    with op.batch_alter_table("conversations") as table:
        table.add_column(sa.Column("active_id", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as table:
        table.drop_column("active_id")
