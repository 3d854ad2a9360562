"""A single Redis server's pipe: packed RESP out, hiredis-parsed replies in, over a connection of its own.

redis-py's pipeline costs ~10 us per command, mostly reply parsing under a timeout per reply; this
costs ~1 us (issue #6). It is the one place that reads redis-py's private connection streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import Connection, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from redis_client import Command
from redis_wire.resp import pack

__all__ = ["NodePipe"]

READ_SIZE = 262_144


class NodePipe:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._connection: Connection | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        if self._writer is not None and self._closed_by_server():
            # Redis closed it while it was idle (`timeout`, a restart): open a new one before
            # sending, rather than fail the batch. Nothing is resent after a batch went out.
            await self.reset()
        if self._writer is None:
            await self._connect()
        reader, writer = self._reader, self._writer
        assert reader is not None
        assert writer is not None
        writer.write(pack(commands))
        await writer.drain()
        parser = self._parser
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = parser.gets()
            if reply is False:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    raise RedisConnectionError("connection closed by the server")
                parser.feed(chunk)
            else:
                replies.append(reply)
        return replies

    async def _connect(self) -> None:
        # From the client's pool settings (address, credentials, TLS, database; a sentinel pool asks for
        # the master), but not borrowed from the pool: this connection stays with the pipe.
        connection = cast(Connection, self._redis.connection_pool.make_connection())  # type: ignore[no-untyped-call]
        await connection.connect()  # type: ignore[no-untyped-call]
        reader, writer = getattr(connection, "_reader", None), getattr(connection, "_writer", None)
        if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
            with contextlib.suppress(Exception):
                await connection.disconnect()
            raise RedisConnectionError("the connection has no socket streams")
        self._connection, self._reader, self._writer = connection, reader, writer
        self._parser = hiredis.Reader()

    def _closed_by_server(self) -> bool:
        assert self._reader is not None
        assert self._writer is not None
        return self._reader.at_eof() or self._writer.is_closing()

    async def reset(self) -> None:
        connection, self._connection = self._connection, None
        self._reader = self._writer = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()
