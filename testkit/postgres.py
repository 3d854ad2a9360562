"""PostgreSQL for the tests of the conversation record: the machine's server (POSTGRES_URL, or
postgresql://postgres@127.0.0.1:5432 with trust auth), and a database of its own for each use, created
with a unique name and dropped afterwards. A missing server skips the tests, or fails them under CI=true
(`testkit.prerequisites.need`)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["SERVER_URL", "postgres_available", "scratch_database", "with_database"]

SERVER_URL = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _admin() -> AsyncEngine:
    url = SERVER_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    return create_async_engine(url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 3})


async def postgres_available() -> bool:
    engine = _admin()
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return True
    except (OSError, SQLAlchemyError):
        return False
    finally:
        await engine.dispose()


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A new empty database; its URL (postgresql://...) while the block runs, dropped after it."""
    name = f"chat_test_{secrets.token_hex(6)}"
    engine = _admin()
    try:
        async with engine.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield with_database(SERVER_URL, name)
        finally:
            async with engine.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await engine.dispose()
