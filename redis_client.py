"""Redis access: the client, key names, chat history and the batched event writer.

Every call is bounded by `REDIS_TIMEOUT` and every Redis failure surfaces as `RedisUnavailable`, so the
routes can answer 503 instead of hanging or leaking a driver exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import fakeredis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, OutOfMemoryError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models import ChatTurn

if TYPE_CHECKING:
    from config import Settings

__all__ = [
    "Command",
    "EventWriter",
    "HistoryStore",
    "KeySpace",
    "RedisUnavailable",
    "create_redis",
]

logger = logging.getLogger(__name__)

Command = tuple[str | bytes | int | float, ...]


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused the connection, or refused the write (out of memory)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(error: BaseException) -> str:
    """A short, credential-free reason for a Redis failure (driver messages can name hosts)."""
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "Redis did not answer in time"
    # redis-py maps OOM, NOAUTH and WRONGPASS replies to these classes and strips the code from the text;
    # AuthenticationError is a ConnectionError, so it is told apart first.
    if isinstance(error, OutOfMemoryError):
        return "Redis is out of memory"
    if isinstance(error, AuthenticationError):
        return "Redis refused the credentials"
    if isinstance(error, RedisConnectionError):
        return "cannot connect to Redis"
    text = str(error)
    if text.startswith("OOM"):
        return "Redis is out of memory"
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return "Redis refused the credentials"
    return f"Redis error ({type(error).__name__})"


def create_redis(settings: Settings) -> Redis:
    """One client, with its own connection pool, for the whole process.

    With no Redis configured the client talks to an embedded in-process server (fakeredis), so the
    service runs on a fresh machine; its data lives as long as the process.
    """
    if settings.embedded_redis:
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=False)
    return Redis.from_url(
        settings.redis_dsn(),
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        max_connections=settings.redis_max_connections,
        # A blip (a restart, a failover, a killed connection) is retried quickly; a longer outage
        # still fails within REDIS_TIMEOUT because every call is also bounded by `bounded()`.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
    )


class KeySpace:
    """Names of the keys and channels of a session.

    Every key carries the session id as a Redis Cluster hash tag (`chat:{<session_id>}:history`), so
    one session's keys share a slot and can be written in one pipeline on a cluster.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def history(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}:history"

    def channel(self, session_id: str) -> str:
        """The PubSub channel on which a session's answers stream."""
        return f"{self.prefix}:{session_id}"

    @property
    def channel_pattern(self) -> str:
        return f"{self.prefix}:{{session_id}}"


@asynccontextmanager
async def bounded(seconds: float) -> AsyncIterator[None]:
    """Run Redis calls under a deadline; every Redis failure becomes `RedisUnavailable`."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except (TimeoutError, RedisError, OSError) as error:
        raise RedisUnavailable(describe(error)) from None


class HistoryStore:
    """A session's turns: one Redis list per session, one JSON object per turn, oldest first."""

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl: int, max_messages: int, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl
        self._max_messages = max_messages
        self._timeout = timeout

    def append_commands(self, session_id: str, turn: ChatTurn) -> list[Command]:
        """RPUSH, LTRIM and EXPIRE of one turn: the key never exists without its TTL."""
        key = self._keys.history(session_id)
        return [
            ("RPUSH", key, turn.model_dump_json(exclude_none=True)),
            ("LTRIM", key, -self._max_messages, -1),
            ("EXPIRE", key, self._ttl),
        ]

    async def append(self, session_id: str, turn: ChatTurn) -> None:
        # MULTI/EXEC: when Redis refuses the RPUSH (out of memory) nothing of the turn is applied.
        async with bounded(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            for command in self.append_commands(session_id, turn):
                pipe.execute_command(*command)
            await pipe.execute()

    async def read(self, session_id: str, limit: int | None = None) -> list[ChatTurn]:
        start = -limit if limit else 0
        async with bounded(self._timeout):
            raw = await self._redis.lrange(self._keys.history(session_id), start, -1)
        turns = []
        for item in raw:
            try:
                turns.append(ChatTurn.model_validate_json(item))
            except ValueError:
                logger.warning("skipping an unreadable history entry in session %s", session_id)
        return turns

    async def clear(self, session_id: str) -> bool:
        async with bounded(self._timeout):
            deleted: int = await self._redis.delete(self._keys.history(session_id))
        return deleted > 0

    async def ping(self) -> float:
        """Round trip of a PING, in milliseconds."""
        started = time.perf_counter()
        async with bounded(self._timeout):
            await self._redis.ping()
        return (time.perf_counter() - started) * 1000


class EventWriter:
    """Writes commands to Redis in batches.

    Everything submitted while a batch is in flight goes out together in the next pipeline, so many
    concurrent answers share one round trip instead of paying one each. Batches are sent one at a
    time and in submission order, which keeps each answer's events in order on its channel.
    """

    def __init__(self, redis: Redis, *, timeout: float) -> None:
        self._redis = redis
        self._timeout = timeout
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-writer")

    async def close(self) -> None:
        """Send what is pending, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._task
        self._task = None

    async def write(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands in the next batch; return their replies or raise `RedisUnavailable`."""
        if self._task is None or self._closing:
            raise RuntimeError("the event writer is not running")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((commands, future))
        self._wakeup.set()
        return await future

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

    async def _flush(self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]) -> None:
        try:
            async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as error:
            reason = error.reason if isinstance(error, RedisUnavailable) else describe(error)
            if not isinstance(error, RedisUnavailable):
                logger.exception("event batch failed")
            for _, future in batch:
                if not future.done():
                    future.set_exception(RedisUnavailable(reason))
            return
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
