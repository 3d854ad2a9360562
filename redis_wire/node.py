"""A single Redis server's pipe: packed RESP out, hiredis-parsed replies in, over a connection of its own.

redis-py's pipeline costs ~10 us per command, mostly reply parsing under a timeout per reply; this
costs ~1 us (issue #6). It is the one place that reads redis-py's private connection streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from redis_client import Command
from redis_wire.resp import pack

__all__ = ["NodePipe"]

READ_SIZE = 262_144


class NodePipe:
    """One server's connection, made by `make_connection` (a redis-py `Connection` with the client's
    address, credentials, TLS and database; a sentinel pool's asks for the master) and kept by the pipe.

    A round trip is `send` then `receive`, so that a cluster's pipe can send to every node before it
    reads from any (issue #14)."""

    def __init__(self, make_connection: Callable[[], Connection]) -> None:
        self._make_connection = make_connection
        self._connection: Connection | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        await self.connect()
        self.send(commands)
        return await self.receive(len(commands))

    async def connect(self) -> None:
        """Open the connection unless it is open. Nothing has been sent when this raises."""
        if self._writer is not None and self._closed_by_server():
            # Redis closed it while it was idle (`timeout`, a restart): open a new one before
            # sending, rather than fail the batch. Nothing is resent after a batch went out.
            await self.reset()
        if self._writer is None:
            await self._connect()

    def send(self, commands: Sequence[Command]) -> None:
        assert self._writer is not None, "connect first"
        self._writer.write(pack(commands))

    async def receive(self, count: int) -> list[Any]:
        """The replies to the `count` commands sent; an error reply is a `hiredis.ReplyError` in place."""
        reader, writer = self._reader, self._writer
        assert reader is not None
        assert writer is not None
        await writer.drain()
        parser = self._parser
        replies: list[Any] = []
        while len(replies) < count:
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
        # Not borrowed from a pool: this connection stays with the pipe.
        connection = self._make_connection()
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
