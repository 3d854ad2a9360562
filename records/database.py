"""The engine of the conversation record, and its migrations under a lock.

Several instances may start together on an empty database: each runs `migrate` at start-up, and the
lock lets one apply the migrations while the others wait, then find the schema current and apply nothing.
PostgreSQL's lock is a transaction-level advisory lock taken on the connection the migrations run on;
SQLite's (one file, one machine) is an exclusive `flock` on a file beside the database.
`python -m records.database [upgrade|downgrade] [revision]` is what `make migrate` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from config import Settings

__all__ = ["create_engine", "current_revision", "migrate"]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# Any constant both sides agree on: the key of PostgreSQL's advisory lock for migrations.
MIGRATION_LOCK = 0x63686174_15


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine with its own pool for the configured database (nothing connects until it is used)."""
    url = settings.database_dsn()
    # A turn's parts are a JSON column: orjson encodes them several times faster, on the event loop.
    json: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}
    if url.startswith("sqlite"):
        # Several processes may write one file: wait for each other's locks rather than fail at once.
        engine = create_async_engine(url, connect_args={"timeout": 30}, **json)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True, **json)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _: object) -> None:
    # WAL: readers do not wait for the archiver's writes; foreign keys: deletes cascade.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _alembic_config(connection: Connection) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["connection"] = connection
    return config


def _revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_revision)


@contextlib.asynccontextmanager
async def _file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    handle = await asyncio.to_thread(Path(f"{database}.migrate-lock").open, "a")
    try:
        # In a thread: flock blocks while another process migrates.
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing the file releases the lock


async def migrate(engine: AsyncEngine, revision: str = "head", *, downgrade: bool = False) -> bool:
    """Bring the schema to `revision` under the lock; True if this call changed it."""
    step: Callable[[Config, str], None] = command.downgrade if downgrade else command.upgrade

    def run(connection: Connection) -> bool:
        before = _revision(connection)
        step(_alembic_config(connection), revision)
        return _revision(connection) != before

    async with _file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        changed = await connection.run_sync(run)
    if changed:
        logger.info("conversation database migrated to %s", revision)
    else:
        logger.info("conversation database schema is current")
    return changed


async def _main(arguments: list[str]) -> None:
    from config import get_settings

    action = arguments[0] if arguments else "upgrade"
    if action not in ("upgrade", "downgrade"):
        raise SystemExit("usage: python -m records.database [upgrade|downgrade] [revision]")
    revision = arguments[1] if len(arguments) > 1 else ("head" if action == "upgrade" else "-1")
    engine = create_engine(get_settings())
    try:
        await migrate(engine, revision, downgrade=action == "downgrade")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(sys.argv[1:]))
