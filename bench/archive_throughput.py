"""The outbox's throughput: turns per second the archiver copies from Redis into the record (issue #15),
and the CPU each turn costs the event loop's thread (what archiving takes from streaming).

    python -m bench.archive_throughput                 # 20,000 turns in 1,000 sessions, PostgreSQL
    python -m bench.archive_throughput --sqlite        # into a SQLite file, the default record
    python -m bench.archive_throughput --turns 2000    # fewer

It starts its own redis-server, creates a scratch database on the machine's PostgreSQL (POSTGRES_URL, or
postgres@127.0.0.1:5432) or a SQLite file in a scratch folder, fills the outbox through the history
store's own append transaction, then runs one archiver (as one instance would) until the outbox is
empty, and prints the figures. The loop thread's CPU (`time.thread_time`) leaves out what the drivers'
own threads do (aiosqlite's), and holds however busy the machine is, so it compares runs fairly; the
process's CPU (`time.process_time`) adds those threads: SQLite's own work is done in aiosqlite's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from archiver import Archiver
from batcher import CommandBatcher
from config import Settings
from models import ChatTurn
from records.database import create_engine, migrate
from records.store import ConversationStore
from redis_client import KeySpace
from redis_wire import open_pipe
from stores.history import HistoryStore
from stores.outbox import Outbox
from testkit.postgres import scratch_database
from testkit.redis_server import RedisServer


async def fill(redis: Redis, keys: KeySpace, turns: int, sessions: int) -> None:
    writer = CommandBatcher(open_pipe(redis), timeout=10, name="fill")
    writer.start()
    history = HistoryStore(redis, writer, keys, ttl=3600, max_messages=1000, timeout=10)
    try:
        for start in range(0, turns, 2 * sessions):
            batch = []
            for n in range(start // 2, min(start + 2 * sessions, turns) // 2):
                question = ChatTurn.model_validate(
                    {"message_id": f"m{n}", "role": "user", "content": f"question {n} " * 8, "user_id": "u1",
                     "created_at": "2026-01-01T00:00:00Z"}
                )  # fmt: skip
                answer = ChatTurn.assistant(f"m{n}", f"answer {n} " * 40, "u1", "stop")
                batch.append(history.append(f"s{n % sessions}", [question, answer]))
            await asyncio.gather(*batch)
    finally:
        await writer.close()


@contextlib.asynccontextmanager
async def sqlite_file(folder: Path) -> AsyncIterator[str]:
    yield f"sqlite+aiosqlite:///{folder / 'record.db'}"


async def measure(turns: int, sessions: int, batch: int, *, sqlite: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    server = RedisServer(directory=folder)
    server.start()
    redis = Redis.from_url(server.url)
    keys = KeySpace("chat")
    try:
        async with sqlite_file(folder) if sqlite else scratch_database() as url:
            settings = Settings(_env_file=None, database_url=url, redis_url=server.url)
            engine = create_engine(settings)
            await migrate(engine)
            await fill(redis, keys, turns, sessions)
            archiver = Archiver(
                Outbox(redis, keys, timeout=10),
                ConversationStore(engine, model="bench"),
                CollectorRegistry(),
                batch=batch,
                claim_seconds=30,
            )
            started, cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
            archived = 0
            while archived < turns:
                archived += await archiver.cycle()
            elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu
            process_cpu = time.process_time() - process_cpu
            await engine.dispose()
        print(
            f"archived {archived} turns ({sessions} sessions, batch {batch}) into "
            f"{'SQLite' if sqlite else 'PostgreSQL'} in {elapsed:.2f} s: {archived / elapsed:,.0f} turns/s, "
            f"{cpu / archived * 1e6:.1f} µs of the loop thread's CPU per turn, "
            f"{process_cpu / archived * 1e6:.1f} µs of all its threads' (the driver's too)"
        )
    finally:
        await redis.aclose()
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--sqlite", action="store_true", help="into a SQLite file instead of PostgreSQL")
    arguments = parser.parse_args()
    asyncio.run(measure(arguments.turns, arguments.sessions, arguments.batch, sqlite=arguments.sqlite))


if __name__ == "__main__":
    main()
