"""Redis access: the client, key names, chat history and answer state.

Every call is bounded by `REDIS_TIMEOUT` and every Redis failure surfaces as `RedisUnavailable`, so the
routes can answer 503 instead of hanging or leaking a driver exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import fakeredis
import orjson
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from errors import ServiceError
from models import AnswerState, AnswerStatus, ChatTurn, FinishReason, Role, status_of

if TYPE_CHECKING:
    from batcher import CommandBatcher
    from config import Settings

__all__ = [
    "AnswerRegistry",
    "Command",
    "HistoryStore",
    "KeySpace",
    "RedisClient",
    "RedisUnavailable",
    "create_redis",
]

logger = logging.getLogger(__name__)

Command = tuple[str | bytes | int | float, ...]


class RedisUnavailable(ServiceError):
    """Redis did not answer in time, refused the connection, or refused the write (out of memory)."""

    status = 503
    code = "redis_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(f"Service temporarily unavailable: {reason}")
        self.reason = reason


def describe(error: BaseException) -> str:
    """A short, credential-free reason for a Redis failure (driver messages can name hosts)."""
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "Redis did not answer in time"
    # redis-py maps OOM, NOAUTH and WRONGPASS replies to these classes and strips the code from the text;
    # AuthenticationError is a ConnectionError, so it is told apart first.
    if isinstance(error, OutOfMemoryError):
        return "Redis is out of memory"
    if isinstance(error, AuthenticationError | NoPermissionError):
        return "Redis refused the credentials"
    if isinstance(error, RedisConnectionError):
        return "cannot connect to Redis"
    text = str(error)
    if text.startswith("OOM"):
        return "Redis is out of memory"
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return "Redis refused the credentials"
    return f"Redis error ({type(error).__name__})"


RedisClient = Redis | RedisCluster


def create_redis(settings: Settings) -> RedisClient:
    """One client, with its own connection pool(s), for the whole process.

    With no Redis configured the client talks to an embedded in-process server (fakeredis), so the
    service runs on a fresh machine; its data lives as long as the process. Otherwise: one server,
    a cluster (REDIS_CLUSTER), or a master found through sentinels (REDIS_SENTINELS).
    """
    if settings.embedded_redis:
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=False)
    connection: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        # A blip (a restart, a failover, a killed connection) is retried quickly; a longer outage
        # still fails within REDIS_TIMEOUT because every call is also bounded by `bounded()`.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        "decode_responses": False,
    }
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_dsn(), max_connections=settings.redis_max_connections, **connection
        )
    connection["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
    if settings.redis_sentinels:
        sentinel_password = settings.redis_sentinel_password
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            settings.redis_sentinels,
            sentinel_kwargs={
                "socket_timeout": settings.redis_timeout,
                "password": sentinel_password.get_secret_value() if sentinel_password else None,
            },
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            db=settings.redis_db,
            max_connections=settings.redis_max_connections,
            **connection,
        )
        # The pool asks the sentinels for the master on every new connection, so after a failover
        # the retried command (and every later one) reaches the new master.
        return cast(Redis, sentinel.master_for(settings.redis_sentinel_master, redis_class=Redis))
    # A blocking pool: a burst of requests waits for a free connection instead of failing with
    # "Too many connections"; the deadline in `bounded()` still caps the wait.
    pool = BlockingConnectionPool.from_url(
        settings.redis_dsn(),
        timeout=settings.redis_timeout,
        health_check_interval=30,
        max_connections=settings.redis_max_connections,
        **connection,
    )
    return Redis.from_pool(pool)


class KeySpace:
    """Names of the keys and channels of a session.

    Every key carries the session id as a Redis Cluster hash tag (`chat:{<session_id>}:history`), so
    one session's keys share a slot and can be written in one pipeline on a cluster.
    """

    def __init__(self, prefix: str, *, sharded: bool = False) -> None:
        self.prefix = prefix
        # On a cluster, answers use sharded PubSub (SPUBLISH/SSUBSCRIBE): a message goes only to
        # the shard owning its channel's slot instead of being broadcast to every node.
        self.sharded = sharded
        self.publish = "SPUBLISH" if sharded else "PUBLISH"

    def history(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}:history"

    def events(self, session_id: str) -> str:
        """The session's replay log: a Redis Stream of every event published on its channel."""
        return f"{self.prefix}:{{{session_id}}}:events"

    def active(self, session_id: str) -> str:
        """Hash of the session's running answers: message id -> entry id of its `start` event."""
        return f"{self.prefix}:{{{session_id}}}:active"

    def message(self, message_id: str) -> str:
        """Hash of one answer's state (session, status, finish reason, start entry id)."""
        return f"{self.prefix}:message:{{{message_id}}}"

    def owner(self, session_id: str) -> str:
        """With API keys on: the name of the key that owns the session, beside the session's keys."""
        return f"{self.prefix}:{{{session_id}}}:owner"

    def stream_slots(self, owner: str, user_id: str) -> str:
        """Sorted set of one key's and user's running answers, scored by their lease's expiry."""
        return f"{self.prefix}:streams:{{{owner}:{user_id}}}"

    @property
    def rate_limits(self) -> str:
        """The prefix under which the `limits` library keeps `RATE_LIMIT`'s moving windows."""
        return f"{self.prefix}:ratelimit"

    @property
    def control(self) -> str:
        """Channel on which instances tell each other to stop an answer. `#` cannot occur in a session
        id, so no session's channel can be this one."""
        return f"{self.prefix}#control"

    def channel(self, session_id: str) -> str:
        """The PubSub channel on which a session's answers stream. On a cluster it carries the
        session's hash tag, so it lives on the slot (and node) of the session's keys."""
        if self.sharded:
            return f"{self.prefix}:{{{session_id}}}"
        return f"{self.prefix}:{session_id}"

    @property
    def channel_pattern(self) -> str:
        return f"{self.prefix}:{{{{session_id}}}}" if self.sharded else f"{self.prefix}:{{session_id}}"


