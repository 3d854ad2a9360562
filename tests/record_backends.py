"""The conversation record's two backends for tests: an SQLite file, and a database of its own on the
machine's PostgreSQL (created with a unique name, dropped after; a missing server fails under CI=true)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from testkit.postgres import postgres_available, scratch_database
from testkit.prerequisites import need

__all__ = ["database_url", "postgres_url"]


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """An empty PostgreSQL database of this test's own."""
    need(await postgres_available(), "no PostgreSQL answers on POSTGRES_URL (or 127.0.0.1:5432)")
    async with scratch_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """DATABASE_URL of an empty conversation record, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'conversations.db'}"
        return
    need(await postgres_available(), "no PostgreSQL answers on POSTGRES_URL (or 127.0.0.1:5432)")
    async with scratch_database() as url:
        yield url
