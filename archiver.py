"""The archiver: one task per instance that drains the outbox into the conversation record (issue #15).

Each cycle it takes, per outbox stream, its own unacknowledged entries (a batch that failed before),
or else entries another consumer has held past ARCHIVE_CLAIM_SECONDS (a killed process's), or else new
ones; stores them (idempotently, by turn id) and acknowledges them. While the database (or Redis) is
down, or after any other error of a cycle, it keeps the entries and retries with a growing pause; the
stream never waits for SQL. Its state (the backlog, the oldest entry's age, the last failure) feeds
`/metrics` and `/health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from config import Settings
from records.store import ConversationStore
from redis_client import KeySpace, RedisUnavailable
from stores.outbox import Outbox, OutboxEntry, position_of_entry

__all__ = ["ArchiveMetrics", "ArchiveRunner", "ArchiveState", "Archiver"]

logger = logging.getLogger(__name__)

FAILURES = (RedisUnavailable, SQLAlchemyError, OSError, TimeoutError)
# What says the database or Redis is out of reach, not that an entry was refused.
OUTAGES = (
    RedisUnavailable,
    OSError,
    TimeoutError,
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
)
RETENTION_EVERY = 3600.0
# How many times per ARCHIVE_CLAIM_SECONDS the archiver looks for a dead consumer's entries.
CLAIM_CHECKS = 4
# How often, in seconds, the backlog is measured for /metrics and /health.
MEASURE_EVERY = 1.0


@dataclass(slots=True)
class ArchiveState:
    """What `/health` reports of the archive."""

    backlog: int = 0
    oldest_seconds: float = 0.0
    error: str | None = None
    # Since start: what the archiver process reports to its parent (`archiver_process.py`).
    archived: int = 0
    failures: int = 0
    set_aside: int = 0

    def degraded(self, threshold: float) -> bool:
        """Whether a turn has waited longer than `threshold` seconds to be archived."""
        return self.oldest_seconds > threshold


class ArchiveMetrics:
    """The archive's figures in `/metrics`, kept by whoever runs the archiver in this process."""

    def __init__(self, registry: CollectorRegistry) -> None:
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
        self.set_aside = Counter(
            "chat_archive_set_aside_entries",
            "Outbox entries the record refused, or of a session whose conversation in the record is "
            "another key's, while the rest of their batch was stored: moved to the outbox's `:rejected` "
            "stream.",
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

    def measured(self, state: ArchiveState) -> None:
        self.lag.set(state.backlog)
        self.oldest.set(state.oldest_seconds)


class ArchiveRunner(Protocol):
    """What the routes and `/health` see of the archive, wherever it runs (ARCHIVER=loop or process)."""

    state: ArchiveState

    @property
    def outbox(self) -> Outbox: ...

    def wake(self) -> None: ...


class Archiver:
    """Owned by the services builder: `start()` at start-up, `close()` at shutdown."""

    @classmethod
    def configured(
        cls, outbox: Outbox, store: ConversationStore, registry: CollectorRegistry, settings: Settings
    ) -> Archiver:
        """An archiver as the settings (ARCHIVE_*, CONVERSATION_RETENTION_DAYS) ask for."""
        return cls(
            outbox,
            store,
            registry,
            batch=settings.archive_batch,
            claim_seconds=settings.archive_claim_seconds,
            retention_days=settings.conversation_retention_days,
        )

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
        self._next_measure = 0.0
        # Whether this consumer may hold entries it read and did not acknowledge: at start (a process
        # that restarted under its name) and after a failed cycle; otherwise there are none to read.
        self._unacknowledged = True
        self._full = False  # the last cycle read a whole batch from some outbox: more may be waiting
        self.state = ArchiveState()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        self.metrics = ArchiveMetrics(registry)

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

    async def _run(self) -> None:
        pause = self._poll
        while not self._closing:
            try:
                await self.cycle()
                if self.state.error is not None:
                    logger.info("archiving again: the conversation record is reachable")
                self.state.error = None
                pause = self._poll
            except Exception as error:  # the task must outlive any one cycle, whatever it raised
                self._full = False  # wait before trying again
                self._next_measure = 0.0
                self.metrics.failures.inc()
                self.state.failures += 1
                reason = type(error).__name__ if not isinstance(error, RedisUnavailable) else error.reason
                if not isinstance(error, FAILURES):  # not an outage: a bug, or an entry it cannot store
                    logger.exception("archiving failed, the outbox keeps the turns")
                elif self.state.error is None:
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
        unacknowledged = False  # this consumer still holds more than one batch read it did not acknowledge
        for stream in await self._outbox.streams():
            entries = []
            if self._unacknowledged:
                entries = await self._outbox.read(stream, self._batch, new=False)
                unacknowledged = unacknowledged or len(entries) == self._batch
            if not entries and claiming:
                entries = await self._outbox.claim(stream, self._claim_seconds, self._batch)
            if not entries:
                entries = await self._outbox.read(stream, self._batch, new=True)
            if not entries:
                continue
            self._full = self._full or len(entries) == self._batch  # entries, turns or not
            self._unacknowledged = True  # until they are acknowledged: a failure leaves them pending
            owners = await self._outbox.owners(entries)
            ours = await self._set_aside_foreign(entries, owners)
            archived += await self._archive(ours, owners)
            await self._delete_again(ours)
            await self._outbox.ack(stream, [entry.entry_id for entry in entries])
        self._unacknowledged = unacknowledged
        if claiming:  # a dead consumer's entries wait claim_seconds first: looking often finds none
            self._next_claim = self._clock() + self._claim_seconds / CLAIM_CHECKS
        self.metrics.archived.inc(archived)
        self.state.archived += archived
        await self._purge()
        return archived

    async def _set_aside_foreign(
        self, entries: list[OutboxEntry], owners: dict[str, str]
    ) -> list[OutboxEntry]:
        """The entries to store. A session's id is free again once its owner record expires with its
        history, and another key may then take it: the record's conversation of that id stays the first
        key's, and the new key's entries for it are set aside instead of joining it."""
        claimed = {session_id for session_id, owner in owners.items() if owner}
        held = await self._store.owners_of(claimed) if claimed else {}
        foreign = {session_id for session_id, owner in held.items() if owner and owner != owners[session_id]}
        if not foreign:
            return entries
        for entry in entries:
            if entry.session_id in foreign:
                why = "the session is another key's conversation in the record"
                await self._set_aside(entry, "another key's conversation", why, logging.WARNING)
        return [entry for entry in entries if entry.session_id not in foreign]

    async def _archive(self, entries: list[OutboxEntry], owners: dict[str, str]) -> int:
        """Store a batch. When the record refuses it (not an outage), store its entries one at a time
        and set aside those it refuses while it takes the others: one entry it cannot store must not
        hold back every turn after it. When it refuses them all, the fault is not in the entries (a
        schema out of date, a bug): the batch stays in the outbox and the error is raised."""
        try:
            return await self._store.archive(entries, owners)
        except Exception as batch_error:
            if _outage(batch_error) or len(entries) == 1:
                raise
            stored, refused = 0, []
            for entry in entries:
                try:
                    stored += await self._store.archive([entry], owners)
                except Exception as entry_error:
                    if _outage(entry_error):
                        raise
                    refused.append((entry, entry_error))
            if len(refused) == len(entries):
                raise
        for entry, error in refused:
            why = f"the record refused it: {error!r}"
            await self._set_aside(entry, type(error).__name__, why, logging.ERROR)
        return stored

    async def _set_aside(self, entry: OutboxEntry, reason: str, why: str, level: int) -> None:
        """Move an entry the record must not or cannot take to the outbox's `:rejected` stream, with
        `reason`; logged at `level`, saying `why`, and counted."""
        logger.log(
            level,
            "outbox entry %s (session %s) set aside in %s: %s",
            entry.entry_id,
            entry.session_id,
            KeySpace.outbox_rejected(entry.stream),
            why,
        )
        await self._outbox.set_aside(entry, reason)
        self.metrics.set_aside.inc()
        self.state.set_aside += 1

    async def _delete_again(self, entries: list[OutboxEntry]) -> None:
        """A conversation deleted while this batch was being stored: its deletion may have run before the
        batch's rows were written, so what the batch stored of it from before the deletion goes too."""
        sessions = {entry.session_id for entry in entries if entry.turn is not None}
        for session_id, before in (await self._outbox.deleted_since(sessions)).items():
            positions = [position_of_entry(e.entry_id) for e in entries if e.session_id == session_id]
            if min(positions) < before:
                await self._store.purge(session_id, before)

    async def _measure(self) -> None:
        """The backlog and the oldest entry's age, for `/metrics` and `/health`: once a second, not
        every cycle (an idle cycle is then one read of the outbox)."""
        if self._clock() < self._next_measure:
            return
        self._next_measure = self._clock() + MEASURE_EVERY
        try:
            backlog, oldest = await self._outbox.backlog(await self._outbox.streams())
        except RedisUnavailable:
            return
        self.state.backlog, self.state.oldest_seconds = backlog, oldest
        self.metrics.measured(self.state)

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


def _outage(error: BaseException) -> bool:
    """Whether the database or Redis is out of reach (retry later), not refusing an entry."""
    return isinstance(error, OUTAGES) or (isinstance(error, DBAPIError) and error.connection_invalidated)
