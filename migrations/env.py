"""Alembic's environment. The service hands migrations the connection it holds its lock on
(`records/database.py`: at start-up and by `make migrate`); the bare `alembic` command opens one from the
service's settings (DATABASE_URL, or the embedded SQLite file)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from records.schema import metadata


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def from_settings() -> None:
    from config import get_settings
    from records.database import create_engine

    engine = create_engine(get_settings())
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    asyncio.run(from_settings())
