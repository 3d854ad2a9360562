"""The archiver: one task per instance that drains the outbox into the conversation record (issue #15).

Each cycle it takes, per outbox stream, its own unacknowledged entries (a batch that failed before),
or else entries another consumer has held past ARCHIVE_CLAIM_SECONDS (a killed process's), or else new
ones; stores them (idempotently, by turn id) and acknowledges them. While the database (or Redis) is
down it keeps the entries and retries with a growing pause; the stream never waits for SQL. Its state
(the backlog, the oldest entry's age, the last failure) feeds `/metrics` and `/health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import SQLAlchemyError

from config import Settings
from records.database import create_engine, migrate
from records.store import ConversationStore
from redis_client import KeySpace, RedisClient, RedisUnavailable
from stores.outbox import Outbox

__all__ = ["ArchiveState", "Archiver", "open_archive"]

logger = logging.getLogger(__name__)

FAILURES = (RedisUnavailable, SQLAlchemyError, OSError, TimeoutError)
RETENTION_EVERY = 3600.0
# How many times per ARCHIVE_CLAIM_SECONDS the archiver looks for a dead consumer's entries.
CLAIM_CHECKS = 4


@dataclass(slots=True)
class ArchiveState:
    """What `/health` reports of the archive."""

    backlog: int = 0
    oldest_seconds: float = 0.0
    error: str | None = None


class Archiver:
    """Owned by the services builder: `start()` at start-up, `close()` at shutdown."""

    def __init__(
        self,
        outbox: Outbox,
        store: ConversationStore,
        registry: CollectorRegistry,
        *,
        batch: int,
        claim_seconds: float,
        retention_days: int = 0,
        poll_seconds: float = 0.2,
        max_pause: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._store = store
        self._batch = batch
        self._claim_seconds = claim_seconds
        self._retention = timedelta(days=retention_days) if retention_days else None
        self._poll = poll_seconds
        self._max_pause = max_pause
        self._clock = clock
        self._next_purge = 0.0
        self._next_claim = 0.0
        self._full = False  # the last cycle read a whole batch from some outbox: more may be waiting
        self.state = ArchiveState()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self.archived = Counter(
            "chat_archived_turns",
            "Turns copied from the outbox into the conversation record.",
            registry=registry,
        )
        self.failures = Counter(
            "chat_archive_failures",
            "Archiver cycles that failed (database or Redis down).",
            registry=registry,
        )
        self.lag = Gauge(
            "chat_archive_outbox_lag",
            "Turns in the outbox not archived yet (pending or not yet read).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.oldest = Gauge(
            "chat_archive_oldest_pending_seconds",
            "Age of the oldest turn in the outbox not archived yet; 0 when it is empty.",
            registry=registry,
            multiprocess_mode="max",
        )

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="archiver")

    async def close(self) -> None:
        if self._task is None:
            return
        # The flag and the wake-up as well as the cancel: Python 3.11's `asyncio.timeout` can swallow
        # a cancel that lands as its own deadline does, and the loop must end all the same.
        self._closing = True
        self._wake.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def degraded(self, threshold: float) -> bool:
        return self.state.oldest_seconds > threshold

    async def _run(self) -> None:
        pause = self._poll
        while not self._closing:
            try:
                await self.cycle()
                if self.state.error is not None:
                    logger.info("archiving again: the conversation record is reachable")
                self.state.error = None
                pause = self._poll
            except FAILURES as error:
                self._full = False  # wait before trying again
                self.failures.inc()
                reason = type(error).__name__ if not isinstance(error, RedisUnavailable) else error.reason
                if self.state.error is None:
                    logger.warning("archiving paused, the outbox keeps the turns: %s", reason)
                self.state.error = reason
                pause = min(max(pause * 2, 0.1), self._max_pause)
            await self._measure()
            # A full batch: more is waiting, go on at once. Otherwise wait for more to gather: one
            # transaction per few hundred turns costs far less CPU than one per handful, and that CPU
            # is the streaming process's own (issue #15: archiving must not slow streaming).
            if not self._full:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._wake.wait()
                self._wake.clear()

    def wake(self) -> None:
        """Run the next cycle now (tests and the benchmark)."""
        self._wake.set()

    async def cycle(self) -> int:
        """One pass over every outbox; how many turns it archived."""
        archived, self._full = 0, False
        claiming = self._clock() >= self._next_claim
        for stream in await self._outbox.streams():
            entries = await self._outbox.read(stream, self._batch, new=False)
            if not entries and claiming:
                entries = await self._outbox.claim(stream, self._claim_seconds, self._batch)
            if not entries:
                entries = await self._outbox.read(stream, self._batch, new=True)
            if not entries:
                continue
            self._full = self._full or len(entries) == self._batch  # entries, turns or not
            owners = await self._outbox.owners({entry.session_id for entry in entries if entry.turn})
            archived += await self._store.archive(entries, owners)
            await self._outbox.ack(stream, [entry.entry_id for entry in entries])
        if claiming:  # a dead consumer's entries wait claim_seconds first: looking often finds none
            self._next_claim = self._clock() + self._claim_seconds / CLAIM_CHECKS
        self.archived.inc(archived)
        await self._purge()
        return archived

    async def _measure(self) -> None:
        try:
            backlog, oldest = await self._outbox.backlog(await self._outbox.streams())
        except RedisUnavailable:
            return
        self.state.backlog, self.state.oldest_seconds = backlog, oldest
        self.lag.set(backlog)
        self.oldest.set(oldest)

    async def _purge(self) -> None:
        """CONVERSATION_RETENTION_DAYS: delete conversations untouched for longer, once an hour."""
        if self._retention is None or self._clock() < self._next_purge:
            return
        self._next_purge = self._clock() + RETENTION_EVERY
        before = datetime.fromtimestamp(self._clock(), UTC) - self._retention
        while expired := await self._store.expired(before):
            for owner, session_id in expired:
                await self._store.delete(owner, [session_id])
            logger.info("deleted %d conversations past their retention", len(expired))


async def open_archive(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    redis: RedisClient,
    keys: KeySpace,
    registry: CollectorRegistry,
    *,
    model: str | None,
) -> tuple[ConversationStore, Archiver]:
    """The conversation record, migrated (under the lock), and its archiver, running; closed by `stack`."""
    engine = create_engine(settings)
    stack.push_async_callback(engine.dispose)
    await migrate(engine)
    store = ConversationStore(engine, model=model)
    archiver = Archiver(
        Outbox(redis, keys, timeout=settings.redis_timeout),
        store,
        registry,
        batch=settings.archive_batch,
        claim_seconds=settings.archive_claim_seconds,
        retention_days=settings.conversation_retention_days,
    )
    archiver.start()
    stack.push_async_callback(archiver.close)
    logger.info("conversation record: %s", settings.database_location())
    return store, archiver
