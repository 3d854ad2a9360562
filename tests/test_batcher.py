"""The command batcher (batcher.py): concurrent writes share round trips, keep their order and get their
own replies; a failure fails only its own write; close sends what is pending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from batcher import CommandBatcher
from config import Settings
from redis_client import Command, RedisClient, RedisUnavailable, create_redis
from redis_wire import open_pipe
from testkit.redis_server import RedisServer


async def started_writer(redis: RedisClient, timeout: float = 2) -> CommandBatcher:
    writer = CommandBatcher(open_pipe(redis), timeout=timeout, name="event-writer")
    writer.start()
    return writer


async def test_concurrent_writes_share_pipelines(fake: Redis) -> None:
    # Counted where the batcher sends a batch: its pipe's round trips (issue #6).
    pipe = open_pipe(fake)
    round_trips = 0
    real_round_trip = pipe.round_trip

    async def counting_round_trip(commands: Sequence[Command]) -> list[Any]:
        nonlocal round_trips
        round_trips += 1
        return await real_round_trip(commands)

    pipe.round_trip = counting_round_trip  # type: ignore[method-assign]
    writer = CommandBatcher(pipe, timeout=2, name="event-writer")
    writer.start()
    try:
        replies = await asyncio.gather(*(writer.submit([("INCR", f"counter:{n}")]) for n in range(50)))
    finally:
        await writer.close()
    assert replies == [[1]] * 50
    assert round_trips < 50, "concurrent writes should be batched into shared round trips"


async def test_writes_keep_submission_order_and_get_their_own_replies(fake: Redis) -> None:
    writer = await started_writer(fake)
    try:
        replies = await asyncio.gather(*(writer.submit([("RPUSH", "ordered", str(n))]) for n in range(100)))
    finally:
        await writer.close()
    assert await fake.lrange("ordered", 0, -1) == [str(n).encode() for n in range(100)]
    assert replies == [[n + 1] for n in range(100)]


async def test_a_failing_command_fails_only_its_own_write(fake: Redis) -> None:
    await fake.rpush("a-list", "x")
    writer = await started_writer(fake)
    try:
        results = await asyncio.gather(
            writer.submit([("INCR", "n")]),
            writer.submit([("INCR", "a-list")]),  # WRONGTYPE
            writer.submit([("INCR", "n")]),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert results[0] == [1]
    assert isinstance(results[1], RedisUnavailable)
    assert results[2] == [2]


async def test_close_sends_what_is_pending_then_refuses_writes(fake: Redis) -> None:
    writer = await started_writer(fake)
    pending = [writer.submit([("RPUSH", "k", str(n))]) for n in range(10)]  # queued as submitted
    async with asyncio.timeout(15):
        await writer.close()
        await asyncio.gather(*pending)
    assert await fake.llen("k") == 10
    with pytest.raises(RuntimeError):
        await writer.submit([("INCR", "n")])


async def test_writer_raises_redis_unavailable_when_redis_is_down(
    own_redis: RedisServer, settings_for: Callable[[RedisServer], Settings]
) -> None:
    redis = create_redis(settings_for(own_redis))
    writer = await started_writer(redis, timeout=0.5)
    try:
        assert await writer.submit([("INCR", "n")]) == [1]
        own_redis.stop()
        async with asyncio.timeout(10):
            with pytest.raises(RedisUnavailable):
                await writer.submit([("INCR", "n")])
    finally:
        await writer.close()
        await redis.aclose()


async def test_commands_of_one_write_are_sent_together(fake: Redis) -> None:
    commands: list[Command] = [("RPUSH", "k", "a"), ("EXPIRE", "k", 60), ("LLEN", "k")]
    writer = await started_writer(fake)
    try:
        assert await writer.submit(commands) == [1, True, 1]
    finally:
        await writer.close()


@pytest.mark.redis
async def test_batcher_replies_in_order_and_a_failure_fails_only_its_own_commands(
    redis_server: RedisServer,
) -> None:
    redis = Redis.from_url(redis_server.url)
    batcher = CommandBatcher(open_pipe(redis), timeout=5, name="test-writer")
    batcher.start()
    try:
        await redis.rpush("a-list", "x")
        results = await asyncio.gather(
            *(batcher.submit([("RPUSH", "ordered", str(n))]) for n in range(100)),
            batcher.submit([("INCR", "a-list")]),  # WRONGTYPE
            batcher.submit([("MULTI",), ("INCR", "n"), ("TIME",), ("EXEC",)]),
            return_exceptions=True,
        )
        assert results[:100] == [[n + 1] for n in range(100)]
        assert isinstance(results[100], RedisUnavailable)
        transaction = results[101]
        assert isinstance(transaction, list)
        assert transaction[:3] == [b"OK", b"QUEUED", b"QUEUED"]
        assert transaction[3][0] == 1
        assert await redis.lrange("ordered", 0, -1) == [str(n).encode() for n in range(100)]
    finally:
        await batcher.close()
        await redis.aclose()
