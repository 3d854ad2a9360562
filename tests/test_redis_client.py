"""The batched writer's own wire path: RESP packing, and replies as Redis sends them."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Connection, Redis

from redis_client import Command, CommandBatcher, RedisUnavailable, pack
from tests.conftest import RedisServer

args = st.one_of(st.binary(max_size=5000), st.text(max_size=200), st.integers(), st.floats(allow_nan=False))


@given(st.lists(st.tuples(st.sampled_from(["SET", "XADD", "PUBLISH"]), args, args), max_size=20))
def test_pack_writes_what_redis_py_writes(commands: list[Command]) -> None:
    assert pack(commands) == b"".join(Connection().pack_commands(commands))


@pytest.mark.redis
async def test_batcher_replies_in_order_and_a_failure_fails_only_its_own_commands(
    redis_server: RedisServer,
) -> None:
    redis = Redis.from_url(redis_server.url)
    batcher = CommandBatcher(redis, timeout=5, name="test-writer")
    batcher.start()
    try:
        await redis.rpush("a-list", "x")
        results = await asyncio.gather(
            *(batcher.execute([("RPUSH", "ordered", str(n))]) for n in range(100)),
            batcher.execute([("INCR", "a-list")]),  # WRONGTYPE
            batcher.execute([("MULTI",), ("INCR", "n"), ("TIME",), ("EXEC",)]),
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
