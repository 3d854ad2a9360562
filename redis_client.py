"""Redis access: the client, key names, and the deadline every call runs under.

Every call is bounded by `REDIS_TIMEOUT` and every Redis failure surfaces as `RedisUnavailable`, so the
routes can answer 503 instead of hanging or leaking a driver exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from errors import ServiceError

if TYPE_CHECKING:
    from config import Settings

__all__ = [
    "Command",
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
    if isinstance(error, ReadOnlyError):
        return "Redis is read-only (a replica)"
    if isinstance(error, AuthenticationError | NoPermissionError):
        return "Redis refused the credentials"
    if isinstance(error, RedisConnectionError):
        return "cannot connect to Redis"
    text = str(error)
    if text.startswith("OOM"):
        return "Redis is out of memory"
    if text.startswith("READONLY"):
        return "Redis is read-only (a replica)"
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

    def off_branch(self, session_id: str) -> str:
        """The turns a branch switch took out of the history, until the record has them (issue #15)."""
        return f"{self.prefix}:{{{session_id}}}:off-branch"

    def events(self, session_id: str) -> str:
        """The session's replay log: a Redis Stream of every event published on its channel."""
        return f"{self.prefix}:{{{session_id}}}:events"

    def active(self, session_id: str) -> str:
        """Hash of the session's running answers: message id -> entry id of its `start` event."""
        return f"{self.prefix}:{{{session_id}}}:active"

    def message(self, answer: str) -> str:
        """Hash of one answer's state (session, status, finish reason, start entry id), named by the
        answer's key (`ids.answer_key`: its message id within its API key's)."""
        return f"{self.prefix}:message:{{{answer}}}"

    def owner(self, session_id: str) -> str:
        """With API keys on: the name of the key that owns the session, beside the session's keys."""
        return f"{self.prefix}:{{{session_id}}}:owner"

    def deleted(self, session_id: str) -> str:
        """When the session's conversation was deleted, for an hour (`Outbox.mark_deleted`)."""
        return f"{self.prefix}:{{{session_id}}}:deleted"

    def outbox(self, session_id: str) -> str:
        """The durable outbox (a Stream) that stored turns are appended to for the archiver: one for
        the server, or on a cluster one per session, in the session's slot, so that it is written in
        the same transaction as the session's history (issue #15)."""
        if self.sharded:
            return f"{self.prefix}:{{{session_id}}}:outbox"
        return f"{self.prefix}:outbox"

    @staticmethod
    def outbox_rejected(outbox: str) -> str:
        """Beside an outbox (in its slot on a cluster): the entries the record refused, kept for an
        operator to read (`Outbox.set_aside`)."""
        return f"{outbox}:rejected"

    @property
    def outbox_pattern(self) -> str:
        """A SCAN pattern matching every outbox on a cluster."""
        return f"{self.prefix}:{{*}}:outbox"

    def stream_slots(self, owner: str, user_id: str) -> str:
        """Sorted set of one key's and user's running answers, scored by their lease's expiry."""
        return f"{self.prefix}:streams:{{{owner}:{user_id}}}"

    def key_stream_slots(self, owner: str) -> str:
        """Sorted set of all of one key's running answers (a key's name has no `:`, so no user's set)."""
        return f"{self.prefix}:streams:{{{owner}}}"

    @property
    def leases(self) -> str:
        """Sorted set of the stored answers (their keys) that are running, scored by when their lease
        expires (ms)."""
        return f"{self.prefix}:leases"

    @property
    def health(self) -> str:
        """The tiny key `/health` writes (with a short TTL) to prove that Redis takes writes."""
        return f"{self.prefix}:health"

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
