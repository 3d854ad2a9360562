"""The batched command writer: the service's hot path to Redis.

Everything submitted while a batch is in flight goes out together in the next one, over the batcher's
own connection (a `RedisPipe`), so many concurrent answers (or SSE clients) share one round trip instead
of paying one each (issue #6, b).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis_client import Command, RedisUnavailable, bounded, describe
from redis_wire import RedisPipe

__all__ = ["CommandBatcher"]

logger = logging.getLogger(__name__)

Batch = list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]


class CommandBatcher:
    """Sends commands to Redis in batches, through the pipe it is given.

    Batches are sent one at a time and in submission order, which keeps each answer's events in order
    on its channel. Replies are as Redis sends them (RESP, not redis-py's converted forms).
    """

    def __init__(self, pipe: RedisPipe, *, timeout: float, name: str) -> None:
        self._pipe = pipe
        self._name = name
        self._timeout = timeout
        self._pending: Batch = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        """Send what is pending, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._task
        self._task = None
        await self._pipe.reset()

    def submit(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue the commands for the next batch; the future gets their replies or `RedisUnavailable`
        (a command that Redis refused fails its whole submission)."""
        if self._task is None or self._closing:
            raise RuntimeError(f"{self._name} is not running")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((commands, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._pending = self._pending, []
            await self._flush(batch)

    async def _flush(self, batch: Batch) -> None:
        try:
            async with bounded(self._timeout):
                replies = await self._pipe.round_trip(
                    [command for commands, _ in batch for command in commands]
                )
        except Exception as error:
            # The connection's state is unknown (replies half read): the next batch opens a new one.
            await self._pipe.reset()
            reason = error.reason if isinstance(error, RedisUnavailable) else describe(error)
            if not isinstance(error, RedisUnavailable):
                logger.exception("%s: batch failed", self._name)
            for _, future in batch:
                if not future.done():
                    future.set_exception(RedisUnavailable(reason))
            return
        # One pass to find the error replies; most batches have none, and then no submission is scanned.
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if not failed:
            offset = 0
            for commands, future in batch:
                if not future.done():  # else the writer gave up waiting; the commands went out anyway
                    future.set_result(replies[offset : offset + len(commands)])
                offset += len(commands)
            return
        if any(str(reply).startswith("READONLY") for reply in failed):
            # A failover made this server a replica: the next batch asks the sentinels for the master.
            await self._pipe.reset()
        offset = 0
        for commands, future in batch:
            mine = replies[offset : offset + len(commands)]
            offset += len(commands)
            if future.done():  # the writer gave up waiting (cancelled); the commands went out anyway
                continue
            failure = next((reply for reply in mine if isinstance(reply, Exception)), None)
            if failure is not None:
                future.set_exception(RedisUnavailable(describe(failure)))
            else:
                future.set_result(mine)
