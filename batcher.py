"""The batched command writer: the service's hot path to Redis.

Everything submitted while a batch is in flight goes out together in the next one, over one connection
of the batcher's own, so many concurrent answers (or SSE clients) share one round trip instead of
paying one each (issue #6, b).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Connection, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from redis_client import Command, RedisClient, RedisUnavailable, bounded, describe

__all__ = ["CommandBatcher", "pack"]

logger = logging.getLogger(__name__)


# RESP headers, made once: `*<n>` for a command of n arguments, `$<n>` for an argument of n bytes.
_ARRAY = [b"*%d\r\n" % n for n in range(64)]
_BULK = [b"$%d\r\n" % n for n in range(4096)]


def pack(commands: Iterable[Command]) -> bytes:
    """The commands in the Redis protocol (RESP), as one buffer."""
    out: list[bytes] = []
    add = out.append
    for command in commands:
        add(_ARRAY[len(command)] if len(command) < 64 else b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if type(arg) is bytes else (arg.encode() if type(arg) is str else str(arg).encode())
            add(_BULK[len(data)] if len(data) < 4096 else b"$%d\r\n" % len(data))
            add(data)
            add(b"\r\n")
    return b"".join(out)


class CommandBatcher:
    """Sends commands to Redis in batches, over one connection of its own.

    Everything submitted while a batch is in flight goes out together in the next one, so many
    concurrent answers (or SSE clients) share one round trip and one connection instead of paying one
    each. Batches are sent one at a time and in submission order, which keeps each answer's events in
    order on its channel.

    The hot path of the service runs through here, so it skips redis-py's per-command machinery: the
    batch is packed into one buffer and, on a real server, the replies are parsed with hiredis straight
    off the connection's stream (a pipeline costs ~10 us per command in redis-py, mostly reply parsing
    under a timeout per reply; this costs ~1 us, issue #6). Replies are as Redis sends them (RESP, not
    redis-py's converted forms): an XRANGE entry is `[id, [field, value, ...]]`, TIME is two bytes.
    """

    def __init__(self, redis: RedisClient, *, timeout: float, name: str) -> None:
        self._redis = redis
        self._name = name
        self._timeout = timeout
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._connection: Connection | None = None
        self._parser = hiredis.Reader()

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
        await self._disconnect()

    def submit(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue the commands for the next batch; the future gets their replies or `RedisUnavailable`."""
        if self._task is None or self._closing:
            raise RuntimeError(f"{self._name} is not running")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((commands, future))
        self._wakeup.set()
        return future

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands in the next batch; return their replies or raise `RedisUnavailable`."""
        return await self.submit(commands)

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
            async with bounded(self._timeout):
                replies = await self._round_trip([command for commands, _ in batch for command in commands])
        except Exception as error:
            # The connection's state is unknown (replies half read): the next batch opens a new one.
            await self._disconnect()
            reason = error.reason if isinstance(error, RedisUnavailable) else describe(error)
            if not isinstance(error, RedisUnavailable):
                logger.exception("%s: batch failed", self._name)
            for _, future in batch:
                if not future.done():
                    future.set_exception(RedisUnavailable(reason))
            return
        if any(isinstance(reply, Exception) and str(reply).startswith("READONLY") for reply in replies):
            # A failover made this server a replica: the next batch asks the sentinels for the master.
            await self._disconnect()
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

    async def _round_trip(self, commands: list[Command]) -> list[Any]:
        if isinstance(self._redis, RedisCluster):
            # A cluster's pipeline sends each command to the node owning its slot.
            async with self._redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute(raise_on_error=False)
        data = pack(commands)
        count = len(commands)
        if self._connection is not None and self._closed_by_server(self._connection):
            # Redis closed it while it was idle (`timeout`, a restart): open a new one before
            # sending, rather than fail the batch. Nothing is resent after a batch went out.
            await self._disconnect()
        if self._connection is None:
            # From the client's pool settings (address, credentials, TLS, database), but not borrowed
            # from the pool: this connection stays with the batcher.
            connection = cast(Connection, self._redis.connection_pool.make_connection())  # type: ignore[no-untyped-call]
            await connection.connect()  # type: ignore[no-untyped-call]
            self._connection = connection
            self._parser = hiredis.Reader()
        connection = self._connection
        # redis-py keeps the connection's streams private; a real server's are asyncio streams.
        reader, writer = getattr(connection, "_reader", None), getattr(connection, "_writer", None)
        replies: list[Any] = []
        if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
            # The embedded server (fakeredis) has no socket: let its connection parse the replies.
            await connection.send_packed_command(data, check_health=False)
            for _ in range(count):
                try:
                    replies.append(await connection.read_response(disable_decoding=True))
                except ResponseError as error:
                    replies.append(error)
            return replies
        writer.write(data)
        await writer.drain()
        parser = self._parser
        while len(replies) < count:
            reply = parser.gets()
            if reply is False:
                chunk = await reader.read(262_144)
                if not chunk:
                    raise RedisConnectionError("connection closed by the server")
                parser.feed(chunk)
            else:
                replies.append(reply)
        return replies

    @staticmethod
    def _closed_by_server(connection: Connection) -> bool:
        reader, writer = getattr(connection, "_reader", None), getattr(connection, "_writer", None)
        if isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter):
            return reader.at_eof() or writer.is_closing()
        return False

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()
