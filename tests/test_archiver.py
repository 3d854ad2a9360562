"""The archiver (archiver.py) and the outbox (stores/outbox.py) against a real PostgreSQL: nothing
accepted is lost while the database is down, and each turn arrives once; a killed instance's entries
are archived by a new one; instances starting together on an empty database migrate it once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from config import Settings
from stores.outbox import GROUP
from testkit.redis_server import RedisServer
from testkit.service import ServiceProcess
from testkit.tcp_proxy import TcpProxy, ThreadedProxy
from testkit.waiting import eventually
from tests.chat_harness import Json
from tests.conftest import AppClient
from tests.record_backends import postgres_url

__all__ = ["postgres_url"]


def through(url: str, port: int) -> str:
    """The database URL, reached through a proxy on `port`."""
    parts = urlsplit(url)
    return f"postgresql://{parts.username}@127.0.0.1:{port}{parts.path}"


async def counts(url: str) -> tuple[int, int, int]:
    """Rows in messages, distinct turn ids among them, and conversations."""
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.connect() as connection:
            rows, distinct = (
                await connection.execute(text("SELECT count(*), count(DISTINCT id) FROM messages"))
            ).one()
            conversations = await connection.scalar(text("SELECT count(*) FROM conversations"))
        return int(rows), int(distinct), int(conversations or 0)
    finally:
        await engine.dispose()


async def archive_state(client: httpx.AsyncClient) -> Json:
    response = await client.get("/health")
    assert response.status_code == 200, response.text  # chats keep working: never 503 for the archive
    archive: Json = response.json()["archive"]
    return archive


async def test_nothing_is_lost_while_the_database_is_down_and_each_turn_arrives_once(
    make_settings: Callable[..., Settings], app_client: AppClient, postgres_url: str
) -> None:
    port = urlsplit(postgres_url).port or 5432
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    settings = make_settings(database_url=through(postgres_url, proxy.port), archive_degraded_seconds=0.3)
    try:
        async with app_client(settings) as client:
            proxy.refuse()
            answers = 100
            responses = await asyncio.gather(
                *(
                    client.post("/chat", json={"session_id": f"s{n}", "message": f"q {n}", "user_id": "u1"})
                    for n in range(answers)
                )
            )
            assert {response.status_code for response in responses} == {202}

            async def waiting() -> Json | None:
                state = await archive_state(client)
                return state if state["backlog"] == 2 * answers and state["status"] == "degraded" else None

            state = await eventually(
                waiting, "every turn waits in the outbox, the archive degraded", timeout=30
            )
            assert state is not None
            assert state["error"]
            metrics = (await client.get("/metrics")).text
            assert re.search(r"^chat_archive_outbox_lag 200\.0$", metrics, re.M), metrics
            oldest = re.search(r"^chat_archive_oldest_pending_seconds (\S+)$", metrics, re.M)
            assert oldest is not None, metrics
            assert float(oldest[1]) > 0.3, metrics  # past the degraded threshold
            history = (await client.get("/history/s7")).json()
            assert history["count"] == 2  # the chats themselves never waited for SQL

            proxy.accept()

            async def drained() -> bool:
                state = await archive_state(client)
                return bool(state["backlog"] == 0 and state["status"] == "ok" and "error" not in state)

            await eventually(drained, "the outbox drained into PostgreSQL")
            metrics = (await client.get("/metrics")).text
            assert re.search(r"^chat_archive_oldest_pending_seconds 0\.0$", metrics, re.M), metrics
        assert await counts(postgres_url) == (2 * answers, 2 * answers, answers)
    finally:
        await proxy.close()


async def test_a_killed_instances_pending_entries_are_archived_by_a_new_one(
    redis_server: RedisServer, postgres_url: str
) -> None:
    port = urlsplit(postgres_url).port or 5432
    redis = Redis.from_url(redis_server.url)
    with ThreadedProxy("127.0.0.1", port) as proxy:
        variables = {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": through(postgres_url, proxy.port),
            "ARCHIVE_CLAIM_SECONDS": "0.5",
            "STREAM_DELAY": "0",
            "CHUNK_DELAY": "0",
        }
        first, second = ServiceProcess(variables), ServiceProcess(variables)
        try:
            first.start()
            proxy.refuse()
            async with httpx.AsyncClient(base_url=first.url) as client:
                for n in range(5):
                    body = {"session_id": f"k{n}", "message": f"q {n}", "user_id": "u1"}
                    assert (await client.post("/chat", json=body)).status_code == 202

            async def held() -> bool:
                # Every turn stored, and the first instance holds some it could not archive (it retries
                # those before it reads the others).
                pending = await redis.xpending("chat:outbox", GROUP)
                return bool(await redis.xlen("chat:outbox") == 10 and pending["pending"] > 0)

            # NOGROUP until the first instance has found the outbox and made the group on it.
            await eventually(
                held,
                "the first instance holds entries it could not archive",
                ignoring=(ResponseError,),
            )
            first.kill()
            proxy.accept()
            second.start()

            async def archived() -> bool:
                # Stored, then acknowledged: the rows land before the entries are let go.
                stored = await counts(postgres_url) == (10, 10, 5)
                return stored and (await redis.xpending("chat:outbox", GROUP))["pending"] == 0

            await eventually(archived, f"the new instance archived them:\n{second.output()}")
        finally:
            first.cleanup()
            second.cleanup()
            await redis.aclose()


def test_two_instances_starting_together_on_an_empty_database_migrate_it_once(
    redis_server: RedisServer, postgres_url: str
) -> None:
    two_instances_migrate_once({"REDIS_URL": redis_server.url, "DATABASE_URL": postgres_url})


def test_two_instances_starting_together_on_a_new_sqlite_file_migrate_it_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # SQLite has no advisory lock: the migration lock is a file lock beside the database.
    two_instances_migrate_once({"REDIS_URL": redis_server.url, "DATABASE_PATH": str(tmp_path / "record.db")})


def two_instances_migrate_once(variables: dict[str, str]) -> None:
    instances = [ServiceProcess(variables), ServiceProcess(variables)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda instance: instance.start("/health"), instances))
        logs = [instance.output() for instance in instances]
        assert sum("conversation database migrated to head" in log for log in logs) == 1, logs
        assert sum("conversation database schema is current" in log for log in logs) == 1, logs
        assert not any("Traceback" in log or "ERROR" in log for log in logs), logs
    finally:
        for instance in instances:
            instance.cleanup()
