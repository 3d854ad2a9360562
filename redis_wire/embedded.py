"""The embedded (fakeredis) server's pipe: it has no socket, so its connection parses the replies."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, cast

import fakeredis
from redis.asyncio import Connection
from redis.exceptions import ResponseError

from redis_client import Command
from redis_wire.resp import pack

__all__ = ["EmbeddedPipe"]


class EmbeddedPipe:
    def __init__(self, redis: fakeredis.FakeAsyncRedis) -> None:
        self._redis = redis
        self._connection: Connection | None = None

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        if self._connection is None:
            connection = cast(Connection, self._redis.connection_pool.make_connection())  # type: ignore[no-untyped-call]
            await connection.connect()  # type: ignore[no-untyped-call]
            self._connection = connection
        await self._connection.send_packed_command(pack(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await self._connection.read_response(disable_decoding=True))
            except ResponseError as error:
                replies.append(error)
        return replies

    async def reset(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()
