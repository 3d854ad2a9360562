"""The history store (stores/history.py): order, trimming and TTL of a session's turns, and its
deadlines.

Unit behaviour runs on fakeredis; TTLs, outages and stalls run against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from batcher import CommandBatcher
from config import Settings
from models import ChatTurn
from redis_client import KeySpace, RedisClient, RedisUnavailable, create_redis
from redis_wire import open_pipe
from stores.history import HistoryStore
from testkit.redis_server import RedisServer

KEYS = KeySpace("chat")


TTL = 300


def turn(number: int) -> ChatTurn:
    return ChatTurn.assistant(f"m-{number}", f"turn {number}", "user1", "stop")


@pytest.fixture
async def real(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url)
    yield redis
    await redis.aclose()


WRITERS: list[CommandBatcher] = []


@pytest.fixture(autouse=True)
async def close_writers() -> AsyncIterator[None]:
    yield
    while WRITERS:
        await WRITERS.pop().close()


def history_on(redis: RedisClient, *, max_messages: int = 1000, timeout: float = 2) -> HistoryStore:
    writer = CommandBatcher(open_pipe(redis), timeout=timeout, name="history-writer")
    writer.start()
    WRITERS.append(writer)
    return HistoryStore(redis, writer, KEYS, ttl=TTL, max_messages=max_messages, timeout=timeout)


async def started_writer(redis: RedisClient, timeout: float = 2) -> CommandBatcher:
    writer = CommandBatcher(open_pipe(redis), timeout=timeout, name="event-writer")
    writer.start()
    return writer


async def test_history_append_keeps_order(fake: Redis) -> None:
    history = history_on(fake)
    for number in range(5):
        await history.append("s1", [turn(number)])
    assert [t.message_id for t in await history.read("s1")] == [f"m-{n}" for n in range(5)]


async def test_history_is_trimmed_to_the_most_recent_turns(fake: Redis) -> None:
    history = history_on(fake, max_messages=3)
    for number in range(7):
        await history.append("s1", [turn(number)])
    assert [t.message_id for t in await history.read("s1")] == ["m-4", "m-5", "m-6"]
    assert await fake.llen(KEYS.history("s1")) == 3


async def test_history_limit_returns_the_most_recent_oldest_first(fake: Redis) -> None:
    history = history_on(fake)
    for number in range(5):
        await history.append("s1", [turn(number)])
    assert [t.message_id for t in await history.read("s1", limit=2)] == ["m-3", "m-4"]
    assert len(await history.read("s1", limit=50)) == 5


async def test_sessions_do_not_share_history(fake: Redis) -> None:
    history = history_on(fake)
    await history.append("a", [turn(1)])
    await history.append("b", [turn(2)])
    assert [t.message_id for t in await history.read("a")] == ["m-1"]
    assert await history.read("unknown") == []


async def test_an_unreadable_entry_is_skipped_not_fatal(fake: Redis) -> None:
    history = history_on(fake)
    await history.append("s1", [turn(1)])
    await fake.rpush(KEYS.history("s1"), b"{not json")
    await history.append("s1", [turn(2)])
    assert [t.message_id for t in await history.read("s1")] == ["m-1", "m-2"]


async def test_the_newest_message_ids_skip_an_unreadable_entry(fake: Redis) -> None:
    """What a new message's branch is found from (`branches.py`): the ids alone, read in the writer's
    batch; an entry that is not a turn is skipped, as `read` skips it."""
    history = history_on(fake)
    await history.append("s1", [turn(1)])
    await fake.rpush(KEYS.history("s1"), b"{not json", b'{"message_id": 7}', b"[]")
    await history.append("s1", [turn(2)])
    assert history.message_ids("s1", await history.newest_soon("s1", 8)) == ["m-1", "m-2"]
    assert history.message_ids("s1", await history.newest_soon("s1", 1)) == ["m-2"]
    assert history.message_ids("unknown", await history.newest_soon("unknown", 8)) == []


async def test_embedded_redis_answers_ping(make_settings: Callable[..., Settings]) -> None:
    redis = create_redis(make_settings())
    try:
        assert await history_on(redis).ping() >= 0
    finally:
        await redis.aclose()


async def test_history_ttl_is_set_on_first_append(real: Redis) -> None:
    await history_on(real).append("s1", [turn(1)])
    assert TTL - 5 <= await real.ttl(KEYS.history("s1")) <= TTL


async def test_history_ttl_is_refreshed_on_every_append(real: Redis) -> None:
    history = history_on(real)
    await history.append("s1", [turn(1)])
    await real.expire(KEYS.history("s1"), 5)
    await history.append("s1", [turn(2)])
    assert await real.ttl(KEYS.history("s1")) > TTL - 5


async def test_writer_appends_refresh_the_ttl_too(real: Redis) -> None:
    history = history_on(real)
    await history.append("s1", [turn(1)])
    await real.expire(KEYS.history("s1"), 5)
    writer = await started_writer(real)
    try:
        await writer.submit(history.append_commands("s1", turn(2)))
    finally:
        await writer.close()
    assert await real.ttl(KEYS.history("s1")) > TTL - 5
    assert await real.llen(KEYS.history("s1")) == 2


async def test_every_chat_key_has_a_ttl(real: Redis) -> None:
    history = history_on(real, max_messages=2)
    writer = await started_writer(real)
    try:
        for session in ("a", "b", "c"):
            await history.append(session, [turn(1)])
            await writer.submit(history.append_commands(session, turn(2)))
            await writer.submit(history.append_commands(session, turn(3)))  # trims
            await writer.submit([("PUBLISH", KEYS.channel(session), b"{}")])
    finally:
        await writer.close()
    keys = [key async for key in real.scan_iter(match="chat:*")]
    # The outbox has none: it is durable until the archiver has copied its turns to SQL (issue #15).
    assert sorted(keys) == [b"chat:outbox", b"chat:{a}:history", b"chat:{b}:history", b"chat:{c}:history"]
    assert await real.xlen(KEYS.outbox("a")) == 9
    for key in set(keys) - {b"chat:outbox"}:
        assert await real.ttl(key) > 0, key


async def test_history_calls_fail_fast_when_redis_is_down(
    own_redis: RedisServer, settings_for: Callable[[RedisServer], Settings]
) -> None:
    redis = create_redis(settings_for(own_redis))
    history = history_on(redis, timeout=0.5)
    own_redis.stop()
    try:
        async with asyncio.timeout(10):
            for call in (history.ping(), history.read("s1"), history.append("s1", [turn(1)])):
                with pytest.raises(RedisUnavailable) as caught:
                    await call
                assert caught.value.reason in {"cannot connect to Redis", "Redis did not answer in time"}
    finally:
        await redis.aclose()


async def test_a_stalled_redis_gives_redis_unavailable_within_the_timeout(
    own_redis: RedisServer, settings_for: Callable[[RedisServer], Settings]
) -> None:
    redis = create_redis(settings_for(own_redis))
    history = history_on(redis, timeout=0.5)
    writer = await started_writer(redis, timeout=0.5)
    try:
        await history.ping()  # connected before the stall
        own_redis.cli("CLIENT", "PAUSE", "20000", "ALL")  # Redis accepts but answers nothing for 20s
        for call in (history.read("s1"), writer.submit([("INCR", "n")])):
            started = time.monotonic()
            with pytest.raises(RedisUnavailable):
                await call
            # Unbounded, the call would wait out the whole 20s pause.
            assert time.monotonic() - started < 5
    finally:  # the paused server is this test's own; its fixture kills it
        await writer.close()
        await redis.aclose()
