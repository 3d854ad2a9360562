"""Redis access: key names, history (order, trimming, TTL), the batched event writer, and deadlines.

Unit behaviour runs on fakeredis; TTLs, outages and stalls run against a real redis-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Connection, Redis
from redis.crc import key_slot
from redis.exceptions import AuthenticationError, OutOfMemoryError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from batcher import CommandBatcher
from config import Settings
from models import ChatTurn
from redis_client import (
    Command,
    KeySpace,
    RedisClient,
    RedisUnavailable,
    bounded,
    create_redis,
    describe,
)
from redis_wire import open_pipe
from redis_wire.resp import pack
from stores.history import HistoryStore
from testkit.redis_server import RedisServer, start_redis
from testkit.waiting import eventually

KEYS = KeySpace("chat")
TTL = 300


def turn(number: int) -> ChatTurn:
    return ChatTurn.assistant(f"m-{number}", f"turn {number}", "user1", "stop")


@pytest.fixture
async def fake() -> AsyncIterator[Redis]:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield redis
    await redis.aclose()


@pytest.fixture
async def real(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url)
    yield redis
    await redis.aclose()


@pytest.fixture
def settings_for(make_settings: Callable[..., Settings]) -> Callable[[RedisServer], Settings]:
    """Settings pointing at a real server, with a short REDIS_TIMEOUT so outages show quickly."""
    return lambda server: make_settings(redis_url=server.url, redis_timeout=0.5)


# Writers started by a test, closed after it.
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


# --- Key names -----------------------------------------------------------------------------------


def test_history_key_carries_the_session_as_a_cluster_hash_tag() -> None:
    key = KEYS.history("test123")
    assert key == "chat:{test123}:history"
    assert key_slot(key.encode()) == key_slot(b"test123")


def test_channel_and_its_pattern_follow_the_prefix() -> None:
    keys = KeySpace("tenant-a")
    assert keys.channel("test123") == "tenant-a:test123"
    assert keys.channel_pattern == "tenant-a:{session_id}"
    assert keys.history("s").startswith("tenant-a:")


# --- History on fakeredis ------------------------------------------------------------------------


async def test_history_append_keeps_order(fake: Redis) -> None:
    history = history_on(fake)
    for number in range(5):
        await history.append("s1", turn(number))
    assert [t.message_id for t in await history.read("s1")] == [f"m-{n}" for n in range(5)]


async def test_history_is_trimmed_to_the_most_recent_turns(fake: Redis) -> None:
    history = history_on(fake, max_messages=3)
    for number in range(7):
        await history.append("s1", turn(number))
    assert [t.message_id for t in await history.read("s1")] == ["m-4", "m-5", "m-6"]
    assert await fake.llen(KEYS.history("s1")) == 3


async def test_history_limit_returns_the_most_recent_oldest_first(fake: Redis) -> None:
    history = history_on(fake)
    for number in range(5):
        await history.append("s1", turn(number))
    assert [t.message_id for t in await history.read("s1", limit=2)] == ["m-3", "m-4"]
    assert len(await history.read("s1", limit=50)) == 5


async def test_sessions_do_not_share_history(fake: Redis) -> None:
    history = history_on(fake)
    await history.append("a", turn(1))
    await history.append("b", turn(2))
    assert [t.message_id for t in await history.read("a")] == ["m-1"]
    assert await history.read("unknown") == []


async def test_an_unreadable_entry_is_skipped_not_fatal(fake: Redis) -> None:
    history = history_on(fake)
    await history.append("s1", turn(1))
    await fake.rpush(KEYS.history("s1"), b"{not json")
    await history.append("s1", turn(2))
    assert [t.message_id for t in await history.read("s1")] == ["m-1", "m-2"]


async def test_embedded_redis_answers_ping(make_settings: Callable[..., Settings]) -> None:
    redis = create_redis(make_settings())
    try:
        assert await history_on(redis).ping() >= 0
    finally:
        await redis.aclose()


# --- History TTL on a real server ----------------------------------------------------------------


async def test_history_ttl_is_set_on_first_append(real: Redis) -> None:
    await history_on(real).append("s1", turn(1))
    assert TTL - 5 <= await real.ttl(KEYS.history("s1")) <= TTL


async def test_history_ttl_is_refreshed_on_every_append(real: Redis) -> None:
    history = history_on(real)
    await history.append("s1", turn(1))
    await real.expire(KEYS.history("s1"), 5)
    await history.append("s1", turn(2))
    assert await real.ttl(KEYS.history("s1")) > TTL - 5


async def test_writer_appends_refresh_the_ttl_too(real: Redis) -> None:
    history = history_on(real)
    await history.append("s1", turn(1))
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
            await history.append(session, turn(1))
            await writer.submit(history.append_commands(session, turn(2)))
            await writer.submit(history.append_commands(session, turn(3)))  # trims
            await writer.submit([("PUBLISH", KEYS.channel(session), b"{}")])
    finally:
        await writer.close()
    keys = [key async for key in real.scan_iter(match="chat:*")]
    assert len(keys) == 3
    for key in keys:
        assert await real.ttl(key) > 0, key


# --- The batched event writer --------------------------------------------------------------------


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
    async with asyncio.timeout(5):
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


# --- Deadlines -----------------------------------------------------------------------------------


async def test_history_calls_fail_fast_when_redis_is_down(
    own_redis: RedisServer, settings_for: Callable[[RedisServer], Settings]
) -> None:
    redis = create_redis(settings_for(own_redis))
    history = history_on(redis, timeout=0.5)
    own_redis.stop()
    try:
        async with asyncio.timeout(10):
            for call in (history.ping(), history.read("s1"), history.append("s1", turn(1))):
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


async def test_bounded_turns_a_deadline_into_redis_unavailable() -> None:
    with pytest.raises(RedisUnavailable) as caught:
        async with bounded(0.05):
            await asyncio.sleep(10)  # the call that overruns its deadline: the subject, not a wait
    assert caught.value.reason == "Redis did not answer in time"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            RedisConnectionError("Error 111 connecting to db.internal:6379. Connection refused."),
            "cannot connect",
        ),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "out of memory"),
        (ResponseError("WRONGPASS invalid username-password pair"), "refused the credentials"),
        (TimeoutError(), "did not answer in time"),
        # What redis-py really raises for OOM and WRONGPASS replies: the code is gone from the text.
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "out of memory"),
        (
            AuthenticationError("invalid username-password pair or user is disabled."),
            "refused the credentials",
        ),
    ],
)
def test_failure_reasons_are_short_and_name_no_host(error: Exception, reason: str) -> None:
    text = describe(error)
    assert reason in text
    assert "internal" not in text
    assert "6379" not in text


async def test_commands_of_one_write_are_sent_together(fake: Redis) -> None:
    commands: list[Command] = [("RPUSH", "k", "a"), ("EXPIRE", "k", 60), ("LLEN", "k")]
    writer = await started_writer(fake)
    try:
        assert await writer.submit(commands) == [1, True, 1]
    finally:
        await writer.close()


# --- The batcher's own wire path (issue #6) ------------------------------------------------------

args = st.one_of(st.binary(max_size=5000), st.text(max_size=200), st.integers(), st.floats(allow_nan=False))


@given(st.lists(st.tuples(st.sampled_from(["SET", "XADD", "PUBLISH"]), args, args), max_size=20))
def test_pack_writes_what_redis_py_writes(commands: list[Command]) -> None:
    assert pack(commands) == b"".join(Connection().pack_commands(commands))


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
