"""The single node's pipe (redis_wire/node.py): a connection Redis closed while idle is replaced."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from batcher import CommandBatcher
from redis_wire import open_pipe
from testkit.redis_server import start_redis
from testkit.waiting import eventually


async def round_trip_through_the_loop(port: int) -> None:
    """One PING on a new socket. Redis has already closed the idle connection, so the event loop's
    select that finds the PONG finds that connection's end of file too, and handles it before this
    returns: the client side has seen the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        assert await reader.readline() == b"+PONG\r\n"
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.redis
async def test_batcher_reconnects_when_redis_closed_its_idle_connection() -> None:
    server = start_redis("--timeout", "1")  # Redis closes connections idle for a second
    redis = Redis.from_url(server.url)
    batcher = CommandBatcher(open_pipe(redis), timeout=5, name="test-writer")
    batcher.start()
    try:
        assert await batcher.submit([("INCR", "n")]) == [1]

        async def idle_connections_closed() -> bool:
            return server.connected_clients() <= 1  # only the redis-cli asking

        await eventually(idle_connections_closed, "Redis closed the idle connections", interval=0.1)
        await round_trip_through_the_loop(server.port)
        assert await batcher.submit([("INCR", "n")]) == [2]
    finally:
        await batcher.close()
        await redis.aclose()
        server.cleanup()