@asynccontextmanager
async def bounded(seconds: float) -> AsyncIterator[None]:
    """Run Redis calls under a deadline; every Redis failure becomes `RedisUnavailable`."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except (TimeoutError, RedisError, RedisClusterException, OSError) as error:
        raise RedisUnavailable(describe(error)) from None


class HistoryStore:
    """A session's turns: one Redis list per session, one JSON object per turn, oldest first."""

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        *,
        ttl: int,
        max_messages: int,
        timeout: float,
        wait_replicas: int = 0,
    ) -> None:
        self._redis = redis
        self._wait_replicas = wait_replicas
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

    async def append(self, session_id: str, turn: ChatTurn) -> str:
        """Store the turn; return the newest entry id of the session's replay log at that moment
        (`0-0` when empty): every event written after this call comes after it.

        With `wait_replicas`, return only once that many replicas hold the turn (WAIT), or every
        attached replica if fewer are attached, so a failover cannot lose it.
        """
        async with bounded(self._timeout):
            if not self._wait_replicas:
                return await self._append(self._redis, session_id, turn)
            # WAIT counts the writes of its own connection: hold one connection for both. (Settings
            # refuse REDIS_WAIT_REPLICAS on a cluster.)
            async with cast(Redis, self._redis).client() as connection:
                newest = await self._append(connection, session_id, turn)
                acked = await connection.wait(self._wait_replicas, int(self._timeout * 500))
                if acked < self._wait_replicas:
                    # Fewer replicas than asked for may be attached (right after a failover there is
                    # none until one is re-attached): every attached replica must still confirm.
                    attached = int((await connection.info("replication")).get("connected_slaves", 0))
                    if acked < min(self._wait_replicas, attached):
                        raise RedisUnavailable("no replica confirmed the write in time")
            return newest

    async def _append(self, redis: RedisClient, session_id: str, turn: ChatTurn) -> str:
        # MULTI/EXEC: when Redis refuses the RPUSH (out of memory) nothing of the turn is applied.
        # All keys share the session's hash tag, so this is one slot on a cluster too.
        async with redis.pipeline(transaction=True) as pipe:
            for command in self.append_commands(session_id, turn):
                pipe.execute_command(*command)
            pipe.execute_command("XREVRANGE", self._keys.events(session_id), "+", "-", "COUNT", 1)
            *_, newest = await pipe.execute()
        return bytes(newest[0][0]).decode() if newest else "0-0"

    async def append_and_recent(
        self, writer: CommandBatcher, session_id: str, turn: ChatTurn, recent: int
    ) -> tuple[str, list[tuple[str, Role, str]]]:
        """`append`, and the `recent` newest turns (this one included) as (message_id, role, content).

        One transaction sent through `writer`: a round trip shared with other requests, where `append`
        then `read` cost two of their own and validated every turn with pydantic (issue #6). With
        `wait_replicas`, WAIT must follow the write on its own connection: that path stays as it was.
        """
        if self._wait_replicas or isinstance(self._redis, RedisCluster):
            # On a cluster the writer's batches go through redis-py's cluster pipeline, which takes
            # no MULTI: the turn is appended in its own transaction, then read.
            since = await self.append(session_id, turn)
            return since, [
                (item.message_id, item.role, item.content) for item in await self.read(session_id, recent)
            ]
        key = self._keys.history(session_id)
        replies = await writer.execute(
            [
                ("MULTI",),
                *self.append_commands(session_id, turn),
                ("XREVRANGE", self._keys.events(session_id), "+", "-", "COUNT", 1),
                ("LRANGE", key, -recent, -1),
                ("EXEC",),
            ]
        )
        result = replies[-1]
        if not isinstance(result, list):  # EXEC refused: the transaction was discarded
            raise RedisUnavailable(
                describe(result) if isinstance(result, Exception) else "transaction aborted"
            )
        failure = next((reply for reply in result if isinstance(reply, Exception)), None)
        if failure is not None:
            raise RedisUnavailable(describe(failure))
        *_, newest, raw = result
        turns: list[tuple[str, Role, str]] = []
        for item in raw:
            try:
                stored = orjson.loads(item)
                turns.append((stored["message_id"], stored["role"], stored["content"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                logger.warning("skipping an unreadable history entry in session %s", session_id)
        return (bytes(newest[0][0]).decode() if newest else "0-0"), turns

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

    async def clear(self, session_id: str) -> None:
        """Delete the session's history and its replay log."""
        async with bounded(self._timeout):
            await self._redis.delete(self._keys.history(session_id), self._keys.events(session_id))

    async def ping(self) -> float:
        """Round trip of a PING, in milliseconds."""
        started = time.perf_counter()
        async with bounded(self._timeout):
            await self._redis.ping()
        return (time.perf_counter() - started) * 1000


class AnswerRegistry:
    """Each answer's state in Redis, shared by every instance: what makes sends idempotent and lets
    any instance stop or follow an answer that another one runs."""

    def __init__(self, redis: RedisClient, keys: KeySpace, *, ttl: int, timeout: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl
        self._timeout = timeout

    async def claim(
        self, message_id: str, session_id: str, writer: CommandBatcher | None = None
    ) -> AnswerState | None:
        """Record a new answer; if the id is taken, return the existing answer's state instead.

        With `writer`, the claim goes out in its next batch instead of a round trip of its own.
        """
        key = self._keys.message(message_id)
        # HSETNX is the atomic claim: of two identical sends, on any instances, exactly one wins.
        commands: list[Command] = [
            ("HSETNX", key, "session_id", session_id),
            ("HSETNX", key, "status", "streaming"),
            ("EXPIRE", key, self._ttl),
        ]
        if writer is not None:
            won, _, _ = await writer.execute(commands)
        else:
            async with bounded(self._timeout), self._redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                won, _, _ = await pipe.execute()
        if won:
            return None
        existing = await self.get(message_id)
        # The winner may not have written its status yet: it is streaming.
        return existing or AnswerState(message_id=message_id, session_id=session_id, status="streaming")

    async def release(self, message_id: str) -> None:
        """Forget a claim whose answer never started (its user turn could not be stored)."""
        async with bounded(self._timeout):
            await self._redis.delete(self._keys.message(message_id))

    async def get(self, message_id: str) -> AnswerState | None:
        async with bounded(self._timeout):
            fields = cast(dict[bytes, bytes], await self._redis.hgetall(self._keys.message(message_id)))
        if not fields or b"session_id" not in fields:
            return None
        status = fields.get(b"status", b"streaming").decode()
        finish_reason = fields.get(b"finish_reason")
        return AnswerState.model_validate(
            {
                "message_id": message_id,
                "session_id": fields[b"session_id"].decode(),
                "status": status,
                "finish_reason": finish_reason.decode() if finish_reason else None,
            }
        )

    async def since(self, message_id: str) -> str | None:
        """The replay-log entry after which the answer's events begin, once it is starting."""
        async with bounded(self._timeout):
            value = cast(bytes | None, await self._redis.hget(self._keys.message(message_id), "since"))
        return value.decode() if value else None

    def starting_commands(self, session_id: str, message_id: str, since: str) -> list[Command]:
        """Record after which log entry the answer's events begin. Sent before its `start` is
        appended, so a reader that finds the answer here finds its `start` after `since`, and a reader
        that does not will see the `start` arrive live."""
        active = self._keys.active(session_id)
        return [
            ("HSET", self._keys.message(message_id), "since", since),
            ("HSET", active, message_id, since),
            ("EXPIRE", active, self._ttl),
        ]

    def finished_commands(
        self, session_id: str, message_id: str, finish_reason: FinishReason
    ) -> list[Command]:
        status: AnswerStatus = status_of(finish_reason)
        return [
            ("HSET", self._keys.message(message_id), "status", status, "finish_reason", finish_reason),
            ("HDEL", self._keys.active(session_id), message_id),
        ]
